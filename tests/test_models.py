"""Model zoo: shapes, sizes, normalisation, module:factory loading, export-friendly ops, prunability."""

from __future__ import annotations

import textwrap

import pytest
import torch
from torch import nn

from akd_edge.core.errors import ConfigError, UsageError
from akd_edge.models import (
    MODELS,
    Normalize,
    NormalizedModel,
    create_model,
    describe_models,
    get_classifier,
    list_models,
    model_info,
)

EXPECTED = {"cnn-teacher", "cnn-student", "preact-resnet18", "resnet18", "wrn-28-10", "wrn-34-10", "mobilenetv2"}
SHAPES = [(1, 28, 28), (3, 32, 32)]
# Leaf modules that NNAPI/CoreML execution providers run (plus the normalisation layer: Sub and Div).
ALLOWED_LEAVES = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Linear, nn.MaxPool2d, Normalize)


def build(name: str, shape: tuple[int, int, int], classes: int = 10, meta: bool = False, **kwargs) -> NormalizedModel:
    if meta:
        with torch.device("meta"):
            return create_model(name, num_classes=classes, input_shape=shape, mean=0.5, std=0.25, **kwargs)
    torch.manual_seed(0)
    return create_model(name, num_classes=classes, input_shape=shape, mean=0.5, std=0.25, **kwargs)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_has_every_model_with_a_role():
    assert set(MODELS.names()) == EXPECTED
    rows = list_models()
    assert [r[0] for r in rows] == sorted(EXPECTED)
    for name, role, description in rows:
        assert role in ("teacher", "student"), name
        assert description, name


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_output_shape(name, shape):
    # The wide ResNets (36-46M parameters) run for real once, at 32x32; elsewhere only shapes are propagated.
    meta = name.startswith("wrn") and shape != (3, 32, 32)
    model = build(name, shape, classes=7, meta=meta).eval()
    with torch.no_grad():
        logits = model(torch.rand(1, *shape, device=logits_device(model)))
    assert logits.shape == (1, 7)
    assert meta or torch.isfinite(logits).all()


def logits_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("cnn-teacher", {}),
        ("cnn-student", {}),
        ("resnet18", {"width": 0.25}),
        ("preact-resnet18", {"width": 0.25}),
        ("mobilenetv2", {"width_mult": 0.25}),
        ("wrn-28-10", {"depth": 10, "width": 1}),
    ],
)
def test_train_mode_batches_give_input_gradients(name, kwargs):
    """Every block type runs in train mode and passes gradients back to the image (attacks need them)."""
    model = build(name, (3, 32, 32), classes=7, **kwargs).train()
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    logits = model(x)
    assert logits.shape == (2, 7)
    logits.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_parameter_counts():
    assert 200_000 <= n_params(build("cnn-teacher", (1, 28, 28))) <= 400_000
    assert n_params(build("cnn-student", (1, 28, 28))) < 100_000
    assert n_params(build("wrn-28-10", (3, 32, 32), meta=True)) == pytest.approx(36.5e6, rel=0.01)
    assert n_params(build("wrn-34-10", (3, 32, 32), meta=True)) == pytest.approx(46.2e6, rel=0.01)
    assert n_params(build("preact-resnet18", (3, 32, 32), meta=True)) == pytest.approx(11.2e6, rel=0.01)
    assert n_params(build("resnet18", (3, 32, 32), meta=True)) == pytest.approx(11.2e6, rel=0.01)
    assert n_params(build("mobilenetv2", (3, 32, 32), meta=True)) == pytest.approx(2.24e6, rel=0.02)


@pytest.mark.parametrize(
    ("name", "key"),
    [("cnn-student", "width"), ("cnn-teacher", "width"), ("resnet18", "width"), ("mobilenetv2", "width_mult")],
)
def test_width_kwargs_scale_the_model(name, key):
    shape = (1, 28, 28)
    narrow = n_params(build(name, shape, meta=True, **{key: 0.5}))
    default = n_params(build(name, shape, meta=True))
    wide = n_params(build(name, shape, meta=True, **{key: 2}))
    assert narrow < default < wide


def test_wrn_depth_and_width_kwargs():
    small = build("wrn-28-10", (3, 32, 32), depth=10, width=2)
    assert (
        len([m for m in small.modules() if isinstance(m, nn.Conv2d)]) == 1 + 3 * 2 + 3
    )  # stem, 3 blocks of 2 convs, 3 projections
    assert small(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ConfigError, match="6n \\+ 4"):
        build("wrn-28-10", (3, 32, 32), depth=27)


