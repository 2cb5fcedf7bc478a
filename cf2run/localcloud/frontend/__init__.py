"""Google's API front end, locally: the gRPC transport, the credential check, field behaviour,
long-running operations and the HTTP reverse proxy."""
