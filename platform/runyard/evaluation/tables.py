"""CSV tables next to the plots (DVC renders them; people open them in a spreadsheet)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def write_csv(path: Path, header: list[str], rows: Iterable) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def write_records(rows: list[dict[str, Any]], path: Path) -> None:
    """One row per mapping; the header is every key in order of first appearance;
    lists and mappings are written as JSON."""
    header = list(dict.fromkeys(k for row in rows for k in row))
    cell = lambda v: json.dumps(v) if isinstance(v, list | dict) else v  # noqa: E731
    write_csv(path, header, ([cell(row.get(k, "")) for k in header] for row in rows))
