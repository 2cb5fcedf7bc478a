"""Cloud Run, locally: the Admin API, revisions as processes, URLs, scaling and the zygotes."""