def test_normalize_maps_mean_to_zero_and_mean_plus_std_to_one():
    norm = Normalize([0.2, 0.4, 0.6], [0.1, 0.2, 0.3])
    mean = torch.tensor([0.2, 0.4, 0.6]).reshape(1, 3, 1, 1).expand(2, 3, 4, 4)
    std = torch.tensor([0.1, 0.2, 0.3]).reshape(1, 3, 1, 1)
    assert torch.allclose(norm(mean), torch.zeros(2, 3, 4, 4), atol=1e-6)
    assert torch.allclose(norm(mean + std), torch.ones(2, 3, 4, 4), atol=1e-6)
    assert set(dict(norm.named_buffers())) == {"mean", "std"}
    assert not list(norm.parameters())  # not trained, but saved with the weights


def test_normalize_broadcasts_one_value_and_rejects_bad_statistics():
    assert Normalize(0.5, 0.25, channels=3).mean.shape == (1, 3, 1, 1)
    with pytest.raises(ConfigError, match="3 channels"):
        Normalize([0.1, 0.2], [0.3, 0.3], channels=3)
    with pytest.raises(ConfigError, match="std must be > 0"):
        Normalize([0.5], [0.0])


def test_create_model_puts_normalisation_inside():
    model = build("cnn-student", (1, 28, 28)).eval()
    assert isinstance(model, NormalizedModel)
    assert model.normalize.mean.flatten().tolist() == [0.5]
    assert model.normalize.std.flatten().tolist() == [0.25]
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), model.net((x - 0.5) / 0.25))
    assert {"normalize.mean", "normalize.std"} <= set(model.state_dict())
    with pytest.raises(ConfigError, match="channels"):
        create_model("cnn-student", num_classes=10, input_shape=(3, 32, 32), mean=[0.5, 0.5], std=[0.2, 0.2])


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(UsageError) as info:
        create_model("cnn-studnet", num_classes=10, input_shape=(1, 28, 28))
    message = str(info.value)
    assert "cnn-student" in message and "module:factory" in message
    for name in EXPECTED:
        assert name in message


def test_unknown_kwarg_names_the_accepted_ones():
    with pytest.raises(ConfigError, match="width_mult"):
        create_model("mobilenetv2", num_classes=10, input_shape=(3, 32, 32), width=2)


def test_bad_input_shape_and_classes_are_usage_errors():
    with pytest.raises(ConfigError, match="input_shape"):
        create_model("cnn-student", num_classes=10, input_shape=(28, 28))
    with pytest.raises(ConfigError, match="num_classes"):
        create_model("cnn-student", num_classes=0, input_shape=(1, 28, 28))
    with pytest.raises(ConfigError, match="at least 4x4"):
        create_model("cnn-teacher", num_classes=10, input_shape=(1, 2, 2))


