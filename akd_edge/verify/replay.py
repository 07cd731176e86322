"""The evidence of ``akd-edge verify``, ``replay.npz``, and its replay on other runtimes.

For every attacked image and every model, verify keeps the worst-case example it found (the clean image,
the transferred AutoAttack example or the Square example, whichever gives the lowest margin under Python
onnxruntime), with the logits Python onnxruntime computed on the clean image and on that example. A runtime
that replays the file shows whether the verified robust accuracy holds where the model ships: adversarial
examples sit where small numeric differences flip a decision.

``replay.npz`` (``numpy.savez_compressed``, read with ``allow_pickle=False``, only while its SHA-256 is the
one report.json records, and only from the export folder):

- ``images`` [N, C, H, W]: the clean test images as verified (uint8 0-255, or float32 in [0, 1]);
- ``labels`` int64 [N]; ``models`` unicode [M]: the model files, in the order of the arrays below;
- ``examples`` float32 [M, N, C, H, W]: each model's worst-case input, in [0, 1];
- ``clean_logits``, ``example_logits`` float32 [M, N, classes]: Python onnxruntime's logits (the reference);
- ``attacked`` uint8 [1]: 1 when an attack ran (else the examples are the clean images).

Tolerances (the web page, ``akd_edge/assets/web/app.js``, applies the same ones): a runtime *matches* when
its largest logit difference is at most :data:`~akd_edge.core.ort.FP32_LOGIT_BOUND`; it is *within tolerance* when the
difference is at most the bound of the model's precision (:data:`~akd_edge.core.ort.INT8_LOGIT_BOUND` of the largest |logit|
for int8, whose kernels differ between runtimes), the argmax agrees on at least :data:`~akd_edge.core.ort.MIN_AGREEMENT` of the
inputs and robust accuracy is within :data:`~akd_edge.core.ort.MAX_ACCURACY_GAP` of the reference; otherwise it is a mismatch.
"""

from __future__ import annotations

import logging
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from akd_edge.core.errors import UsageError
from akd_edge.core.files import sha256_file, write_atomic
from akd_edge.core.ort import (
    FP32_LOGIT_BOUND,
    INT8_LOGIT_BOUND,
    MAX_ACCURACY_GAP,
    MIN_AGREEMENT,
    OrtClassifier,
    as_float_images,
)
from akd_edge.export.card import REPLAY_NAME

log = logging.getLogger(__name__)

REFERENCE_LEVEL = "ORT_ENABLE_ALL"
"""The graph optimisation level of the reference (onnxruntime's default: what verify attacked)."""
LEVELS = ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", REFERENCE_LEVEL)
"""The optimisation levels replayed on the CPU provider (ORT_DISABLE_ALL is what onnxruntime-web computes)."""
SKIPPED_PROVIDERS = ("CPUExecutionProvider", "AzureExecutionProvider")
"""Providers not replayed as "other" providers: the CPU one is replayed per level; Azure runs no model here."""
KEYS = ("images", "labels", "models", "examples", "clean_logits", "example_logits", "attacked")
BATCH = 256


class ReplayError(UsageError):
    """replay.npz is missing, changed since verify recorded it, or not what verify writes."""


def precision_of(name: str) -> str:
    """``int8`` for an int8 model file (``model.int8.onnx``, ``model.int8.ort``), else ``fp32``."""
    return "int8" if ".int8." in name else "fp32"


def logit_bound(name: str, reference: np.ndarray) -> float:
    """The largest |logit difference| accepted for model file ``name`` against ``reference`` logits."""
    if precision_of(name) == "fp32" or reference.size == 0:
        return FP32_LOGIT_BOUND
    return max(FP32_LOGIT_BOUND, INT8_LOGIT_BOUND * float(np.abs(reference).max()))


@dataclass
class Replay:
    """What replay.npz holds (see the module docstring)."""

    images: np.ndarray
    labels: np.ndarray
    models: list[str]
    examples: np.ndarray
    clean_logits: np.ndarray
    example_logits: np.ndarray
    attacked: bool

    def robust(self, index: int) -> np.ndarray:
        """bool [N]: the reference classifies the clean image and model ``index``'s worst case correctly."""
        return _robust(self.labels, self.clean_logits[index], self.example_logits[index])


def _robust(labels: np.ndarray, clean: np.ndarray, examples: np.ndarray) -> np.ndarray:
    return (clean.argmax(1) == labels) & (examples.argmax(1) == labels)


