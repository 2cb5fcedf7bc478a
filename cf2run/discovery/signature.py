"""Which Functions Framework signature the source itself declares for its entry point.

gen1 tells the Functions Framework to call an event function as a background function
(data, context); a source that registers the entry point declaratively overrides that: the
Python framework serves a function decorated ``@functions_framework.cloud_event`` as a
CloudEvent function (functions_framework/_function_registry.py, get_func_signature_type: a
registered type wins over FUNCTION_SIGNATURE_TYPE), and the Node.js one does the same for
``functions.cloudEvent('NAME', fn)`` (@google-cloud/functions-framework, function_registry.ts).
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Literal

Declared = Literal["http", "cloudevent"]
PYTHON_DECORATORS: dict[str, Declared] = {"cloud_event": "cloudevent", "http": "http"}
NODE_REGISTRATIONS: dict[str, Declared] = {"cloudEvent": "cloudevent", "http": "http"}


def declared_signature(source: Path, runtime: str, entry_point: str) -> Declared | None:
    """The signature the source registers `entry_point` with, or None (the platform decides)."""
    if runtime.startswith("python"):
        return _python(source / "main.py", entry_point)
    return _node(_node_main(source), entry_point)


def _python(main: Path, entry_point: str) -> Declared | None:
    try:
        tree = ast.parse(main.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == entry_point:
            for decorator in node.decorator_list:
                name = decorator.attr if isinstance(decorator, ast.Attribute) else \
                    decorator.id if isinstance(decorator, ast.Name) else None
                if name in PYTHON_DECORATORS:
                    return PYTHON_DECORATORS[name]
    return None


def _node_main(source: Path) -> Path:
    try:
        main = json.loads((source / "package.json").read_text(encoding="utf-8")).get("main")
    except (OSError, ValueError, AttributeError):
        main = None
    return source / (main if isinstance(main, str) and main else "index.js")


def _node(main: Path, entry_point: str) -> Declared | None:
    try:
        text = main.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    for method, declared in NODE_REGISTRATIONS.items():
        if re.search(rf"\.{method}\(\s*['\"`]{re.escape(entry_point)}['\"`]", text):
            return declared
    return None