USER_MODULE = """
import torch
from torch import nn

class Tiny(nn.Module):
    def __init__(self, in_ch, classes, hidden):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, hidden, 3, padding=1)
        self.fc = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))

def build(num_classes, input_shape=(1, 28, 28), hidden=4):
    return Tiny(input_shape[0], num_classes, hidden)

def not_a_model(num_classes, input_shape=(1, 28, 28)):
    return "a string"

NOT_CALLABLE = 3
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "akd_user_models.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "akd_user_models"


def test_module_factory_builds_a_users_architecture(user_module):
    model = create_model(f"{user_module}:build", num_classes=5, input_shape=(3, 8, 8), mean=0.5, std=0.5, hidden=6)
    assert isinstance(model, NormalizedModel)
    assert model.net.conv.out_channels == 6 and model.net.conv.in_channels == 3
    assert model(torch.rand(2, 3, 8, 8)).shape == (2, 5)


@pytest.mark.parametrize(
    ("spec", "kwargs", "match"),
    [
        ("akd_no_such_module_xyz:build", {}, "cannot import module 'akd_no_such_module_xyz'"),
        ("{m}:missing", {}, "has no attribute 'missing'.*build"),
        ("{m}:NOT_CALLABLE", {}, "not callable"),
        ("{m}:not_a_model", {}, "returned str"),
        ("{m}:build:extra", {}, "package.module:factory"),
        (":build", {}, "package.module:factory"),
        ("{m}:", {}, "package.module:factory"),
        ("{m}:build", {"depth": 3}, "cannot be called with kwargs.*accepts: hidden"),
    ],
)
def test_module_factory_fails_clearly(user_module, spec, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        create_model(spec.format(m=user_module), num_classes=5, input_shape=(3, 8, 8), **kwargs)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_only_export_friendly_ops(name):
    """No Flatten (CoreML EP lacks it) and only conv/BN/ReLU/linear/max-pool modules, checked on the traced graph."""
    model = build(name, (3, 32, 32), meta=True)
    assert not any(isinstance(m, nn.Flatten) for m in model.modules())
    leaves = [m for m in model.modules() if not list(m.children())]
    assert all(isinstance(m, ALLOWED_LEAVES) for m in leaves), {type(m).__name__ for m in leaves}
    graph = torch.fx.symbolic_trace(model).graph
    functions = {str(n.target) for n in graph.nodes if n.op in ("call_function", "call_method")}
    assert not any("flatten" in f or "view" in f for f in functions), functions


def test_model_info_counts_linear_macs_and_params():
    assert model_info(nn.Linear(12, 5, bias=False), (12,)) == {"params": 60, "macs": 60}
    # multiply-accumulates only, as the ONNX graph's count in the export report: the bias is not one
    assert model_info(nn.Linear(12, 5), (12,)) == {"params": 65, "macs": 60}


def test_model_info_of_a_conv_net_is_dominated_by_convs():
    model = build("cnn-student", (1, 28, 28))
    info = model_info(model, (1, 28, 28))
    assert info["params"] == n_params(model)
    conv_macs = 28 * 28 * 16 * 9 + 14 * 14 * 32 * 16 * 9 + 7 * 7 * 64 * 32 * 9
    assert info["macs"] == conv_macs + 64 * 10  # convolutions and the linear head, nothing else


def test_describe_models_reports_sizes_for_a_shape():
    rows = {r["name"]: r for r in describe_models((1, 28, 28), names=["cnn-student", "cnn-teacher"])}
    assert rows["cnn-student"]["params"] == n_params(build("cnn-student", (1, 28, 28)))
    assert rows["cnn-student"]["macs"] < rows["cnn-teacher"]["macs"]
    assert rows["cnn-teacher"]["role"] == "teacher"
    small = describe_models((1, 2, 2), names=["cnn-student"])[0]
    assert "error" in small and "params" not in small


@pytest.mark.parametrize(
    ("name", "shape"), [("cnn-student", (1, 28, 28)), ("mobilenetv2", (3, 8, 8)), ("resnet18", (3, 8, 8))]
)
def test_torch_pruning_removes_channels_and_keeps_the_output(name, shape):
    import torch_pruning as tp

    model = build(name, shape).eval()
    head = get_classifier(model)
    params_before = n_params(model)
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    features_before = head.in_features
    pruner = tp.pruner.BasePruner(
        model,
        torch.rand(1, *shape),
        importance=tp.importance.GroupMagnitudeImportance(),
        pruning_ratio=0.3,
        ignored_layers=[head],
    )
    pruner.step()
    with torch.no_grad():
        out = model(torch.rand(3, *shape))
    assert out.shape == (3, 10)
    assert torch.isfinite(out).all()
    assert head.out_features == 10
    assert abs(head.in_features - 0.7 * features_before) <= 1  # 30% of the pooled channels removed
    assert first_conv.in_channels == shape[0]  # image channels are never pruned
    assert n_params(model) < 0.7 * params_before


def test_a_model_is_one_file(tmp_path):
    """CONTRIBUTING.md's worked example, added as one file to a copy of the package: recipes accept the name
    without torch, ``akd-edge models`` lists it and ``create_model`` builds it, with no other file edited."""
    from conftest import run_with_contributing_example

    check = textwrap.dedent(
        """
        import sys
        from akd_edge.core.registry import BUILTIN_NAMES, validate_names
        assert "tinynet" in BUILTIN_NAMES["model"] and "torch" not in sys.modules
        from akd_edge.config import load_recipe
        validate_names(load_recipe("fmnist-quickstart", ["model.name=tinynet"]))
        import torch
        from akd_edge.models import create_model, list_models
        assert ("tinynet", "student", "2 convs 8-16 (BN, ReLU, a max-pool), GAP, linear") in list_models()
        print(tuple(create_model("tinynet", num_classes=10, input_shape=(1, 28, 28))(torch.rand(2, 1, 28, 28)).shape))
        """
    )
    done, listed = run_with_contributing_example(tmp_path, "akd_edge/models/tinynet.py", check, "models")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(2, 10)"
    assert listed.returncode == 0 and "tinynet" in listed.stdout, listed.stderr
