"""Tables for sweeps and reports: mean ± std over seeds, markdown and CSV writers.

The spread is the sample standard deviation (n − 1 in the denominator); one value has spread 0.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..engine.rundir import write_text


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation of ``values`` (0 for a single value)."""
    if not values:
        raise ValueError("mean_std of no values")
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def pm(mean: float | None, std: float | None = None, n: int = 1, digits: int = 2) -> str:
    """``"81.25 ± 1.02"`` (the spread only when there is more than one value); ``"–"`` for no value."""
    if mean is None:
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 and std is not None else f"{mean:.{digits}f}"


def cell(value: Any) -> str:
    """A table cell: floats rounded, large integers grouped, ``None`` as a dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-2 and value != 0 else f"{value:.2f}"
    return str(value)


def markdown(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table (cells through :func:`cell`, strings kept as they are)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v).replace("|", "\\|") for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_csv(path: str | Path, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A CSV file with full-precision numbers (empty cells for ``None``)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(headers)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    write_text(Path(path), buffer.getvalue())
