"""The 95% Wilson interval next to every reported accuracy, and defaults of at least 1,000 test images."""

from __future__ import annotations

import importlib.util
import inspect
import math
from pathlib import Path
from types import ModuleType

import pytest

from akd_edge.core.interval import REPORTED_N, format_accuracy, format_interval, interval_of, wilson_interval

ROOT = Path(__file__).resolve().parents[1]


def _benchmark(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("correct", "n", "expected"),
    [
        (50, 100, (0.4038, 0.5962)),  # Wilson (1927) / Newcombe (1998) tables
        (0, 10, (0.0, 0.2775)),
        (10, 10, (0.7225, 1.0)),
        (685, 1000, (0.65555, 0.71304)),
    ],
)
def test_wilson_interval_matches_hand_computed_values(correct: int, n: int, expected: tuple[float, float]) -> None:
    low, high = wilson_interval(correct, n)
    assert low == pytest.approx(expected[0], abs=5e-5) and high == pytest.approx(expected[1], abs=5e-5)
    assert 0 <= low <= correct / n <= high <= 1


def test_wilson_interval_covers_95_percent_and_narrows_with_n() -> None:
    # Exact coverage under the binomial: close to 95% even at a skewed proportion and small n.
    for p, n in ((0.7, 200), (0.9, 50)):
        coverage = sum(
            math.comb(n, k) * p**k * (1 - p) ** (n - k)
            for k in range(n + 1)
            if wilson_interval(k, n)[0] <= p <= wilson_interval(k, n)[1]
        )
        assert 0.92 <= coverage <= 0.98, (p, n, coverage)
    widths = [wilson_interval(round(0.7 * n), n) for n in (200, 1000, 10000)]
    assert [h - lo for lo, h in widths] == sorted((h - lo for lo, h in widths), reverse=True)
    assert widths[1][1] - widths[1][0] < 0.06 < widths[0][1] - widths[0][0]  # +-3 points at 1000, +-6 at 200


def test_interval_edge_cases_and_formatting() -> None:
    assert wilson_interval(0, 0) == [None, None] and interval_of(None, 10) == [None, None]
    assert interval_of(0.0, 0) == [None, None]
    with pytest.raises(ValueError):
        wilson_interval(11, 10)
    assert interval_of(0.685, 1000) == wilson_interval(685, 1000)
    assert format_interval(wilson_interval(685, 1000)) == "[65.6, 71.3]"
    assert format_interval([None, None]) == "-" and format_interval(None) == "-"
    assert format_accuracy(0.685, wilson_interval(685, 1000)) == "68.50% [65.6, 71.3]"
    assert format_accuracy(None, [None, None]) == "-" and format_accuracy(0.5, None) == "50.00%"


def test_accuracy_reports_the_wilson_interval() -> None:
    from akd_edge.metrics.robust import accuracy

    got = accuracy([True] * 3 + [False])
    assert got == {"acc": 0.75, "correct": 3, "n": 4, "ci95": wilson_interval(3, 4)}
    assert accuracy([]) == {"acc": None, "correct": 0, "n": 0, "ci95": [None, None]}


def test_library_defaults_are_at_least_1000_images() -> None:
    from akd_edge.compress.command import EvalSpec
    from akd_edge.compress.measure import autoattack_accuracy, measure
    from akd_edge.evaluation.command import EvalOptions
    from akd_edge.verify.command import verify_exports

    assert REPORTED_N >= 1000
    assert EvalOptions().n >= 1000
    assert EvalSpec().n >= 1000 and EvalSpec().aa_n >= 1000
    assert inspect.signature(verify_exports).parameters["n"].default >= 1000
    assert inspect.signature(measure).parameters["aa_n"].default >= 1000
    assert inspect.signature(autoattack_accuracy).parameters["n"].default >= 1000


def _defaults(command) -> dict[str, object]:
    return {param.name: param.default for param in command.params}


def test_cli_defaults_are_at_least_1000_images_and_help_says_so() -> None:
    from click.testing import CliRunner

    from akd_edge.cli.compress_cmd import compress_cmd
    from akd_edge.cli.eval_cmd import eval_cmd
    from akd_edge.cli.verify_cmd import verify_cmd

    assert _defaults(eval_cmd)["n"] >= 1000
    assert _defaults(compress_cmd)["n_test"] >= 1000 and _defaults(compress_cmd)["aa_n"] >= 1000
    assert _defaults(verify_cmd)["n"] >= 1000
    for command in (eval_cmd, compress_cmd, verify_cmd):
        text = " ".join(CliRunner().invoke(command, ["--help"]).output.split())
        assert "95% Wilson interval" in text and "[default: 1000;" in text, command.name
    compress_help = " ".join(CliRunner().invoke(compress_cmd, ["--help"]).output.split())
    assert "five times" in compress_help  # the cost of AutoAttack on 1000 images rather than 200


def test_benchmark_defaults_are_at_least_1000_images() -> None:
    assert _benchmark("prune_robustness").parse_args([]).aa_n >= 1000
    assert _benchmark("prune_robustness").parse_args([]).n_eval >= 1000
    akd_vs_at = _benchmark("akd_vs_at")
    assert akd_vs_at.settings_of(akd_vs_at.parse_args([]))["n_eval"] >= 1000
    assert akd_vs_at.settings_of(akd_vs_at.parse_args(["--full"]))["n_eval"] >= 1000
    assert _benchmark("run_recipe").parse_args(["fmnist-quickstart"]).n >= 1000
    assert _benchmark("export_latency").parse_args([]).n >= 1000


def test_benchmark_tables_show_the_interval() -> None:
    prune = _benchmark("prune_robustness")
    side = {"params": 100, "macs": 2e6, "latency_ms": 0.1, "n": 1000, "aa_n": 1000}
    side |= {"clean_acc": 0.831, "pgd_acc": 0.716, "aa_acc": 0.685, "aa_ci95": wilson_interval(685, 1000)}
    row = prune._row("0%", "-", side, side, "-")
    assert "68.5 [65.6, 71.3]" in row and f"83.1 {format_interval(wilson_interval(831, 1000))}" in row

    akd_vs_at = _benchmark("akd_vs_at")
    report = {
        "seconds": 1.0,
        "results": {
            "clean": {"acc": 0.75, "n": 4, "ci95": wilson_interval(3, 4)},
            "attacks": {
                "pgd": {"acc": 0.5, "ci95": wilson_interval(2, 4)},
                "aa-fast": {"acc": 0.25, "ci95": wilson_interval(1, 4)},
            },
            "worst_case": {"acc": 0.25, "ci95": wilson_interval(1, 4)},
            "calibration": {"clean": {"ece": 0.1}, "adversarial": {"ece": 0.2}},
            "warnings": [],
        },
    }
    row = akd_vs_at.row_of("at", report, 60.0)
    assert row["autoattack_ci95"] == wilson_interval(1, 4) and row["n"] == 4
    settings = {"aa": "aa-fast", "full": False, "overrides": [], "epochs": 3, "train_subset": 10, "n_eval": 4}
    table = akd_vs_at.markdown([row], settings | {"seed": 0}, 60.0)
    assert f"25.0 {format_interval(wilson_interval(1, 4))}" in table and "95% Wilson interval" in table
