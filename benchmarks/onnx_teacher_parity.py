"""Benchmark: a student distilled from the ONNX export of a teacher against one from the torch teacher.

Issue 12's done-when: the same recipe and seed, once with the torch teacher (``builtin:fmnist-teacher``, run
by akd-edge's fast path) and once with ``onnx:`` of its akd-edge export (onnxruntime in float32, or OpenVINO
at bf16 where the run's plan gives teachers bf16 and the ``openvino`` extra is installed), should reach
the same validation accuracy within 0.5 point. Prints both runs' validation numbers, their difference and
each run's training speed, and writes ``benchmarks/results/onnx_teacher_parity.json``.

    python benchmarks/onnx_teacher_parity.py                      # quickstart, 1 epoch, 20,000 images
    python benchmarks/onnx_teacher_parity.py --set train.epochs=4 --set data.train_subset=0
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import akd_edge as ae
from akd_edge.core.files import write_json_atomic
from akd_edge.export.command import quiet_libraries
from akd_edge.export.onnx import export_onnx
from akd_edge.export.provenance import onnx_metadata
from akd_edge.models.checkpoint import load_model
from akd_edge.train.accel import machine_summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="fmnist-quickstart")
    parser.add_argument("--teacher", default="builtin:fmnist-teacher", help="teacher run directory or checkpoint")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/onnx_teacher_parity.json")
    args = parser.parse_args()
    overrides = ["train.epochs=1", "data.train_subset=20000", *args.overrides]

    model, meta = load_model(args.teacher)
    shape = tuple(meta["arch"]["input_shape"])
    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as work:
        onnx_path = Path(work) / "teacher.onnx"
        with quiet_libraries():
            export_onnx(model, onnx_path, shape, onnx_metadata(meta))
        for label, source in (("torch", args.teacher), ("onnx", f"onnx:{onnx_path}")):
            _, summary = ae.distill(
                args.recipe,
                overrides=[*overrides, f'teachers=[{{path = "{source}"}}]'],
                run_dir=Path(work) / label,
                threads=args.threads,
            )
            runs[label] = {
                "teacher": source if label == "torch" else "onnx: export of " + args.teacher,
                "val_best": summary["best"],
                "images_per_s": round(summary["images_per_s"], 1),
                "train_time_s": summary["train_time_s"],
                "speed": summary.get("speed"),
            }
            print(f"{label:>5}: val {summary['best']}, {summary['images_per_s']:.0f} images/s")
    diff = {
        key: round(abs(runs["torch"]["val_best"][key] - runs["onnx"]["val_best"][key]) * 100, 2)
        for key in ("clean_acc", "robust_acc")
    }
    print(f"difference (points): clean {diff['clean_acc']}, robust {diff['robust_acc']}")
    result = {
        "recipe": args.recipe,
        "overrides": overrides,
        "threads": args.threads,
        "runs": runs,
        "abs_difference_points": diff,
        "within_half_point": all(v <= 0.5 for v in diff.values()),
        "machine": machine_summary(),
    }
    write_json_atomic(Path(args.out), result)
    print(json.dumps(diff), "->", args.out)


if __name__ == "__main__":
    main()
