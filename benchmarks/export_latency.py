"""Latency, throughput and size of every shipped student (and the Fashion-MNIST teacher): torch eager vs
onnxruntime fp32 / int8, side by side in one run.

Exports each model with ``akd-edge export`` (int8 calibrated on real Fashion-MNIST training images; the
CIFAR-10 students on random images when CIFAR-10 is not on this machine, which changes no speed), then times
batch-1 latency (p50/p95) and batch-256 throughput on this machine's CPU, and prints a markdown table for
the README. ``--baseline-float-layers none`` also exports int8 with everything quantized (the placement
before the float stem) and times it in the same run, so the int8 fix is measured against what it replaced.
Speed does not depend on the weights, so without ``--student``/``--teacher`` checkpoints freshly
initialised models are used (the accuracy column then reads n/a); pass trained runs to get fp32-vs-int8
agreement on the test split as well. Clean accuracy is measured on the first ``--n`` test images
(default 2,000, at least 1,000) and shown with its 95% Wilson interval.

    python benchmarks/export_latency.py [--student runs/fmnist-quickstart] [--teacher builtin:fmnist-teacher]
    python benchmarks/export_latency.py --models cnn-student,resnet18,mobilenetv2 --threads 1 \
        --baseline-float-layers none --json benchmarks/results/export_latency.json
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from akd_edge.core.interval import REPORTED_N, format_interval, interval_of

FMNIST_MEAN, FMNIST_STD = [0.2860], [0.3530]
DATASETS = {
    "fashion-mnist": {"input_shape": [1, 28, 28], "mean": FMNIST_MEAN, "std": FMNIST_STD},
    "cifar10": {"input_shape": [3, 32, 32], "mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]},
}
SHIPPED = {
    "cnn-student": "fashion-mnist",
    "cnn-teacher": "fashion-mnist",
    "resnet18": "cifar10",
    "mobilenetv2": "cifar10",
}
"""The models of the shipped recipes and the dataset each is trained on (the students of every recipe)."""


def fresh_checkpoint(arch: str, role: str, folder: Path, data_dir: str, dataset: str = "fashion-mnist") -> Path:
    """An untrained checkpoint of ``arch`` for ``dataset`` (for timing only)."""
    import torch

    from akd_edge.models import create_model
    from akd_edge.models.checkpoint import save_atomic

    torch.manual_seed(0)
    shape = DATASETS[dataset]
    model = create_model(arch, num_classes=10, **{**shape, "input_shape": tuple(shape["input_shape"])})
    arch_meta = {"name": arch, "kwargs": {}, "num_classes": 10, **shape}
    ckpt = {
        "format": "akd-edge/1",
        "model": model.state_dict(),
        "arch": arch_meta,
        "data": {"name": dataset, "class_names": [str(k) for k in range(10)], "data_dir": data_dir},
        "threat": {"norm": "linf", "eps": 0.1},
        "role": role,
        "epoch": 0,
        "val": {},
    }
    return save_atomic(ckpt, folder / f"{arch}-untrained.pt")


def random_data(dataset: str, calib: int, n: int) -> Any:
    """Random images in place of a dataset this machine lacks (speed does not depend on the pixels)."""
    import numpy as np

    from akd_edge.export import ExportData

    rng = np.random.default_rng(0)
    shape = DATASETS[dataset]["input_shape"]
    images = rng.integers(0, 256, (calib + n, *shape), dtype=np.uint8)
    return ExportData(images[:calib], images[calib:], rng.integers(0, 10, n), source="random images")


def bench_one(role: str, source: str, work: Path, args: argparse.Namespace, **export: Any) -> list[dict[str, Any]]:
    """Export ``source`` (``export``: more export_checkpoint arguments) and time its files; one row per file."""
    from akd_edge.core.ort import OrtClassifier
    from akd_edge.export import export_checkpoint
    from akd_edge.models.checkpoint import load_model
    from akd_edge.verify.command import ONNX_MODELS, models_latency

    settings = export.get("int8_settings") or {}
    folder, report = export_checkpoint(
        source,
        work / f"{role}-{Path(source).stem}-{settings.get('float_layers', 'default')}",
        calib=args.calib,
        n_test=args.n,
        data_dir=args.data_dir or None,
        web=False,
        keep_failed_int8=True,
        **export,
    )
    torch_model, meta = load_model(source)
    models = {name: OrtClassifier.load(folder / name, args.threads) for name in ONNX_MODELS}
    latency, _ = models_latency(
        folder, models, torch_model, tuple(meta["arch"]["input_shape"]), args.repeats, args.threads
    )
    agreement = report["checks"].get("int8_agreement", {})
    placement = report["quantization"]["float_layers"]
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
                "model": name if "int8" not in name else f"{name} (float layers: {placement})",
                "float_layers": placement if "int8" in name else None,
                "threads": res.get("threads"),
                "p50_ms": res["batch1_p50_ms"],
                "p95_ms": res["batch1_p95_ms"],
                "img_s": res.get("throughput_img_s"),
                "bytes": res.get("bytes"),
                "clean_acc": acc,
                "clean_ci95": interval_of(acc, agreement.get("n")),
                "int8_agreement": agreement.get("argmax_agreement") if "int8" in name and trained else None,
            }
        )
    return rows


def int8_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each int8 file's batch-256 throughput and batch-1 p50 against its model's fp32 file, timed in the same run."""
    ratios = []
    for row in rows:
        if row["model"].startswith("model.int8.onnx"):
            fp32 = next(r for r in rows if r["arch"] == row["arch"] and r["model"] == "model.onnx")
            ratios.append(
                {
                    "arch": row["arch"],
                    "float_layers": row["float_layers"],
                    "throughput_ratio": round(row["img_s"] / fp32["img_s"], 3),
                    "batch1_latency_ratio": round(row["p50_ms"] / fp32["p50_ms"], 3),
                    "int8_agreement": row["int8_agreement"],
                }
            )
    return ratios


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
    parser.add_argument(
        "--models",
        default="cnn-student,cnn-teacher",
        help=f"comma-separated models to time, of {', '.join(SHIPPED)} (--student/--teacher replace the cnn ones)",
    )
    parser.add_argument(
        "--baseline-float-layers",
        default="",
        help="also export int8 with this --float-layers (e.g. none: everything int8) and time it in the same run",
    )
    parser.add_argument("--data-dir", default="", help="Fashion-MNIST folder (default: the usual search path)")
    parser.add_argument("--calib", type=int, default=512, help="training images to calibrate int8")
    parser.add_argument(
        "--n", type=int, default=2 * REPORTED_N, help="test images for the fp32-vs-int8 agreement and clean accuracy"
    )
    parser.add_argument("--repeats", type=int, default=300, help="batch-1 timing repeats")
    parser.add_argument("--threads", type=int, default=0, help="threads for torch and onnxruntime (0 = default)")
    parser.add_argument("--json", default="", help="also write the rows, ratios and machine to this JSON file")
    return parser.parse_args(argv)


