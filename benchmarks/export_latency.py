"""Latency, throughput and size of the Fashion-MNIST student and teacher: torch eager vs onnxruntime fp32/int8.

Exports each model with ``akd-edge export`` (int8 calibrated on real Fashion-MNIST training images), then
times batch-1 latency (p50/p95) and batch-256 throughput on this machine's CPU, and prints a markdown
table for the README. Speed does not depend on the weights, so without ``--student``/``--teacher``
checkpoints freshly initialised ``cnn-student``/``cnn-teacher`` are used (the accuracy column then reads
n/a); pass trained runs to get fp32-vs-int8 agreement on the test split as well. Clean accuracy is measured
on the first ``--n`` test images (default 2,000, at least 1,000) and shown with its 95% Wilson interval.

    python benchmarks/export_latency.py [--student runs/fmnist-quickstart] [--teacher builtin:fmnist-teacher]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

from akd_edge.interval import REPORTED_N, format_interval, interval_of

FMNIST_MEAN, FMNIST_STD = [0.2860], [0.3530]


def fresh_checkpoint(arch: str, role: str, folder: Path, data_dir: str) -> Path:
    """An untrained Fashion-MNIST checkpoint of ``arch`` (for timing only)."""
    import torch

    from akd_edge.models import create_model
    from akd_edge.train.checkpoint import save_atomic

    torch.manual_seed(0)
    model = create_model(arch, num_classes=10, input_shape=(1, 28, 28), mean=FMNIST_MEAN, std=FMNIST_STD)
    arch_meta = {
        "name": arch,
        "kwargs": {},
        "num_classes": 10,
        "input_shape": [1, 28, 28],
        "mean": FMNIST_MEAN,
        "std": FMNIST_STD,
    }
    ckpt = {
        "format": "akd-edge/1",
        "model": model.state_dict(),
        "arch": arch_meta,
        "data": {"name": "fashion-mnist", "class_names": [str(k) for k in range(10)], "data_dir": data_dir},
        "threat": {"norm": "linf", "eps": 0.1},
        "role": role,
        "epoch": 0,
        "val": {},
    }
    return save_atomic(ckpt, folder / f"{arch}-untrained.pt")


def bench_one(role: str, source: str, work: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    from akd_edge.export import export_checkpoint
    from akd_edge.train.checkpoint import load_model
    from akd_edge.verify.report import MODEL_FILES, models_latency
    from akd_edge.verify.runtime import OrtClassifier

    folder, report = export_checkpoint(
        source, work / role, calib=args.calib, n_test=args.n, data_dir=args.data_dir or None
    )
    torch_model, meta = load_model(source)
    models = {name: OrtClassifier.load(folder / name, args.threads) for name in MODEL_FILES}
    latency, _ = models_latency(
        folder, models, torch_model, tuple(meta["arch"]["input_shape"]), args.repeats, args.threads
    )
    agreement = report["checks"].get("int8_agreement", {})
    trained = bool(meta.get("val"))
    rows = []
    for name, res in latency.items():
        acc = None
        if trained and name.startswith("torch"):
            acc = report["checks"].get("torch_clean_acc")
        elif trained and name in ("model.onnx", "model.int8.onnx"):
            acc = agreement.get("fp32_clean_acc" if name == "model.onnx" else "int8_clean_acc")
        rows.append(
            {
                "role": role,
                "arch": meta["arch"]["name"],
                "params": sum(p.numel() for p in torch_model.parameters()),
                "model": name,
                "threads": res.get("threads"),
                "p50_ms": res["batch1_p50_ms"],
                "p95_ms": res["batch1_p95_ms"],
                "img_s": res.get("throughput_img_s"),
                "bytes": res.get("bytes"),
                "clean_acc": acc,
                "clean_ci95": interval_of(acc, agreement.get("n")),
                "int8_agreement": agreement.get("argmax_agreement") if name == "model.int8.onnx" else None,
            }
        )
    return rows


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | file / runtime | p50 ms (batch 1) | p95 ms (batch 1) | images/s (batch 256) | size | clean acc |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        img_s = f"{r['img_s']:,.0f}" if r["img_s"] else "n/a (fixed batch 1)"
        size = f"{r['bytes'] / 1024:,.1f} KiB" if r["bytes"] else "n/a"
        acc = f"{100 * r['clean_acc']:.2f}% {format_interval(r['clean_ci95'])}" if r["clean_acc"] is not None else "n/a"
        lines.append(
            f"| {r['role']} `{r['arch']}` ({r['params'] / 1000:.0f}k params) | {r['model']} | {r['p50_ms']:.3f} | "
            f"{r['p95_ms']:.3f} | {img_s} | {size} | {acc} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default="", help="student run dir or checkpoint (default: untrained cnn-student)")
    parser.add_argument("--teacher", default="", help="teacher run dir or checkpoint (default: untrained cnn-teacher)")
    parser.add_argument("--data-dir", default="", help="Fashion-MNIST folder (default: the usual search path)")
    parser.add_argument("--calib", type=int, default=512, help="training images to calibrate int8")
    parser.add_argument(
        "--n", type=int, default=2 * REPORTED_N, help="test images for the fp32-vs-int8 agreement and clean accuracy"
    )
    parser.add_argument("--repeats", type=int, default=300, help="batch-1 timing repeats")
    parser.add_argument("--threads", type=int, default=0, help="threads for torch and onnxruntime (0 = default)")
    parser.add_argument("--json", default="", help="also write the rows to this JSON file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    import onnxruntime
    import torch

    from akd_edge.export import quiet_libraries

    if args.threads:
        torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, quiet_libraries():
        work = Path(tmp)
        for role, given, arch in (("student", args.student, "cnn-student"), ("teacher", args.teacher, "cnn-teacher")):
            source = given or str(fresh_checkpoint(arch, role, work, args.data_dir))
            rows += bench_one(role, source, work, args)
    print(markdown(rows))
    print()
    print(
        f"{cpu_name()}, {os.cpu_count()} CPUs visible, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {onnxruntime.__version__} "
        f"({args.threads or 'default'} threads); batch-1 figures over {args.repeats} runs, throughput over 5 batches of 256."
    )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
