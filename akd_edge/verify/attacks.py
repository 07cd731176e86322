"""The attacks of ``akd-edge verify`` on one or more exports, each run once however many files share it.

- The transfer examples: AutoAttack on the torch checkpoint an export came from
  (:func:`akd_edge.verify.transfer.transfer_job`), made once per source checkpoint (by SHA-256), test set,
  threat model and seed, and scored on every model file exported from it (fp32 and int8; several exports
  of one checkpoint verified together share them too).
- Square (:func:`akd_edge.attacks.autoattack.run_square`) on each onnxruntime model file, run once per
  distinct file (by SHA-256), test set and settings: a file bit-identical to one attacked already gets the
  same examples, and its entry names that file (``same_file_as``).

The batches of all of them run on :func:`akd_edge.verify.pool.run_jobs`'s worker processes, one thread each:
the same examples as one batch after another in this process, since each batch reseeds its attack.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from akd_edge.core.callbacks import StageFn
from akd_edge.core.env import torch_threads
from akd_edge.core.errors import UsageError
from akd_edge.core.files import sha256_file
from akd_edge.core.interval import interval_of
from akd_edge.core.ort import ModelFileError, OrtClassifier, as_float_images
from akd_edge.verify.inputs import OpenedExport
from akd_edge.verify.pool import Job, PoolTask, ProgressFn, plan_workers, run_jobs

SQUARE_BATCH = 256
"""Images per Square batch and per onnxruntime call: the attack's working memory depends on it, not on --n."""
MIN_PARALLEL_IMAGES = SQUARE_BATCH + 1
"""Fewer test images than this are attacked in this process: starting workers (a few seconds each, to import
torch) would cost more than they save."""


@dataclass
class Attacks:
    """What the attacks on one export produced: Square's examples per model, the transferred ones, settings."""

    square: dict[str, np.ndarray]
    transfer: np.ndarray | None
    square_info: dict[str, Any]
    transfer_info: dict[str, Any]
    torch_model: Any
    same_file_as: dict[str, str] = field(default_factory=dict)
    """Model name -> the bit-identical file whose Square examples it shares (attacked once)."""
    timings: dict[str, float] = field(default_factory=dict)
    workers: int = 1
    """Worker processes the attacks ran on (1: in this process)."""

    def examples(self, name: str) -> list[np.ndarray]:
        """The attack examples made against model ``name`` (transferred first), for the replay file."""
        found = [] if self.transfer is None else [self.transfer]
        return found + ([self.square[name]] if name in self.square else [])


def square_runner(square_queries: int) -> Callable[..., Any] | None:
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


# -- Square on one model file, batch by batch -------------------------------------------------------------------

_SESSIONS: dict[str, OrtClassifier] = {}
"""In a worker (or this process): the one-thread sessions of the files attacked so far, by SHA-256."""


def _session(name: str, content: bytes, sha256: str) -> OrtClassifier:
    model = _SESSIONS.get(sha256)
    if model is None:
        if hashlib.sha256(content).hexdigest() != sha256:
            raise ModelFileError(f"{name} changed while verify read it; verify the folder again")
        while len(_SESSIONS) >= 8:
            _SESSIONS.pop(next(iter(_SESSIONS)))
        model = _SESSIONS[sha256] = OrtClassifier.load(name, threads=1, content=content)
    return model


def square_task(
    name: str,
    content: bytes,
    sha256: str,
    x: np.ndarray,
    y: np.ndarray,
    settings: dict[str, Any],
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Square on one batch of images against the model file ``content``: its examples and settings."""
    import torch

    run_square = square_runner(settings["n_queries"])
    assert run_square is not None
    attack = run_square(
        _session(name, content, sha256).torch_predict(SQUARE_BATCH),
        torch.from_numpy(x),
        torch.from_numpy(y),
        **settings,
        batch_size=SQUARE_BATCH,
        progress=None if progress is None else (lambda done, _total: progress(done)),
    )
    return attack.x_adv.cpu().numpy(), {k: v for k, v in attack.settings.items() if k != "n_samples"}


def square_job(name: str, path: Path, sha256: str, x: np.ndarray, y: np.ndarray, settings: dict[str, Any]) -> Job:
    """Square on every image, one task per batch of :data:`SQUARE_BATCH`: returns (examples, settings)."""
    content = path.read_bytes()
    starts = range(0, len(x), SQUARE_BATCH)
    results = yield [
        PoolTask(
            square_task,
            (name, content, sha256, x[lo : lo + SQUARE_BATCH], y[lo : lo + SQUARE_BATCH], settings),
            settings["n_queries"],
        )
        for lo in starts
    ]
    if not results:
        return x.copy(), {}
    return np.concatenate([examples for examples, _ in results]), results[0][1]


# -- the plan: one job per distinct attack ---------------------------------------------------------------------


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class _Plan:
    """The jobs to run, and which of them each export's files read."""

    transfers: dict[str, tuple[str, Job, int]] = field(default_factory=dict)
    squares: dict[str, tuple[str, Job, int]] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)
    """Job key -> the file (or export) that asked for it first."""
    first_tasks: int = 0


def _label(export: OpenedExport, many: bool, text: str) -> str:
    return f"{export.folder.name}: {text}" if many else text


