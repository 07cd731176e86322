"""Teachers from anywhere: ONNX files and plain weights files teach like the torch checkpoint they came from,
mismatches are refused with exit 2, and every teacher's provenance reaches the student's files."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import tomli_w
import torch
from click.testing import CliRunner

from akd_edge.cli.main import cli
from akd_edge.config import TeacherSpec, load_recipe
from akd_edge.core.errors import CheckpointError, ConfigError
from akd_edge.core.files import sha256_file
from akd_edge.data import iterate_batches
from akd_edge.export.onnx import export_onnx, set_metadata
from akd_edge.export.provenance import onnx_metadata
from akd_edge.models.checkpoint import load_checkpoint, load_model
from akd_edge.teachers import CleanTeacherCache, TeacherEnsemble, load_teachers
from akd_edge.teachers.onnx import OnnxTeacher
from akd_edge.train.accel import SpeedPlan, accelerate_teacher, bf16_supported
from akd_edge.train.loop import Trainer, train_run

SYNTH = "n=256,test=64,shape=1x8x8,classes=3"
SHAPE, CLASSES = (1, 8, 8), 3
FACTORY = "akd_edge.models.cnn:cnn_student"


def tiny_recipe(method: str = "akd", synth: str = SYNTH, **teacher: object) -> dict:
    recipe = {
        "run": {"name": method, "seed": 1},
        "data": {"name": "synthetic", "data_dir": synth, "val_size": 64, "batch_size": 64, "eval_batch_size": 64},
        "model": {"name": "cnn-student", "kwargs": {"width": 0.5}},
        "method": {"name": method},
        "train": {"epochs": 1, "amp": "none", "keep_epoch_checkpoints": False, "attack": {"eps": 0.1, "steps": 1}},
        "eval": {"val_samples": 32, "attack": {"eps": 0.1, "steps": 1}},
    }
    if teacher:
        recipe["teachers"] = [teacher]
    return recipe


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("teacher") / "run"
    train_run(load_recipe(tiny_recipe("at")), run, role="teacher")
    return run


@pytest.fixture(scope="module")
def onnx_teacher(teacher_run: Path) -> Path:
    """The torch teacher exported with akd-edge's own exporter (dynamic batch, metadata, input_range [0, 1])."""
    model, meta = load_model(teacher_run)
    path = teacher_run.parent / "teacher.onnx"
    export_onnx(model, path, SHAPE, onnx_metadata(meta))
    return path


def images(n: int = 16) -> torch.Tensor:
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(3))


def torch_probs(teacher_run: Path, x: torch.Tensor) -> torch.Tensor:
    return load_teachers([TeacherSpec(path=str(teacher_run))], input_shape=SHAPE, num_classes=CLASSES).probs(x)


# -- each source gives the torch teacher's probabilities ----------------------------------------------------


def test_onnx_teacher_gives_the_torch_probabilities(teacher_run: Path, onnx_teacher: Path) -> None:
    x = images()
    ensemble = load_teachers([TeacherSpec(path=f"onnx:{onnx_teacher}")], input_shape=SHAPE, num_classes=CLASSES)
    assert isinstance(ensemble.members[0], OnnxTeacher)
    expected = torch_probs(teacher_run, x)
    assert torch.allclose(ensemble.probs(x), expected, atol=1e-5)
    assert torch.allclose(
        ensemble.probs(x, temperature=4.0),
        TeacherEnsemble([load_model(teacher_run)[0]]).probs(x, temperature=4.0),
        atol=1e-5,
    )
    # channels_last input (the fast path's layout) and a gradient-requiring input are accepted as they are.
    assert torch.allclose(ensemble.probs(x.contiguous(memory_format=torch.channels_last)), expected, atol=1e-5)
    assert not ensemble.probs(x.clone().requires_grad_()).requires_grad
    # ... and averaged with a torch member by weight: 0.25 * onnx + 0.75 * torch = the torch teacher's.
    mixed = load_teachers(
        [TeacherSpec(path=f"onnx:{onnx_teacher}"), TeacherSpec(path=str(teacher_run), weight=3.0)],
        input_shape=SHAPE,
        num_classes=CLASSES,
    )
    assert torch.allclose(mixed.probs(x), expected, atol=1e-5)
    assert [r["weight"] for r in mixed.provenance] == pytest.approx([0.25, 0.75])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter, as many users still call it
