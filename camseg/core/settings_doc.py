"""The README's settings table, rendered from :mod:`camseg.core.settings`.

``python -m camseg.core.settings_doc README.md`` rewrites the table between
:data:`BEGIN` and :data:`END`; a test fails when the committed README is not this
module's output, so a field added, removed or redescribed shows up in the README.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo

from camseg.core.settings import SECTIONS, variable

BEGIN = "<!-- settings table: written by `python -m camseg.core.settings_doc README.md`; do not edit -->"
END = "<!-- end of the settings table -->"


def _default(info: FieldInfo) -> str:
    """The default as it would be written in the variable (home shown as ``~``)."""
    value: Any = info.get_default(call_default_factory=True)
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Path):
        return f"~/{value.relative_to(Path.home())}" if value.is_relative_to(Path.home()) else str(value)
    if isinstance(value, list):
        return json.dumps([str(v) if isinstance(v, Path) else v for v in value])
    if isinstance(value, float):
        return f"{value:g}"
    return str(value) if value != "" else "empty"


def _cell(text: str) -> str:
    """``text`` safe in a table cell: no column break, no HTML tag (``<name>``)."""
    return text.replace("|", "\\|").replace("<", "\\<")


def markdown_table() -> str:
    """Every field of every section: section, variable, default, description."""
    rows = ["| Section | Variable | Default | What |", "|---|---|---|---|"]
    for section, cls in SECTIONS.items():
        for name, info in cls.model_fields.items():
            rows.append(f"| {section} | `{variable(name)}` | `{_default(info)}` | "
                        f"{_cell(info.description or '')} |")
    return "\n".join(rows)


def with_table(text: str) -> str:
    """``text`` with the part between :data:`BEGIN` and :data:`END` replaced by the
    table; ValueError when either marker is missing or they are out of order."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the settings table needs the lines {BEGIN!r} and then {END!r}")
    return f"{text[:start]}{BEGIN}\n{markdown_table()}\n{text[end:]}"


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite the table in the README (the first argument, default ``README.md``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    readme = Path(args[0] if args else "README.md")
    text = readme.read_text(encoding="utf-8")
    new = with_table(text)
    if new != text:
        readme.write_text(new, encoding="utf-8")
        print(f"{readme}: settings table rewritten")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
