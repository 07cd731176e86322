"""Export a checkpoint to one folder of deployable files, checked on the way out.

``export_checkpoint`` writes ``model.onnx`` (fp32), ``model.int8.onnx`` (static int8 QDQ), ``model.ort``
and ``model.int8.ort`` (onnxruntime-mobile, fixed batch), ``report.json`` and ``MODEL_CARD.md``. The
folder is built under a temporary name and renamed into place at the end, so a failed export never
replaces an earlier good one. See ``export/README.md`` for the files and the report's fields.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from akd_edge.errors import DataError, UsageError

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

REPORT_FORMAT = "akd-edge-export/1"
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
    """The run's name from the checkpoint's recipe, else the checkpoint file's stem."""
    name = ((meta.get("recipe") or {}).get("run") or {}).get("name")
    if name:
        return str(name)
    path = Path(str(meta.get("path", "model")))
    return path.parent.name if path.stem in ("best", "last") and path.parent.name else path.stem


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
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(loaded.train), size=min(calib, len(loaded.train)), replace=False)
        calibration = loaded.train.images[np.sort(pick)]
    assert loaded.test is not None
    test = loaded.test if not n_test or n_test >= len(loaded.test) else loaded.test.subset(np.arange(n_test))
    return ExportData(calibration, test.images, test.labels, source=f"{name} ({loaded.source or directory})")


NOISY_LOGGERS = {
    "onnxscript": logging.WARNING,
    "onnx_ir": logging.WARNING,
    "torch.onnx": logging.ERROR,  # "torchvision is not installed" notices
    "onnxruntime": logging.WARNING,
}


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Raise the level of the exporter's and onnxruntime tools' chatty INFO loggers for the block."""
    saved = {}
    for name, level in NOISY_LOGGERS.items():
        logger = logging.getLogger(name)
        saved[name] = logger.level
        logger.setLevel(max(level, logger.level))
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    from akd_edge import __version__

    return {
        "akd_edge": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def onnx_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """What goes into the ONNX file's ``metadata_props``: enough to use and trust the model without akd-edge."""
    from akd_edge import __version__

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
    from akd_edge.verify.runtime import OrtClassifier

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
    from akd_edge.verify.runtime import OrtClassifier

    reference = OrtClassifier.load(onnx_path).predict(images)
    mobile = OrtClassifier.load(ort_path).predict(images)
    return {
        "n": len(images),
        "max_abs_logit_diff": float(np.abs(reference - mobile).max()),
        "argmax_agreement": float((reference.argmax(1) == mobile.argmax(1)).mean()),
    }


def _torch_accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    import torch

    from akd_edge.verify.runtime import as_float_images

    x = as_float_images(images)
    with torch.no_grad():
        pred = torch.cat([model(torch.from_numpy(x[i : i + 256])).argmax(1) for i in range(0, len(x), 256)])
    return float((pred.numpy() == labels).mean())


def _mobile(tmp: Path, names: list[str], batch: int, report: dict[str, Any], parity_images: np.ndarray) -> None:
    """Usability of each graph as exported and with a fixed batch, and the .ort files (from the fixed batch)."""
    from akd_edge.export.mobile import fix_batch, mobile_usability, to_ort

    mobile: dict[str, Any] = {"batch": batch or "dynamic", "usability": {}, "ort": {}}
    for name in names:
        src = tmp / name
        mobile["usability"][name] = mobile_usability(src)
        ort_name = name.removesuffix(".onnx") + ".ort"
        with tempfile.TemporaryDirectory() as work:
            fixed = Path(work) / name
            if batch:
                fix_batch(src, fixed, batch)
                mobile["usability"][f"{ort_name} (batch {batch})"] = mobile_usability(fixed)
            else:
                shutil.copy(src, fixed)
            settings = to_ort(fixed, tmp / ort_name)
        mobile["ort"][ort_name] = {"from": name, **settings, "parity": _ort_parity(src, tmp / ort_name, parity_images)}
    report["mobile"] = mobile


