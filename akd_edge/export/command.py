"""``akd-edge export``, one function per stage: load, fp32 ONNX, parity, int8, mobile, web page, report, publish.

:func:`export_checkpoint` runs them in order on an :class:`_Job`. The folder is built beside its final
place and renamed into it at the end (:mod:`akd_edge.export.folder`), so a failed export never replaces
an earlier good one, and only an earlier export is ever replaced.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from akd_edge.core.errors import CheckpointError, DataError, UsageError
from akd_edge.core.files import check_name
from akd_edge.export import folder as export_folder
from akd_edge.export.card import REPORT_FORMAT

if TYPE_CHECKING:
    from torch import nn

    from akd_edge.compress.quantize import Int8Settings
    from akd_edge.export.web import WebRuntime

log = logging.getLogger(__name__)

FILES = {
    "fp32": "model.onnx",
    "int8": "model.int8.onnx",
    "ort": "model.ort",
    "int8_ort": "model.int8.ort",
    "report": "report.json",
    "card": "MODEL_CARD.md",
}
StageFn = Callable[[str], None]


class ExportCheckFailed(RuntimeError):
    """The exported graph failed the ONNX checker or torch parity; the attempt is kept for inspection."""

    def __init__(self, message: str, report: dict[str, Any], kept: Path) -> None:
        super().__init__(message)
        self.report = report
        self.kept = kept


@dataclass
class ExportData:
    """Images the export checks need: training images to calibrate int8, test images to compare on."""

    calibration: np.ndarray | None
    """uint8 or float [N, C, H, W] from the training split, or None (no int8)."""
    test_images: np.ndarray | None
    test_labels: np.ndarray | None
    source: str = ""


def run_name(meta: dict[str, Any]) -> str:
    """The run's name from the checkpoint's recipe, else the checkpoint file's stem; always a plain name.

    It names the default folder ``export/<name>``, so a name from the file such as ``../x`` or ``/home``
    is refused (UsageError) rather than joined to a path.
    """
    recipe = meta.get("recipe")
    run = recipe.get("run") if isinstance(recipe, dict) else None
    name = run.get("name") if isinstance(run, dict) else None
    if name is not None and name != "":
        return check_name(name, f"run.name in checkpoint {meta.get('path', '')}".rstrip())
    path = Path(str(meta.get("path", "model")))
    stem = path.parent.name if path.stem in ("best", "last") and path.parent.name else path.stem
    return check_name(stem, f"export name taken from {path} (give --out)")


def calibration_sample(images: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` of ``images`` (all when fewer), drawn without replacement by ``seed``, in their original order."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(images), size=min(n, len(images)), replace=False)
    return images[np.sort(pick)]


def load_export_data(meta: dict[str, Any], data_dir: str | None, *, calib: int, n_test: int, seed: int) -> ExportData:
    """Calibration images (a seeded sample of the training split) and the test split of the checkpoint's dataset."""
    from akd_edge.data import get_loader

    data = meta.get("data") or {}
    name = data.get("name")
    if not name:
        raise DataError(f"checkpoint {meta.get('path')} does not record its dataset (meta['data']['name'])")
    directory = data.get("data_dir", "") if data_dir is None else data_dir
    parts = ("train", "test") if calib else ("test",)
    loaded = get_loader(name)(directory, parts=parts, download=False)
    calibration = None
    if calib:
        assert loaded.train is not None
        calibration = calibration_sample(loaded.train.images, calib, seed)
    assert loaded.test is not None
    test = loaded.test if not n_test or n_test >= len(loaded.test) else loaded.test.subset(np.arange(n_test))
    return ExportData(calibration, test.images, test.labels, source=f"{name} ({loaded.source or directory})")


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


def onnx_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """What goes into the ONNX file's ``metadata_props``: enough to use and trust the model without akd-edge."""
    from akd_edge.core.version import __version__

    arch, data, threat = meta["arch"], meta.get("data") or {}, meta.get("threat") or {}
    val = meta.get("val") or {}
    attack = (((meta.get("recipe") or {}).get("eval") or {}).get("attack")) or {}
    how = (
        f"torch validation split, {attack.get('name', 'pgd')}-{attack.get('steps', '?')}"
        if attack
        else "torch validation split"
    )
    return {
        "akd_edge_version": __version__,
        "architecture": arch["name"],
        "dataset": data.get("name", ""),
        "class_names": list(data.get("class_names") or [str(i) for i in range(arch["num_classes"])]),
        "input_shape": [int(v) for v in arch["input_shape"]],
        "input_layout": "NCHW float32, batch dimension dynamic",
        "input_range": [0.0, 1.0],
        "normalization": {"mean": arch.get("mean"), "std": arch.get("std"), "inside_graph": True},
        "output": "logits (apply softmax for probabilities)",
        "threat_model": {"norm": threat.get("norm"), "eps": threat.get("eps")},
        "robust_accuracy": val.get("robust_acc"),
        "clean_accuracy": val.get("clean_acc"),
        "accuracy_measured_on": how,
        "precision": "fp32",
    }


