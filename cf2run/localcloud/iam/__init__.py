"""Google's token services, ID tokens and the metadata server, locally."""
