"""Is the int8 model faster than fp32 on this machine? Batch-256 throughput and batch-1 latency under onnxruntime.

Static int8 pays off only where the integer kernels have enough work: before the float stem
(:class:`~akd_edge.compress.quantize.Int8Settings`) the 24k Fashion-MNIST student ran at 0.55-0.83x its fp32
throughput. So export times both files side by side, records the figures in report.json and the model card,
and recommends fp32 for speed where int8 does not gain (it still makes the file smaller).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MIN_THROUGHPUT_RATIO = 1.0
"""int8 counts as faster when its batch-256 throughput is at least this multiple of fp32's ..."""
MAX_LATENCY_RATIO = 1.05
"""... and its batch-1 p50 latency at most this multiple of fp32's (timing noise of a shared machine)."""
ROUNDS = 2
"""Each file is timed this many times, alternately; the best figure of each counts (load only slows)."""


def speed_verdict(fp32: dict[str, Any], int8: dict[str, Any]) -> dict[str, Any]:
    """The ratios of two :func:`~akd_edge.core.ort.measure_latency` results and what they recommend."""
    throughput = int8["throughput_img_s"] / max(fp32["throughput_img_s"], 1e-9)
    latency = int8["batch1_p50_ms"] / max(fp32["batch1_p50_ms"], 1e-9)
    gains = throughput >= MIN_THROUGHPUT_RATIO and latency <= MAX_LATENCY_RATIO
    measured = f"{throughput:.2f}x the fp32 throughput at batch 256 and {latency:.2f}x its batch-1 latency"
    if gains:
        advice = f"int8 runs at {measured} on this machine: use model.int8.onnx for speed and size"
    else:
        advice = (
            f"int8 is not faster than fp32 on this machine ({measured}): use model.onnx (fp32) for speed; "
            "int8 only makes the file smaller"
        )
    return {
        "fp32": fp32,
        "int8": int8,
        "throughput_ratio": round(throughput, 3),
        "batch1_latency_ratio": round(latency, 3),
        "int8_faster": gains,
        "recommended_for_speed": "int8" if gains else "fp32",
        "advice": advice,
    }


def _best(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest of several timings of one file (highest throughput, lowest p50)."""
    best = dict(max(results, key=lambda r: r["throughput_img_s"]))
    best["batch1_p50_ms"] = min(r["batch1_p50_ms"] for r in results)
    best["batch1_p95_ms"] = min(r["batch1_p95_ms"] for r in results)
    return best


def compare_speed(
    fp32_path: str | Path,
    int8_path: str | Path,
    input_shape: tuple[int, ...],
    *,
    threads: int = 0,
    repeats: int = 50,
    throughput_repeats: int = 3,
) -> dict[str, Any]:
    """Time both files side by side (alternating, :data:`ROUNDS` each) and return :func:`speed_verdict`."""
    from akd_edge.core.env import load_average
    from akd_edge.core.ort import OrtClassifier, ort_latency
    from akd_edge.train.accel import machine_summary

    models = {"fp32": OrtClassifier.load(fp32_path, threads), "int8": OrtClassifier.load(int8_path, threads)}
    timings: dict[str, list[dict[str, Any]]] = {name: [] for name in models}
    for _ in range(ROUNDS):
        for name, model in models.items():
            timings[name].append(
                ort_latency(model, input_shape, repeats=repeats, throughput_repeats=throughput_repeats)
            )
    verdict = speed_verdict(_best(timings["fp32"]), _best(timings["int8"]))
    machine = machine_summary()
    verdict["machine"] = {"cpu": machine["cpu"], "cpu_flags": machine["cpu_flags"], "load_average": load_average()}
    log.info("%s", verdict["advice"])
    return verdict
