"""Cloud Storage, locally (fake-gcs-server)."""
