"""A gen1 Pub/Sub background function: (event, context), signature type "event".

On Cloud Run, Eventarc delivers the message as a CloudEvent; the Functions Framework turns it
back into the legacy (event, context) pair this function was written for. It refuses an event
that is not a Pub/Sub message (the Functions Framework then answers 500), so a smoke test
passes only when a real message arrived. A message that is not an order is logged and
acknowledged: raising would have gen1's retry policy deliver it again, forever.
"""

import base64
import json


def on_order(event, context):
    """event['data'] is the base64 message: a JSON order {"order": 42, "items": [...]}."""
    if context.event_type != "google.pubsub.topic.publish" or "data" not in event:
        raise ValueError(f"not a Pub/Sub message: {context.event_type} {event!r}")
    text = base64.b64decode(event["data"]).decode("utf-8", errors="replace")
    try:
        order = json.loads(text)
        total = sum(item["quantity"] * item["price"] for item in order.get("items", []))
    except (ValueError, TypeError, KeyError, AttributeError):
        print(f"message {context.event_id} on {context.resource['name']}: not an order, skipped: "
              f"{text[:80]!r}")
        return
    print(f"message {context.event_id} on {context.resource['name']}: order {order.get('order')}, "
          f"total {total}")
