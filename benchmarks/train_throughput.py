"""Training throughput of each objective on the Fashion-MNIST teacher/student pair, and share of peak.

Prints a markdown table: images/s for teacher AT and for the student trained with AT, TRADES, RSLAD and AKD
(1 and 3 teachers), the model FLOPs of one step (torch's FlopCounterMode, attack included) and the FLOP/s
reached as a share of a large float32 matmul's FLOP/s measured in the same run on the same machine.

    python benchmarks/train_throughput.py [--batches 10] [--batch-size 128] [--threads 0]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from akd_edge.attacks import build_attack
from akd_edge.config import AttackConfig, MethodConfig, OptimConfig
from akd_edge.methods import METHODS
from akd_edge.models import create_model
from akd_edge.teachers import TeacherEnsemble
from akd_edge.train.schedule import build_optimizer

SHAPE = (1, 28, 28)
EPS = 0.1


def make(name: str) -> torch.nn.Module:
    return create_model(name, num_classes=10, input_shape=SHAPE, mean=[0.286], std=[0.353])


class _GlobalOnly:
    """Stands in for FlopCounterMode's module tracker, whose backward hooks break autograd.grad on inputs."""

    parents = frozenset({"Global"})

    def __enter__(self) -> _GlobalOnly:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def count_flops(fn: callable, *args: object) -> int:
    """Total FLOPs of ``fn(*args)`` (forward, backward and attack gradients) by torch's FLOP counter."""
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()
    with counter:
        fn(*args)
    return counter.get_total_flops()


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a large float32 matmul: the machine's practical peak for these kernels."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def step_fn(model: torch.nn.Module, method: str, steps: int, teachers: int) -> callable:
    teacher = TeacherEnsemble([make("cnn-teacher") for _ in range(teachers)]) if teachers else None
    attack = build_attack(AttackConfig(eps=EPS, steps=steps))
    task = METHODS.get(method)(model, attack, MethodConfig(name=method), teacher)
    optimizer = build_optimizer(model, OptimConfig())

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        model.train()
        loss = task(x, y)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def measure(label: str, model_name: str, method: str, steps: int, teachers: int, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    model = make(model_name)
    step = step_fn(model, method, steps, teachers)
    x = torch.rand(args.batch_size, *SHAPE)
    y = torch.randint(0, 10, (args.batch_size,))
    flops = count_flops(step, x, y)
    step(x, y)  # warm-up
    start = time.perf_counter()
    for _ in range(args.batches):
        step(x, y)
    seconds = time.perf_counter() - start
    return {
        "label": label,
        "images_per_s": args.batches * args.batch_size / seconds,
        "gflop_per_step": flops / 1e9,
        "gflop_per_s": flops * args.batches / seconds / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=10, help="timed batches per configuration")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = [
        ("teacher cnn-teacher, AT PGD-3", "cnn-teacher", "at", 3, 0),
        ("student cnn-student, AT PGD-5", "cnn-student", "at", 5, 0),
        ("student cnn-student, TRADES PGD-5", "cnn-student", "trades", 5, 0),
        ("student cnn-student, RSLAD PGD-5", "cnn-student", "rslad", 5, 1),
        ("student cnn-student, AKD PGD-5, 1 teacher", "cnn-student", "akd", 5, 1),
        ("student cnn-student, AKD PGD-5, 3 teachers", "cnn-student", "akd", 5, 3),
    ]
    peak = matmul_peak()
    rows = [measure(*config, args) for config in configs]
    peak = max(peak, matmul_peak())  # measured before and after: the higher one, against noise
    print(
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}; batch {args.batch_size}, Linf eps {EPS}; "
        f"matmul peak {peak / 1e9:.0f} GFLOP/s\n"
    )
    print("| configuration | images/s | GFLOP per step | GFLOP/s | share of matmul peak |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        share = row["gflop_per_s"] * 1e9 / peak
        print(
            f"| {row['label']} | {row['images_per_s']:.0f} | {row['gflop_per_step']:.1f} | "
            f"{row['gflop_per_s']:.0f} | {share:.0%} |"
        )


if __name__ == "__main__":
    main()