def test_a_plain_torch_onnx_export_without_metadata_teaches(teacher_run: Path, tmp_path: Path) -> None:
    """The second half of the RobustBench path: any torch model exported by torch.onnx.export itself (no
    akd-edge metadata, other tensor names) is an onnx: teacher; a fixed batch is refused with the fix."""
    model, _ = load_model(teacher_run)
    path = tmp_path / "plain.onnx"
    example = torch.rand(2, *SHAPE)
    torch.onnx.export(
        model, (example,), str(path), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "n"}}, opset_version=17
    )
    ensemble = load_teachers([TeacherSpec(path=f"onnx:{path}")], input_shape=SHAPE, num_classes=CLASSES)
    x = images()
    assert torch.allclose(ensemble.probs(x), torch_probs(teacher_run, x), atol=1e-5)
    record = ensemble.provenance[0]
    assert record["sha256"] == sha256_file(path) and record["val"] == {} and record["arch"] is None
    static = tmp_path / "static.onnx"
    torch.onnx.export(model, (example,), str(static), dynamo=False, input_names=["x"], opset_version=17)
    with pytest.raises(ConfigError, match="fixed batch of 2; export it with a dynamic batch axis"):
        load_teachers([TeacherSpec(path=f"onnx:{static}")], input_shape=SHAPE, num_classes=CLASSES)


def test_fast_teacher_path_leaves_onnx_members_alone_and_keeps_provenance(
    onnx_teacher: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ensemble = load_teachers([TeacherSpec(path=f"onnx:{onnx_teacher}")], input_shape=SHAPE, num_classes=CLASSES)
    x = images()
    for plan in (
        SpeedPlan(teacher_fold=True, teacher_channels_last=True, teacher_precision="fp32"),
        SpeedPlan(teacher_fold=True, teacher_channels_last=True, teacher_precision="bf16"),
    ):
        if plan.teacher_precision == "bf16":
            monkeypatch.setitem(sys.modules, "openvino", None)  # not installed: onnxruntime, float32
        fast = accelerate_teacher(ensemble, plan)
        assert fast.members[0] is ensemble.members[0]  # not folded, converted or copied
        assert fast.provenance == ensemble.provenance
        assert torch.allclose(fast.probs(x), ensemble.probs(x), atol=1e-6)  # bf16 autocast does not reach it


def test_a_bf16_plan_runs_the_onnx_teacher_under_openvino_where_installed(onnx_teacher: Path) -> None:
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    ensemble = load_teachers([TeacherSpec(path=f"onnx:{onnx_teacher}")], input_shape=SHAPE, num_classes=CLASSES)
    fast = accelerate_teacher(ensemble, SpeedPlan(teacher_precision="bf16"))
    member = fast.members[0]
    assert isinstance(member, OnnxTeacher) and member.runtime == "openvino bf16"
    assert ensemble.members[0].runtime == "onnxruntime"  # the loaded teacher is left as it was
    assert fast.provenance == ensemble.provenance
    for n in (16, 5):  # the training batch and a smaller last batch
        x = images(n)
        assert torch.allclose(fast.probs(x), ensemble.probs(x), atol=2e-2)  # bf16 rounding, not another model
    # a GPU run keeps onnxruntime (its CUDA provider); so does a float32 plan
    assert ensemble.members[0].fast_path("bf16", torch.device("cuda")) is ensemble.members[0]
    assert ensemble.members[0].fast_path("fp32", torch.device("cpu")) is ensemble.members[0]


def test_an_onnx_teacher_with_external_weights_stays_under_onnxruntime(onnx_teacher: Path, tmp_path: Path) -> None:
    """OpenVINO would open whatever file an (untrusted) ONNX file names for its weights; onnxruntime only
    reads them from the model's folder, so such a teacher is not handed to OpenVINO."""
    import onnx

    path = tmp_path / "external.onnx"
    onnx.save_model(
        onnx.load(str(onnx_teacher)), str(path), save_as_external_data=True, location="w.bin", size_threshold=256
    )
    assert (tmp_path / "w.bin").is_file()
    ensemble = load_teachers([TeacherSpec(path=f"onnx:{path}")], input_shape=SHAPE, num_classes=CLASSES)
    member = ensemble.members[0]
    assert member.fast_path("bf16", torch.device("cpu")) is member
    x = images()
    assert torch.allclose(
        ensemble.probs(x),
        load_teachers([TeacherSpec(path=f"onnx:{onnx_teacher}")], input_shape=SHAPE, num_classes=CLASSES).probs(x),
        atol=1e-6,
    )


def test_clean_teacher_cache_reads_what_the_onnx_teacher_computes(onnx_teacher: Path) -> None:
    from akd_edge.data import load_dataset

    recipe = load_recipe(tiny_recipe())
    splits = load_dataset(recipe.data, recipe.run.seed)
    ensemble = load_teachers([TeacherSpec(path=f"onnx:{onnx_teacher}")], input_shape=SHAPE, num_classes=CLASSES)
    cache = CleanTeacherCache.build(ensemble, splits.train, 50, torch.device("cpu"), CLASSES)
    assert cache is not None
    x, _, idx = next(iter(iterate_batches(splits.train, 32, shuffle=True, seed=0, epoch=0)))
    assert torch.allclose(cache.probs(idx, 2.0), ensemble.probs(x, 2.0), atol=1e-6)


def _state_files(teacher_run: Path, folder: Path) -> dict[str, Path]:
    """The teacher's bare network as a state_dict in the usual published forms."""
    net_state = load_model(teacher_run)[0].net.state_dict()
    files = {"plain": folder / "w.pt", "wrapped": folder / "wrapped.pth"}
    torch.save(net_state, files["plain"])
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in net_state.items()}}, files["wrapped"])
    try:
        from safetensors.torch import save_file
    except ImportError:
        return files
    files["safetensors"] = folder / "w.safetensors"
    save_file({k: v.contiguous() for k, v in net_state.items()}, str(files["safetensors"]))
    return files


