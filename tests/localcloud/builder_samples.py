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


TYPESCRIPT_INDEX = '''\
import type { Request, Response } from 'express';

const shout = (text: string): string => text.toUpperCase();

export const hello = (req: Request, res: Response): void => {
  res.send(shout('hello from typescript'));
};
'''
TYPESCRIPT_PACKAGE = {
    "name": "hello-ts", "version": "1.0.0", "main": "dist/index.js",
    "scripts": {"gcp-build": "tsc"},
    "dependencies": {"@google-cloud/functions-framework": "^3.4.0"},
    "devDependencies": {"typescript": "5.4.5", "@types/express": "4.17.21"},
}
TSCONFIG = {"compilerOptions": {"target": "es2020", "module": "commonjs", "outDir": "dist",
                                "rootDir": "src", "strict": True, "esModuleInterop": True,
                                "skipLibCheck": True}}


def typescript_function(root: Path) -> Path:
    """A TypeScript function as GCF takes it: src/index.ts compiled to dist/ by a `gcp-build`
    script with typescript a devDependency; dist/ is not in the source."""
    (root / "src").mkdir(parents=True, exist_ok=True)
    (root / "src" / "index.ts").write_text(TYPESCRIPT_INDEX)
    (root / "package.json").write_text(json.dumps(TYPESCRIPT_PACKAGE, indent=2))
    (root / "tsconfig.json").write_text(json.dumps(TSCONFIG, indent=2))
    return root
