"""A command that imports Prefect, runs its flows once and ends: Python's cyclic garbage collector
spared the work such a process does not need.

Importing Prefect, pydantic's models and the Google clients makes a few hundred thousand objects,
which the collector walks again and again while they are imported, in every full collection of
the flow run and once more when the interpreter ends (0.5-0.7 s of an unchanged rerun's wall,
measured: bench/README.md). `imports_frozen` imports with the collector off and then freezes what
was imported (`gc.freeze`: never collected, kept to the end, which is what a module is);
`before_exit` freezes what the run made, so the interpreter's last collection skips it. Nothing
is lost: objects still go when their reference count drops; only cycles made before a freeze
stay until the process ends, seconds later.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def imports_frozen() -> Iterator[None]:
    """Run the imports inside without the collector; freeze what they made."""
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def before_exit() -> None:
    """Spare the interpreter's final collection everything made until now."""
    gc.freeze()
