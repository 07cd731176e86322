"""What verify reads from an export folder, checked: report.json, the model files against their SHA-256, the
threat model, the source checkpoint of the transfer attack, and the test data."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from akd_edge.core.errors import CheckpointError, DataError, UsageError
from akd_edge.core.files import check_name, sha256_file
from akd_edge.core.ort import ModelFileError, OrtClassifier
from akd_edge.export.card import REPLAY_NAME, REPORT_FORMAT, read_report, recorded_checkpoint
from akd_edge.export.folder import MOBILE_MODELS, ONNX_MODELS
from akd_edge.verify.data import TestData, load_test_data

log = logging.getLogger(__name__)


def as_dict(value: Any) -> dict[str, Any]:
    """A section of a report or of a model's metadata, or {} when it is missing or not an object."""
    return value if isinstance(value, dict) else {}


def read_export_report(folder: Path) -> dict[str, Any] | None:
    """The folder's report.json (None when absent); a UsageError when it is not an export report."""
    report = read_report(folder)
    if report is not None and report.get("format") != REPORT_FORMAT:
        raise ModelFileError(
            f"{folder / 'report.json'} is not an akd-edge export report (format {report.get('format')!r}, "
            f"expected {REPORT_FORMAT!r}); re-export the model"
        )
    return report


def check_files(folder: Path, report: dict[str, Any] | None) -> dict[str, str]:
    """SHA-256 of each model file in ``folder``, checked against what report.json recorded at export.

    A file changed, swapped in, or missing since the export is refused (ModelFileError): its results
    would otherwise be recorded under the exported model's name. Without a report nothing can be checked
    (a warning); the digests go into the verify section either way.
    """
    present = [name for name in (*ONNX_MODELS, *MOBILE_MODELS) if (folder / name).is_file()]
    digests = {name: sha256_file(folder / name) for name in present}
    if report is None:
        log.warning("%s has no report.json: the model files cannot be checked against their export", folder)
        return digests
    where = folder / "report.json"
    recorded = report.get("files")
    if not isinstance(recorded, dict):
        raise ModelFileError(f"{where} records no model files (no 'files' section); re-export the model")
    for name, entry in recorded.items():
        check_name(name, f"file name in {where}")
        if name == REPLAY_NAME:  # verify's own evidence, checked where it is read (verify.replay.read_replay)
            continue
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)):
            raise ModelFileError(f"{where}: the entry of {name!r} under 'files' has no sha256; re-export the model")
        if name not in digests:
            raise ModelFileError(f"{folder / name} is listed in {where} but missing; re-export the model")
    for name, digest in digests.items():
        if name not in recorded:
            raise ModelFileError(f"{folder / name} is not listed in {where}: it is not part of this export")
        if recorded[name]["sha256"] != digest:
            raise ModelFileError(
                f"{folder / name} does not match the SHA-256 that {where} recorded at export "
                f"({recorded[name]['sha256'][:12]}... vs {digest[:12]}...): it was changed or replaced since; "
                "re-export it, or verify the folder it was exported to"
            )
    return digests


def _load_models(folder: Path, names: tuple[str, ...], threads: int = 0) -> dict[str, OrtClassifier]:
    models = {}
    for name in names:
        path = folder / name
        if path.exists() or name == ONNX_MODELS[0]:
            models[name] = OrtClassifier.load(path, threads)
    return models


def finite_eps(value: Any, what: str) -> float:
    try:
        eps = float(value)
    except (TypeError, ValueError):
        eps = math.nan
    if not math.isfinite(eps) or eps <= 0:
        raise UsageError(f"{what}: epsilon must be a finite number > 0, got {value!r}")
    return eps


def _threat(
    models: dict[str, OrtClassifier], report: dict[str, Any] | None, norm: str | None, eps: float | None
) -> tuple[str, float]:
    meta_threat = as_dict(next(iter(models.values())).metadata.get("threat_model"))
    report_threat = as_dict((report or {}).get("threat"))
    norm = norm or meta_threat.get("norm") or report_threat.get("norm")
    if eps is None:  # --eps was checked by verify_export
        eps = meta_threat.get("eps", report_threat.get("eps"))
    if norm not in ("linf", "l2") or eps is None:
        raise ModelFileError(
            f"the model's metadata gives no usable threat model (norm={norm!r}, eps={eps!r}); pass --norm and --eps"
        )
    return norm, finite_eps(eps, "the threat model recorded in the model (pass --eps)")


