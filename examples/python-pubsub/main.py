"""A gen1 Pub/Sub background function: (event, context), signature type "event".

On Cloud Run, Eventarc delivers the message as a CloudEvent; the Functions Framework turns it
back into the legacy (event, context) pair this function was written for. It refuses an event
that is not a Pub/Sub message (the Functions Framework then answers 500), so a smoke test
passes only when a real message arrived.
"""

import base64
import json


def on_order(event, context):
    """event['data'] is the base64 message: a JSON order {"order": 42, "items": [...]}."""
    if context.event_type != "google.pubsub.topic.publish" or "data" not in event:
        raise ValueError(f"not a Pub/Sub message: {context.event_type} {event!r}")
    order = json.loads(base64.b64decode(event["data"]))
    total = sum(item["quantity"] * item["price"] for item in order.get("items", []))
    print(f"message {context.event_id} on {context.resource['name']}: order {order['order']}, "
          f"total {total}")
