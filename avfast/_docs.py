"""Generates the README's backend table from the registry (``python -m avfast._docs`` rewrites it)."""
from __future__ import annotations

import pathlib
import re

BEGIN, END = "<!-- backend-table:begin -->", "<!-- backend-table:end -->"


def backend_table_markdown() -> str:
    """Markdown table: op, backend, devices, dtypes, autograd, deterministic, description."""
    from avfast import _backend

    lines = ["| op | backend | devices | dtypes | backward | deterministic | what it is |", "|---|---|---|---|---|---|---|"]
    for op in _backend.ops():
        if op.startswith("_"):
            continue
        for b in _backend.backends(op):
            dtypes = ", ".join(str(d).replace("torch.", "") for d in b.dtypes)
            lines.append(f"| `{op}` | `{b.name}` | {', '.join(b.devices)} | {dtypes} | {'yes' if b.autograd else 'no'} "
                         f"| {'yes' if b.deterministic else 'no'} | {b.description} |")
    return "\n".join(lines)


def render(readme: str) -> str:
    """``readme`` with the text between the markers replaced by the current table."""
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(readme):
        raise ValueError(f"README has no {BEGIN} ... {END} section")
    return pattern.sub(lambda _: f"{BEGIN}\n{backend_table_markdown()}\n{END}", readme)


if __name__ == "__main__":
    path = pathlib.Path(__file__).resolve().parent.parent / "README.md"
    path.write_text(render(path.read_text()))
    print(f"updated {path}")
