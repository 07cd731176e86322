"""``verify_export``: re-measure an export folder's models under onnxruntime and record it in its report.

Per model (fp32 and int8): clean accuracy; accuracy on AutoAttack examples made on the torch model and
transferred; accuracy under the official query-only Square attack (pyautoattack, through
``akd_edge.attacks.autoattack.run_square``) run against the onnxruntime session itself; and the
per-sample worst case of the three, which is *the* robust accuracy. Square beating the transferred
white-box examples by more than a small margin is flagged (gradient masking, common after int8). Each
accuracy is recorded with its 95% Wilson interval (``clean_ci95``, ``transfer_ci95``, ``square_ci95``,
``robust_ci95``), on :data:`~akd_edge.core.interval.REPORTED_N` test images by default.

The models always run under onnxruntime. Torch runs the attacks: Square's bookkeeping (it only reads the
session's outputs), the transfer examples and the torch eager timings. The source checkpoint comes from
``--checkpoint``, or from report.json only while its SHA-256 is the one recorded at export; without one
verify stops and says so (``--transfer none`` verifies without the transfer part). The test data's folder
comes from ``--data-dir`` or the default search, never from the folder's files. Without torch only
``--square-queries 0 --transfer none`` (clean accuracy and latency) can run.

The worst-case example of every image goes into ``replay.npz`` (:mod:`akd_edge.verify.replay`), hashed in
report.json's ``files`` and listed in the export's manifest; :func:`replay_export` (``verify --replay``)
replays it on the other onnxruntime providers and optimisation levels of the machine.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import platform
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from akd_edge.core.errors import CheckpointError, DataError, UsageError
from akd_edge.core.files import FolderLock, check_name, ensure_writable_dir, sha256_file
from akd_edge.core.interval import REPORTED_N, interval_of, wilson_interval
from akd_edge.core.ort import ModelFileError, OrtClassifier, as_float_images, file_size, ort_latency, tolerances
from akd_edge.export.card import REPLAY_NAME, REPORT_FORMAT, file_record, read_report, recorded_checkpoint, write_report
from akd_edge.export.folder import ONNX_MODELS
from akd_edge.verify import replay as replays

log = logging.getLogger(__name__)

MOBILE_FILES = ("model.ort", "model.int8.ort")
NPZ_HELP = "expected an .npz with arrays 'images' [N, C, H, W] (uint8, or float in [0, 1]) and 'labels' [N]"
TRANSFER_VERSIONS = ("fast", "standard", "none")
SQUARE_BATCH = 256
"""Images per Square batch and per onnxruntime call: the attack's working memory depends on it, not on --n."""
StageFn = Callable[[str], None]
ProgressFn = Callable[[str, int, int], None]
"""``on_progress(task, done, total)``: ``task`` names the attack and model (``Square model.onnx``)."""


@dataclass
class TestData:
    """The labelled images verification runs on, and where they came from."""

    images: np.ndarray
    labels: np.ndarray
    name: str
    source: str


