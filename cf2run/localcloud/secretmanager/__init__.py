"""Secret Manager, locally."""
