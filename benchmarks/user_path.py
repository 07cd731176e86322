"""Time the README's path on the machine at hand, step by step, and publish it: ``benchmarks/results/user_path.json``.

The steps, as a new user takes them: with ``--fresh-demo``, ``make demo`` itself on the committed tree in a new
venv (creating it, installing, distilling); the demo distillation (``make demo``: ``fmnist-demo``, then its PGD-20
on 1,000 test images), ``akd-edge export`` of that student (fp32 and int8 timed side by side), ``akd-edge
verify`` of 1,000 test images (with verify's own split: clean, transfer, Square per model, latency; verify
before and after side by side is ``benchmarks/verify_speed.py``), and ``akd-edge run fmnist-quickstart
--prune 0.5`` with each of its stages timed (distill, prune, export, verify, report). Each step's wall time
is printed and saved with the machine: CPU model, AVX2 / AVX-512 / AMX flags, cores, and the load average
before and after it (a shared machine slows every figure; compare figures only between quiet runs).

    python benchmarks/user_path.py                    # the whole path (tens of minutes on 2 cores)
    python benchmarks/user_path.py --skip-run         # demo, export and verify only
    python benchmarks/user_path.py --fresh-demo --skip-run   # first `make demo` in a new venv, as a new user
    python benchmarks/user_path.py --quick --out /tmp/path.json   # tiny settings on synthetic data (tests)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "user_path.json"
DEMO, QUICKSTART = "fmnist-demo", "fmnist-quickstart"
QUICK_DATA = "n=256,test=64,shape=1x28x28,classes=10,noise=0.25,seed=3"
QUICK_SET = [
    "data.name=synthetic",
    f"data.data_dir={QUICK_DATA}",
    "data.val_size=64",
    "data.train_subset=0",
    "train.epochs=1",
    "eval.val_samples=32",
]
"""``--quick``: the recipes on synthetic 28x28 images (the shipped teacher still runs), one epoch."""
STEPS = {
    "fresh": "make demo on a fresh copy of the committed tree, in a new venv (venv, install, distillation)",
    "demo": f"demo distillation (make demo: {DEMO})",
    "export": "akd-edge export of the demo student",
    "verify": "akd-edge verify of the demo export",
    "run": f"akd-edge run {QUICKSTART} --prune 0.5",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="test images of the demo's PGD-20 and of verify")
    parser.add_argument("--square-queries", type=int, default=1000, help="queries of verify's Square attack")
    parser.add_argument("--transfer", default="fast", help="verify's transfer AutoAttack version, or none")
    parser.add_argument("--skip-run", action="store_true", help="leave out `akd-edge run fmnist-quickstart`")
    parser.add_argument(
        "--fresh-demo",
        action="store_true",
        help="first time `make demo` as a new user runs it: the committed tree (git archive HEAD) in a new venv",
    )
    parser.add_argument("--quick", action="store_true", help="tiny settings on synthetic data (for tests)")
    parser.add_argument("--work", type=Path, help="folder for the runs and exports (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results file")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.square_queries, args.transfer = min(args.n, 48), min(args.square_queries, 10), "none"
    return args


def machine() -> dict[str, Any]:
    """The CPU model, its AVX2 / AVX-512 / AMX flags, cores and threads, torch and onnxruntime versions."""
    import onnxruntime

    from akd_edge.train.accel import machine_summary

    summary = machine_summary()
    return {
        "cpu": summary["cpu"],
        "cpu_flags": summary["cpu_flags"],
        "cores": os.cpu_count(),
        "torch_threads": summary["threads"],
        "torch": summary["torch"],
        "onnxruntime": onnxruntime.__version__,
    }


def timed(name: str, step: Callable[[], dict[str, Any]], steps: dict[str, Any]) -> dict[str, Any]:
    """Run ``step``; record its wall time and the load average around it in ``steps[name]``, print it."""
    from akd_edge.core.env import load_average

    before, start = load_average(), time.perf_counter()
    result = step()
    steps[name] = {"seconds": round(time.perf_counter() - start, 1), "load_average": [before, load_average()], **result}
    print(f"{STEPS[name]}: {steps[name]['seconds']:,.1f} s (load average {before} -> {load_average()})", flush=True)
    return steps[name]


def fresh_demo_step(work: Path) -> dict[str, Any]:
    """`make demo` on the committed tree (``git archive HEAD``, as a fresh clone has it) with a new venv: the
    venv, the installs (pip from this machine's cache and registries) and the demo distillation, timed as one."""
    root, clone, venv = Path(__file__).resolve().parents[1], work / "clone", work / "venv"
    clone.mkdir(parents=True)
    tree = subprocess.run(["git", "-C", str(root), "archive", "HEAD"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(clone)], input=tree, check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    python = shutil.which("python3", path=env.get("PATH")) or "python3"
    start = time.perf_counter()
    subprocess.run([python, "-m", "venv", str(venv)], check=True, env=env)
    made = subprocess.run(
        ["make", "-C", str(clone), "demo", f"PYTHON={venv / 'bin' / 'python'}"], env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if made.returncode != 0:
        raise SystemExit(f"make demo failed ({made.returncode}):\n{made.stdout[-2000:]}\n{made.stderr[-2000:]}")
    summary = json.loads((clone / "runs" / DEMO / "summary.json").read_text())
    return {"make_demo_s": round(seconds, 1), "train_time_s": round(summary["train_time_s"], 1)}


def demo_step(work: Path, args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    """`make demo`'s distillation, then its PGD-20 on ``--n`` test images (``run_recipe.measure_test``)."""
    from run_recipe import measure_test

    from akd_edge import api
    from akd_edge.config import load_recipe

    _, summary = api.distill(DEMO, overrides=overrides, run_dir=work / "demo")
    test = measure_test(work / "demo", load_recipe(DEMO, overrides), args.n)
    return {"train_time_s": round(summary["train_time_s"], 1), "epochs": summary["epochs"], "test": test}


def export_step(work: Path) -> dict[str, Any]:
    from akd_edge import api

    _, report = api.export(work / "demo", work / "export", web=False)
    speed = report["checks"].get("int8_speed", {})
    keys = ("throughput_ratio", "batch1_latency_ratio", "recommended_for_speed")
    return {"int8_agreement": report["checks"].get("int8_agreement"), **{k: speed.get(k) for k in keys}}


def verify_step(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from akd_edge import api

    verify = api.verify(work / "export", n=args.n, square_queries=args.square_queries, transfer=args.transfer)
    robust = {name: res.get("robust_acc") for name, res in verify["models"].items()}
    return {
        "n": args.n,
        "square_queries": args.square_queries,
        "transfer": args.transfer,
        "robust_acc": robust,
        "workers": verify["settings"].get("workers"),
        "timings_s": verify.get("timings_s"),
    }


def run_step(work: Path, args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    """`akd-edge run fmnist-quickstart --prune 0.5`, each stage's wall time from the pipeline itself."""
    from akd_edge.run import PipelineOptions, run_pipeline

    quick = {"prune_epochs": 1, "calib": 32, "teacher": False} if args.quick else {}
    options = PipelineOptions(
        prune=(0.5,), n=args.n, square_queries=args.square_queries, transfer=args.transfer, **quick
    )
    where = [f"run.out_dir={work}"]  # the distillation run lands beside the pipeline folder, not in ./runs
    result = run_pipeline(QUICKSTART, overrides=[*overrides, *where], options=options, out=work / "pipeline")
    return {"stages": result["timings"]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))

    from akd_edge.core.env import load_average
    from akd_edge.core.files import write_json_atomic

    overrides = QUICK_SET if args.quick else []
    payload: dict[str, Any] = {
        "machine": machine(),
        "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "quick": args.quick,
        "settings": {"n": args.n, "square_queries": args.square_queries, "transfer": args.transfer},
        "steps_described": STEPS,
        "steps": {},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    steps = {
        "fresh": lambda: fresh_demo_step(work),
        "demo": lambda: demo_step(work, args, overrides),
        "export": lambda: export_step(work),
        "verify": lambda: verify_step(work, args),
        "run": lambda: run_step(work, args, overrides),
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        for name, step in steps.items():
            if (name == "run" and args.skip_run) or (name == "fresh" and not args.fresh_demo):
                continue
            timed(name, step, payload["steps"])
            payload["load_average_end"] = load_average()
            write_json_atomic(args.out, payload)  # after every step: a stopped run keeps what it measured
    for stage in payload["steps"].get("run", {}).get("stages", []):
        print(f"  {stage['title']}: {stage['seconds']:,.1f} s{'' if stage['ran'] else ' (skipped)'}")
    demo, cpu = payload["steps"]["demo"]["test"], payload["machine"]
    print(
        f"demo student: {demo['clean_acc']:.1%} clean / {demo['robust_acc']:.1%} PGD-20 on {demo['n']:,} test images; "
        f"machine: {cpu['cpu']} (flags {' '.join(cpu['cpu_flags']) or '-'}), {cpu['cores']} cores"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
