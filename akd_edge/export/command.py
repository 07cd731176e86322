"""``akd-edge export``, one function per stage: load, fp32 ONNX, parity, int8, mobile, web page, report, publish.

:func:`export_checkpoint` runs them in order on an :class:`_Job`. The folder is built beside its final
place and renamed into it at the end (:mod:`akd_edge.export.folder`, which also names its files), so a failed
export never replaces an earlier good one, and only an earlier export is ever replaced. The images the checks
use are :mod:`~akd_edge.export.images`', what the export records of its source
:mod:`~akd_edge.export.provenance`'s, and how two runtimes of the model agree :mod:`~akd_edge.export.agreement`'s.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from akd_edge.core.callbacks import StageFn
from akd_edge.core.errors import CheckpointError, DataError, UsageError, some_names
from akd_edge.export import folder as export_folder
from akd_edge.export.agreement import int8_agreement, int8_failure_action, ort_parity, torch_accuracy
from akd_edge.export.folder import FILES
from akd_edge.export.images import ExportData, resolve_images
from akd_edge.export.provenance import onnx_metadata, report_head, run_name

if TYPE_CHECKING:
    from torch import nn

    from akd_edge.compress.quantize import Int8Settings
    from akd_edge.export.web import WebRuntime

log = logging.getLogger(__name__)


class ExportCheckFailed(RuntimeError):
    """The exported graph failed the ONNX checker or torch parity; the attempt is kept for inspection."""

    def __init__(self, message: str, report: dict[str, Any], kept: Path) -> None:
        super().__init__(message)
        self.report = report
        self.kept = kept


NOISY_LOGGERS = {
    "onnxscript": logging.WARNING,
    "onnx_ir": logging.WARNING,
    "torch.onnx": logging.ERROR,  # "torchvision is not installed" notices
    "onnxruntime": logging.WARNING,
}


NOISY_MESSAGES = {"torch.onnx._internal.exporter._registration": "torchvision is not installed"}
"""Messages dropped by a filter, not a level: torch resets the levels of its loggers when the exporter first
imports dynamo (``torch._logging``), after :func:`quiet_libraries` has set them, but keeps a child's filters."""


class _DropMessage(logging.Filter):
    """Drops the records whose message starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Raise the level of the exporter's and onnxruntime tools' chatty INFO loggers for the block, and drop
    the exporter's notices about optional packages akd-edge does not use (torchvision's detection ops)."""
    saved = {}
    for name, level in NOISY_LOGGERS.items():
        logger = logging.getLogger(name)
        saved[name] = logger.level
        logger.setLevel(max(level, logger.level))
    filters = {name: _DropMessage(prefix) for name, prefix in NOISY_MESSAGES.items()}
    for name, dropper in filters.items():
        logging.getLogger(name).addFilter(dropper)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
        for name, dropper in filters.items():
            logging.getLogger(name).removeFilter(dropper)


@dataclass
class _Job:
    """One export under way: what it reads, where it writes, and the report it fills in."""

    model: nn.Module
    meta: dict[str, Any]
    out: Path
    data: ExportData
    data_dir: str | None
    seed: int
    int8_settings: Int8Settings | None = None
    """How int8 is calibrated (None: the defaults of :class:`~akd_edge.compress.quantize.Int8Settings`)."""
    tmp: Path = Path()
    """The partial folder the files are built in (set by :func:`export_checkpoint`)."""
    report: dict[str, Any] = field(default_factory=dict)
    onnx_files: list[str] = field(default_factory=list)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self.meta["arch"]["input_shape"])

    @property
    def parity_images(self) -> np.ndarray:
        """Up to 256 test images, else 64 seeded random images in [0, 1]."""
        if self.data.test_images is not None:
            return self.data.test_images[:256]
        return np.random.default_rng(self.seed).random((64, *self.input_shape), dtype=np.float32)


