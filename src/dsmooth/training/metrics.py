"""Per-epoch metrics next to the checkpoint: metrics.csv (one row per epoch) and
metrics.json (the same rows plus the recipe), both rewritten atomically from the full
history kept in the training state, so a resumed run never duplicates rows."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from dsmooth._io import write_text


def _atomic_write(path: Path, text: str) -> None:
    write_text(path, text)


def write_metrics(out_dir: str | os.PathLike, rows: list[dict], recipe: dict) -> None:
    out = Path(out_dir)
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row.get(k)) for k in columns})
    _atomic_write(out / "metrics.csv", buf.getvalue())
    _atomic_write(
        out / "metrics.json", json.dumps({"recipe": recipe, "epochs": rows}, indent=2) + "\n"
    )


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value
