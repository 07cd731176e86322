"""The callbacks through which long commands (compress, export, verify) tell their caller what they are doing."""

from __future__ import annotations

from collections.abc import Callable

StageFn = Callable[[str], None]
"""``on_stage(text)``: called as a stage of a command starts, with a line that says what it does."""
