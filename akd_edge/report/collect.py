"""What ``akd-edge report`` reads: run directories, compress outputs, export folders and pipeline folders.

Everything read here is untrusted: a folder may come from someone else, and its JSON may hold anything.
So a value is used only when it has the expected type and range (:mod:`akd_edge.report.untrusted`; else
it shows as n/a), a name from a file is only ever displayed (escaped by the renderer), never joined to a path,
and no path recorded in a file is opened: an export is matched to a given run directory by comparing the path it records, nothing more. The
model files read are the known names (:data:`akd_edge.export.folder.ONNX_MODELS`) inside the folders given,
and each is hashed again, so a robust accuracy counts only for the very file that verify attacked.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from akd_edge.core import files
from akd_edge.core.errors import UsageError
from akd_edge.export.card import REPORT_FORMAT as EXPORT_FORMAT
from akd_edge.export.card import REPORT_NAME, recorded_checkpoint
from akd_edge.export.folder import FILES, ONNX_MODELS
from akd_edge.report.untrusted import count, fraction, interval, num, obj, read_json, text

ONNX_PRECISIONS = ("fp32", "int8")
"""The export's model files that are reported (:data:`akd_edge.export.folder.FILES` names them), by precision."""
INPUT_FILES = (REPORT_NAME, "summary.json", "recipe.toml", "eval.json", *ONNX_MODELS)
"""The files of a folder that the report reads: a change in any of them makes a report out of date."""
ACCURACIES = ("clean", "transfer", "square", "robust")


# -- what the report shows --------------------------------------------------------------------------


@dataclass
class ModelRow:
    """One row of the report: a model file (or a torch run that was never exported) and what is known of it."""

    label: str
    folder: str
    file: str | None = None
    precision: str | None = None
    role: str | None = None
    pruned: bool = False
    arch: str | None = None
    run: str | None = None
    params: int | None = None
    macs: int | None = None
    bytes: int | None = None
    p50_ms: float | None = None
    accuracy: dict[str, float | None] = field(default_factory=dict)
    ci95: dict[str, list[float | None]] = field(default_factory=dict)
    n: int | None = None
    attack: dict[str, Any] = field(default_factory=dict)
    verified: bool = False
    status: str = ""
    sha256: str | None = None
    hashes: dict[str, str | None] = field(default_factory=dict)
    teachers: list[dict[str, Any]] = field(default_factory=list)
    recipe: dict[str, Any] | None = None
    recipe_from: str | None = None
    torch_val: dict[str, Any] = field(default_factory=dict)
    verify_info: dict[str, Any] = field(default_factory=dict)
    eval_label: str | None = None
    front_bytes: bool = False
    front_p50_ms: bool = False

    @property
    def robust(self) -> float | None:
        return self.accuracy.get("robust")


@dataclass
class RunInfo:
    """A run directory or compress output: the torch side of a model (recipe, summary, eval.json)."""

    path: Path
    kind: str
    name: str
    recipe: dict[str, Any] | None
    summary: dict[str, Any]
    evaluation: dict[str, Any] | None
    exported: bool = False


@dataclass
class Collection:
    """Everything the renderers need: the models, the eval curves and diagrams, and notes."""

    models: list[ModelRow]
    curves: dict[str, dict[str, Any]]
    reliability: dict[str, dict[str, Any]]
    sources: list[dict[str, str]]
    notes: list[str]


@dataclass
class _Source:
    path: Path
    kind: str
    report: dict[str, Any] | None = None
    recipe: dict[str, Any] | None = None
    recipe_from: str | None = None


def _norm(path: str | Path) -> str:
    return os.path.normpath(os.path.abspath(path))


def _recipe(path: Path) -> dict[str, Any] | None:
    """A folder's recipe.toml as a dict, or None when it has none (a broken one is a UsageError)."""
    from akd_edge.config import read_toml

    recipe_path = path / "recipe.toml"
    if not recipe_path.is_file() or recipe_path.is_symlink():
        return None
    return read_toml(recipe_path)


def _classify(path: Path, recipe: dict[str, Any] | None = None, recipe_from: str | None = None) -> _Source:
    """What kind of folder ``path`` is (UsageError, naming it, when it is none that the report reads)."""
    kind = files.marked_kind(path)
    report_path = path / REPORT_NAME
    if report_path.is_file():
        report = read_json(report_path, "report")
        fmt = report.get("format")
        if fmt == EXPORT_FORMAT:
            return _Source(path, "export", report, recipe, recipe_from)
        if kind == "compress" or (isinstance(fmt, str) and fmt.startswith("akd-edge-compress/")):
            return _Source(path, "compress", report)
    has_model = (path / "best.pt").is_file() or (path / "summary.json").is_file()
    if kind in ("run", None) and (path / "recipe.toml").is_file() and has_model:
        return _Source(path, "run")
    if kind == "compress" and (path / "best.pt").is_file():
        return _Source(path, "compress")
    what = f"an akd-edge {kind} folder" if kind else "not an akd-edge folder"
    raise UsageError(
        f"{path} is {what} that the report cannot read; give run directories, export folders (with report.json) "
        "or the folder `akd-edge run` wrote"
    )


