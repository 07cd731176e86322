"""Training dynamics: when each training sample is learned for good, how often it is forgotten, and
which samples are difficult or never learned (Toneva et al., 2019, "forgetting events", applied to the
clean and the adversarial record of adversarial training).

Input is ``run_dir/dynamics.npz`` written by the training loop with ``train.record_dynamics = true``:
``clean`` and ``adv``, uint8 arrays [epochs, n_train], 1 = that training sample was classified correctly
in that epoch (clean input, and the training attack's input), columns in the order of the training
split's sample indices.

Definitions used everywhere (per record, clean or adversarial):

* *learned epoch*: the first epoch (1-based) from which the sample stays correct to the end; 0 if it is
  wrong in the last epoch (not learned for good).
* *forgetting event*: correct in one epoch, wrong in the next.
* *unforgettable*: correct in every epoch.
* *never learned*: correct in no epoch.
* *difficult*: correct in some epoch, but learned for good only in the last ``late_fraction`` of
  training, or forgotten at least ``min_forgets`` times, or wrong again at the end; the hard tail whose
  fate decides robust accuracy. Difficult and never-learned samples are disjoint.
* For the adversarial record, the never-learned samples split into *memorised* (the clean record ends
  correct: the model fits the label but never robustly) and *not memorised* (wrong even on clean input).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from akd_edge.core.errors import UsageError

RECORDS = ("clean", "adv")
SETS = ("learned", "unforgettable", "forgotten", "difficult", "never_learned")
"""Per-record sets; ``learned`` = learned for good (correct at the end)."""


@dataclass(frozen=True)
class Dynamics:
    """The per-sample, per-epoch correctness record of one run."""

    clean: np.ndarray
    adv: np.ndarray
    source: str = ""

    @property
    def epochs(self) -> int:
        return int(self.clean.shape[0])

    @property
    def n(self) -> int:
        return int(self.clean.shape[1])

    def record(self, name: str) -> np.ndarray:
        if name not in RECORDS:
            raise ValueError(f"record must be one of {RECORDS}, got {name!r}")
        return self.clean if name == "clean" else self.adv


def load_dynamics(source: str | Path) -> Dynamics:
    """Read ``dynamics.npz`` from a run directory (or the file itself) and check its shape."""
    path = Path(source)
    if path.is_dir():
        path = path / "dynamics.npz"
    if not path.is_file():
        raise UsageError(
            f"{path} not found: training dynamics are recorded only when the run was trained with "
            "`--set train.record_dynamics=true`"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: np.asarray(data[name]) for name in RECORDS}
    except (KeyError, ValueError, OSError) as err:
        raise UsageError(f"{path} is not a dynamics record (needs arrays 'clean' and 'adv'): {err}") from None
    clean, adv = arrays["clean"], arrays["adv"]
    if clean.ndim != 2 or clean.shape != adv.shape or clean.shape[0] < 1:
        raise UsageError(
            f"{path}: 'clean' and 'adv' must be [epochs, n_train] arrays of one shape, got "
            f"{clean.shape} and {adv.shape}"
        )
    return Dynamics(clean=clean.astype(bool), adv=adv.astype(bool), source=str(path))


def learned_epoch(record: np.ndarray) -> np.ndarray:
    """Per sample, the 1-based epoch from which it stays correct to the end; 0 if wrong at the end."""
    record = np.asarray(record, dtype=bool)
    epochs = record.shape[0]
    # Count the run of correct epochs ending at the last one.
    wrong_rev = ~record[::-1]
    any_wrong = wrong_rev.any(axis=0)
    trailing = np.where(any_wrong, wrong_rev.argmax(axis=0), epochs)
    return np.where(trailing > 0, epochs - trailing + 1, 0).astype(np.int64)


def forgetting_events(record: np.ndarray) -> np.ndarray:
    """Per sample, how many times it went from correct in one epoch to wrong in the next."""
    record = np.asarray(record, dtype=bool)
    return (record[:-1] & ~record[1:]).sum(axis=0).astype(np.int64)


def sample_sets(record: np.ndarray, *, late_fraction: float = 0.25, min_forgets: int = 2) -> dict[str, np.ndarray]:
    """Boolean masks [n] of the sets of the module docstring, for one record."""
    if not 0 <= late_fraction <= 1 or min_forgets < 1:
        raise ValueError("late_fraction must be in [0, 1] and min_forgets >= 1")
    record = np.asarray(record, dtype=bool)
    epochs = record.shape[0]
    learned_at = learned_epoch(record)
    forgets = forgetting_events(record)
    learned = learned_at > 0
    late_start = epochs - math.floor(late_fraction * epochs) + 1  # first epoch counted as late
    late = learned & (learned_at >= late_start)
    return {
        "learned": learned,
        "unforgettable": record.all(axis=0),
        "forgotten": forgets > 0,
        "difficult": late | (learned & (forgets >= min_forgets)) | (~learned & record.any(axis=0)),
        "never_learned": ~record.any(axis=0),
    }


def _share(mask: np.ndarray) -> dict[str, float | int]:
    count = int(mask.sum())
    return {"count": count, "fraction": count / mask.size if mask.size else float("nan")}


def analyze(dyn: Dynamics, *, late_fraction: float = 0.25, min_forgets: int = 2) -> dict[str, Any]:
    """Summary of one run: per record, final accuracy, learned epochs, forgetting events and set sizes."""
    summary: dict[str, Any] = {
        "source": dyn.source,
        "epochs": dyn.epochs,
        "n_train": dyn.n,
        "late_fraction": late_fraction,
        "min_forgets": min_forgets,
    }
    for name in RECORDS:
        record = dyn.record(name)
        learned_at = learned_epoch(record)
        forgets = forgetting_events(record)
        sets = sample_sets(record, late_fraction=late_fraction, min_forgets=min_forgets)
        learned_by = [(learned_at[learned_at > 0] <= e).sum() / dyn.n for e in range(1, dyn.epochs + 1)]
        summary[name] = {
            "accuracy_per_epoch": record.mean(axis=1).tolist(),
            "final_accuracy": float(record[-1].mean()),
            "mean_learned_epoch": float(learned_at[learned_at > 0].mean()) if (learned_at > 0).any() else None,
            "learned_for_good_by_epoch": [float(v) for v in learned_by],
            "forgetting_events": int(forgets.sum()),
            "forgetting_events_per_sample": float(forgets.mean()),
            "sets": {key: _share(mask) for key, mask in sets.items()},
        }
    memorised, not_memorised = memorisation(dyn)
    summary["adv"]["sets"]["memorised"] = _share(memorised)
    summary["adv"]["sets"]["not_memorised"] = _share(not_memorised)
    return summary


def memorisation(dyn: Dynamics) -> tuple[np.ndarray, np.ndarray]:
    """Never robustly learned samples, split by whether the clean record ends correct (memorised) or not."""
    never = ~dyn.adv.any(axis=0)
    clean_end = dyn.clean[-1]
    return never & clean_end, never & ~clean_end


def all_sets(dyn: Dynamics, *, late_fraction: float = 0.25, min_forgets: int = 2) -> dict[str, np.ndarray]:
    """Every set of both records as masks, keyed ``record/set`` (plus ``adv/memorised``, ``adv/not_memorised``)."""
    masks: dict[str, np.ndarray] = {}
    for name in RECORDS:
        for key, mask in sample_sets(dyn.record(name), late_fraction=late_fraction, min_forgets=min_forgets).items():
            masks[f"{name}/{key}"] = mask
    masks["adv/memorised"], masks["adv/not_memorised"] = memorisation(dyn)
    return masks


def compare(
    a: Dynamics, b: Dynamics, *, names: tuple[str, str] = ("A", "B"), late_fraction: float = 0.25, min_forgets: int = 2
) -> dict[str, Any]:
    """Compare two runs trained on the same split (for example AT and AKD) set by set.

    For each set: its size in each run, the samples in both, in A only and in B only, and the Jaccard
    index. Sample ``i`` must mean the same training image in both runs (same data seed and split).
    """
    if a.n != b.n:
        raise UsageError(
            f"the two runs recorded different training sets ({a.n} vs {b.n} samples): compare runs made "
            "with the same data seed, val_size and train_subset"
        )
    masks_a = all_sets(a, late_fraction=late_fraction, min_forgets=min_forgets)
    masks_b = all_sets(b, late_fraction=late_fraction, min_forgets=min_forgets)
    rows = []
    for key in masks_a:
        in_a, in_b = masks_a[key], masks_b[key]
        union = int((in_a | in_b).sum())
        rows.append(
            {
                "set": key,
                names[0]: int(in_a.sum()),
                names[1]: int(in_b.sum()),
                "both": int((in_a & in_b).sum()),
                f"only_{names[0]}": int((in_a & ~in_b).sum()),
                f"only_{names[1]}": int((~in_a & in_b).sum()),
                "jaccard": float((in_a & in_b).sum() / union) if union else float("nan"),
            }
        )
    return {
        "names": list(names),
        "n_train": a.n,
        "epochs": {names[0]: a.epochs, names[1]: b.epochs},
        "late_fraction": late_fraction,
        "min_forgets": min_forgets,
        "rows": rows,
        "summaries": {
            names[0]: analyze(a, late_fraction=late_fraction, min_forgets=min_forgets),
            names[1]: analyze(b, late_fraction=late_fraction, min_forgets=min_forgets),
        },
    }


def per_sample(dyn: Dynamics, *, late_fraction: float = 0.25, min_forgets: int = 2) -> dict[str, np.ndarray]:
    """Per-sample arrays for further analysis (for example, looking at the difficult images): learned
    epoch and forgetting events of each record, and every set's mask (keys ``record/...``)."""
    arrays: dict[str, np.ndarray] = {}
    for name in RECORDS:
        arrays[f"{name}/learned_epoch"] = learned_epoch(dyn.record(name))
        arrays[f"{name}/forgetting_events"] = forgetting_events(dyn.record(name))
    arrays.update(all_sets(dyn, late_fraction=late_fraction, min_forgets=min_forgets))
    return arrays
