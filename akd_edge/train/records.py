"""What a run writes beside its checkpoints: ``metrics.jsonl`` (a line per epoch and per validation),
``dynamics.npz`` (which training images each epoch got right, clean and attacked) and ``summary.json``, and the
running statistics the progress display shows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from akd_edge.config import Recipe
from akd_edge.core.errors import CheckpointError
from akd_edge.core.files import write_atomic
from akd_edge.models.mode import eval_mode


def train_stats(sums: dict[str, float], lr: float) -> dict[str, float]:
    """The epoch so far: mean loss and accuracy, throughput, and the learning rate."""
    n = max(sums["n"], 1.0)
    return {
        "loss": sums["loss"] / n,
        "acc": sums["correct"] / n,
        "images_per_s": sums["n"] / max(sums["time"], 1e-9),
        "lr": lr,
    }


def epoch_record(epoch: int, stats: dict[str, float], seconds: float) -> dict[str, Any]:
    """metrics.jsonl's line for a training epoch."""
    return {"event": "epoch", "epoch": epoch, **stats, "time_s": seconds}


def eval_record(epoch: int, val: dict[str, Any], seconds: float, attack: dict[str, Any]) -> dict[str, Any]:
    """metrics.jsonl's line for the validation after ``epoch``."""
    return {"event": "eval", "epoch": epoch, "split": "val", **val, "time_s": seconds, "attack": attack}


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    with open(run_dir / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]


def kept_metrics(run_dir: Path, epochs_done: int) -> str | None:
    """metrics.jsonl without lines of epochs that the checkpoint does not contain (a kill between writes).

    A last line cut off mid-write is such a line; any other unreadable line is an error naming it. None: the
    run has no metrics.jsonl.
    """
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    text = path.read_bytes().decode("utf-8", errors="replace")
    lines = text.splitlines()
    kept = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            epoch = int(record["epoch"])
        except (ValueError, KeyError, TypeError) as err:
            if number == len(lines) and not text.endswith("\n"):
                break  # cut off by a kill while it was written: its epoch was never saved
            raise CheckpointError(
                f"cannot resume: {path} line {number} is not a metrics record ({type(err).__name__}: "
                f"{line[:60]!r}); fix or delete that line and resume again ({run_dir / 'last.pt'} is intact)"
            ) from None
        if epoch <= epochs_done:
            kept.append(line)
    return "".join(line + "\n" for line in kept)


class DynamicsRecorder:
    """Collects the per-image learning events while a run trains: for every epoch, which training images the
    student got right, clean and under the training attack. The current epoch's row travels in the checkpoint;
    past epochs go to dynamics.npz, which :class:`akd_edge.metrics.forgetting.Dynamics` reads back."""

    def __init__(self) -> None:
        self.epochs: dict[str, list[np.ndarray]] = {"clean": [], "adv": []}

    @staticmethod
    def new_row(n: int) -> dict[str, torch.Tensor]:
        return {"clean": torch.zeros(n, dtype=torch.uint8), "adv": torch.zeros(n, dtype=torch.uint8)}

    @staticmethod
    @torch.no_grad()
    def record(
        row: dict[str, torch.Tensor],
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        idx: torch.Tensor,
        adv_correct: torch.Tensor,
    ) -> None:
        """Mark the images ``idx`` of a batch in ``row``: ``model``'s clean answers and the step's attacked ones."""
        with eval_mode(model):
            clean_correct = model(x).argmax(1) == y
        row["clean"][idx.cpu()] = clean_correct.cpu().to(torch.uint8)
        row["adv"][idx.cpu()] = adv_correct.cpu().to(torch.uint8)

    def save(self, run_dir: Path, row: dict[str, torch.Tensor]) -> None:
        """Append the epoch's ``row`` and write dynamics.npz."""
        for key in ("clean", "adv"):
            self.epochs[key].append(row[key].numpy().copy())
        clean, adv = np.stack(self.epochs["clean"]), np.stack(self.epochs["adv"])
        write_atomic(run_dir / "dynamics.npz", lambda fh: np.savez_compressed(fh, clean=clean, adv=adv))

    def load(self, run_dir: Path, epochs: int) -> None:
        """The first ``epochs`` rows of the run's dynamics.npz, if it has one (a resume)."""
        path = run_dir / "dynamics.npz"
        if path.is_file():
            with np.load(path) as arrays:
                self.epochs = {k: list(arrays[k][:epochs]) for k in ("clean", "adv")}


def average_rate(epochs: list[dict[str, Any]]) -> float:
    """Training images per second over the whole run (all epochs' images over all their time), not the last
    epoch's rate: one fast epoch on a quiet machine says little of a run that mostly shared it."""
    images = sum(rec["images_per_s"] * rec["time_s"] for rec in epochs)
    seconds = sum(rec["time_s"] for rec in epochs)
    return images / seconds if seconds > 0 else 0.0


def run_summary(
    run_dir: Path,
    recipe: Recipe,
    role: str,
    info: dict[str, Any],
    *,
    epochs: int,
    best: dict[str, Any],
    speed: dict[str, Any],
    images: dict[str, int],
    teachers: list[dict[str, Any]] | None = None,
    onnx_runtimes: list[str] | None = None,
    world_size: int | None = None,
) -> dict[str, Any]:
    """summary.json's content: what was trained (``info`` as :func:`akd_edge.models.model_info` gives it), the
    ``epochs`` done and the ``best`` validation, the times read from metrics.jsonl, the threat, the ``speed``
    plan, the ``images`` trained on, and where present the teachers' provenance, the ONNX teachers' runtimes and
    the data-parallel world size."""
    records = read_metrics(run_dir)
    trained = [rec for rec in records if rec["event"] == "epoch"]
    evals = [rec for rec in records if rec["event"] == "eval"]
    summary = {
        "run_dir": str(run_dir),
        "role": role,
        "model": recipe.model.name,
        "method": recipe.method.name,
        "params": info["params"],
        "macs": info["macs"],
        "epochs": epochs,
        "best": best,
        "last": evals[-1] if evals else {},
        "train_time_s": sum(rec["time_s"] for rec in trained),
        "val_time_s": sum(rec["time_s"] for rec in evals),
        "images_per_s": average_rate(trained),
        "threat": {"norm": recipe.eval.attack.norm, "eps": recipe.eval.attack.eps},
        "train_attack": recipe.train.attack.settings(),
        "speed": speed,
        "images": images,
    }
    if teachers is not None:
        summary["teachers"] = teachers
    if onnx_runtimes:
        summary["speed"]["onnx_teacher_runtime"] = onnx_runtimes
    if world_size is not None:
        summary["world_size"] = world_size
    return summary
