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

The attacks run batch by batch on worker processes of one thread each (:mod:`akd_edge.verify.attacks`,
:mod:`akd_edge.verify.pool`), with the examples they would give one batch after another.
:func:`verify_exports` verifies several folders in one go: a transfer source, or a model file, that
several of them share (same SHA-256) is attacked once, and the report says whose results a file shares.

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from akd_edge.core.callbacks import StageFn
from akd_edge.core.errors import DataError, UsageError
from akd_edge.core.files import FolderLock, ensure_writable_dir
from akd_edge.core.interval import REPORTED_N
from akd_edge.core.ort import ModelFileError, tolerances
from akd_edge.export.card import REPLAY_NAME, REPORT_FORMAT, file_record, write_report
from akd_edge.export.folder import ONNX_MODELS
from akd_edge.verify import replay as replays
from akd_edge.verify.attacks import SQUARE_BATCH, Attacks, attack_exports, square_runner
from akd_edge.verify.data import TestData, load_npz, load_test_data
from akd_edge.verify.inputs import (
    OpenedExport,
    as_dict,
    check_files,
    finite_eps,
    open_export,
    read_export_report,
    source_checkpoint,
)
from akd_edge.verify.pool import ProgressFn
from akd_edge.verify.scoring import models_latency, score_models

__all__ = [
    "ONNX_MODELS",
    "SQUARE_BATCH",
    "TRANSFER_VERSIONS",
    "TestData",
    "check_files",
    "load_npz",
    "load_test_data",
    "models_latency",
    "replay_export",
    "source_checkpoint",
    "verify_export",
    "verify_exports",
]

log = logging.getLogger(__name__)

TRANSFER_VERSIONS = ("fast", "standard", "none")


def verify_export(folder: str | Path, **options: Any) -> dict[str, Any]:
    """Verify the models of an export folder; returns the ``verify`` section (also written to report.json).

    ``n`` test images (the first; a smaller split is used whole) are attacked; every accuracy comes with
    its 95% Wilson interval. ``threads``: worker processes of the attacks, one thread each (0: one per CPU).
    The options are :func:`verify_exports`'s.
    """
    return verify_exports([folder], **options)[0]


def verify_exports(
    folders: Sequence[str | Path],
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
) -> list[dict[str, Any]]:
    """Verify the models of every folder in one go; returns each folder's ``verify`` section, in order.

    The attacks of all folders share the worker processes (``threads``: how many, one thread each; 0: one
    per CPU). A transfer source (the same checkpoint, test set and threat model) or a model file (the same
    SHA-256) that several folders share is attacked once: same examples, same results, and the report says
    which file or folder it shares them with. ``checkpoint`` applies to every folder.
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
        finite_eps(eps, "--eps")
    if not math.isfinite(margin):
        raise UsageError(f"--margin must be a finite number, got {margin}")
    paths = [Path(folder) for folder in folders]
    for path in paths:
        if not path.is_dir():
            raise ModelFileError(f"{path} is not a folder; give the folder `akd-edge export` wrote (with model.onnx)")
        if write:  # a read-only folder fails now, in one line, not after the attacks
            ensure_writable_dir(path, "verify writes report.json into the export folder")
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
    # writing the reports back: hold each folder's lock, so an export replacing it cannot interleave
    with contextlib.ExitStack() as locks:
        for path in dict.fromkeys(paths) if write else ():
            locks.enter_context(FolderLock(path, "export folder"))
        return _verify(paths, options, stage, on_progress)


def _verify(
    folders: list[Path], options: dict[str, Any], stage: StageFn, on_progress: ProgressFn | None
) -> list[dict[str, Any]]:
    """The body of :func:`verify_exports`, run under the folders' locks when it writes."""
    square_runner(options["square_queries"])  # a missing torch is one line before any work
    opened = []
    for folder in folders:
        stage(
            f"checking {folder} and loading test data"
            if len(folders) > 1
            else "checking the export and loading test data"
        )
        export = open_export(
            folder,
            options["data"],
            options["data_dir"],
            options["n"],
            options["norm"],
            options["eps"],
            options["threads"],
        )
        needed = options["transfer"] != "none"
        opened.append((export, source_checkpoint(folder, export.report, options["checkpoint"]) if needed else ""))
    stage("clean accuracy under onnxruntime")
    start = time.perf_counter()
    clean = [{name: m.correct(e.test.images, e.test.labels) for name, m in e.models.items()} for e, _ in opened]
    clean_s = (time.perf_counter() - start) / len(opened)
    attacks = attack_exports(opened, options, stage, on_progress)
    sections = []
    for (export, _), flags, attacked in zip(opened, clean, attacks, strict=True):
        verify = _section(export, flags, attacked, options, stage, clean_s)
        if options["write"]:
            stage(f"keeping the worst-case examples ({REPLAY_NAME})")
            examples = {name: attacked.examples(name) for name in export.models}
            replay = replays.build_replay(export.models, export.test.images, export.test.labels, examples)
            _write_verify(export.folder, export.report, verify, replay)
        sections.append(verify)
    return sections