def _plan_transfer(
    plan: _Plan, export: OpenedExport, source: str, options: dict[str, Any], many: bool
) -> tuple[str | None, dict[str, Any], Any]:
    """The key of the transfer job of ``export`` (None when skipped), its settings, and the torch model."""
    version = options["transfer"]
    if version == "none":
        return None, {"skipped": "--transfer none"}, None
    try:
        from akd_edge.verify import transfer
    except ImportError as err:
        return None, {"skipped": f"torch is not available ({err})"}, None
    model, meta = transfer.load_torch_model(source)
    checkpoint = transfer.CheckpointFile(
        str(meta.get("path", source)), sha256_file(meta.get("path", source)), transfer.trusted_factory()
    )
    checkpoint_sha = checkpoint.sha256
    key = _key("transfer", checkpoint_sha, export.test.digest(), export.norm, export.eps, version, options["seed"])
    if key not in plan.transfers:
        job = transfer.transfer_job(
            model,
            export.test.images,
            export.test.labels,
            norm=export.norm,
            eps=export.eps,
            version=version,
            seed=options["seed"],
            source=checkpoint,
        )
        units = transfer.expected_passes(version, len(export.test.labels), transfer.TRANSFER_BATCH)
        plan.transfers[key] = (_label(export, many, f"transfer (AutoAttack {version})"), job, units)
        plan.owners[key] = str(export.folder)
        plan.first_tasks += -(-len(export.test.labels) // transfer.TRANSFER_BATCH)
    return key, {"checkpoint": str(source), "checkpoint_sha256": checkpoint_sha}, model


def _plan_square(plan: _Plan, export: OpenedExport, options: dict[str, Any], many: bool) -> dict[str, str]:
    """The key of the Square job of each model file of ``export``."""
    if options["square_queries"] == 0:
        return {}
    settings = {
        "eps": export.eps,
        "norm": export.norm,
        "n_queries": options["square_queries"],
        "p_init": options["p_init"],
        "seed": options["seed"],
    }
    x, y = as_float_images(export.test.images), export.test.labels
    keys = {}
    for name, model in export.models.items():
        sha = export.digests[name]
        key = keys[name] = _key("square", sha, export.test.digest(), settings)
        if key not in plan.squares:
            job = square_job(name, model.path, sha, x, y, settings)
            units = -(-len(y) // SQUARE_BATCH) * settings["n_queries"]
            plan.squares[key] = (_label(export, many, f"Square {name}"), job, units)
            plan.owners[key] = str(export.folder / name)
            plan.first_tasks += -(-len(y) // SQUARE_BATCH)
    return keys


def attack_exports(
    exports: list[tuple[OpenedExport, str]],
    options: dict[str, Any],
    stage: StageFn,
    on_progress: ProgressFn | None,
) -> list[Attacks]:
    """Every attack of every export (with its transfer source checkpoint, "" for none), each run once."""
    plan, many = _Plan(), len(exports) > 1
    transfers = [_plan_transfer(plan, export, source, options, many) for export, source in exports]
    squares = [_plan_square(plan, export, options, many) for export, _ in exports]
    jobs = {**plan.transfers, **plan.squares}  # the transfers first: each is a chain of steps
    parallel = max(len(export.test.labels) for export, _ in exports) >= MIN_PARALLEL_IMAGES
    workers = plan_workers(options["threads"], plan.first_tasks) if parallel else 1
    if jobs:
        stage(_describe(jobs, workers))
    start = time.perf_counter()
    with torch_threads(1) if workers == 1 and jobs else contextlib.nullcontext():
        results, timings = run_jobs(jobs, workers, on_progress)
    wall = time.perf_counter() - start
    attacks = []
    for (export, _), (transfer_key, transfer_info, torch_model), square_keys in zip(
        exports, transfers, squares, strict=True
    ):
        attacks.append(_collect(export, plan, results, timings, transfer_key, transfer_info, torch_model, square_keys))
        attacks[-1].timings["attacks_wall_s"] = wall
        attacks[-1].workers = workers
    return attacks


def _describe(jobs: dict[str, tuple[str, Job, int]], workers: int) -> str:
    labels = ", ".join(label for label, _, _ in jobs.values())
    where = "in this process" if workers == 1 else f"on {workers} worker processes"
    return f"attacks {where}: {labels}"


def _collect(
    export: OpenedExport,
    plan: _Plan,
    results: dict[str, Any],
    timings: dict[str, Any],
    transfer_key: str | None,
    transfer_info: dict[str, Any],
    torch_model: Any,
    square_keys: dict[str, str],
) -> Attacks:
    """One export's share of the results: its transfer examples, Square's per model, what it shares."""
    attacks = Attacks({}, None, {"skipped": "--square-queries 0"}, transfer_info, torch_model)
    if transfer_key is not None:
        attacks.transfer, info = results[transfer_key]
        attacks.transfer_info = {**info, **transfer_info}
        attacks.transfer_info["torch_robust_ci95"] = interval_of(info.get("torch_robust_acc"), len(export.test.labels))
        attacks.timings["transfer_s"] = timings[transfer_key].task_s
        if plan.owners[transfer_key] != str(export.folder):
            attacks.transfer_info["shared_with"] = plan.owners[transfer_key]
    for name, key in square_keys.items():
        attacks.square[name], attacks.square_info = results[key]
        attacks.timings[f"square_{name}_s"] = timings[key].task_s
        owner = plan.owners[key]
        if owner != str(export.folder / name):
            attacks.same_file_as[name] = Path(owner).name if Path(owner).parent == export.folder else owner
    return attacks
