"""Export: ONNX parity for every student, int8 agreement on a trained tiny model, mobile coverage, safety."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from akd_edge.core.errors import CheckpointError, UsageError
from akd_edge.core.files import mark
from akd_edge.core.ort import OrtClassifier
from akd_edge.export import ExportCheckFailed, ExportData, export_checkpoint, run_name
from akd_edge.export.onnx import export_onnx, mobile_friendly
from akd_edge.models import create_model, list_models, model_info
from akd_edge.models.checkpoint import save_atomic
from akd_edge.report.macs import onnx_macs

SHAPE = (1, 16, 16)
SYNTH = "n=600,test=300,shape=1x16x16,classes=10,noise=0.25,seed=3"
STUDENT_KWARGS = {"mobilenetv2": {"width_mult": 0.25}, "resnet18": {"width": 0.125}}


def save_checkpoint(model: nn.Module, path: Path, name: str, kwargs: dict | None = None, **extra: object) -> Path:
    arch = {
        "name": name,
        "kwargs": kwargs or {},
        "num_classes": 10,
        "input_shape": list(SHAPE),
        "mean": [0.5],
        "std": [0.25],
    }
    ckpt = {
        "format": "akd-edge/1",
        "model": model.state_dict(),
        "arch": arch,
        "data": {"name": "synthetic", "class_names": [f"class-{k}" for k in range(10)], "data_dir": SYNTH},
        "threat": {"norm": "linf", "eps": 0.1},
        "role": "student",
        "epoch": 1,
        "val": {"clean_acc": 0.9, "robust_acc": 0.4},
        **extra,
    }
    return save_atomic(ckpt, path)


def synthetic_splits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from akd_edge.data import get_loader

    data = get_loader("synthetic")(SYNTH, parts=("train", "test"))
    return data.train.images, data.train.labels, data.test.images, data.test.labels


def train_tiny(model: nn.Module, images: np.ndarray, labels: np.ndarray, epochs: int = 4) -> nn.Module:
    """A few epochs of Adam on clean images: enough for the synthetic classes to be separable."""
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    y = torch.from_numpy(labels)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    train_x, train_y, _, _ = synthetic_splits()
    model = train_tiny(
        create_model("cnn-student", num_classes=10, input_shape=SHAPE, mean=[0.5], std=[0.25]), train_x, train_y
    )
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny.pt", "cnn-student")


STUDENTS = sorted(name for name, role, _ in list_models() if role == "student")


@pytest.mark.parametrize("name", STUDENTS)
def test_export_each_student_with_parity(name: str, tmp_path: Path) -> None:
    kwargs = STUDENT_KWARGS.get(name, {})
    model = create_model(name, num_classes=10, input_shape=SHAPE, mean=[0.5], std=[0.25], **kwargs)
    ckpt = save_checkpoint(model, tmp_path / "s.pt", name, kwargs)
    x = np.random.default_rng(0).integers(0, 256, (32, *SHAPE), dtype=np.uint8)
    folder, report = export_checkpoint(
        ckpt, tmp_path / "out", int8=False, data=ExportData(None, x, np.zeros(32, dtype=np.int64))
    )
    parity = report["checks"]["parity"]
    assert report["checks"]["onnx_checker"]["model.onnx"]["passed"]
    assert parity["passed"] and parity["max_abs_logit_diff"] <= parity["max_abs_logit_diff_threshold"]
    assert parity["argmax_agreement"] == 1.0
    # dynamic batch: the same file runs at any batch size and matches torch
    ort_model = OrtClassifier.load(folder / "model.onnx")
    assert ort_model.batch is None and ort_model.input_shape == SHAPE
    with torch.no_grad():
        reference = model.eval()(torch.from_numpy(x[:5].astype(np.float32) / 255)).numpy()
    np.testing.assert_allclose(ort_model.predict(x[:5], batch_size=5), reference, atol=1e-4, rtol=1e-4)
    # metadata says how to use and trust the model without akd-edge
    meta = ort_model.metadata
    assert meta["class_names"] == [f"class-{k}" for k in range(10)]
    assert meta["input_shape"] == list(SHAPE) and meta["input_range"] == [0.0, 1.0]
    assert meta["threat_model"] == {"norm": "linf", "eps": 0.1} and meta["robust_accuracy"] == 0.4
    assert "akd_edge_version" in meta
    # mobile: no Flatten/ReduceMean left, and the batch-1 .ort graph runs entirely on NNAPI and CoreML
    ops = set(report["export"]["ops"])
    assert not ops & {"Flatten", "ReduceMean", "Shape", "Gather"}
    for ep, info in report["mobile"]["usability"]["model.ort (batch 1)"].items():
        assert info["supported_nodes"] == info["nodes"] and info["partitions"] == 1, (ep, info)
    assert report["mobile"]["ort"]["model.ort"]["parity"]["argmax_agreement"] == 1.0
    for file in ("model.onnx", "model.ort", "report.json", "MODEL_CARD.md"):
        assert (folder / file).is_file()
    assert not (folder / "model.int8.onnx").exists()
    # one MAC count: distill's (torch) is the report's (the ONNX graph, BatchNorm folded)
    assert model_info(model, SHAPE)["macs"] == onnx_macs(folder / "model.onnx")


def test_int8_agreement_on_trained_model(trained_ckpt: Path, tmp_path: Path) -> None:
    folder, report = export_checkpoint(trained_ckpt, tmp_path / "tiny", calib=256)
    agreement = report["checks"]["int8_agreement"]
    assert agreement["n"] == 300  # the whole test split by default
    assert agreement["fp32_clean_acc"] > 0.8  # the tiny model did learn, so agreement is meaningful
    assert agreement["argmax_agreement"] >= 0.97 and agreement["passed"]
    assert abs(agreement["fp32_clean_acc"] - agreement["int8_clean_acc"]) <= 0.03
    assert report["quantization"]["calibration_images"] == 256
    assert report["quantization"]["calibration_split"] == "train"
    int8 = onnx.load(str(folder / "model.int8.onnx"))
    ops = [node.op_type for node in int8.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    # per-channel weights: some DequantizeLinear carries a scale vector, not a scalar
    scales = {init.name: tuple(init.dims) for init in int8.graph.initializer}
    assert any(
        len(scales.get(node.input[1], ())) == 1 and scales[node.input[1]][0] > 1
        for node in int8.graph.node
        if node.op_type == "DequantizeLinear"
    )
    assert {p.key: p.value for p in int8.metadata_props}["precision"] == "int8"
    assert (folder / "model.int8.ort").stat().st_size < (folder / "model.ort").stat().st_size
    # report.json records sizes and hashes of every model file; the card renders from it
    saved = json.loads((folder / "report.json").read_text())
    assert set(saved["files"]) == {"model.onnx", "model.int8.onnx", "model.ort", "model.int8.ort"}
    assert saved["files"]["model.onnx"]["bytes"] == (folder / "model.onnx").stat().st_size
    assert "fp32 vs int8" in (folder / "MODEL_CARD.md").read_text()
    # fp32 and int8 timed side by side, with the recommendation for speed (figures only, never a speed asserted)
    speed = saved["checks"]["int8_speed"]
    assert speed["recommended_for_speed"] in ("int8", "fp32") and speed["int8_faster"] == (
        speed["recommended_for_speed"] == "int8"
    )
    assert speed["fp32"]["throughput_batch"] == speed["int8"]["throughput_batch"] == 256
    assert speed["machine"]["cpu"] and speed["advice"] in (folder / "MODEL_CARD.md").read_text()


def test_export_drops_the_exporter_s_torchvision_notices() -> None:
    """torch's exporter warns that torchvision is missing (four lines an export): dropped by a filter, which
    survives torch resetting its loggers' levels when dynamo first loads."""
    import logging

    from akd_edge.export import quiet_libraries

    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        with quiet_libraries():
            logging.getLogger("torch.onnx").setLevel(logging.NOTSET)  # what torch._logging does meanwhile
            logger.warning("torchvision is not installed. Skipping %s", "torchvision::nms")
            logger.warning("another warning")
        assert [record.getMessage() for record in seen] == ["another warning"]
    finally:
        logger.removeHandler(handler)


