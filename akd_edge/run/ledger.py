"""The stage ledger of ``akd-edge run``, kept in ``pipeline.json``: which stages finished, from which inputs, with
which outputs.

A stage is recorded only once it has finished, with the SHA-256 of a canonical JSON of its inputs (the
hashes of the files it read and its settings) and the SHA-256 of the files it wrote. It is skipped next time
when both still match: the same inputs, and outputs that nobody changed or removed since. A killed stage has
no record, so it runs again; a stage downstream of one that ran again sees new input hashes and runs too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from akd_edge.core import files
from akd_edge.core.errors import UsageError

log = logging.getLogger(__name__)

STATE_NAME = "pipeline.json"
PIPELINE_FORMAT = "akd-edge-pipeline/1"
"""Bump when a stage's inputs or outputs change meaning: every stage then runs again."""


def digest(value: Any) -> str:
    """SHA-256 of a value's canonical JSON (sorted keys, no spaces): the hash of a stage's inputs."""
    blob = json.dumps(files.json_ready(value), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Record:
    """A finished stage: the hash of its inputs, where its output is, and the hash of each file it wrote."""

    inputs: str
    output: str
    outputs: dict[str, str]
    finished: str
    seconds: float


def _record(value: Any) -> Record | None:
    """A record read from the file, or None when any field is malformed (the stage then runs again)."""
    if not isinstance(value, dict):
        return None
    outputs = value.get("outputs")
    fields_ok = isinstance(value.get("inputs"), str) and isinstance(value.get("output"), str)
    if not fields_ok or not isinstance(outputs, dict) or not all(isinstance(v, str) for v in outputs.values()):
        return None
    seconds = value.get("seconds")
    return Record(
        value["inputs"],
        value["output"],
        dict(outputs),
        str(value.get("finished", "")),
        float(seconds) if isinstance(seconds, int | float) else 0.0,
    )


class PipelineState:
    """The records of one pipeline folder; every change is written at once, atomically."""

    def __init__(self, root: Path, recipe: dict[str, Any]) -> None:
        self.path = root / STATE_NAME
        self.recipe = recipe
        self.records: dict[str, Record] = {}
        self.extra: dict[str, Any] = {}
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        try:
            data = files.read_json_object(self.path, "pipeline state")
        except UsageError as err:
            log.warning("%s; every stage is checked again", err)
            return
        if data.get("format") != PIPELINE_FORMAT:
            log.warning(
                "%s has format %r, not %r; every stage runs again", self.path, data.get("format"), PIPELINE_FORMAT
            )
            return
        stages = data.get("stages") if isinstance(data.get("stages"), dict) else {}
        for key, value in stages.items():
            record = _record(value)
            if record is not None:
                self.records[key] = record
        self.extra = data.get("extra") if isinstance(data.get("extra"), dict) else {}

    @staticmethod
    def recorded_recipe(root: Path) -> dict[str, Any] | None:
        """The recipe a pipeline folder's state was written for, or None."""
        path = root / STATE_NAME
        try:
            data = files.read_json_object(path, "pipeline state") if path.is_file() else {}
        except UsageError:
            return None
        recipe = data.get("recipe")
        return recipe if isinstance(recipe, dict) else None

    def up_to_date(self, key: str, inputs: str, output: Path) -> Record | None:
        """The stage's record when its inputs hash is ``inputs`` and every file it wrote is unchanged."""
        record = self.records.get(key)
        if record is None or record.inputs != inputs or record.output != str(output):
            return None
        for name, sha in record.outputs.items():
            path = output / name if output.is_dir() else output
            if not path.is_file() or files.sha256_file(path) != sha:
                log.info("%s: %s changed since the stage finished; it runs again", key, path)
                return None
        return record

    def finish(self, key: str, inputs: str, output: Path, written: list[str], seconds: float) -> Record:
        """Record a finished stage (``written``: its files, relative to ``output``) and save the state."""
        outputs = {name: files.sha256_file(output / name) for name in written}
        record = Record(inputs, str(output), outputs, time.strftime("%Y-%m-%dT%H:%M:%S%z"), round(seconds, 2))
        self.records[key] = record
        self.save()
        return record

    def save(self) -> None:
        stages = {key: record.__dict__ for key, record in sorted(self.records.items())}
        payload = {"format": PIPELINE_FORMAT, "recipe": self.recipe, "stages": stages, "extra": self.extra}
        files.write_json_atomic(self.path, payload)
