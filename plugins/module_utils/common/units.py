# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""How durations and sizes read for people, the same in the live progress lines and in the reports."""

from __future__ import annotations

import math

MIB = 1024 * 1024


def fmt_duration(value: object, missing: str = "?") -> str:
    """Short human duration: 850 ms, 12.3 s, 4 min 05 s, 2 h 03 min; `missing` when there is no number."""
    try:
        seconds = float(value)  # type: ignore[arg-type]  # whatever float() takes; the rest is missing
    except (TypeError, ValueError):
        return missing
    if not math.isfinite(seconds):
        return missing
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        minutes, secs = divmod(int(round(seconds)), 60)
        return f"{minutes} min {secs:02d} s"
    hours, rest = divmod(int(round(seconds)), 3600)
    return f"{hours} h {rest // 60:02d} min"


def fmt_mib(num_bytes: float | None) -> str:
    """Bytes as MiB (GiB from 10 GiB on)."""
    if num_bytes is None:
        return "? MiB"
    mib = float(num_bytes) / MIB
    if mib >= 10240:
        return f"{mib / 1024:.1f} GiB"
    return f"{mib:.1f} MiB"