def _section(
    export: OpenedExport,
    clean: dict[str, np.ndarray],
    attacks: Attacks,
    options: dict[str, Any],
    stage: StageFn,
    clean_s: float,
) -> dict[str, Any]:
    """report.json's ``verify`` section of one export: accuracies, settings, what it shares, timings, speed."""
    test = export.test
    results, warnings = score_models(
        export.models, test.labels, clean, attacks.square, attacks.transfer, options["margin"]
    )
    for name, other in attacks.same_file_as.items():
        results[name]["same_file_as"] = other
        log.info("%s is bit-identical to %s (same SHA-256): attacked once, results shared", name, other)
    timings = {"clean_s": clean_s, **attacks.timings}
    verify: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "n": len(test.labels),
        "interval": "ci95: 95% Wilson score interval of each accuracy",
        "data": {"name": test.name, "source": test.source},
        "settings": {
            "norm": export.norm,
            "eps": export.eps,
            "seed": options["seed"],
            "margin": options["margin"],
            "threads": options["threads"] or "default",
            "workers": attacks.workers,
            "square": attacks.square_info,
            "transfer": attacks.transfer_info,
        },
        "models": results,
        "files": {name: {"sha256": digest} for name, digest in export.digests.items()},
        "warnings": warnings,
        "timings_s": timings,
        "timings_note": TIMINGS_NOTE,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
    }
    if options["latency"]:
        stage(f"latency and throughput ({export.folder.name})")
        start = time.perf_counter()
        input_shape = tuple(int(v) for v in test.images.shape[1:])
        verify["latency"], verify["latency_notes"] = models_latency(
            export.folder, export.models, attacks.torch_model, input_shape, options["latency_repeats"]
        )
        timings["latency_s"] = time.perf_counter() - start
    verify["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
    return verify


TIMINGS_NOTE = (
    "transfer_s and square_<model>_s add up the seconds of their batches, which ran side by side on the "
    "worker processes (settings.workers); attacks_wall_s is the wall time of all the attacks together"
)


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
        report = read_export_report(folder)
        check_files(folder, report)
        replay = replays.read_replay(folder, report, ONNX_MODELS)
        verify = as_dict((report or {}).get("verify"))
        reference = as_dict(verify.get("replay")).get("reference")
        section = _replay_section(replay, reference if isinstance(reference, str) else "verify's onnxruntime")
        for runtime in replays.other_runtimes(folder):
            if on_stage is not None:
                on_stage(f"replaying {len(replay.labels)} examples on {runtime.label}")
            section["runtimes"][_runtime_label(runtime)] = replays.replay_on(folder, replay, runtime, threads)
        if write and report is not None and verify:
            report["verify"] = {**verify, "replay": section}
            write_report(folder, report)
    return section