def _pipeline_sources(root: Path) -> list[_Source]:
    """The compress outputs and export folders inside a pipeline folder (``akd-edge run``), with its recipe."""
    recipe = _recipe(root)
    found = []
    for part in ("compress", "export"):
        folder = root / part
        if not folder.is_dir() or folder.is_symlink():
            continue
        for sub in sorted(folder.iterdir()):
            if sub.name.startswith(".") or sub.is_symlink() or not sub.is_dir():
                continue  # partial folders of an interrupted stage, and anything that leads outside
            try:
                found.append(_classify(sub, recipe, str(root / "recipe.toml")))
            except UsageError:
                continue  # a stage that has not finished yet
    if not found:
        raise UsageError(f"{root} is a pipeline folder with no finished compress or export stage yet")
    return found


def resolve_sources(paths: list[str | Path]) -> list[_Source]:
    """The folders to read, each once, classified; a UsageError for the first that is not one."""
    if not paths:
        raise UsageError("give at least one run directory, export folder or pipeline folder")
    seen: set[str] = set()
    sources: list[_Source] = []
    for given in paths:
        path = Path(given)
        if not path.is_dir():
            raise UsageError(f"{path} is not a folder; give run directories, export folders or pipeline folders")
        expanded = _pipeline_sources(path) if files.marked_kind(path) == "pipeline" else [_classify(path)]
        for source in expanded:
            key = os.path.realpath(source.path)
            if key not in seen:
                seen.add(key)
                sources.append(source)
    return sources


# -- run directories -------------------------------------------------------------------------------


def _eval_section(path: Path) -> dict[str, Any] | None:
    """The eps curve and calibration of a folder's eval.json, checked value by value; None without them."""
    eval_path = path / "eval.json"
    if not eval_path.is_file():
        return None
    evaluation = read_json(eval_path, "eval.json")
    results = obj(evaluation.get("results"))
    section: dict[str, Any] = {}
    curve = obj(results.get("eps_curve"))
    raw_points = curve.get("points") if isinstance(curve.get("points"), list) else []
    points = [
        {"eps": num(p.get("eps")), "acc": fraction(p.get("acc")), "ci95": interval(p.get("ci95"))}
        for p in raw_points
        if isinstance(p, dict) and num(p.get("eps")) is not None and fraction(p.get("acc")) is not None
    ]
    if points:
        settings = obj(curve.get("settings"))
        threat_eps = num(obj(evaluation.get("threat")).get("eps"))
        section["eps_curve"] = {"points": points, "steps": count(settings.get("steps")), "threat_eps": threat_eps}
    calibration = {}
    for key, value in obj(results.get("calibration")).items():
        diagram = _diagram(value)
        if key in ("clean", "adversarial") and diagram is not None:
            calibration[key] = diagram
    if calibration:
        section["calibration"] = calibration
    return section or None


def _diagram(value: Any) -> dict[str, Any] | None:
    """A reliability diagram (bins edges/accuracy/confidence and ECE) if every value is in range."""
    value = obj(value)
    bins, ece = obj(value.get("bins")), fraction(value.get("ece"))
    edges, acc, conf = bins.get("edges"), bins.get("accuracy"), bins.get("confidence")
    if ece is None or not all(isinstance(v, list) for v in (edges, acc, conf)):
        return None
    if not 2 <= len(edges) <= 101 or len(acc) != len(edges) - 1 or len(conf) != len(acc):
        return None
    edges = [fraction(e) for e in edges]
    if None in edges or edges != sorted(edges):
        return None

    def clean(values: list[Any]) -> list[float | None]:
        return [fraction(v) for v in values]

    return {"ece": ece, "bins": {"edges": edges, "accuracy": clean(acc), "confidence": clean(conf)}}


def _run_info(source: _Source) -> RunInfo:
    path = source.path
    recipe = _recipe(path)
    summary_path = path / "summary.json"
    summary = read_json(summary_path, "summary.json") if summary_path.is_file() else {}
    if source.kind == "compress":  # its before/after report stands in for a summary
        after = obj(obj(source.report).get("after"))
        best = {"clean_acc": after.get("clean_acc"), "robust_acc": after.get("pgd_acc")}
        summary = {"params": after.get("params"), "model": obj(source.report).get("model"), "best": best}
        summary["role"] = "student"
    name = text(obj(obj(recipe).get("run")).get("name")) or path.name
    return RunInfo(path, source.kind, name, recipe, summary, _eval_section(path))