def _check_options(int8: bool, calib: int, n_test: int, mobile_batch: int, min_int8_agreement: float) -> None:
    if calib < 0 or n_test < 0 or mobile_batch < 0:
        raise UsageError("--calib, --n and --mobile-batch must be >= 0")
    if int8 and calib == 0:
        raise UsageError("int8 quantization needs calibration images: give --calib N > 0, or --no-int8")
    if not 0 <= min_int8_agreement <= 1:  # also refuses NaN
        raise UsageError(f"--min-int8-agreement must be in [0, 1], got {min_int8_agreement}")


def _web_runtime(web: bool, given: str | Path | None, samples: int) -> WebRuntime | None:
    """The onnxruntime-web to copy into web/, found before any work so that a wrong --web-runtime fails at once."""
    from akd_edge.export.web import find_runtime

    if not web:
        if given is not None:
            raise UsageError("--web-runtime goes with the web/ page: drop it, or drop --no-web")
        return None
    if samples < 1:
        raise UsageError(f"the web/ page needs at least one sample image, got {samples}")
    return find_runtime(given)


def _int8_settings(given: Int8Settings | dict[str, Any] | None) -> Int8Settings:
    """The int8 settings as an Int8Settings; a bad field or value is a UsageError that names it."""
    from akd_edge.compress.quantize import Int8Settings

    if isinstance(given, Int8Settings):
        return given
    try:
        return Int8Settings(**(given or {}))
    except (TypeError, ValueError) as err:
        raise UsageError(f"int8 settings: {err}") from None