def test_mobile_rewrites_keep_numbers(tmp_path: Path) -> None:
    """Flatten and a spatial mean are rewritten into ops every mobile EP has, without changing outputs."""

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.flatten = nn.Flatten()
            self.fc = nn.Linear(4 + 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.conv(x))
            pooled = h.mean((2, 3))
            flat = self.flatten(nn.functional.adaptive_avg_pool2d(h, 1))
            return self.fc(torch.cat([pooled, flat], 1))

    model = Head().eval()
    info = export_onnx(model, tmp_path / "m.onnx", SHAPE, {"precision": "fp32"})
    assert info["checker"]["passed"]
    assert "Flatten" not in info["ops"] and "ReduceMean" not in info["ops"]
    assert "GlobalAveragePool" in info["ops"] and info["rewrites"]
    x = np.random.default_rng(1).random((4, *SHAPE), dtype=np.float32)
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(OrtClassifier.load(tmp_path / "m.onnx").predict(x), reference, atol=1e-5)
    # idempotent: a second pass finds nothing left to rewrite
    _, changes = mobile_friendly(onnx.load(str(tmp_path / "m.onnx")))
    assert changes == []


def test_failed_export_never_replaces_earlier_output(
    trained_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "export" / "run"
    out.mkdir(parents=True)
    (out / "model.onnx").write_bytes(b"earlier good export")
    mark(out, "export")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        export_checkpoint(bad, out, int8=False)
    from akd_edge.export import onnx as export_onnx_module

    def failing_parity(*args: object, **kwargs: object) -> dict:
        return {
            "n": 1,
            "max_abs_logit_diff": 1.0,
            "max_abs_logit_diff_threshold": 1e-4,
            "argmax_agreement": 0.0,
            "argmax_agreement_threshold": 0.999,
            "passed": False,
        }

    monkeypatch.setattr(export_onnx_module, "check_parity", failing_parity)
    with pytest.raises(ExportCheckFailed, match="parity") as err:
        export_checkpoint(trained_ckpt, out, int8=False, data=ExportData(None, None, None))
    assert (out / "model.onnx").read_bytes() == b"earlier good export"
    assert err.value.kept == out.with_name("run.failed") and (err.value.kept / "model.onnx").is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["run", "run.failed"]  # no partial folders left


def test_success_replaces_and_default_name(trained_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    folder, _ = export_checkpoint(trained_ckpt, int8=False, calib=0, n_test=50)
    assert folder == Path("export") / "tiny"
    (folder / "notes.txt").write_text("the user's")  # not written by the export: a re-export refuses
    with pytest.raises(UsageError, match=r"files akd-edge did not write \(notes\.txt\)"):
        export_checkpoint(trained_ckpt, int8=False, calib=0, n_test=50)
    assert (folder / "notes.txt").read_text() == "the user's"
    (folder / "notes.txt").unlink()
    (folder / "model.onnx").write_bytes(b"edited")  # a file the export wrote: replaced
    folder2, report = export_checkpoint(trained_ckpt, int8=False, calib=0, n_test=50)
    assert folder2 == folder and (folder / "model.onnx").read_bytes() != b"edited"
    assert report["checks"]["torch_clean_acc"] > 0.8
    assert run_name({"recipe": {"run": {"name": "fmnist-akd"}}, "path": "runs/x/best.pt"}) == "fmnist-akd"
    assert run_name({"path": "runs/my-run/best.pt"}) == "my-run"


def test_export_cli(trained_ckpt: Path, tmp_path: Path) -> None:
    from akd_edge.cli.export_cmd import export_cmd

    runner = CliRunner()
    result = runner.invoke(export_cmd, [str(trained_ckpt), "--out", str(tmp_path / "cli"), "--no-int8", "--n", "64"])
    assert result.exit_code == 0, result.output
    assert "torch vs onnxruntime" in result.output and (tmp_path / "cli" / "model.ort").is_file()
    assert f"next: akd-edge verify {tmp_path / 'cli'}" in result.output
    missing = runner.invoke(export_cmd, [str(tmp_path / "nope.pt"), "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "nope.pt" in missing.output
    assert not (tmp_path / "x").exists()
    no_calib = runner.invoke(export_cmd, [str(trained_ckpt), "--out", str(tmp_path / "y"), "--calib", "0"])
    assert no_calib.exit_code == 2 and "--calib" in no_calib.output


def _disagreeing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the fp32-vs-int8 comparison find 99.0% agreement (the threshold stays the default 99.5%)."""
    from akd_edge.export import command as export_command

    real = export_command.int8_agreement

    def worse(*args: object) -> dict:
        result = real(*args)
        return {**result, "argmax_agreement": 0.99, "passed": False}

    monkeypatch.setattr(export_command, "int8_agreement", worse)


def test_failed_int8_agreement_exports_fp32_only_and_says_why(
    trained_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _disagreeing(monkeypatch)
    folder, report = export_checkpoint(trained_ckpt, tmp_path / "out", calib=64, n_test=64, web=False)
    agreement = report["checks"]["int8_agreement"]
    assert not agreement["passed"] and not agreement["kept"]
    assert "99.00%" in agreement["action"] and "not written" in agreement["action"]
    assert sorted(report["files"]) == ["model.onnx", "model.ort"]
    assert not (folder / "model.int8.onnx").exists() and not (folder / "model.int8.ort").exists()
    assert agreement["action"] in (folder / "MODEL_CARD.md").read_text()
    assert json.loads((folder / "report.json").read_text())["checks"]["int8_agreement"]["kept"] is False


def test_keep_failed_int8_flag_keeps_the_files_and_the_record(
    trained_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from akd_edge.cli.export_cmd import export_cmd

    _disagreeing(monkeypatch)
    args = [str(trained_ckpt), "--out", str(tmp_path / "kept"), "--calib", "64", "--n", "64", "--no-web"]
    result = CliRunner().invoke(export_cmd, [*args, "--keep-failed-int8"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "FAIL" in result.output and "kept as --keep-failed-int8 asked" in " ".join(result.output.split())
    assert (tmp_path / "kept" / "model.int8.onnx").is_file()
    saved = json.loads((tmp_path / "kept" / "report.json").read_text())["checks"]["int8_agreement"]
    assert saved["passed"] is False and saved["kept"] is True


def test_export_recommends_fp32_when_int8_is_not_faster(
    trained_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from akd_edge.cli.export_cmd import export_cmd
    from akd_edge.core import ort

    def timed(model: ort.OrtClassifier, input_shape: tuple[int, ...], **kwargs: object) -> dict:
        slow = model.path.name == "model.int8.onnx"  # int8 at half the fp32 throughput, twice its latency
        return {
            "batch1_p50_ms": 2.0 if slow else 1.0,
            "batch1_p95_ms": 3.0,
            "throughput_batch": 256,
            "throughput_img_s": 500.0 if slow else 1000.0,
            "threads": 1,
        }

    monkeypatch.setattr(ort, "ort_latency", timed)
    args = [str(trained_ckpt), "--out", str(tmp_path / "slow"), "--calib", "64", "--n", "64", "--no-web"]
    result = CliRunner().invoke(export_cmd, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "int8 is not faster than fp32 on this machine (0.50x" in said and "use model.onnx (fp32) for speed" in said
    speed = json.loads((tmp_path / "slow" / "report.json").read_text())["checks"]["int8_speed"]
    assert speed["recommended_for_speed"] == "fp32" and speed["throughput_ratio"] == 0.5
    assert speed["batch1_latency_ratio"] == 2.0
    card = (tmp_path / "slow" / "MODEL_CARD.md").read_text()
    assert "fp32 recommended for speed" in card and speed["advice"] in card
