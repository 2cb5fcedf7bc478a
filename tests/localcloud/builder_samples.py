"""Tiny function sources for the builder and Cloud Build tests (made in tmp dirs, never shipped)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

PYTHON_MAIN = '''\
import six


def hello(request):
    return f"hello from python (six {six.__version__})"


def _helper():
    return None
'''
PYTHON_REQUIREMENTS = "six==1.16.0\n"

NODE_INDEX = '''\
const ms = require('ms');

exports.hello = (req, res) => {
  res.send(`hello from node (${ms(60000)})`);
};
'''
NODE_PACKAGE = {"name": "hello-fn", "version": "1.0.0", "main": "index.js",
                "dependencies": {"ms": "2.1.3"}}


def python_function(root: Path, main: str = PYTHON_MAIN,
                    requirements: str | None = PYTHON_REQUIREMENTS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "main.py").write_text(main)
    if requirements is not None:
        (root / "requirements.txt").write_text(requirements)
    return root


def node_function(root: Path, index: str = NODE_INDEX, lock: bool = True) -> Path:
    """A Node.js function with one dependency and a real package-lock.json (npm --package-lock-only)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "index.js").write_text(index)
    (root / "package.json").write_text(json.dumps(NODE_PACKAGE, indent=2))
    if lock:
        subprocess.run(["npm", "install", "--package-lock-only", "--no-audit", "--no-fund"],
                       cwd=root, check=True, capture_output=True, timeout=300)
    return root