def _source(arch: str, args: argparse.Namespace, work: Path) -> tuple[str, str, dict[str, Any]]:
    """(role, checkpoint, extra export arguments) of one model to time."""
    from akd_edge.core.errors import DataError
    from akd_edge.data import get_loader

    role = "teacher" if arch == "cnn-teacher" else "student"
    given = {"cnn-student": args.student, "cnn-teacher": args.teacher}.get(arch, "")
    if given:
        return role, given, {}
    dataset = SHIPPED[arch]
    source = str(fresh_checkpoint(arch, role, work, args.data_dir, dataset))
    try:
        get_loader(dataset)(args.data_dir, parts=("test",), download=False)
        return role, source, {}
    except DataError:  # not on this machine: time on random images instead
        return role, source, {"data": random_data(dataset, args.calib, args.n)}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    import onnxruntime
    import torch

    from akd_edge.core.env import load_average
    from akd_edge.export import quiet_libraries
    from akd_edge.train.accel import machine_summary

    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = load_average()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, quiet_libraries():
        work = Path(tmp)
        for arch in [name.strip() for name in args.models.split(",") if name.strip()]:
            role, source, export = _source(arch, args, work)
            rows += bench_one(role, source, work, args, **export)
            if args.baseline_float_layers:
                baseline = {**export, "int8_settings": {"float_layers": args.baseline_float_layers}}
                rows += [r for r in bench_one(role, source, work, args, **baseline) if "int8" in r["model"]]
    machine = {**machine_summary(), "cpus": os.cpu_count(), "load_average": [load_before, load_average()]}
    print(markdown(rows))
    print()
    for ratio in int8_ratios(rows):
        print(
            f"{ratio['arch']} int8 ({ratio['float_layers']}): {ratio['throughput_ratio']:.2f}x fp32 throughput at "
            f"batch 256, {ratio['batch1_latency_ratio']:.2f}x its batch-1 latency"
        )
    print(
        f"{cpu_name()} (flags {' '.join(machine['cpu_flags']) or '-'}), {os.cpu_count()} CPUs visible, load average "
        f"{load_before} before / {machine['load_average'][1]} after, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), onnxruntime {onnxruntime.__version__} ({args.threads or 'default'} "
        f"threads); batch-1 figures over {args.repeats} runs, throughput over 5 batches of 256."
    )
    if args.json:
        from akd_edge.core.files import write_json_atomic

        payload = {
            "machine": machine,
            "onnxruntime": onnxruntime.__version__,
            "threads": args.threads,
            "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "ratios": int8_ratios(rows),
            "rows": rows,
        }
        write_json_atomic(args.json, payload)


if __name__ == "__main__":
    main()
