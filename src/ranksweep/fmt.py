"""How numbers read in every view of a sweep: the table, the PNG, the HTML report, the log lines."""

from __future__ import annotations

import math
from typing import Optional

__all__ = ["fmt_params", "fmt_pct", "fmt_time", "fmt_value"]


def fmt_value(v: Optional[float]) -> str:
    """An objective value: 4 decimals, or 4 significant digits when very large or small."""
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v:.4g}" if abs(v) >= 1e4 or (v != 0 and abs(v) < 1e-3) else f"{v:.4f}"


def fmt_params(n: Optional[float]) -> str:
    """A parameter count: 2.44M, 98.3K, 1.20B."""
    if not n:
        return "-"
    n = float(n)
    for div, suffix, digits in ((1e9, "B", 2), (1e6, "M", 2), (1e3, "K", 1)):
        if n >= div:
            return f"{n / div:.{digits}f}{suffix}"
    return str(int(n))


def fmt_time(s: Optional[float]) -> str:
    """Seconds as 12.5s, 2m37s or 1h05m."""
    if s is None or not math.isfinite(s):
        return "-"
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int((s % 3600) // 60):02d}m"


def fmt_pct(share: Optional[float]) -> str:
    return "-" if share is None else f"{share * 100:.1f}%"