def test_weights_files_build_the_factory_and_give_the_bare_networks_probabilities(
    teacher_run: Path, tmp_path: Path
) -> None:
    files = _state_files(teacher_run, tmp_path)
    net = load_model(teacher_run)[0].net  # a published state_dict has no akd-edge normalise layer
    x = images()
    expected = torch.softmax(net(x), 1)
    for kind, path in files.items():
        spec = TeacherSpec(path=str(path), factory=FACTORY, kwargs={"width": 0.5})
        ensemble = load_teachers([spec], input_shape=SHAPE, num_classes=CLASSES)
        assert torch.allclose(ensemble.probs(x), expected, atol=1e-6), kind
        record = ensemble.provenance[0]
        assert record["kind"] == "weights" and record["sha256"] == sha256_file(path)
        assert record["arch"] == FACTORY and record["kwargs"] == {"width": 0.5}


def test_weights_file_mismatches_name_the_keys(teacher_run: Path, tmp_path: Path) -> None:
    path = _state_files(teacher_run, tmp_path)["plain"]
    with pytest.raises(CheckpointError, match=r"do not fit .*cnn_student.*size mismatch"):
        load_teachers([TeacherSpec(path=str(path), factory=FACTORY)], input_shape=SHAPE, num_classes=CLASSES)
    state = torch.load(path, weights_only=True)
    extra, missing = tmp_path / "extra.pt", tmp_path / "missing.pt"
    torch.save({**state, "head.extra": torch.zeros(1)}, extra)
    torch.save({k: v for i, (k, v) in enumerate(state.items()) if i}, missing)
    spec = {"factory": FACTORY, "kwargs": {"width": 0.5}}
    with pytest.raises(CheckpointError, match=r"missing keys none, unexpected keys head\.extra"):
        load_teachers([TeacherSpec(path=str(extra), **spec)], input_shape=SHAPE, num_classes=CLASSES)
    first = next(iter(state))
    with pytest.raises(CheckpointError, match=rf"missing keys {first}, unexpected keys none"):
        load_teachers([TeacherSpec(path=str(missing), **spec)], input_shape=SHAPE, num_classes=CLASSES)
    with pytest.raises(ConfigError, match="holds a state_dict.*give factory"):
        load_teachers([TeacherSpec(path=str(path))], input_shape=SHAPE, num_classes=CLASSES)
    with pytest.raises(ConfigError, match="holds weights only"):
        TeacherSpec(path="w.safetensors")
    with pytest.raises(ConfigError, match="onnx: teacher carries its own graph"):
        TeacherSpec(path="onnx:t.onnx", factory=FACTORY)


# -- mismatches exit 2 through the CLI -----------------------------------------------------------------------


def _distill(tmp_path: Path, teacher: str, method: str = "akd", synth: str = SYNTH) -> object:
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(tomli_w.dumps(tiny_recipe(method, synth)))
    args = ["distill", "--recipe", str(recipe), "--teacher", teacher, "--out", str(tmp_path / "student")]
    return CliRunner().invoke(cli, args)


def _variant(onnx_teacher: Path, folder: Path, **metadata: object) -> Path:
    import onnx

    proto = onnx.load(str(onnx_teacher))
    set_metadata(proto, metadata)
    path = folder / "variant.onnx"
    onnx.save(proto, str(path))
    return path


