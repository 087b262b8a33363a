"""Arrow tables as text a person can read (table), or for machines (csv, json)."""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import datetime

FORMATS = ("table", "csv", "json")
DIGITS = 4  # significant digits of a float in a table or csv cell


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        # one rule for every float: 4 significant digits (0.001252, 0.0533, 0.8123, 12.35, 1.235e+05)
        return "nan" if math.isnan(value) else f"{value:.{DIGITS}g}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def render(table, fmt: str = "table", max_width: int = 40) -> str:
    """``table``: a pyarrow Table. pyarrow is imported here, not at import (`segtrack --help` stays fast)."""
    import pyarrow as pa

    rows = table.to_pylist()
    if fmt == "json":
        return json.dumps(rows, default=str, indent=2, allow_nan=True)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(table.column_names)
        writer.writerows(
            [
                [_cell(r[c]) if isinstance(r[c], float) else ("" if r[c] is None else r[c]) for c in table.column_names]
                for r in rows
            ]
        )
        return out.getvalue().rstrip("\n")
    headers = table.column_names
    cells = [[_cell(r[c])[:max_width] for c in headers] for r in rows]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]
    numeric = [pa.types.is_floating(f.type) or pa.types.is_integer(f.type) for f in table.schema]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)), "  ".join("-" * w for w in widths)]
    for row in cells:
        lines.append("  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric)))
    lines.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(lines)
