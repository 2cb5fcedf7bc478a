"""Regenerate the field tables in README.md from the models' own descriptions.

    python scripts/readme_tables.py          # rewrite README.md in place
    python scripts/readme_tables.py --check  # exit 1 if README.md is out of date (the tests do this)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from cf2run.localcloud.settings import Fault, LocalCloudSettings
from cf2run.manifest.spec import FunctionSpec, SmokeRequest, Target
from cf2run.manifest.spec_parts import ParityCheck, SecretFile, SecretRef, SecretVolume, Trigger

README = Path(__file__).resolve().parents[1] / "README.md"
SECTIONS: dict[str, list[tuple[str, type[BaseModel]]]] = {
    "manifest-fields": [("target", Target), ("functions[] (and defaults)", FunctionSpec),
                        ("functions[].smoke", SmokeRequest),
                        ("functions[].secret_env.NAME (or SECRET, or SECRET:VERSION)", SecretRef),
                        ("functions[].secret_volumes[]", SecretVolume),
                        ("functions[].secret_volumes[].versions[]", SecretFile),
                        ("functions[].trigger", Trigger),
                        ("functions[].parity", ParityCheck)],
    "knobs": [("LocalCloudSettings", LocalCloudSettings), ("faults[]", Fault)],
}


def table(title: str, model: type[BaseModel]) -> str:
    rows = [f"**{title}**", "", "| field | default | meaning |", "|---|---|---|"]
    for name, field in model.model_fields.items():
        if field.is_required():
            default = "required"
        elif field.default is PydanticUndefined or field.default_factory is not None:
            default = "empty"
        else:
            default = f"`{field.default}`"
        description = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{field.alias or name}` | {default} | {description} |")
    return "\n".join(rows)


def render(text: str) -> str:
    for marker, models in SECTIONS.items():
        body = "\n\n".join(table(title, model) for title, model in models)
        text = re.sub(rf"<!-- {marker} -->.*?<!-- /{marker} -->",
                      f"<!-- {marker} -->\n{body}\n<!-- /{marker} -->", text, flags=re.S)
    return text


def main() -> int:
    text = README.read_text()
    fresh = render(text)
    if "--check" in sys.argv:
        return 0 if fresh == text else 1
    README.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