_NO_SOURCE = "pass --checkpoint (the run directory or .pt the export came from), or --transfer none"


def source_checkpoint(folder: Path, report: dict[str, Any] | None, checkpoint: str | None) -> str:
    """The torch checkpoint to transfer from: ``checkpoint`` (the command line), else the one report.json
    records, used only while its SHA-256 is the one recorded at export (CheckpointError otherwise).

    A path read from the folder is untrusted: it is resolved against the export folder (not the working
    directory), must name a ``.pt`` file, and is hashed before torch reads it, so a report pointing at
    another model's ``best.pt`` or at ``/etc/passwd`` is refused with a message, never loaded.
    """
    if checkpoint is not None:
        if not Path(checkpoint).exists():
            raise CheckpointError(
                f"--checkpoint {checkpoint} does not exist; give the run directory or .pt the export came from"
            )
        return checkpoint
    where = folder / "report.json"
    source = as_dict((report or {}).get("source"))
    path = recorded_checkpoint(folder, source)
    recorded_sha = source.get("checkpoint_sha256")
    if path is None or not isinstance(recorded_sha, str):
        raise CheckpointError(
            f"{where} records no source checkpoint with its SHA-256 (needed for the transfer attack); {_NO_SOURCE}"
        )
    if path.suffix != ".pt" or not path.is_file():
        raise CheckpointError(
            f"the source checkpoint {path} recorded in {where} is not an existing .pt file; {_NO_SOURCE}"
        )
    if sha256_file(path) != recorded_sha:
        raise CheckpointError(
            f"the source checkpoint {path} recorded in {where} has changed since the export (its SHA-256 differs): "
            f"it is not the model that was exported; {_NO_SOURCE}"
        )
    return str(path)


@dataclass
class OpenedExport:
    """An export folder as verify found it, every part checked."""

    folder: Path
    report: dict[str, Any] | None
    digests: dict[str, str]
    """SHA-256 of each model file (checked against report.json)."""
    models: dict[str, OrtClassifier]
    """The ONNX models (fp32, int8) under onnxruntime."""
    norm: str
    eps: float
    test: TestData


def open_export(
    folder: Path, data: str | None, data_dir: str | None, n: int, norm: str | None, eps: float | None, threads: int
) -> OpenedExport:
    """The report, the checked SHA-256 of the model files, the onnxruntime models, the threat model and the data."""
    report = read_export_report(folder)
    digests = check_files(folder, report)
    models = _load_models(folder, ONNX_MODELS, threads)
    first = models[ONNX_MODELS[0]]
    norm, eps = _threat(models, report, norm, eps)
    report_data = as_dict((report or {}).get("data"))
    files_allowed = data is not None
    if data is None:  # a name read from the model or its report: a dataset name, never a path
        data = first.metadata.get("dataset") or report_data.get("name")
        if not data:
            raise DataError("no dataset given and none recorded in the model; pass --data NAME or --data FILE.npz")
        check_name(data, f"dataset recorded in {first.path} or its report.json (pass --data)")
    log.info("loading test data (%s)", data)
    # the data folder comes from --data-dir or the default search, never from the folder's files
    test = load_test_data(data, data_dir or "", n, files_allowed=files_allowed)
    for model in models.values():
        model.check_images(test.images, f"dataset {test.name!r} ({test.source})")
    if len(test.labels) == 0:
        raise DataError(f"dataset {test.name!r} has no test images")
    num_classes = int(first.predict(test.images[:1]).shape[1])
    if test.labels.min() < 0 or test.labels.max() >= num_classes:
        raise DataError(
            f"labels of {test.name!r} span [{test.labels.min()}, {test.labels.max()}] but {first.path} has {num_classes} outputs"
        )
    return OpenedExport(folder, report, digests, models, norm, eps, test)
