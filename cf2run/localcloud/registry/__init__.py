"""Artifact Registry, locally: Docker repositories and an OCI distribution server."""
