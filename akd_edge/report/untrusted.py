"""Values read from files that may come from anyone: each used only when it has the expected type and range.

``akd-edge report`` reads folders that may be someone else's, so every value passes through one of these: a
section that is not an object reads as empty, a number that is not finite, a fraction outside [0, 1] or a
text that is too long or not text reads as None (shown as n/a), and a JSON file larger than any akd-edge
writes is refused.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from akd_edge.core import files
from akd_edge.core.errors import UsageError

MAX_JSON_BYTES = 64 * 1024 * 1024
"""A JSON file larger than this is refused: no akd-edge report comes near it."""


MAX_TEXT = 200
"""The longest text shown from a file; longer text is cut with an ellipsis."""


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def obj(value: Any) -> dict[str, Any]:
    """A section of a file, or {} when it is missing or not an object."""
    return value if isinstance(value, dict) else {}


def num(value: Any) -> float | None:
    """A finite number, else None (booleans are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def count(value: Any) -> int | None:
    """A non-negative whole number, else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def fraction(value: Any) -> float | None:
    """An accuracy in [0, 1], else None."""
    value = num(value)
    return value if value is not None and 0.0 <= value <= 1.0 else None


def text(value: Any, limit: int = MAX_TEXT) -> str | None:
    """A short single-line string (numbers are written out), else None; control characters become spaces."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    value = _CONTROL.sub(" ", str(value))
    return value if len(value) <= limit else value[: limit - 1] + "…"


def interval(value: Any) -> list[float | None]:
    """A 95% interval ``[low, high]`` of fractions, else ``[None, None]``."""
    if isinstance(value, list) and len(value) == 2:
        low, high = fraction(value[0]), fraction(value[1])
        if low is not None and high is not None and low <= high:
            return [low, high]
    return [None, None]


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from a file of reasonable size (UsageError otherwise)."""
    if path.is_symlink():
        raise UsageError(f"{what}: {path} is a symbolic link; give the folder with the file itself")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise UsageError(f"{what}: {path} is larger than {MAX_JSON_BYTES // 2**20} MiB; it is not an akd-edge file")
    return files.read_json_object(path, what)