def load_source(source: str | Path, which: str, factory: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Stage 1: the model and its checkpoint; a model with NaN or infinite weights is refused up front.

    ``factory``: the trusted ``module:factory`` of a checkpoint of the user's own architecture.
    """
    import torch

    from akd_edge.models.checkpoint import load_model

    model, meta = load_model(source, which, factory=factory)
    bad = [
        name
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        raise CheckpointError(
            f"checkpoint {meta.get('path', source)} has NaN or infinite weights ({some_names(bad)}): the training "
            "diverged; export an earlier checkpoint (--which) or retrain"
        )
    return model, meta


def _export_fp32(job: _Job) -> None:
    """Stage 2b: the fp32 ONNX graph, rewritten for mobile, with metadata, through the ONNX checker."""
    from akd_edge.export.onnx import export_onnx

    path = job.tmp / FILES["fp32"]
    job.report["export"] = export_onnx(job.model, path, job.input_shape, onnx_metadata(job.meta))
    job.report["checks"]["onnx_checker"][FILES["fp32"]] = job.report["export"].pop("checker")
    job.onnx_files.append(FILES["fp32"])


def _check_parity(job: _Job) -> None:
    """Stage 3: torch vs onnxruntime logits, and torch's accuracy on the test images."""
    from akd_edge.export import onnx as export_onnx

    job.report["checks"]["parity"] = export_onnx.check_parity(job.model, job.tmp / FILES["fp32"], job.parity_images)
    if job.data.test_images is not None:
        job.report["checks"]["torch_clean_acc"] = torch_accuracy(job.model, job.data.test_images, job.data.test_labels)


def _quantize(job: _Job, min_agreement: float, stage: StageFn, keep_failed_int8: bool = False) -> None:
    """Stage 4: static int8 QDQ calibrated on training images, checked, and compared with fp32 on the test split."""
    from akd_edge.compress.quantize import quantize_int8
    from akd_edge.export.onnx import check_onnx

    fp32, int8 = job.tmp / FILES["fp32"], job.tmp / FILES["int8"]
    calibration = job.data.calibration
    if calibration is None or len(calibration) == 0:
        raise DataError("int8 quantization needs calibration images; give data with training images, or --no-int8")
    stage(f"quantizing to int8 (calibrating on {len(calibration)} training images)")
    job.report["quantization"] = quantize_int8(fp32, int8, calibration, job.int8_settings)
    job.report["checks"]["onnx_checker"][FILES["int8"]] = check_onnx(int8)
    job.onnx_files.append(FILES["int8"])
    if job.data.test_images is None:
        return
    stage("comparing fp32 and int8 on the test split")
    agreement = int8_agreement(fp32, int8, job.data.test_images, job.data.test_labels, min_agreement)
    job.report["checks"]["int8_agreement"] = agreement
    agreement["kept"] = agreement["passed"] or keep_failed_int8
    if not agreement["passed"]:
        agreement["action"] = int8_failure_action(agreement)
        log.warning("%s", agreement["action"])
    if not agreement["kept"]:
        (job.tmp / FILES["int8"]).unlink()
        job.onnx_files.remove(FILES["int8"])


def _int8_speed(job: _Job, stage: StageFn) -> None:
    """Stage 4b: fp32 and int8 timed side by side here; fp32 recommended for speed when int8 does not gain."""
    from akd_edge.export.int8_speed import compare_speed

    if FILES["int8"] not in job.onnx_files:
        return
    stage("timing fp32 and int8 side by side (batch 256 and batch 1)")
    fp32, int8 = job.tmp / FILES["fp32"], job.tmp / FILES["int8"]
    job.report["checks"]["int8_speed"] = compare_speed(fp32, int8, job.input_shape)


def _mobile(job: _Job, batch: int) -> None:
    """Stage 5: usability of each graph as exported and with a fixed batch, and the .ort files (from the fixed batch)."""
    from akd_edge.export.mobile import fix_batch, mobile_usability, to_ort

    mobile: dict[str, Any] = {"batch": batch or "dynamic", "usability": {}, "ort": {}}
    for name in job.onnx_files:
        src = job.tmp / name
        mobile["usability"][name] = mobile_usability(src)
        ort_name = name.removesuffix(".onnx") + ".ort"
        with tempfile.TemporaryDirectory() as work:
            fixed = Path(work) / name
            if batch:
                fix_batch(src, fixed, batch)
                mobile["usability"][f"{ort_name} (batch {batch})"] = mobile_usability(fixed)
            else:
                shutil.copy(src, fixed)
            settings = to_ort(fixed, job.tmp / ort_name)
        parity = ort_parity(src, job.tmp / ort_name, job.parity_images)
        mobile["ort"][ort_name] = {"from": name, **settings, "parity": parity}
    job.report["mobile"] = mobile


def _web(job: _Job, runtime: WebRuntime | None, n: int) -> None:
    """Stage 6: web/, the page that runs the ONNX files under onnxruntime-web on a few test images."""
    from akd_edge.export.web import Samples, pick_samples, write_web

    images, labels = job.data.test_images, job.data.test_labels
    if images is None:
        images, labels = job.parity_images[:n], None
    else:
        pick = pick_samples(images, labels, n)
        images, labels = images[pick], None if labels is None else labels[pick]
    samples = Samples(images, labels, job.report["model"]["class_names"], job.report["source"]["run"])
    job.report["web"] = write_web(job.tmp, job.onnx_files, samples, runtime)


def _write_report(job: _Job) -> None:
    """Stage 7: size and SHA-256 of every model file (verify checks them), report.json and MODEL_CARD.md."""
    from akd_edge.export.card import file_record, write_report

    job.report["files"] = {
        path.name: file_record(path) for path in sorted(job.tmp.iterdir()) if path.suffix in (".onnx", ".ort")
    }
    write_report(job.tmp, job.report)


def _publish(job: _Job) -> None:
    """Stage 8: into place if the checker and parity passed; else kept in ``<name>.failed`` and ExportCheckFailed."""
    checks = job.report["checks"]
    failed = [name for name, result in checks["onnx_checker"].items() if not result["passed"]]
    if not failed and checks["parity"]["passed"]:
        export_folder.publish(job.tmp, job.out)
        return
    kept = export_folder.keep_failed(job.tmp, job.out)
    parity = checks["parity"]
    raise ExportCheckFailed(
        f"export checks failed (checker: {', '.join(failed) or 'ok'}; parity max |diff| "
        f"{parity['max_abs_logit_diff']:.2e} vs {parity['max_abs_logit_diff_threshold']:.2e}, argmax "
        f"agreement {parity['argmax_agreement']:.4f}); the attempt is in {kept}, {job.out} is unchanged",
        job.report,
        kept,
    )


def export_checkpoint(source: str | Path, out: str | Path | None = None, **kwargs: Any) -> tuple[Path, dict[str, Any]]:
    """Export a run directory or checkpoint file into ``out`` (default ``export/<run name>``).

    Keyword arguments: see :func:`_export` (``which``, ``int8``, ``calib``, ``int8_settings``: an
    :class:`~akd_edge.compress.quantize.Int8Settings` or a dict of its fields, ``data_dir``, ``n_test``,
    ``mobile_batch``, ``min_int8_agreement``, ``keep_failed_int8``, ``seed``, ``data``, ``on_stage``, ``factory``: the trusted
    ``module:factory`` of a checkpoint of your own architecture, ``web``, ``web_runtime``: the
    onnxruntime-web package the web/ page gets, ``web_samples``). Returns the folder and report.
    ``out`` must be missing, empty or an earlier export (UsageError otherwise; nothing is deleted).
    """
    with quiet_libraries():
        return _export(source, out, **kwargs)


def _export(
    source: str | Path,
    out: str | Path | None = None,
    *,
    which: str = "best",
    int8: bool = True,
    calib: int = 512,
    int8_settings: Int8Settings | dict[str, Any] | None = None,
    data_dir: str | None = None,
    n_test: int = 0,
    mobile_batch: int = 1,
    min_int8_agreement: float = 0.995,
    keep_failed_int8: bool = False,
    seed: int = 0,
    data: ExportData | None = None,
    on_stage: StageFn | None = None,
    factory: str | None = None,
    web: bool = True,
    web_runtime: str | Path | None = None,
    web_samples: int = 10,
) -> tuple[Path, dict[str, Any]]:
    """The stages in order (see :func:`export_checkpoint`).

    ``data`` overrides the dataset lookup (tests, or images the user loaded). Without test images the
    parity check runs on random images and the int8 agreement is skipped. An int8 model that agrees with
    fp32 on fewer than ``min_int8_agreement`` of the test images is not written (the report says why) unless
    ``keep_failed_int8``. ``web``: write web/, the
    onnxruntime-web page, classifying ``web_samples`` test images; its onnxruntime-web files are copied
    from ``web_runtime`` (else ``$AKD_EDGE_WEB_RUNTIME``, else ``./node_modules/onnxruntime-web``, else
    none: web/README.md says how to add them).
    """

    def stage(text: str) -> None:
        log.info(text)
        if on_stage is not None:
            on_stage(text)

    _check_options(int8, calib, n_test, mobile_batch, min_int8_agreement)
    settings = _int8_settings(int8_settings)
    runtime = _web_runtime(web, web_runtime, web_samples)
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:  # a bad --out fails before the model is even loaded
        export_folder.prepare_out(out_dir)
    stage(f"loading {source}")
    model, meta = load_source(source, which, factory)
    if out_dir is None:
        out_dir = Path("export") / run_name(meta)
        export_folder.prepare_out(out_dir)
    data = resolve_images(meta, data, data_dir, int8, calib, n_test, seed)
    job = _Job(model, meta, out_dir, data, data_dir, seed, settings)
    params = int(sum(p.numel() for p in model.parameters()))
    job.report = report_head(meta, source, out_dir, params=params, data_dir=data_dir, data_source=data.source)
    with export_folder.building(out_dir) as tmp:
        job.tmp = tmp
        stage("exporting fp32 ONNX")
        _export_fp32(job)
        stage("checking parity with torch")
        _check_parity(job)
        if int8:
            _quantize(job, min_int8_agreement, stage, keep_failed_int8)
            _int8_speed(job, stage)
        stage("onnxruntime-mobile: .ort files and NNAPI/CoreML coverage")
        _mobile(job, mobile_batch)
        if web:
            stage("web/: the onnxruntime-web page and its sample images")
            _web(job, runtime, web_samples)
        _write_report(job)
        _publish(job)
    stage(f"wrote {out_dir}")
    return out_dir, job.report
