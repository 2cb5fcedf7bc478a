"""A function that names the Cloud Run service it runs as (K_SERVICE, set by Cloud Run)."""

import os


def hello(request):
    return f"hello from {os.environ['K_SERVICE']}"
