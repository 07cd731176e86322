"""``akd-edge eval --teacher-gap RUN``: the student and its teachers on the same test images and attacks.

The teachers are those of the run's recipe, loaded as distillation loaded them (any source); both models go
through the one evaluation engine with the same attack settings and seed, so the gap (student minus teacher)
compares like with like. An ensemble is attacked as one model (its averaged probabilities). Gradient attacks
need autograd through every member: with an ONNX member only output-only attacks (``square``) run on the
teacher, and the others are reported as not run, with the reason.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

from akd_edge.config import TeacherSpec, from_dict
from akd_edge.core.env import package_versions
from akd_edge.core.errors import UsageError
from akd_edge.core.files import output_folder, write_json_atomic
from akd_edge.evaluation.command import EvalOptions, attack_specs, default_out_dir, load_eval_data, resolve_threat
from akd_edge.evaluation.engine import evaluate_model

log = logging.getLogger(__name__)

TEACHER_GAP_FORMAT = "akd-edge-teacher-gap/1"
"""``format`` of teacher_gap.json."""


def _scores(results: dict[str, Any]) -> dict[str, Any]:
    """Clean, each attack's and the worst-case accuracy (with n and ci95) of one model's results."""
    keep = ("acc", "correct", "n", "ci95")
    scores = {"clean": {k: results["clean"][k] for k in keep}}
    for name, entry in results["attacks"].items():
        scores[name] = {k: entry[k] for k in keep} | {"settings": entry["settings"]}
    scores["worst_case"] = {k: results["worst_case"][k] for k in keep}
    return scores


def teacher_gap(
    source: str | Path, options: EvalOptions | None = None, *, out_dir: str | Path | None = None
) -> tuple[dict[str, Any], Path]:
    """Evaluate the student ``source`` (run or checkpoint) and its recipe's teachers; write ``teacher_gap.json``."""
    from akd_edge.data import iterate_batches
    from akd_edge.models.checkpoint import load_model
    from akd_edge.teachers import load_teachers, teacher_provenance

    options = options or EvalOptions()
    student, meta = load_model(source, options.which, options.device, options.factory)
    entries = (meta.get("recipe") or {}).get("teachers") or []
    if not entries:
        raise UsageError(f"{meta['path']} records no teachers in its recipe: --teacher-gap needs a distilled student")
    with output_folder(out_dir, default_out_dir(source), "teacher_gap.json", TEACHER_GAP_FORMAT) as out:
        arch = meta["arch"]
        specs = [from_dict(TeacherSpec, dict(entry), prefix="teachers") for entry in entries]
        teacher = load_teachers(specs, options.device, tuple(arch["input_shape"]), int(arch["num_classes"]))
        norm, eps = resolve_threat(meta, options.norm, options.eps)
        dataset, data_meta = load_eval_data(meta, options)
        attacks, _ = attack_specs(options, norm, eps)
        differentiable = all(getattr(m, "differentiable", True) for m in teacher.members)
        teacher.configure(needs_grad=differentiable)  # gradient attacks differentiate the ensemble's output
        teacher_attacks = [a for a in attacks if differentiable or not a.white_box]
        scores = {}
        for name, model, model_attacks in (("student", student, attacks), ("teacher", teacher, teacher_attacks)):
            batches = iterate_batches(dataset, options.batch_size, device=options.device)
            results = evaluate_model(model, batches, model_attacks, total=len(dataset), calibration=False, checks=False)
            scores[name] = _scores(results)
        not_run = [a.name for a in attacks if a not in teacher_attacks]
        for name in not_run:
            scores["teacher"][name] = {"acc": None, "not_run": "a member runs under onnxruntime: no gradients"}
        if not_run:
            scores["teacher"]["worst_case"]["over"] = ["clean", *[a.name for a in teacher_attacks]]
        gap = {
            key: scores["student"][key]["acc"] - scores["teacher"][key]["acc"]
            for key in scores["student"]
            if scores["teacher"].get(key, {}).get("acc") is not None and not (key == "worst_case" and not_run)
        }
        report = {
            "format": TEACHER_GAP_FORMAT,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "source": str(source),
            "student": {"checkpoint": meta["path"], "arch": arch["name"], "epoch": meta.get("epoch")},
            "teachers": teacher_provenance(teacher),
            "data": {"name": data_meta["name"], "split": "test", "n_samples": len(dataset)},
            "threat": {"norm": norm, "eps": eps},
            "scores": scores,
            "gap": gap,
            "versions": package_versions(),
        }
        path = write_json_atomic(out / "teacher_gap.json", report)
        log.debug("wrote %s", path)  # the caller says what it wrote, plots included
        return report, path