def _agreement(
    fp32_path: Path, int8_path: Path, images: np.ndarray, labels: np.ndarray, threshold: float
) -> dict[str, Any]:
    from akd_edge.core.ort import OrtClassifier

    fp32 = OrtClassifier.load(fp32_path).predict(images)
    int8 = OrtClassifier.load(int8_path).predict(images)
    agree = float((fp32.argmax(1) == int8.argmax(1)).mean())
    return {
        "n": len(images),
        "split": "test",
        "argmax_agreement": agree,
        "threshold": threshold,
        "passed": bool(agree >= threshold),
        "fp32_clean_acc": float((fp32.argmax(1) == labels).mean()),
        "int8_clean_acc": float((int8.argmax(1) == labels).mean()),
        "max_abs_logit_diff": float(np.abs(fp32 - int8).max()),
    }


def _ort_parity(onnx_path: Path, ort_path: Path, images: np.ndarray) -> dict[str, Any]:
    from akd_edge.core.ort import OrtClassifier

    reference = OrtClassifier.load(onnx_path).predict(images)
    mobile = OrtClassifier.load(ort_path).predict(images)
    return {
        "n": len(images),
        "max_abs_logit_diff": float(np.abs(reference - mobile).max()),
        "argmax_agreement": float((reference.argmax(1) == mobile.argmax(1)).mean()),
    }


def _torch_accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    import torch

    from akd_edge.core.ort import as_float_images

    x = as_float_images(images)
    with torch.no_grad():
        pred = torch.cat([model(torch.from_numpy(x[i : i + 256])).argmax(1) for i in range(0, len(x), 256)])
    return float((pred.numpy() == labels).mean())


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
        listed = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise CheckpointError(
            f"checkpoint {meta.get('path', source)} has NaN or infinite weights ({listed}): the training diverged; "
            "export an earlier checkpoint (--which) or retrain"
        )
    return model, meta


def _resolve_data(
    meta: dict[str, Any], data: ExportData | None, data_dir: str | None, int8: bool, calib: int, n_test: int, seed: int
) -> ExportData:
    """Stage 1b: calibration and test images (given, or from the checkpoint's dataset)."""
    if data is not None:
        return data
    try:
        return load_export_data(meta, data_dir, calib=calib if int8 else 0, n_test=n_test, seed=seed)
    except DataError as err:
        if int8:
            raise DataError(f"{err} (int8 calibration needs the training images; or export with --no-int8)") from None
        log.warning("no test data (%s): parity runs on random images, accuracy figures are skipped", err)
        return ExportData(None, None, None)


def _start_report(job: _Job, source: str | Path) -> None:
    """Stage 2a: what the export is of (source, data, threat model, input/output contract)."""
    from akd_edge.core.env import package_versions
    from akd_edge.export.card import checkpoint_record

    meta = job.meta
    metadata = onnx_metadata(meta)
    job.report = {
        "format": REPORT_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": package_versions(),
        "source": {
            **checkpoint_record(meta.get("path", source), job.out),
            "run": run_name(meta),
            "arch": meta["arch"],
            "role": meta.get("role"),
            "epoch": meta.get("epoch"),
            "params": int(sum(p.numel() for p in job.model.parameters())),
            "val": meta.get("val") or {},
            "pruned": bool(meta.get("pruning")),
            "teachers": meta.get("teachers") or [],
        },
        "data": {
            "name": (meta.get("data") or {}).get("name"),
            "data_dir": (meta.get("data") or {}).get("data_dir", "") if job.data_dir is None else job.data_dir,
            "source": job.data.source,
        },
        "threat": meta.get("threat") or {},
        "checks": {"onnx_checker": {}},
        "verify": None,
        "model": {
            "input": {
                "name": "images",
                "shape": ["batch", *job.input_shape],
                "dtype": "float32",
                "range": [0.0, 1.0],
                "layout": "NCHW",
            },
            "output": {"name": "logits", "shape": ["batch", int(meta["arch"]["num_classes"])]},
            "class_names": metadata["class_names"],
            "normalization": metadata["normalization"],
        },
    }


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
        job.report["checks"]["torch_clean_acc"] = _torch_accuracy(job.model, job.data.test_images, job.data.test_labels)


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
    agreement = _agreement(fp32, int8, job.data.test_images, job.data.test_labels, min_agreement)
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


def int8_failure_action(agreement: dict[str, Any]) -> str:
    """What a failed fp32-vs-int8 agreement did to the export, in one sentence (report.json, the card, the CLI)."""
    found = (
        f"int8 and fp32 agree on {100 * agreement['argmax_agreement']:.2f}% of {agreement['n']} test images, below "
        f"--min-int8-agreement {100 * agreement['threshold']:.2f}%"
    )
    if agreement["kept"]:
        return f"{found}; the int8 files were kept as --keep-failed-int8 asked"
    return (
        f"{found}: the int8 files were not written, the fp32 model is the export (--keep-failed-int8 keeps int8 "
        "anyway; --no-bias-correction, --calib or --float-layers may raise the agreement)"
    )


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
        parity = _ort_parity(src, job.tmp / ort_name, job.parity_images)
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
    data = _resolve_data(meta, data, data_dir, int8, calib, n_test, seed)
    job = _Job(model, meta, out_dir, data, data_dir, seed, settings)
    _start_report(job, source)
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
