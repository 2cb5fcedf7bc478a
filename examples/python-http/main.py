"""A gen1-style HTTP function that uses a third-party package (humanize) in its answer."""

import humanize


def hello(request):
    """GET /?name=Ada&count=1234567 -> 'Hello, Ada! 1,234,567 requests served.'"""
    name = request.args.get("name", "World")
    count = int(request.args.get("count", "0"))
    return f"Hello, {name}! {humanize.intcomma(count)} requests served.\n"