def _check_images(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Shapes, dtypes and values of labelled images from a file: NaN or out-of-range pixels would fake robustness."""
    if images.ndim != 4 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{path}: expected images [N, C, H, W] and labels [N], got {images.shape} and {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: labels must be integers, got {labels.dtype}")
    if images.dtype == np.uint8:
        return
    if not np.issubdtype(images.dtype, np.floating):
        raise DataError(f"{path}: images must be uint8 (0-255) or float in [0, 1], got {images.dtype}")
    bad = int((~np.isfinite(images)).reshape(len(images), -1).any(1).sum())
    if bad:
        raise DataError(f"{path}: {bad} image(s) hold NaN or infinite values; images must be finite, in [0, 1]")
    if len(images) and (images.min() < 0 or images.max() > 1):
        raise DataError(f"{path}: float images must be in [0, 1], got [{images.min():.3g}, {images.max():.3g}]")


def load_npz(path: Path, n: int = 0) -> TestData:
    """Images ``[N, C, H, W]`` (uint8, or float in [0, 1]) and ``labels`` from an ``.npz`` file, checked."""
    if not path.is_file():
        raise DataError(f"data file {path} does not exist; {NPZ_HELP}")
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path} is not an .npz archive (numpy.savez writes a zip of .npy arrays); {NPZ_HELP}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            images, labels = archive["images"], archive["labels"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise DataError(f"cannot read {path} ({err}); {NPZ_HELP}") from None
    if n:
        images, labels = images[:n], labels[:n]
    _check_images(path, images, labels)
    return TestData(images, labels.astype(np.int64), name=path.name, source=str(path))


def load_test_data(data: str, data_dir: str, n: int, *, files_allowed: bool = True) -> TestData:
    """A dataset name (its test split, through akd_edge.data) or, when ``files_allowed``, an ``.npz`` file.

    A dataset name read from the model or its report gets ``files_allowed=False``: it is a name, never a path.
    """
    if files_allowed and (data.endswith(".npz") or Path(data).is_file()):
        return load_npz(Path(data), n)
    from akd_edge.data import load_test_split

    test, meta = load_test_split(data, data_dir, n)
    return TestData(test.images, test.labels, name=data, source=data_dir or "default location")


def _dict(value: Any) -> dict[str, Any]:
    """A section of a report or of a model's metadata, or {} when it is missing or not an object."""
    return value if isinstance(value, dict) else {}


def _read_report(folder: Path) -> dict[str, Any] | None:
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
    present = [name for name in (*ONNX_MODELS, *MOBILE_FILES) if (folder / name).is_file()]
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


def _finite_eps(value: Any, what: str) -> float:
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
    meta_threat = _dict(next(iter(models.values())).metadata.get("threat_model"))
    report_threat = _dict((report or {}).get("threat"))
    norm = norm or meta_threat.get("norm") or report_threat.get("norm")
    if eps is None:  # --eps was checked by verify_export
        eps = meta_threat.get("eps", report_threat.get("eps"))
    if norm not in ("linf", "l2") or eps is None:
        raise ModelFileError(
            f"the model's metadata gives no usable threat model (norm={norm!r}, eps={eps!r}); pass --norm and --eps"
        )
    return norm, _finite_eps(eps, "the threat model recorded in the model (pass --eps)")


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
    source = _dict((report or {}).get("source"))
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


def _transfer(
    checkpoint: str,
    data: TestData,
    *,
    norm: str,
    eps: float,
    version: str,
    seed: int,
    threads: int,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray | None, dict[str, Any], Any]:
    """The transferred examples (None when skipped), the settings, and the torch model (or None)."""
    if version == "none":
        return None, {"skipped": "--transfer none"}, None
    try:
        from akd_edge.verify import transfer
    except ImportError as err:
        return None, {"skipped": f"torch is not available ({err})"}, None
    model, _ = transfer.load_torch_model(checkpoint)
    x_adv, info = transfer.transfer_examples(
        model,
        data.images,
        data.labels,
        norm=norm,
        eps=eps,
        version=version,
        seed=seed,
        threads=threads,
        progress=progress,
    )
    info["checkpoint"] = str(checkpoint)
    info["torch_robust_ci95"] = interval_of(info.get("torch_robust_acc"), len(data.labels))
    return x_adv, info, model


def models_latency(
    folder: Path,
    models: dict[str, OrtClassifier],
    torch_model: Any,
    input_shape: tuple[int, ...],
    repeats: int,
    threads: int = 0,
) -> tuple[dict[str, Any], list[str]]:
    """Latency/throughput/size of torch eager (if given), each ONNX session and the folder's .ort files."""
    results: dict[str, Any] = {}
    if torch_model is not None:
        from akd_edge.verify.transfer import torch_latency

        results["torch eager (fp32)"] = torch_latency(torch_model, input_shape, threads, repeats=repeats)
    for name, model in models.items():
        results[name] = {**ort_latency(model, input_shape, repeats=repeats), "bytes": file_size(model.path)}
    for name in ("model.ort", "model.int8.ort"):
        if (folder / name).is_file():
            mobile = OrtClassifier.load(folder / name, threads)
            results[name] = {**ort_latency(mobile, input_shape, repeats=repeats), "bytes": file_size(folder / name)}
    notes = []
    fp32, int8 = results.get("model.onnx"), results.get("model.int8.onnx")
    if fp32 and int8:
        ratio = int8["batch1_p50_ms"] / max(fp32["batch1_p50_ms"], 1e-9)
        if ratio > 1.0:
            notes.append(
                f"int8 is {ratio:.2f}x slower than fp32 at batch 1 on this machine: for a model this small the "
                "quantize/dequantize overhead outweighs the integer arithmetic; it is smaller on disk."
            )
        else:
            notes.append(f"int8 runs at {ratio:.2f}x the fp32 batch-1 latency on this machine.")
    return results, notes


def verify_export(
    folder: str | Path,
    *,
    data: str | None = None,
    data_dir: str | None = None,
    n: int = REPORTED_N,
    seed: int = 0,
    square_queries: int = 1000,
    p_init: float = 0.8,
    transfer: str = "fast",
    checkpoint: str | None = None,
    norm: str | None = None,
    eps: float | None = None,
    margin: float = 0.02,
    latency: bool = True,
    latency_repeats: int = 100,
    threads: int = 0,
    write: bool = True,
    on_stage: StageFn | None = None,
    on_progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Verify the models of an export folder; returns the ``verify`` section (also written to report.json).

    ``n`` test images (the first; a smaller split is used whole) are attacked; every accuracy comes with
    its 95% Wilson interval.
    """

    def stage(text: str) -> None:
        log.info(text)
        if on_stage is not None:
            on_stage(text)

    if transfer not in TRANSFER_VERSIONS:
        raise DataError(f"--transfer {transfer!r}: use one of {', '.join(TRANSFER_VERSIONS)}")
    if n < 0 or square_queries < 0:
        raise DataError("--n and --square-queries must be >= 0")
    if eps is not None:
        _finite_eps(eps, "--eps")
    if not math.isfinite(margin):
        raise UsageError(f"--margin must be a finite number, got {margin}")
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFileError(f"{folder} is not a folder; give the folder `akd-edge export` wrote (with model.onnx)")
    if write:  # a read-only folder fails now, in one line, not after the attacks
        ensure_writable_dir(folder, "verify writes report.json into the export folder")
    # writing the report back: hold the folder's lock, so an export replacing this folder cannot interleave
    with FolderLock(folder, "export folder") if write else contextlib.nullcontext():
        options = {
            "data": data,
            "data_dir": data_dir,
            "n": n,
            "seed": seed,
            "square_queries": square_queries,
            "p_init": p_init,
            "transfer": transfer,
            "checkpoint": checkpoint,
            "norm": norm,
            "eps": eps,
            "margin": margin,
            "latency": latency,
            "latency_repeats": latency_repeats,
            "threads": threads,
            "write": write,
        }
        return _verify(folder, options, stage, on_progress)


def _open_export(
    folder: Path, data: str | None, data_dir: str | None, n: int, norm: str | None, eps: float | None, threads: int
) -> tuple[dict[str, Any] | None, dict[str, str], dict[str, OrtClassifier], str, float, TestData]:
    """The report, the checked SHA-256 of the model files, the onnxruntime models, the threat model and the data."""
    report = _read_report(folder)
    digests = check_files(folder, report)
    models = _load_models(folder, ONNX_MODELS, threads)
    first = models[ONNX_MODELS[0]]
    norm, eps = _threat(models, report, norm, eps)
    report_data = _dict((report or {}).get("data"))
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
    return report, digests, models, norm, eps, test


def _square_runner(square_queries: int) -> Callable[..., Any] | None:
    """``run_square`` (None for ``--square-queries 0``); a one-line error, before any work, when torch is missing."""
    if square_queries == 0:
        return None
    try:
        from akd_edge.attacks.autoattack import run_square
    except ImportError as err:
        raise UsageError(
            f"the Square attack needs torch and pyautoattack ({err}); install akd-edge's dependencies, or pass "
            "--square-queries 0 --transfer none to measure clean accuracy and latency with onnxruntime alone"
        ) from None
    return run_square


def _ci(name: str, correct: np.ndarray) -> dict[str, list[float | None]]:
    """``{name}_ci95``: the 95% Wilson interval of the accuracy of per-sample ``correct`` flags."""
    return {f"{name}_ci95": wilson_interval(int(np.count_nonzero(correct)), int(np.size(correct)))}


def _progress_of(on_progress: ProgressFn | None, name: str) -> Callable[[int, int], None] | None:
    if on_progress is None:
        return None
    return lambda done, total: on_progress(name, done, total)


def _gradient_masking(name: str, entry: dict[str, Any], margin: float) -> str | None:
    """The warning when Square beats the transferred white-box examples by more than ``margin``, else None."""
    if entry["transfer_acc"] is None or entry["square_acc"] is None:
        return None
    if entry["square_acc"] >= entry["transfer_acc"] - margin:
        return None
    gap = 100 * (entry["transfer_acc"] - entry["square_acc"])
    return (
        f"{name}: the query-only Square attack beats the transferred white-box examples by {gap:.1f} points "
        f"(Square {100 * entry['square_acc']:.1f}% vs transfer {100 * entry['transfer_acc']:.1f}%): a sign of "
        "gradient masking, or of a model that differs from the torch one (common after int8); trust the worst case"
    )


def _entry(clean: np.ndarray, square: np.ndarray | None, transfer: np.ndarray | None) -> dict[str, Any]:
    """A model's accuracies with their intervals; robust is the per-sample worst case of the attacks that ran."""
    entry: dict[str, Any] = {"clean_acc": float(clean.mean()), **_ci("clean", clean)}
    worst = clean.copy()
    for key, flags in (("square", square), ("transfer", transfer)):
        if flags is None:
            entry |= {f"{key}_acc": None, f"{key}_ci95": [None, None]}
        else:
            entry |= {f"{key}_acc": float(flags.mean()), **_ci(key, flags)}
            worst &= flags
    attacked = square is not None or transfer is not None
    # no attack ran: there is no robust accuracy to report (clean accuracy is not one)
    entry["robust_acc"] = float(worst.mean()) if attacked else None
    entry["robust_n"] = int(worst.sum()) if attacked else None
    entry["robust_ci95"] = _ci("robust", worst)["robust_ci95"] if attacked else [None, None]
    return entry


@dataclass
class _Attacks:
    """What the attacks on one export produced: Square's examples per model, the transferred ones, settings."""

    square: dict[str, np.ndarray]
    transfer: np.ndarray | None
    square_info: dict[str, Any]
    transfer_info: dict[str, Any]
    torch_model: Any

    def examples(self, name: str) -> list[np.ndarray]:
        """The attack examples made against model ``name`` (transferred first), for the replay file."""
        found = [] if self.transfer is None else [self.transfer]
        return found + ([self.square[name]] if name in self.square else [])


def _square_all(
    square: Callable[..., Any] | None,
    models: dict[str, OrtClassifier],
    test: TestData,
    settings: dict[str, Any],
    stage: StageFn,
    on_progress: ProgressFn | None,
    timings: dict[str, float],
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Square on each onnxruntime session: the adversarial images per model, and the attack's settings."""
    if square is None:
        return {}, {"skipped": "--square-queries 0"}
    import torch

    x, y = torch.from_numpy(as_float_images(test.images)), torch.from_numpy(test.labels)
    examples, info = {}, {}
    for name, model in models.items():
        stage(f"Square attack ({settings['n_queries']} queries) on {name}")
        start = time.perf_counter()
        attack = square(
            model.torch_predict(SQUARE_BATCH),
            x,
            y,
            **settings,
            batch_size=SQUARE_BATCH,
            progress=_progress_of(on_progress, f"Square {name}"),
        )
        timings[f"square_{name}_s"] = time.perf_counter() - start
        info = {k: v for k, v in attack.settings.items() if k != "n_samples"}
        examples[name] = attack.x_adv.cpu().numpy()
    return examples, info


def _attack(
    models: dict[str, OrtClassifier],
    test: TestData,
    options: dict[str, Any],
    stage: StageFn,
    on_progress: ProgressFn | None,
    timings: dict[str, float],
) -> _Attacks:
    """The transfer examples (AutoAttack on the torch model) and Square on each session."""
    square = _square_runner(options["square_queries"])
    transfer = options["transfer"]
    start = time.perf_counter()
    if transfer != "none":
        stage(f"transfer: AutoAttack ({transfer}) on the torch model")
    x_transfer, transfer_info, torch_model = _transfer(
        options["source"],
        test,
        norm=options["norm"],
        eps=options["eps"],
        version=transfer,
        seed=options["seed"],
        threads=options["threads"],
        progress=_progress_of(on_progress, f"transfer (AutoAttack {transfer})"),
    )
    timings["transfer_s"] = time.perf_counter() - start
    settings = {
        "eps": options["eps"],
        "norm": options["norm"],
        "n_queries": options["square_queries"],
        "p_init": options["p_init"],
        "seed": options["seed"],
    }
    square_examples, square_info = _square_all(square, models, test, settings, stage, on_progress, timings)
    return _Attacks(square_examples, x_transfer, square_info, transfer_info, torch_model)


def _score_models(
    models: dict[str, OrtClassifier],
    test: TestData,
    clean: dict[str, np.ndarray],
    attacks: _Attacks,
    margin: float,
) -> tuple[dict[str, Any], list[str]]:
    """Each model's accuracies on its attack examples (scored under onnxruntime), and the warnings they raise."""
    results: dict[str, Any] = {}
    warnings: list[str] = []
    for name, model in models.items():
        square = model.correct(attacks.square[name], test.labels, SQUARE_BATCH) if name in attacks.square else None
        transfer = None if attacks.transfer is None else model.correct(attacks.transfer, test.labels)
        results[name] = _entry(clean[name], square, transfer)
        warnings += filter(None, [_gradient_masking(name, results[name], margin)])
    if "model.int8.onnx" in results and results["model.onnx"]["robust_acc"] is not None:
        drop = results["model.onnx"]["robust_acc"] - results["model.int8.onnx"]["robust_acc"]
        if drop > margin:
            warnings.append(f"int8 loses {100 * drop:.1f} points of robust accuracy against fp32")
    for warning in warnings:
        log.warning(warning)
    return results, warnings


def _verify(folder: Path, options: dict[str, Any], stage: StageFn, on_progress: ProgressFn | None) -> dict[str, Any]:
    """The body of :func:`verify_export`, run under the folder's lock when it writes."""
    _square_runner(options["square_queries"])  # a missing torch is one line before any work
    stage("checking the export and loading test data")
    report, digests, models, norm, eps, test = _open_export(
        folder, options["data"], options["data_dir"], options["n"], options["norm"], options["eps"], options["threads"]
    )
    source = source_checkpoint(folder, report, options["checkpoint"]) if options["transfer"] != "none" else ""
    options = {**options, "norm": norm, "eps": eps, "source": source}
    timings: dict[str, float] = {}
    start = time.perf_counter()
    stage("clean accuracy under onnxruntime")
    clean = {name: m.correct(test.images, test.labels) for name, m in models.items()}
    timings["clean_s"] = time.perf_counter() - start
    attacks = _attack(models, test, options, stage, on_progress, timings)
    results, warnings = _score_models(models, test, clean, attacks, options["margin"])
    verify: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "n": len(test.labels),
        "interval": "ci95: 95% Wilson score interval of each accuracy",
        "data": {"name": test.name, "source": test.source},
        "settings": {
            "norm": norm,
            "eps": eps,
            "seed": options["seed"],
            "margin": options["margin"],
            "threads": options["threads"] or "default",
            "square": attacks.square_info,
            "transfer": attacks.transfer_info,
        },
        "models": results,
        "files": {name: {"sha256": digest} for name, digest in digests.items()},
        "warnings": warnings,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
    }
    if options["latency"]:
        stage("latency and throughput")
        input_shape = tuple(int(v) for v in test.images.shape[1:])
        verify["latency"], verify["latency_notes"] = models_latency(
            folder, models, attacks.torch_model, input_shape, options["latency_repeats"]
        )
    if options["write"]:
        stage(f"keeping the worst-case examples ({REPLAY_NAME})")
        replay = replays.build_replay(models, test.images, test.labels, {n: attacks.examples(n) for n in models})
        _write_verify(folder, report, verify, replay)
    return verify


def _replay_section(replay: replays.Replay, reference: str) -> dict[str, Any]:
    """``verify.replay`` of report.json: the evidence file, its tolerances, and the ``reference`` runtime (the
    one verify attacked) with the scores of the file's own logits."""
    scores = {
        name: replays.score(replay, i, replay.clean_logits[i], replay.example_logits[i])
        for i, name in enumerate(replay.models)
    }
    return {
        "file": REPLAY_NAME,
        "n": len(replay.labels),
        "models": replay.models,
        "attacked": replay.attacked,
        "tolerances": tolerances(),
        "reference": reference,
        "runtimes": {reference: scores},
    }


def _runtime_label(runtime: replays.Runtime) -> str:
    import onnxruntime as ort

    return f"onnxruntime {ort.__version__} {runtime.label}"


def _write_verify(folder: Path, report: dict[str, Any] | None, verify: dict[str, Any], replay: replays.Replay) -> None:
    """Write replay.npz, hash it in report.json beside the models, list it in the export's manifest, write the report."""
    from akd_edge.export.folder import list_in_manifest

    list_in_manifest(folder, REPLAY_NAME)  # first: a verify killed after writing it leaves no foreign file
    path = replays.write_replay(folder, replay)
    verify["replay"] = _replay_section(replay, _runtime_label(replays.REFERENCE) + " (verify)")
    report = report or {"format": REPORT_FORMAT}
    report["files"] = {**(report.get("files") or {}), REPLAY_NAME: file_record(path)}
    report["verify"] = verify
    write_report(folder, report)


def replay_export(
    folder: str | Path, *, threads: int = 0, write: bool = True, on_stage: StageFn | None = None
) -> dict[str, Any]:
    """Replay the worst-case examples verify kept (replay.npz) on every other onnxruntime provider and
    optimisation level here; returns report.json's ``verify.replay`` with a result per runtime and model."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFileError(f"{folder} is not a folder; give the folder `akd-edge export` wrote (with model.onnx)")
    if write:
        ensure_writable_dir(folder, "verify --replay writes report.json into the export folder")
    with FolderLock(folder, "export folder") if write else contextlib.nullcontext():
        report = _read_report(folder)
        check_files(folder, report)
        replay = replays.read_replay(folder, report, ONNX_MODELS)
        verify = _dict((report or {}).get("verify"))
        reference = _dict(verify.get("replay")).get("reference")
        section = _replay_section(replay, reference if isinstance(reference, str) else "verify's onnxruntime")
        for runtime in replays.other_runtimes(folder):
            if on_stage is not None:
                on_stage(f"replaying {len(replay.labels)} examples on {runtime.label}")
            section["runtimes"][_runtime_label(runtime)] = replays.replay_on(folder, replay, runtime, threads)
        if write and report is not None and verify:
            report["verify"] = {**verify, "replay": section}
            write_report(folder, report)
    return section