def _match(checkpoint: Path | None, run_name: Any, runs: list[RunInfo]) -> RunInfo | None:
    """The given run an export came from: by the checkpoint path it records (compared, never opened), else by
    a unique run name."""
    if checkpoint is not None:
        parent = _norm(checkpoint.parent)
        for run in runs:
            if parent == _norm(run.path):
                return run
    named = [run for run in runs if isinstance(run_name, str) and run.name == run_name]
    return named[0] if len(named) == 1 else None


# -- export folders ----------------------------------------------------------------------------------


def _attack(verify: dict[str, Any]) -> dict[str, Any]:
    """The attack settings verify recorded, as plain values."""
    settings = obj(verify.get("settings"))
    square, transfer = obj(settings.get("square")), obj(settings.get("transfer"))
    attacks = transfer.get("attacks") if isinstance(transfer.get("attacks"), list) else []
    return {
        "norm": text(settings.get("norm"), 10),
        "eps": num(settings.get("eps")),
        "seed": count(settings.get("seed")),
        "square": {
            "n_queries": count(square.get("n_queries")),
            "p_init": num(square.get("p_init")),
            "loss": text(square.get("loss"), 40),
            "skipped": text(square.get("skipped")),
        },
        "transfer": {
            "version": text(transfer.get("version"), 40),
            "attacks": [a for a in (text(x, 40) for x in attacks[:10]) if a],
            "skipped": text(transfer.get("skipped")),
        },
    }


def _teachers(source: dict[str, Any]) -> list[dict[str, Any]]:
    teachers = source.get("teachers") if isinstance(source.get("teachers"), list) else []
    shown = []
    for teacher in teachers[:20]:
        teacher = obj(teacher)
        val = obj(teacher.get("val"))
        shown.append(
            {
                "source": text(teacher.get("source")),
                "kind": text(teacher.get("kind"), 20),
                "arch": text(teacher.get("arch"), 80),
                "sha256": text(teacher.get("sha256"), 64),
                "weight": num(teacher.get("weight")),
                "clean_acc": fraction(val.get("clean_acc")),
                "robust_acc": fraction(val.get("robust_acc")),
            }
        )
    return shown


def _status(result: dict[str, Any], verified_sha: str | None, digest: str) -> tuple[bool, str]:
    if not result:
        return False, "not verified: run `akd-edge verify` on its folder"
    if verified_sha != digest:
        return False, "the file changed since it was verified: its figures are not counted"
    if fraction(result.get("robust_acc")) is None:
        return False, "verified without attacks: no robust accuracy"
    return True, "verified under onnxruntime"


def _export_rows(source: _Source, run: RunInfo | None) -> list[ModelRow]:
    """One entry per model file of an export folder, its verify results trusted only for an unchanged file."""
    from akd_edge.report.macs import onnx_macs

    report = obj(source.report)
    origin, verify, recorded = obj(report.get("source")), obj(report.get("verify")), obj(report.get("files"))
    verify_models, verify_files = obj(verify.get("models")), obj(verify.get("files"))
    latency = obj(verify.get("latency"))
    machine, data = obj(verify.get("machine")), obj(verify.get("data"))
    recipe, recipe_from = (run.recipe, str(run.path / "recipe.toml")) if run and run.recipe else (None, None)
    if recipe is None and source.recipe is not None:
        recipe, recipe_from = source.recipe, source.recipe_from
    entries = []
    for precision in ONNX_PRECISIONS:
        name = FILES[precision]
        path = source.path / name
        if not path.is_file() or path.is_symlink():
            continue
        digest = files.sha256_file(path)
        result = obj(verify_models.get(name))
        verified_sha = text(obj(verify_files.get(name)).get("sha256"), 64)
        verified, status = _status(result, verified_sha, digest)
        entries.append(
            ModelRow(
                label=f"{source.path.name} ({precision})",
                folder=str(source.path),
                file=name,
                precision=precision,
                role=text(origin.get("role"), 20),
                pruned=origin.get("pruned") is True,
                arch=text(obj(origin.get("arch")).get("name"), 80),
                run=text(origin.get("run")),
                params=count(origin.get("params")),
                macs=onnx_macs(path),
                bytes=path.stat().st_size,
                p50_ms=num(obj(latency.get(name)).get("batch1_p50_ms")),
                accuracy={key: fraction(result.get(f"{key}_acc")) for key in ACCURACIES},
                ci95={key: interval(result.get(f"{key}_ci95")) for key in ACCURACIES},
                n=count(verify.get("n")),
                attack=_attack(verify),
                verified=verified,
                status=status,
                sha256=digest,
                hashes={
                    "recorded at export": text(obj(recorded.get(name)).get("sha256"), 64),
                    "recorded at verify": verified_sha,
                    "source checkpoint": text(origin.get("checkpoint"), 300),
                },
                teachers=_teachers(origin),
                recipe=recipe,
                recipe_from=recipe_from,
                torch_val={k: fraction(obj(origin.get("val")).get(k)) for k in ("clean_acc", "robust_acc")},
                verify_info={
                    "created": text(verify.get("created"), 40),
                    "data": text(data.get("name")),
                    "cpus": count(machine.get("cpus")),
                    "platform": text(machine.get("platform")),
                },
                eval_label=run.name if run and run.evaluation else None,
            )
        )
    return entries


