"""``akd-edge verify`` before and after, side by side on this machine: writes ``benchmarks/results/verify_speed.json``.

The previous code runs from a checkout of it (``--before``, e.g. ``git worktree add /tmp/akd-before <commit>``),
this tree's from here. Each repetition verifies the same export with each variant in a fresh process, the
order turning round from one repetition to the next (a shared machine drifts): the attacks only (no latency,
nothing written). The variants:

- ``before``: the previous code, its defaults;
- ``one process``: this tree with ``--threads 1``: the attacks one after another in one process of one thread
  (torch's and onnxruntime's thread pools no longer wait on each other; the transfer with frozen parameters
  and micro-batched forward passes);
- ``workers``: this tree's defaults: the attacks' batches on one worker process per CPU (and, since the attack
  copy, the transfer differentiates the model with its BatchNorms folded and channels_last weights: the same
  function up to float rounding, so an accuracy may move by an image where a gradient's sign flips).

Each run's wall time, the load average around it and its accuracies are saved; the medians and the ratio to
``before`` are printed with whether the accuracies of all variants are the same. ``--step`` also times the
torch model's forward and backward pass at AutoAttack's batch of 250: whole, frozen, 50 at a time, and verify's
attack copy.

    python benchmarks/verify_speed.py EXPORT_DIR --before /tmp/akd-before --n 1000 --repeats 3 --step
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "verify_speed.json"
CHILD = """
import json, sys, time
from akd_edge.verify.command import verify_export
start = time.perf_counter()
verify = verify_export(sys.argv[1], n=int(sys.argv[2]), square_queries=int(sys.argv[3]), threads=int(sys.argv[4]),
                       latency=False, write=False)
keys = ("clean_acc", "transfer_acc", "square_acc", "robust_acc", "robust_n")
print(json.dumps({"seconds": time.perf_counter() - start, "timings_s": verify["timings_s"],
                  "workers": verify["settings"].get("workers", 1),
                  "models": {name: {k: m[k] for k in keys} for name, m in verify["models"].items()}}))
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", type=Path, help="an export folder (akd-edge export) with its source checkpoint")
    parser.add_argument("--before", type=Path, required=True, help="a checkout of the code to compare with")
    parser.add_argument("--n", type=int, default=1000, help="test images")
    parser.add_argument("--square-queries", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default="before,one process,workers", help="which variants, comma-separated")
    parser.add_argument("--step", action="store_true", help="also time the torch forward and backward pass")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


VARIANTS = {"before": ("before", 0), "one process": ("after", 1), "workers": ("after", 0)}
"""Variant -> (which tree, --threads)."""


def run_variant(name: str, args: argparse.Namespace) -> dict[str, Any]:
    tree, threads = VARIANTS[name]
    path = str(args.before if tree == "before" else ROOT)
    env = {**os.environ, "PYTHONPATH": path}
    command = [sys.executable, "-c", CHILD, str(args.export), str(args.n), str(args.square_queries), str(threads)]
    load = os.getloadavg()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False, cwd="/")
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["load_average"] = [[round(v, 2) for v in load], [round(v, 2) for v in os.getloadavg()]]
    return result


def torch_step(checkpoint: str, repeats: int = 5) -> dict[str, Any]:
    """ms per forward + input-gradient backward pass at batch 250 (one thread): the model whole with trainable
    parameters, frozen, micro-batched, and verify's attack copy (BatchNorm folded, channels_last, micro-batched);
    each variant's largest gradient difference from the first."""
    import torch

    from akd_edge.verify.transfer import MICRO_BATCH, MicroBatched, attack_copy, load_torch_model

    torch.set_num_threads(1)
    model, meta = load_torch_model(checkpoint)
    frozen = copy.deepcopy(model).requires_grad_(False)
    x = torch.rand(250, *meta["arch"]["input_shape"], generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, int(meta["arch"]["num_classes"]), (250,), generator=torch.Generator().manual_seed(1))

    def step(net: Any) -> torch.Tensor:
        inputs = x.clone().requires_grad_()
        loss = torch.nn.functional.cross_entropy(net(inputs), y, reduction="none").sum()
        return torch.autograd.grad(loss, [inputs])[0]

    variants = {"whole": model, "frozen": frozen, "micro": MicroBatched(frozen, MICRO_BATCH)}
    variants["attack_copy"] = MicroBatched(attack_copy(model), MICRO_BATCH)
    times: dict[str, list[float]] = {name: [] for name in variants}
    grads = {}
    for _ in range(repeats):
        for name, net in variants.items():
            grads[name] = step(net)
            start = time.perf_counter()
            for _ in range(5):
                step(net)
            times[name].append((time.perf_counter() - start) / 5 * 1000)
    result: dict[str, Any] = {f"{name}_ms": round(statistics.median(v), 2) for name, v in times.items()}
    result["max_gradient_difference"] = {
        name: float((g - grads["whole"]).abs().max()) for name, g in grads.items() if name != "whole"
    }
    result["micro_batch"] = MICRO_BATCH
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from user_path import machine

    from akd_edge.core.files import write_json_atomic

    names = [name.strip() for name in args.variants.split(",") if name.strip()]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    payload: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "export": str(args.export),
        "before": str(args.before),
        "settings": {"n": args.n, "square_queries": args.square_queries, "transfer": "fast"},
        "cpus": os.cpu_count(),
        "machine": machine(),
        "runs": runs,
    }
    for repeat in range(args.repeats):
        order = names if repeat % 2 == 0 else names[::-1]
        for name in order:
            runs[name].append(run_variant(name, args))
            last = runs[name][-1]
            print(
                f"{repeat + 1}/{args.repeats} {name}: {last['seconds']:.1f} s (load {last['load_average']})", flush=True
            )
            write_json_atomic(args.out, payload)
    medians = {name: statistics.median(r["seconds"] for r in found) for name, found in runs.items()}
    payload["median_s"] = {name: round(value, 1) for name, value in medians.items()}
    if "before" in medians:
        payload["speedup"] = {name: round(medians["before"] / value, 2) for name, value in medians.items()}
    models = {name: found[0]["models"] for name, found in runs.items()}
    payload["same_accuracies"] = all(found == next(iter(models.values())) for found in models.values())
    if args.step:
        from akd_edge.export.card import read_report, recorded_checkpoint

        source = (read_report(args.export) or {}).get("source") or {}
        payload["torch_step"] = torch_step(str(recorded_checkpoint(args.export, source)))
    write_json_atomic(args.out, payload)
    for name, value in medians.items():
        ratio = f", {payload['speedup'][name]:.2f}x before" if "speedup" in payload else ""
        print(f"{name}: median {value:.1f} s{ratio}")
    print(f"accuracies identical across variants: {payload['same_accuracies']}")
    if args.step:
        print(f"torch forward+backward at batch 250: {payload['torch_step']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
