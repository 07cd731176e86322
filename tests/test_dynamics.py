"""Training-dynamics analysis on hand-made records whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from akd_edge.core.errors import UsageError
from akd_edge.metrics.forgetting import (
    Dynamics,
    analyze,
    compare,
    forgetting_events,
    learned_epoch,
    load_dynamics,
    sample_sets,
)

# Columns are samples, rows epochs (4 epochs).
RECORD = np.array(
    [
        # s0 s1 s2 s3 s4 s5
        [1, 0, 0, 1, 0, 1],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 0, 1, 0, 1],
        [1, 1, 1, 0, 0, 1],
    ],
    dtype=np.uint8,
)


def test_learned_epoch_and_forgetting_events_by_hand() -> None:
    assert learned_epoch(RECORD).tolist() == [1, 2, 4, 0, 0, 3]
    assert forgetting_events(RECORD).tolist() == [0, 0, 0, 2, 0, 1]


def test_sets_by_hand() -> None:
    sets = sample_sets(RECORD, late_fraction=0.25, min_forgets=2)
    assert sets["unforgettable"].nonzero()[0].tolist() == [0]
    assert sets["never_learned"].nonzero()[0].tolist() == [4]
    assert sets["learned"].nonzero()[0].tolist() == [0, 1, 2, 5]
    # s2 learned only in the last epoch (late), s3 correct sometimes but wrong at the end.
    assert sets["difficult"].nonzero()[0].tolist() == [2, 3]
    assert not (sets["difficult"] & sets["never_learned"]).any()
    with_forgets = sample_sets(RECORD, late_fraction=0.0, min_forgets=1)
    assert with_forgets["difficult"].nonzero()[0].tolist() == [3, 5]


def test_memorised_split_and_summary(tmp_path) -> None:
    clean = np.ones_like(RECORD)
    clean[:, 4] = 0  # s4 never fitted even on clean input: not memorised
    adv = RECORD.copy()
    adv[:, 0] = 0  # s0 fitted on clean input but never robustly: memorised
    path = tmp_path / "dynamics.npz"
    np.savez(path, clean=clean, adv=adv)
    dyn = load_dynamics(tmp_path)
    assert (dyn.epochs, dyn.n) == (4, 6)
    summary = analyze(dyn)
    assert summary["adv"]["sets"]["never_learned"]["count"] == 2
    assert summary["adv"]["sets"]["memorised"]["count"] == 1
    assert summary["adv"]["sets"]["not_memorised"]["count"] == 1
    assert summary["clean"]["final_accuracy"] == pytest.approx(5 / 6)
    assert summary["adv"]["forgetting_events"] == 3
    by_epoch = summary["adv"]["learned_for_good_by_epoch"]
    assert by_epoch == sorted(by_epoch) and by_epoch[-1] == pytest.approx(summary["adv"]["final_accuracy"])


def test_compare_counts_overlaps() -> None:
    a = Dynamics(clean=np.ones_like(RECORD, dtype=bool), adv=RECORD.astype(bool))
    better = RECORD.copy()
    better[:, 4] = 1  # B learns s4, which A never learns
    b = Dynamics(clean=np.ones_like(RECORD, dtype=bool), adv=better.astype(bool))
    table = compare(a, b, names=("at", "akd"))
    row = next(r for r in table["rows"] if r["set"] == "adv/never_learned")
    assert (row["at"], row["akd"], row["both"], row["only_at"], row["only_akd"]) == (1, 0, 0, 1, 0)
    assert row["jaccard"] == 0.0
    same = next(r for r in table["rows"] if r["set"] == "adv/difficult")
    assert same["both"] == same["at"] == same["akd"] == 2 and same["jaccard"] == 1.0


def test_mismatched_runs_and_missing_file_are_user_errors(tmp_path) -> None:
    a = Dynamics(clean=RECORD.astype(bool), adv=RECORD.astype(bool))
    b = Dynamics(clean=RECORD[:, :3].astype(bool), adv=RECORD[:, :3].astype(bool))
    with pytest.raises(UsageError, match="different training sets"):
        compare(a, b)
    with pytest.raises(UsageError, match="record_dynamics"):
        load_dynamics(tmp_path)
    np.savez(tmp_path / "dynamics.npz", clean=RECORD, adv=RECORD[:2])
    with pytest.raises(UsageError, match="one shape"):
        load_dynamics(tmp_path)
