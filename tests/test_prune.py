"""Structured pruning: pruned students run, keep rounded channel counts, export to ONNX, reload identically."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from akd_edge.compress.prune import PruneSpec, accumulate_gradients, conv_channels, prune_model
from akd_edge.compress.search import search_ratio
from akd_edge.core.errors import CheckpointError, UsageError
from akd_edge.models import create_model, get_classifier, model_info
from akd_edge.models.checkpoint import CHECKPOINT_FORMAT, load_model, save_atomic
from akd_edge.models.pruned import pruning_record, rebuild_pruned

STUDENTS = {
    "cnn-student": ((1, 12, 12), {}),
    "mobilenetv2": ((3, 16, 16), {"width_mult": 0.25}),
    "resnet18": ((3, 16, 16), {"width": 0.25}),
}
CLASSES = 4


def build(name: str) -> nn.Module:
    """A student with non-trivial BatchNorm statistics (so a wrong reload would show in the outputs)."""
    shape, kwargs = STUDENTS[name]
    torch.manual_seed(0)
    model = create_model(name, num_classes=CLASSES, input_shape=shape, mean=0.4, std=0.3, **kwargs)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(16, *shape))
    return model.eval()


def save_pruned(model: nn.Module, name: str, history: list, path: Path) -> Path:
    shape, kwargs = STUDENTS[name]
    arch = {
        "name": name,
        "kwargs": kwargs,
        "num_classes": CLASSES,
        "input_shape": list(shape),
        "mean": [0.4] * shape[0],
        "std": [0.3] * shape[0],
    }
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "model": model.state_dict(),
        "arch": arch,
        "data": {"name": "synthetic", "class_names": [str(i) for i in range(CLASSES)]},
        "threat": {"norm": "linf", "eps": 0.1},
        "role": "student",
        "epoch": 1,
        "val": {},
        "pruning": pruning_record(history, shape, {"ratio": 0.5}),
    }
    return save_atomic(ckpt, path)


@pytest.mark.parametrize("ratio", [0.3, 0.5])
@pytest.mark.parametrize("name", list(STUDENTS))
def test_pruned_student_runs_rounds_channels_and_reloads_identically(name: str, ratio: float, tmp_path: Path) -> None:
    shape, _ = STUDENTS[name]
    model = build(name)
    before = model_info(model, shape)
    channels_before = conv_channels(model)
    classifier_before = get_classifier(model).weight.shape
    history = prune_model(model, shape, ratio, steps=2, round_to=8)
    assert history, "nothing was pruned"

    x = torch.rand(5, *shape)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (5, CLASSES)
    assert get_classifier(model).out_features == CLASSES
    after = model_info(model, shape)
    assert after["params"] < before["params"] and after["macs"] < before["macs"]
    for layer, channels in conv_channels(model).items():
        original = channels_before[layer]
        assert channels <= original
        if original % 8 == 0:
            assert channels % 8 == 0, (layer, original, channels)
        # Each layer keeps the multiple of 8 nearest to floor(original * (1 - ratio)), and at least 8.
        if original > 8 and original % 8 == 0:
            assert abs(channels - original * (1 - ratio)) < 5 or channels == 8, (layer, original, channels)
    assert get_classifier(model).weight.shape[0] == classifier_before[0]

    path = save_pruned(model, name, history, tmp_path / "pruned.pt")
    reloaded, meta = load_model(path)
    assert meta["pruning"]["history"] == history
    state, state2 = model.state_dict(), reloaded.state_dict()
    assert state.keys() == state2.keys()
    assert all(torch.equal(state[k], state2[k]) for k in state)
    with torch.no_grad():
        assert torch.equal(reloaded(x), logits)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter: fast enough for a unit test
@pytest.mark.parametrize("name", list(STUDENTS))
def test_pruned_student_exports_to_onnx_with_parity(name: str) -> None:
    import onnxruntime as ort

    shape, _ = STUDENTS[name]
    model = build(name)
    prune_model(model, shape, 0.5, round_to=8)
    buffer = io.BytesIO()
    example = torch.rand(2, *shape)
    torch.onnx.export(
        model,
        (example,),
        buffer,
        dynamo=False,
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
    )
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    x = torch.rand(7, *shape)
    (onnx_logits,) = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        torch_logits = model(x).numpy()
    np.testing.assert_allclose(onnx_logits, torch_logits, atol=1e-4, rtol=0)


def test_iterative_steps_reach_the_same_size_as_one_step() -> None:
    shape, _ = STUDENTS["resnet18"]
    one, three = build("resnet18"), build("resnet18")
    prune_model(one, shape, 0.6, steps=1)
    calls: list[int] = []
    prune_model(three, shape, 0.6, steps=3, after_step=lambda k, history: calls.append(k))
    assert calls == [1, 2, 3]
    assert conv_channels(one) == conv_channels(three)


def test_classifier_and_kept_layers_are_not_pruned() -> None:
    shape, _ = STUDENTS["cnn-student"]
    model = build("cnn-student")
    before = conv_channels(model)
    prune_model(model, shape, 0.5, round_to=1, keep=["features.2.0"])  # without the "net." prefix
    after = conv_channels(model)
    assert after["net.features.2.0"] == before["net.features.2.0"]
    assert after["net.features.0.0"] == before["net.features.0.0"] // 2
    assert get_classifier(model).out_features == CLASSES
    with pytest.raises(UsageError, match="no such module"):
        prune_model(build("cnn-student"), shape, 0.5, keep=["net.features.9"])


def test_taylor_importance_keeps_the_channels_with_gradient() -> None:
    shape, _ = STUDENTS["cnn-student"]
    model = build("cnn-student")
    first = model.net.features[0][0]
    original = first.weight.detach().clone()
    wanted = [1, 4, 6, 9, 10, 12, 13, 15]

    def loss() -> torch.Tensor:
        # Only the wanted output channels of the first conv influence this loss.
        return first.weight[wanted].sum() * 0 + (first.weight[wanted] ** 2).sum()

    accumulate_gradients(model, loss, batches=2)
    prune_model(model, shape, 0.5, round_to=8, importance="taylor")
    assert first.out_channels == 8
    assert torch.equal(first.weight, original[wanted])


def test_target_params_is_met_within_5_percent() -> None:
    shape, _ = STUDENTS["resnet18"]
    model = build("resnet18")
    full = model_info(model, shape)["params"]
    for fraction in (0.6, 0.3):
        target = int(full * fraction)
        result = search_ratio(model, shape, metric="params", target=target, round_to=1)
        assert 0.95 * target <= result.params <= target
        pruned = build("resnet18")
        prune_model(pruned, shape, result.ratio, round_to=1)
        assert model_info(pruned, shape)["params"] == result.params
    assert model_info(model, shape)["params"] == full  # the search works on copies


def test_target_macs_with_rounding_never_exceeds_the_budget() -> None:
    shape, _ = STUDENTS["cnn-student"]
    model = build("cnn-student")
    full = model_info(model, shape)["macs"]
    result = search_ratio(model, shape, metric="macs", target=full // 2, round_to=8)
    assert result.macs <= full // 2
    assert all(c % 8 == 0 for c in conv_channels(model).values())


def test_unreachable_targets_are_usage_errors() -> None:
    shape, _ = STUDENTS["cnn-student"]
    model = build("cnn-student")
    full = model_info(model, shape)["params"]
    with pytest.raises(UsageError, match="not below"):
        search_ratio(model, shape, metric="params", target=full + 1)
    with pytest.raises(UsageError, match="unreachable"):
        search_ratio(model, shape, metric="params", target=10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ratio": 1.5}, "out of range"),
        ({"ratio": 0.0}, "out of range"),
        ({}, "exactly one"),
        ({"ratio": 0.5, "target_params": 1000}, "exactly one"),
        ({"ratio": 0.5, "steps": 0}, "--steps"),
        ({"ratio": 0.5, "importance": "random"}, "--importance"),
        ({"ratio": 0.5, "round_to": 0}, "--round-to"),
        ({"target_macs": 0}, "positive"),
    ],
)
def test_prune_spec_rejects_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        PruneSpec(**kwargs)


def test_rebuild_rejects_a_history_from_another_architecture() -> None:
    shape, _ = STUDENTS["cnn-student"]
    model = build("cnn-student")
    history = prune_model(model, shape, 0.5)
    other = create_model("resnet18", num_classes=CLASSES, input_shape=(1, 12, 12), width=0.25)
    with pytest.raises(CheckpointError, match="cannot replay"):
        rebuild_pruned(other, pruning_record(history, shape))
    with pytest.raises(CheckpointError, match="not an akd-edge pruning history"):
        rebuild_pruned(other, {"history": history})
