"""Package a teacher run as the shipped teacher: weights, recipe and the numbers it reaches, measured here.

    python benchmarks/ship_teacher.py runs/fmnist-teacher [--name fmnist-teacher] [--n 2000]

Writes ``akd_edge/assets/NAME.pt`` (the early-stopped ``best.pt`` without resume state),
``akd_edge/assets/NAME.toml`` (the run's resolved recipe) and ``akd_edge/assets/NAME.json`` (validation
history, and test accuracy clean and under PGD-20 measured by this script, with the attack's settings,
the machine and the training time).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
from pathlib import Path

import numpy as np
import torch

from akd_edge import __version__
from akd_edge.config import AttackConfig
from akd_edge.data import load_test_split
from akd_edge.train.checkpoint import ASSETS, load_checkpoint, load_model, model_only, save_atomic
from akd_edge.train.loop import resolve_device
from akd_edge.train.validate import validate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--name", default="fmnist-teacher")
    parser.add_argument("--n", type=int, default=2000, help="test images attacked")
    args = parser.parse_args()

    torch.manual_seed(0)
    ckpt = load_checkpoint(args.run_dir, "best")
    model, meta = load_model(args.run_dir, "best")
    threat = meta["threat"]
    attack = AttackConfig(name="pgd", norm=threat["norm"], eps=threat["eps"], steps=20)
    test, _ = load_test_split(meta["data"]["name"], meta["data"].get("data_dir", ""), n=args.n)
    test_metrics = validate(model, test, attack, batch_size=500, device=resolve_device("auto"))

    records = [json.loads(line) for line in (args.run_dir / "metrics.jsonl").read_text().splitlines() if line]
    summary = json.loads((args.run_dir / "summary.json").read_text())
    report = {
        "name": args.name,
        "akd_edge_version": __version__,
        "model": meta["arch"]["name"],
        "params": summary["params"],
        "macs": summary["macs"],
        "best_epoch": ckpt["epoch"],
        "epochs": summary["epochs"],
        "validation": [r for r in records if r["event"] == "eval"],
        "test": {
            **test_metrics,
            "attack": {
                "name": "pgd",
                "norm": attack.norm,
                "eps": attack.eps,
                "steps": 20,
                "step_size": attack.resolved_step_size,
                "random_start": True,
            },
        },
        "train_time_s": summary["train_time_s"],
        "machine": f"{platform.machine()} {platform.processor()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
    }
    ASSETS.mkdir(parents=True, exist_ok=True)
    save_atomic(model_only(ckpt), ASSETS / f"{args.name}.pt")
    shutil.copyfile(args.run_dir / "recipe.toml", ASSETS / f"{args.name}.toml")
    (ASSETS / f"{args.name}.json").write_text(json.dumps(report, indent=2, default=_plain) + "\n")
    print(
        json.dumps({k: report[k] for k in ("best_epoch", "epochs", "test", "train_time_s")}, indent=2, default=_plain)
    )


def _plain(value: object) -> object:
    return value.item() if isinstance(value, np.generic) else str(value)


if __name__ == "__main__":
    main()
