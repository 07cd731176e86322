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

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from akd_edge.errors import CheckpointError

FORMAT = "akd-edge/1"
ASSETS = Path(__file__).resolve().parent.parent / "assets"
RESUME_KEYS = ("optimizer", "scheduler", "scaler", "rng", "best", "sums", "dyn_row")
BUILTIN = {"fmnist-teacher": ASSETS / "fmnist-teacher.pt"}


def save_atomic(obj: dict[str, Any], path: str | Path) -> Path:
    """Write ``obj`` to ``path`` through a temp file in the same folder and a rename: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; a checkpoint gets the usual file mode
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "model" not in ckpt or "arch" not in ckpt:
        raise CheckpointError(f"{path} is not an akd-edge checkpoint (expected format {FORMAT!r})")
    ckpt["path"] = str(path)
    return ckpt


def build_model(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild the architecture from ``ckpt['arch']``, replay any pruning, then load the weights."""
    from akd_edge.models import create_model

    arch = ckpt["arch"]
    model = create_model(
        arch["name"],
        num_classes=arch["num_classes"],
        input_shape=tuple(arch["input_shape"]),
        mean=arch["mean"],
        std=arch["std"],
        **arch.get("kwargs", {}),
    )
    if ckpt.get("pruning"):
        from akd_edge.compress.prune import rebuild_pruned

        model = rebuild_pruned(model, ckpt["pruning"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise CheckpointError(f"weights in {ckpt.get('path', 'checkpoint')} do not fit {arch['name']}: {err}") from None
    return model


def load_model(
    source: str | Path, which: str = "best", device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a model ready for evaluation, plus its checkpoint (without resume state)."""
    ckpt = load_checkpoint(source, which)
    model = build_model(ckpt).to(device).eval()
    meta = {k: v for k, v in ckpt.items() if k not in ("model", *RESUME_KEYS)}
    return model, meta


def model_only(ckpt: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint stripped of resume state (for best.pt, per-epoch files and shipped weights)."""
    return {k: v for k, v in ckpt.items() if k not in RESUME_KEYS + ("path",)}
