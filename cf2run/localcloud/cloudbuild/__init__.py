"""Cloud Build, locally: the API and the buildpack builder behind it."""
