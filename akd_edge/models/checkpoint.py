"""Checkpoints: written atomically, read with ``weights_only=True``, never a pickled model.

A checkpoint is a dict of tensors and plain values:

``format``      "akd-edge/1"
``model``       the model's ``state_dict``
``arch``        how to rebuild the model: ``{"name", "kwargs", "num_classes", "input_shape", "mean", "std"}``
``data``        ``{"name", "class_names"}``
``threat``      the threat model it was validated against: ``{"norm", "eps"}``
``role``        "teacher" or "student"
``epoch``       epochs completed (1-based), ``batch`` batches done in the next epoch (resume point)
``val``         the validation metrics of that epoch: ``{"clean_acc", "robust_acc"}``
``pruning``     optional: torch-pruning history to replay before loading ``model`` (see akd_edge.compress)
``optimizer``, ``scheduler``, ``rng``, ``best``: resume state, present in ``last.pt`` only.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from akd_edge.core.errors import CheckpointError
from akd_edge.core.files import write_atomic

CHECKPOINT_FORMAT = "akd-edge/1"
"""``format`` of an akd-edge checkpoint (``.pt``): what :func:`load_checkpoint` accepts."""
ASSETS = Path(__file__).resolve().parent.parent / "assets"
RESUME_KEYS = ("optimizer", "scheduler", "scaler", "rng", "best", "sums", "dyn_row")
BUILTIN = {"fmnist-teacher": ASSETS / "fmnist-teacher.pt"}


def save_atomic(obj: dict[str, Any], path: str | Path) -> Path:
    """Write ``obj`` to ``path`` through a temp file in the same folder and a rename: never half-written."""
    return write_atomic(path, lambda fh: torch.save(obj, fh))


def resolve_checkpoint(source: str | Path, which: str = "best") -> Path:
    """A checkpoint file from a file path, a run directory (best/last/epoch N) or ``builtin:NAME``."""
    text = str(source)
    if text.startswith("builtin:"):
        name = text.removeprefix("builtin:")
        if name not in BUILTIN:
            raise CheckpointError(f"unknown builtin checkpoint {name!r}; known: {', '.join(BUILTIN)}")
        path = BUILTIN[name]
        if not path.is_file():
            raise CheckpointError(f"builtin checkpoint {path} is missing from this installation")
        return path
    path = Path(source)
    if path.is_dir():
        if which in ("best", "last"):
            candidate = path / f"{which}.pt"
        elif str(which).isdigit():
            candidate = path / "epochs" / f"epoch-{int(which):03d}.pt"
        else:
            raise CheckpointError(f"which={which!r}: expected best, last or an epoch number")
        if not candidate.is_file():
            have = sorted(p.name for p in path.glob("*.pt")) + sorted(
                f"epochs/{p.name}" for p in (path / "epochs").glob("*.pt")
            )
            raise CheckpointError(
                f"{candidate} not found in run directory {path}; it has: {', '.join(have) or 'no checkpoints'}"
            )
        return candidate
    if not path.is_file():
        raise CheckpointError(f"{path} is neither a checkpoint file nor a run directory")
    return path


def load_checkpoint(source: str | Path, which: str = "best") -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``) and check that it is an akd-edge checkpoint."""
    path = resolve_checkpoint(source, which)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file, pickle with code in it, not a torch file
        raise CheckpointError(f"cannot read checkpoint {path}: {why_unreadable(err)}") from None
    if (
        not isinstance(ckpt, dict)
        or ckpt.get("format") != CHECKPOINT_FORMAT
        or "model" not in ckpt
        or "arch" not in ckpt
    ):
        raise CheckpointError(f"{path} is not an akd-edge checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    ckpt["path"] = str(path)
    return ckpt


def why_unreadable(err: Exception) -> str:
    """One line on why ``torch.load`` failed; torch's own text is long and advises turning the safety off."""
    text = str(err)
    if isinstance(err, pickle.UnpicklingError) and "weights only" in text.lower():
        found = re.search(r"GLOBAL ([\w.]+)", text)
        needs = f": {found.group(1)}" if found else ""
        return f"it is not a plain-tensor checkpoint (it needs code to unpickle{needs}), refused for safety"
    first = text.strip().splitlines()[0].split(". ")[0].rstrip(".") if text.strip() else type(err).__name__
    return f"it is corrupt, truncated or not a torch file ({first})"


def build_model(ckpt: dict[str, Any], factory: str | None = None) -> nn.Module:
    """Rebuild the architecture from ``ckpt['arch']``, replay any pruning, then load the weights.

    A checkpoint may only name a registered architecture: a ``module:factory`` name is imported only when
    the user passes ``factory`` (importing runs the module's code; on the command line ``--model-factory``).
    ``factory`` builds such a checkpoint even if its module has moved; it is unused when the checkpoint
    names a registered architecture. Sizes read from the checkpoint are capped before anything is allocated
    (see :func:`akd_edge.models.create_model`).
    """
    from akd_edge.core.errors import ConfigError
    from akd_edge.core.registry import check_code_allowed
    from akd_edge.models import create_model

    source = ckpt.get("path", "checkpoint")
    arch = ckpt["arch"]
    if not isinstance(arch, dict) or not isinstance(arch.get("name"), str):
        raise CheckpointError(f"{source}: 'arch' must be a table with a 'name', got {arch!r:.200}")
    kwargs = arch.get("kwargs", {})
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise CheckpointError(f"{source}: arch.kwargs must be a table of keyword arguments, got {kwargs!r:.200}")
    name = arch["name"]
    custom = ":" in name
    check_code_allowed(
        [name] if custom else [],
        str(source),
        allowed=bool(factory),
        remedy=f"pass --model-factory {name} (for a teacher: --teacher-factory {name}, or factory = {name!r} in its "
        f"[[teachers]] entry; Python: factory={name!r})",
        error=CheckpointError,
    )
    try:
        model = create_model(
            factory if custom else arch["name"],
            num_classes=arch.get("num_classes"),
            input_shape=arch.get("input_shape"),
            mean=arch.get("mean", 0.0),
            std=arch.get("std", 1.0),
            allow_import=custom,
            **kwargs,
        )
    except ConfigError as err:
        raise CheckpointError(f"{source} (arch {arch['name']!r}): {err}") from None
    if ckpt.get("pruning"):
        from akd_edge.models.pruned import rebuild_pruned

        try:
            model = rebuild_pruned(model, ckpt["pruning"])
        except CheckpointError as err:
            raise CheckpointError(f"{source}: {err}") from None
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise CheckpointError(f"weights in {source} do not fit {arch['name']}: {err}") from None
    return model


def load_model(
    source: str | Path, which: str = "best", device: str | torch.device = "cpu", factory: str | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a model ready for evaluation, plus its checkpoint (without resume state).

    ``factory``: the trusted ``module:factory`` of a checkpoint of the user's own architecture (see
    :func:`build_model`).
    """
    ckpt = load_checkpoint(source, which)
    model = build_model(ckpt, factory).to(device).eval()
    meta = {k: v for k, v in ckpt.items() if k not in ("model", *RESUME_KEYS)}
    return model, meta


def model_only(ckpt: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint stripped of resume state (for best.pt, per-epoch files and shipped weights)."""
    return {k: v for k, v in ckpt.items() if k not in RESUME_KEYS + ("path",)}
