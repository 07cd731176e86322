#!/usr/bin/env python
"""Benchmark: the teacher's forward time per training step, torch vs onnxruntime (issue 12, Done-when).

The teacher is loaded through ``akd_edge.teachers.load_teachers`` four ways: its torch checkpoint as loaded
(eager, float32); with the fast-teacher path a distillation uses on this machine (``accelerate_teacher``
with ``default_plan``: BatchNorm folded, layout and precision as the hardware decides, bf16 on AMX CPUs);
the same fast path in float32 (what a CPU without AMX-BF16 runs); and ``onnx:`` of its akd-edge export
(``OnnxTeacher``: onnxruntime, float32), plus that ONNX teacher's fast path where it differs (OpenVINO at bf16
when the plan's teacher precision is bf16 and the ``openvino`` extra is installed), which is what a
distillation from the ``onnx:`` teacher runs. Each computes ``ensemble.probs`` on the same random batch of the training batch
size, timed alternately (a, b, c, d, a, ...) so a busy machine's load hits all; the median is reported with
each one's largest probability difference from the eager teacher.

    python benchmarks/teacher_forward.py                       # the shipped teacher, batch 128, 1 thread
    python benchmarks/teacher_forward.py --teacher runs/t --batch 256 --threads 4

``--out`` (default benchmarks/results/teacher_forward.json) gets the figures and the machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from akd_edge.config import TeacherSpec
from akd_edge.export.command import quiet_libraries
from akd_edge.export.onnx import export_onnx
from akd_edge.export.provenance import onnx_metadata
from akd_edge.models.checkpoint import load_model
from akd_edge.teachers import load_teachers
from akd_edge.train.accel import accelerate_teacher, default_plan, machine_summary, time_alternating


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="builtin:fmnist-teacher", help="teacher run directory or checkpoint")
    parser.add_argument("--batch", type=int, default=128, help="images per step (the recipe's data.batch_size)")
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", default="benchmarks/results/teacher_forward.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, meta = load_model(args.teacher)
    shape, classes = tuple(meta["arch"]["input_shape"]), int(meta["arch"]["num_classes"])
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "teacher.onnx"
        with quiet_libraries():
            export_onnx(model, path, shape, onnx_metadata(meta))
        eager = load_teachers([TeacherSpec(path=args.teacher)], device, shape, classes)
        plan = default_plan(device)
        fast = accelerate_teacher(eager, plan)
        onnx_teacher = load_teachers([TeacherSpec(path=f"onnx:{path}")], device, shape, classes)
        x = torch.rand(args.batch, *shape, generator=torch.Generator().manual_seed(0))
        fast_fp32 = accelerate_teacher(eager, replace(plan, teacher_precision="fp32"))  # a CPU without AMX-BF16
        teachers = {
            "torch eager fp32": eager,
            "torch fast path": fast,
            "torch fast path fp32": fast_fp32,
            "onnxruntime": onnx_teacher,
        }
        onnx_fast = accelerate_teacher(onnx_teacher, plan)  # what a distillation runs: OpenVINO bf16 where it can
        if onnx_fast.members[0] is not onnx_teacher.members[0]:
            teachers[f"onnx: fast path ({onnx_fast.members[0].runtime})"] = onnx_fast
        reference = eager.probs(x)
        diffs = {name: float((t.probs(x) - reference).abs().max()) for name, t in teachers.items()}
        times = time_alternating(
            {name: (lambda t=t: t.probs(x)) for name, t in teachers.items()}, device, repeats=args.repeats, warmup=3
        )
    onnx_key = next(name for name in times if name.startswith("onnx: fast path")) if len(times) > 4 else "onnxruntime"
    result = {
        "teacher": args.teacher,
        "arch": meta["arch"]["name"],
        "batch": args.batch,
        "threads": args.threads,
        "repeats": args.repeats,
        "torch_plan": {k: v for k, v in plan.to_dict().items() if k.startswith("teacher")},
        "ms_per_step": {name: round(seconds * 1e3, 3) for name, seconds in times.items()},
        "onnxruntime_speedup": {
            name: round(seconds / times["onnxruntime"], 2) for name, seconds in times.items() if name != "onnxruntime"
        },
        "onnx_fast_path_speedup": {
            name: round(seconds / times[onnx_key], 2) for name, seconds in times.items() if name != onnx_key
        },
        "max_abs_prob_diff_vs_eager": diffs,
        "machine": machine_summary(),
    }
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