def _torch_row(run: RunInfo) -> ModelRow:
    """A run that no given export came from: shown with its torch validation figures, outside the front."""
    summary = run.summary
    best = obj(summary.get("best"))
    return ModelRow(
        label=f"{run.name} (torch)",
        folder=str(run.path),
        role=text(summary.get("role"), 20),
        pruned=run.kind == "compress",
        arch=text(summary.get("model"), 80),
        run=run.name,
        params=count(summary.get("params")),
        status="not exported: torch figures only (PGD at training or compress time), not verified under onnxruntime",
        recipe=run.recipe,
        recipe_from=str(run.path / "recipe.toml") if run.recipe else None,
        torch_val={k: fraction(best.get(k)) for k in ("clean_acc", "robust_acc")},
        eval_label=run.name if run.evaluation else None,
    )


def _unique_labels(models: list[ModelRow]) -> None:
    seen: dict[str, int] = {}
    for model in models:
        seen[model.label] = seen.get(model.label, 0) + 1
        if seen[model.label] > 1:
            model.label = f"{model.label} #{seen[model.label]}"


def _mark_fronts(models: list[ModelRow]) -> None:
    from akd_edge.report.pareto import pareto_front

    for key in ("bytes", "p50_ms"):
        candidates = [m for m in models if m.verified and m.robust is not None and getattr(m, key) is not None]
        for index in pareto_front([(float(getattr(m, key)), float(m.robust)) for m in candidates]):
            setattr(candidates[index], f"front_{key}", True)


EXPORT_CHECK_NOTES = (
    ("int8_agreement", "passed", "action", "the fp32-vs-int8 agreement check failed"),
    ("int8_speed", "int8_faster", "advice", "int8 was not faster than fp32: use fp32 for speed"),
)
"""(check in report.json, its verdict field, the field saying what export did or advises, the default text):
an export's failed agreement check and its advice when int8 was not faster on the machine that exported it."""


def _check_notes(source: _Source) -> list[str]:
    """What the export's checks say a reader of the report must know, one line per failed check."""
    checks = obj(obj(source.report).get("checks"))
    notes = []
    for check, verdict, says, default in EXPORT_CHECK_NOTES:
        record = obj(checks.get(check))
        if record.get(verdict) is False:
            notes.append(f"{source.path.name}: {text(record.get(says), 400) or default}")
    return notes


def collect(paths: list[str | Path]) -> Collection:
    """Read every folder in ``paths`` (UsageError for one the report cannot read) into a :class:`Collection`."""
    sources = resolve_sources(paths)
    runs = [_run_info(s) for s in sources if s.kind in ("run", "compress")]
    models: list[ModelRow] = []
    for source in sources:
        if source.kind != "export":
            continue
        origin = obj(obj(source.report).get("source"))
        run = _match(recorded_checkpoint(source.path, origin), origin.get("run"), runs)
        if run is not None:
            run.exported = True
        models += _export_rows(source, run)
    models += [_torch_row(run) for run in runs if not run.exported]
    _unique_labels(models)
    _mark_fronts(models)
    curves = {run.name: run.evaluation["eps_curve"] for run in runs if run.evaluation and "eps_curve" in run.evaluation}
    reliability = {
        run.name: run.evaluation["calibration"] for run in runs if run.evaluation and "calibration" in run.evaluation
    }
    exports = [source for source in sources if source.kind == "export"]
    notes = [note for source in exports for note in _check_notes(source)]
    if not any(m.verified for m in models):
        notes.append("no model has a verified robust accuracy: run `akd-edge verify` on the export folders")
    return Collection(models, curves, reliability, [{"path": str(s.path), "kind": s.kind} for s in sources], notes)