def _static_batch(onnx_teacher: Path, folder: Path) -> Path:
    from akd_edge.export.mobile import fix_batch

    path = folder / "static.onnx"
    fix_batch(onnx_teacher, path, 1)
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("shape", r"takes inputs of shape \(1, 8, 8\).*the data has \(1, 6, 6\)"),
        ("classes", "has 3 classes, the data has 4"),
        ("static batch", "fixed batch of 1; export it with a dynamic batch axis"),
        ("range", r"declares input_range \[0, 255\].*normalisation inside the graph"),
        ("gradient", "method.name='adaad' differentiates the teacher.*onnxruntime without gradients"),
        ("missing", "file not found"),
    ],
)
def test_onnx_teacher_mismatches_exit_2_with_the_reason(
    onnx_teacher: Path, tmp_path: Path, case: str, message: str
) -> None:
    teacher, method, synth = onnx_teacher, "akd", SYNTH
    if case == "shape":
        synth = "n=256,test=64,shape=1x6x6,classes=3"
    elif case == "classes":
        synth = "n=256,test=64,shape=1x8x8,classes=4"
    elif case == "static batch":
        teacher = _static_batch(onnx_teacher, tmp_path)
    elif case == "range":
        teacher = _variant(onnx_teacher, tmp_path, input_range=[0, 255])
    elif case == "gradient":
        method = "adaad"
    else:
        teacher = tmp_path / "nothing.onnx"
    result = _distill(tmp_path, f"onnx:{teacher}", method, synth)
    assert result.exit_code == 2, result.output
    assert re.search(message, " ".join(result.output.split())), result.output
    assert not (tmp_path / "student" / "last.pt").exists()


# -- a distillation from an ONNX teacher, and its provenance everywhere ---------------------------------------