def _publish(tmp: Path, out: Path) -> None:
    """Rename the finished folder into place; an earlier export is removed only once the new one is in."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def export_checkpoint(source: str | Path, out: str | Path | None = None, **kwargs: Any) -> tuple[Path, dict[str, Any]]:
    """Export a run directory or checkpoint file into ``out`` (default ``export/<run name>``).

    Keyword arguments: see :func:`_export` (``which``, ``int8``, ``calib``, ``data_dir``, ``n_test``,
    ``mobile_batch``, ``min_int8_agreement``, ``seed``, ``data``, ``on_stage``). Returns the folder and report.
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
    data_dir: str | None = None,
    n_test: int = 0,
    mobile_batch: int = 1,
    min_int8_agreement: float = 0.98,
    seed: int = 0,
    data: ExportData | None = None,
    on_stage: StageFn | None = None,
) -> tuple[Path, dict[str, Any]]:
    """The export pipeline (see :func:`export_checkpoint`).

    ``data`` overrides the dataset lookup (tests, or images the user loaded). Without test images the
    parity check runs on random images and the int8 agreement is skipped. Returns the folder and report.
    """
    from akd_edge.export.onnx import check_onnx, check_parity, export_onnx
    from akd_edge.report import write_report
    from akd_edge.train.checkpoint import load_model

    def stage(text: str) -> None:
        log.info(text)
        if on_stage is not None:
            on_stage(text)

    if calib < 0 or n_test < 0 or mobile_batch < 0:
        raise UsageError("--calib, --n and --mobile-batch must be >= 0")
    if int8 and calib == 0:
        raise UsageError("int8 quantization needs calibration images: give --calib N > 0, or --no-int8")
    stage(f"loading {source}")
    model, meta = load_model(source, which)
    out = Path(out) if out is not None else Path("export") / run_name(meta)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder; choose another path")
    input_shape = tuple(int(v) for v in meta["arch"]["input_shape"])
    if data is None:
        try:
            data = load_export_data(meta, data_dir, calib=calib if int8 else 0, n_test=n_test, seed=seed)
        except DataError as err:
            if int8:
                raise DataError(
                    f"{err} (int8 calibration needs the training images; or export with --no-int8)"
                ) from None
            log.warning("no test data (%s): parity runs on random images, accuracy figures are skipped", err)
            data = ExportData(None, None, None)
    if data.test_images is not None:
        parity_images = data.test_images[:256]
    else:
        parity_images = np.random.default_rng(seed).random((64, *input_shape), dtype=np.float32)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        report: dict[str, Any] = {
            "format": REPORT_FORMAT,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": _versions(),
            "source": {
                "checkpoint": str(meta.get("path", source)),
                "run": run_name(meta),
                "arch": meta["arch"],
                "role": meta.get("role"),
                "epoch": meta.get("epoch"),
                "params": int(sum(p.numel() for p in model.parameters())),
                "val": meta.get("val") or {},
                "pruned": bool(meta.get("pruning")),
            },
            "data": {
                "name": (meta.get("data") or {}).get("name"),
                "data_dir": (meta.get("data") or {}).get("data_dir", "") if data_dir is None else data_dir,
                "source": data.source,
            },
            "threat": meta.get("threat") or {},
            "checks": {"onnx_checker": {}},
            "verify": None,
        }
        metadata = onnx_metadata(meta)
        report["model"] = {
            "input": {
                "name": "images",
                "shape": ["batch", *input_shape],
                "dtype": "float32",
                "range": [0.0, 1.0],
                "layout": "NCHW",
            },
            "output": {"name": "logits", "shape": ["batch", int(meta["arch"]["num_classes"])]},
            "class_names": metadata["class_names"],
            "normalization": metadata["normalization"],
        }

        stage("exporting fp32 ONNX")
        report["export"] = export_onnx(model, tmp / FILES["fp32"], input_shape, metadata)
        report["checks"]["onnx_checker"][FILES["fp32"]] = report["export"].pop("checker")
        stage("checking parity with torch")
        report["checks"]["parity"] = check_parity(model, tmp / FILES["fp32"], parity_images)
        names = [FILES["fp32"]]
        if data.test_images is not None:
            report["checks"]["torch_clean_acc"] = _torch_accuracy(model, data.test_images, data.test_labels)
        if int8:
            from akd_edge.compress.quantize import quantize_int8

            stage(f"quantizing to int8 (calibrating on {len(data.calibration)} training images)")
            report["quantization"] = quantize_int8(tmp / FILES["fp32"], tmp / FILES["int8"], data.calibration)
            report["checks"]["onnx_checker"][FILES["int8"]] = check_onnx(tmp / FILES["int8"])
            names.append(FILES["int8"])
            if data.test_images is not None:
                stage("comparing fp32 and int8 on the test split")
                report["checks"]["int8_agreement"] = _agreement(
                    tmp / FILES["fp32"], tmp / FILES["int8"], data.test_images, data.test_labels, min_int8_agreement
                )
                if not report["checks"]["int8_agreement"]["passed"]:
                    log.warning(
                        "int8 and fp32 agree on only %.2f%% of test images (threshold %.2f%%)",
                        100 * report["checks"]["int8_agreement"]["argmax_agreement"],
                        100 * min_int8_agreement,
                    )
        stage("onnxruntime-mobile: .ort files and NNAPI/CoreML coverage")
        _mobile(tmp, names, mobile_batch, report, parity_images)
        report["files"] = {
            path.name: {"bytes": path.stat().st_size, "sha256": _sha256(path)}
            for path in sorted(tmp.iterdir())
            if path.suffix in (".onnx", ".ort")
        }
        write_report(tmp, report)
        failed = [k for k, v in report["checks"]["onnx_checker"].items() if not v["passed"]]
        if failed or not report["checks"]["parity"]["passed"]:
            kept = out.with_name(f"{out.name}.failed")
            shutil.rmtree(kept, ignore_errors=True)
            os.replace(tmp, kept)
            parity = report["checks"]["parity"]
            raise ExportCheckFailed(
                f"export checks failed (checker: {', '.join(failed) or 'ok'}; parity max |diff| "
                f"{parity['max_abs_logit_diff']:.2e} vs {parity['max_abs_logit_diff_threshold']:.2e}, argmax "
                f"agreement {parity['argmax_agreement']:.4f}); the attempt is in {kept}, {out} is unchanged",
                report,
                kept,
            )
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    stage(f"wrote {out}")
    return out, report


__all__ = ["ExportCheckFailed", "ExportData", "export_checkpoint", "load_export_data", "onnx_metadata", "run_name"]
