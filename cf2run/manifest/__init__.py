"""What the user gives: the manifest, its mapping to Cloud Run, the source's checks."""