def _margins(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The true class's logit minus the largest other one: negative where the input is misclassified."""
    rows = np.arange(len(labels))
    others = logits.copy()
    others[rows, labels] = -np.inf
    return logits[rows, labels] - others.max(1)


def worst_case(
    model: OrtClassifier, labels: np.ndarray, candidates: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image, the candidate input (clean first, then each attack's) with the lowest margin under ``model``:
    ``(examples float32, clean logits, the examples' logits)``."""
    inputs = [as_float_images(c) for c in candidates]
    logits = [model.predict(x, BATCH) for x in inputs]
    pick = np.stack([_margins(lg, labels) for lg in logits]).argmin(0)
    rows = np.arange(len(labels))
    examples = np.stack(inputs)[pick, rows]
    return examples, logits[0], np.stack(logits)[pick, rows]


def build_replay(
    models: dict[str, OrtClassifier],
    images: np.ndarray,
    labels: np.ndarray,
    attacks: dict[str, list[np.ndarray]],
) -> Replay:
    """The replay of ``models`` on ``images``: ``attacks[name]`` are the attack examples made for model ``name``."""
    chosen = [worst_case(model, labels, [images, *attacks.get(name, [])]) for name, model in models.items()]
    return Replay(
        images=images,
        labels=labels.astype(np.int64),
        models=list(models),
        examples=np.stack([c[0] for c in chosen]),
        clean_logits=np.stack([c[1] for c in chosen]),
        example_logits=np.stack([c[2] for c in chosen]),
        attacked=any(attacks.values()),
    )


def write_replay(folder: Path, replay: Replay) -> Path:
    """Write ``folder/replay.npz`` atomically."""
    arrays = {
        "images": replay.images,
        "labels": replay.labels,
        "models": np.array(replay.models, dtype=np.str_),
        "examples": replay.examples.astype(np.float32),
        "clean_logits": replay.clean_logits.astype(np.float32),
        "example_logits": replay.example_logits.astype(np.float32),
        "attacked": np.array([int(replay.attacked)], dtype=np.uint8),
    }
    return write_atomic(folder / REPLAY_NAME, lambda fh: np.savez_compressed(fh, **arrays))


def recorded_sha256(report: dict[str, Any] | None) -> str | None:
    """The SHA-256 report.json records for replay.npz, or None."""
    entry = ((report or {}).get("files") or {}).get(REPLAY_NAME)
    digest = entry.get("sha256") if isinstance(entry, dict) else None
    return digest if isinstance(digest, str) else None


def read_replay(folder: Path, report: dict[str, Any] | None, model_names: tuple[str, ...]) -> Replay:
    """``folder/replay.npz``, only while its SHA-256 is the one report.json recorded; checked before use."""
    path = folder / REPLAY_NAME
    recorded = recorded_sha256(report)
    if path.is_symlink():
        raise ReplayError(f"{path} is a symbolic link: only the file verify wrote in the folder is read")
    if recorded is None or not path.is_file():
        raise ReplayError(
            f"{folder} holds no recorded {REPLAY_NAME} (the worst-case examples verify keeps): run "
            f"`akd-edge verify {folder}` first"
        )
    if sha256_file(path) != recorded:
        raise ReplayError(
            f"{path} does not match the SHA-256 that report.json recorded: it changed since verify wrote it; "
            f"run `akd-edge verify {folder}` again"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in KEYS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise ReplayError(f"cannot read {path} ({err}); run `akd-edge verify {folder}` again") from None
    return _checked(path, arrays, model_names)


def _checked(path: Path, arrays: dict[str, np.ndarray], model_names: tuple[str, ...]) -> Replay:
    """A Replay from the arrays of ``path``, after checking names, shapes, dtypes and values."""
    models = [str(name) for name in arrays["models"].reshape(-1)]
    images, labels, examples = arrays["images"], arrays["labels"], arrays["examples"]
    clean, worst = arrays["clean_logits"], arrays["example_logits"]
    n, m = len(labels), len(models)
    problems = [
        (not set(models) <= set(model_names), f"models {models} are not export model files"),
        (images.ndim != 4 or len(images) != n, "images are not [N, C, H, W]"),
        (labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer), "labels are not integers [N]"),
        (examples.shape != (m, *images.shape), "examples are not [models, N, C, H, W]"),
        (clean.ndim != 3 or clean.shape[:2] != (m, n) or worst.shape != clean.shape, "logits are not [models, N, K]"),
        (not all(np.isfinite(a).all() for a in (examples, clean, worst)), "values are not finite"),
        (examples.size and (examples.min() < 0 or examples.max() > 1), "examples are outside [0, 1]"),
    ]
    for failed, what in problems:
        if failed:
            raise ReplayError(f"{path}: {what}; run `akd-edge verify` again")
    return Replay(images, labels.astype(np.int64), models, examples, clean, worst, bool(arrays["attacked"].any()))


def score(replay: Replay, index: int, clean: np.ndarray, examples: np.ndarray) -> dict[str, Any]:
    """How a runtime's logits (on the clean images and on model ``index``'s worst cases) compare with the
    reference's: accuracies, argmax agreement, largest logit difference and the verdict."""
    name, labels = replay.models[index], replay.labels
    ref_clean, ref_worst = replay.clean_logits[index], replay.example_logits[index]
    agree = np.concatenate([clean.argmax(1) == ref_clean.argmax(1), examples.argmax(1) == ref_worst.argmax(1)])
    diff = max(float(np.abs(clean - ref_clean).max(initial=0)), float(np.abs(examples - ref_worst).max(initial=0)))
    robust = float(_robust(labels, clean, examples).mean()) if replay.attacked else None
    reference_robust = float(replay.robust(index).mean()) if replay.attacked else None
    result = {
        "n": len(labels),
        "clean_acc": float((clean.argmax(1) == labels).mean()),
        "reference_clean_acc": float((ref_clean.argmax(1) == labels).mean()),
        "robust_acc": robust,
        "reference_robust_acc": reference_robust,
        "argmax_agreement": float(agree.mean()),
        "argmax_disagreements": int((~agree).sum()),
        "max_abs_logit_diff": diff,
        "logit_bound": logit_bound(name, np.concatenate([ref_clean, ref_worst])),
        "precision": precision_of(name),
    }
    result["verdict"] = verdict(result)
    return result


def verdict(result: dict[str, Any]) -> str:
    """``matches``, ``within tolerance`` or ``mismatch`` (see the module docstring)."""
    diff = result["max_abs_logit_diff"]
    if diff <= FP32_LOGIT_BOUND and result["argmax_disagreements"] == 0:
        return "matches"
    robust, reference = result["robust_acc"], result["reference_robust_acc"]
    gap = 0.0 if robust is None or reference is None else abs(robust - reference)
    close = diff <= result["logit_bound"] and result["argmax_agreement"] >= MIN_AGREEMENT
    if close and gap <= MAX_ACCURACY_GAP + 1e-9:  # 1.0 - 0.99 is 0.010000000000000009 in floating point
        return "within tolerance"
    return "mismatch"


@dataclass(frozen=True)
class Runtime:
    """One way of running the export's models: an onnxruntime provider, an optimisation level, a file kind."""

    provider: str
    level: str
    mobile: bool = False
    """Run the ``.ort`` files (as an app ships them) instead of the ``.onnx`` ones."""

    @property
    def label(self) -> str:
        name = self.provider.removesuffix("ExecutionProvider")
        return f"{name} {self.level}" + (" (.ort files)" if self.mobile else "")

    def file_of(self, model: str) -> str:
        """The file this runtime runs for ``model`` (a ``.onnx`` name)."""
        return model.removesuffix(".onnx") + ".ort" if self.mobile else model


REFERENCE = Runtime("CPUExecutionProvider", REFERENCE_LEVEL)
"""How verify ran the models: onnxruntime's CPU provider at its default optimisation level."""


def other_runtimes(folder: Path, available: list[str] | None = None) -> list[Runtime]:
    """Every runtime here besides the reference: the CPU provider at each other level, the .ort files when
    the folder has them, and each other installed provider (OpenVINO, XNNPACK, ...) at the default level."""
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    runtimes = [Runtime("CPUExecutionProvider", level) for level in LEVELS if level != REFERENCE_LEVEL]
    if any(folder.glob("*.ort")):
        runtimes.append(Runtime("CPUExecutionProvider", REFERENCE_LEVEL, mobile=True))
    runtimes += [Runtime(p, REFERENCE_LEVEL) for p in available if p not in SKIPPED_PROVIDERS]
    return runtimes


def replay_on(folder: Path, replay: Replay, runtime: Runtime, threads: int = 0) -> dict[str, Any]:
    """Run each model of ``replay`` under ``runtime``: its :func:`score` per model (or why it could not run)."""
    results: dict[str, Any] = {}
    providers = (
        [runtime.provider] if runtime.provider == "CPUExecutionProvider" else [runtime.provider, "CPUExecutionProvider"]
    )
    for index, name in enumerate(replay.models):
        path = folder / runtime.file_of(name)
        if not path.is_file():
            continue
        try:
            model = OrtClassifier.load(path, threads, providers=providers, level=runtime.level)
        except UsageError as err:
            results[name] = {"error": str(err)}
            continue
        clean = model.predict(replay.images, BATCH)
        examples = model.predict(replay.examples[index], BATCH)
        results[name] = {"file": path.name, **score(replay, index, clean, examples)}
        log.info("%s on %s: %s", name, runtime.label, results[name]["verdict"])
    return results
