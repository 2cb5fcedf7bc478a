"""A CloudEvent function (e.g. a Pub/Sub or Storage trigger on Cloud Run functions)."""

import functions_framework


@functions_framework.cloud_event
def on_event(cloud_event):
    """Log the event; the Functions Framework answers 200 'OK' when this returns."""
    data = cloud_event.data or {}
    print(f"event {cloud_event['id']} of type {cloud_event['type']} from {cloud_event['source']}: {data}")