@pytest.fixture(scope="module")
def onnx_student(onnx_teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch AKD student of the ONNX teacher, distilled through the CLI."""
    folder = tmp_path_factory.mktemp("onnx-student")
    result = _distill(folder, f"onnx:{onnx_teacher}")
    assert result.exit_code == 0, result.output
    return folder / "student"


@pytest.fixture(scope="module")
def torch_student(teacher_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same student distilled from the torch teacher (float32, as the ONNX teacher computes; under
    train.amp=bf16 the torch teacher would run inside the student's bf16 autocast)."""
    run = tmp_path_factory.mktemp("torch-student") / "student"
    train_run(load_recipe(tiny_recipe(path=str(teacher_run)), ["train.fast_teacher=false"]), run)
    return run


def test_distill_from_onnx_teacher_records_provenance_in_checkpoint_summary_report_and_card(
    teacher_run: Path, onnx_teacher: Path, onnx_student: Path, tmp_path: Path
) -> None:
    from akd_edge.export import export_checkpoint

    teacher_meta = load_checkpoint(teacher_run)
    sha = sha256_file(onnx_teacher)
    summary = json.loads((onnx_student / "summary.json").read_text())
    for teachers in (
        summary["teachers"],
        load_checkpoint(onnx_student / "best.pt")["teachers"],
        load_checkpoint(onnx_student, "last")["teachers"],
    ):
        (record,) = teachers
        assert record["kind"] == "onnx" and record["source"] == f"onnx:{onnx_teacher}" and record["sha256"] == sha
        assert record["weight"] == 1.0 and record["arch"] == "cnn-student"
        assert record["val"] == {k: teacher_meta["val"][k] for k in ("clean_acc", "robust_acc")}
        assert record["threat"] == {"norm": "linf", "eps": 0.1} and "pgd-1" in record["attack"]
    assert summary["epochs"] == 1 and 0.0 <= summary["best"]["robust_acc"] <= summary["best"]["clean_acc"] <= 1.0
    assert summary["speed"]["onnx_teacher_runtime"] == ["onnxruntime"]  # a float32 plan (train.amp = "none")

    folder, report = export_checkpoint(onnx_student, tmp_path / "export", int8=False, calib=0, n_test=32)
    on_disk = json.loads((folder / "report.json").read_text())
    assert on_disk["source"]["teachers"] == report["source"]["teachers"] == summary["teachers"]
    card = " ".join((folder / "MODEL_CARD.md").read_text().split())
    assert "## Teachers" in card and f"`onnx:{onnx_teacher}`" in card and sha[:16] in card
    assert f"{100 * teacher_meta['val']['robust_acc']:.2f}%" in card


def test_a_bf16_distillation_runs_its_onnx_teacher_under_openvino(onnx_teacher: Path, tmp_path: Path) -> None:
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    if not bf16_supported(torch.device("cpu")):
        pytest.skip("this CPU has no bf16 kernels: the run trains in float32")
    recipe = tiny_recipe(path=f"onnx:{onnx_teacher}")
    recipe["train"]["amp"] = "bf16"
    summary = train_run(load_recipe(recipe), tmp_path / "run")
    assert summary["speed"]["teacher_precision"] == "bf16"
    assert summary["speed"]["onnx_teacher_runtime"] == ["openvino bf16"]
    assert 0.0 <= summary["best"]["robust_acc"] <= summary["best"]["clean_acc"] <= 1.0


def test_student_of_the_onnx_teacher_validates_as_the_torch_teachers_student(
    onnx_student: Path, torch_student: Path
) -> None:
    onnx_best = json.loads((onnx_student / "summary.json").read_text())["best"]
    torch_best = json.loads((torch_student / "summary.json").read_text())["best"]
    for key in ("clean_acc", "robust_acc"):  # the bar: within 0.5 point (here: the same images right)
        assert abs(onnx_best[key] - torch_best[key]) <= 0.005, (key, onnx_best, torch_best)


def test_teacher_gap_compares_student_and_teacher_on_the_same_images(
    torch_student: Path, onnx_student: Path, tmp_path: Path
) -> None:
    import akd_edge as ae

    rng = torch.get_rng_state()
    report, path = ae.teacher_gap(torch_student, n=32, steps=2, plots=False, out=tmp_path / "torch")
    assert torch.equal(torch.get_rng_state(), rng), "the caller's global RNG was advanced"
    student, teacher = report["scores"]["student"], report["scores"]["teacher"]
    for scores in (student, teacher):
        assert scores["clean"]["n"] == scores["pgd"]["n"] == 32
        assert scores["pgd"]["acc"] <= scores["clean"]["acc"]
        assert scores["pgd"]["settings"] == student["pgd"]["settings"]
    assert report["gap"]["pgd"] == pytest.approx(student["pgd"]["acc"] - teacher["pgd"]["acc"])
    assert report["teachers"][0]["kind"] == "checkpoint" and json.loads(path.read_text())["gap"] == report["gap"]

    args = ["eval", str(onnx_student), "--teacher-gap", "--n", "32", "--steps", "2", "--out", str(tmp_path / "onnx")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    onnx_report = json.loads((tmp_path / "onnx" / "teacher_gap.json").read_text())
    assert onnx_report["scores"]["teacher"]["pgd"]["acc"] is None  # no gradients through onnxruntime
    assert set(onnx_report["gap"]) == {"clean"} and "not run" in " ".join(result.output.split())


def test_checkpoint_teacher_provenance_has_hash_accuracy_and_attack(teacher_run: Path, tmp_path: Path) -> None:
    recipe = load_recipe(tiny_recipe(path=str(teacher_run)))
    trainer = Trainer(recipe, tmp_path / "s", "student")
    (record,) = trainer.ckpt_extra["teachers"]
    meta = load_checkpoint(teacher_run)
    assert record["kind"] == "checkpoint" and record["which"] == "best" and record["epoch"] == meta["epoch"]
    assert record["sha256"] == sha256_file(teacher_run / "best.pt") and record["val"] == meta["val"]
    assert record["attack"] == {
        "name": "pgd",
        "norm": "linf",
        "eps": 0.1,
        "steps": 1,
        "step_size": 0.0,
        "random_start": True,
    }


def test_python_teacher_object_is_recorded_by_class(teacher_run: Path, tmp_path: Path) -> None:
    model, _ = load_model(teacher_run)
    trainer = Trainer(load_recipe(tiny_recipe()), tmp_path / "s", "student", teacher=model)
    assert trainer.ckpt_extra["teachers"] == [
        {"kind": "object", "source": "python object NormalizedModel", "weight": 1.0}
    ]


def test_resume_warns_when_a_teacher_file_changed(
    teacher_run: Path, onnx_teacher: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import shutil

    copy = tmp_path / "teacher.onnx"
    shutil.copy(onnx_teacher, copy)
    recipe = load_recipe(tiny_recipe(path=f"onnx:{copy}"))
    run = tmp_path / "student"
    train_run(recipe, run)
    train_run(recipe, run, resume=True)  # a finished run resumes to its summary; the same file: no warning
    assert "teacher file changed" not in caplog.text
    _variant(copy, tmp_path, note="rebuilt").replace(copy)  # the same graph, other bytes
    train_run(recipe, run, resume=True)
    assert "teacher file changed" in caplog.text
