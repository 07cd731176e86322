"""Hostile recipe values: non-finite floats, unsafe run names, unknown registry names, and a torch-free config."""

from __future__ import annotations

import subprocess
import sys

import pytest

from akd_edge.config import RunConfig, load_recipe
from akd_edge.core.errors import ConfigError
from akd_edge.core.registry import BUILTIN_NAMES

FLOAT_KEYS = [
    "train.optim.lr",
    "train.optim.weight_decay",
    "train.optim.momentum",
    "train.optim.gamma",
    "train.optim.grad_clip",
    "train.attack.eps",
    "train.attack.step_size",
    "eval.attack.eps",
    "eval.attack.step_size",
    "method.alpha",
    "method.temperature",
    "method.beta",
]


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_non_finite_floats_are_refused_naming_the_key(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}: must be a finite number, got {value}"):
        load_recipe({}, [f"{key}={value}"])


def test_non_finite_floats_in_lists_and_teachers_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"train\.optim\.milestones\[1\]: must be a finite number"):
        load_recipe({}, ["train.optim.milestones=[0.5, nan]"])
    with pytest.raises(ConfigError, match=r"teachers\[0\]\.weight: must be a finite number"):
        load_recipe({"teachers": [{"path": "t.pt", "weight": float("inf")}]})


def test_linf_eps_is_at_most_one_for_images_in_unit_range() -> None:
    with pytest.raises(ConfigError, match=r"eval\.attack\.eps: must be <= 1 for a linf attack"):
        load_recipe({}, ["eval.attack.eps=1.5"])
    assert load_recipe({}, ["eval.attack.eps=1"]).eval.attack.eps == 1.0
    # an L2 radius may exceed 1 (it sums over pixels) but must stay finite
    assert load_recipe({}, ["eval.attack.norm='l2'", "eval.attack.eps=3.0"]).eval.attack.eps == 3.0
    with pytest.raises(ConfigError, match="eval.attack.eps"):
        load_recipe({}, ["eval.attack.norm='l2'", "eval.attack.eps=inf"])


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "a/b", "x" * 101, "tab\there", "new\nline", "", "../up"])
def test_unsafe_run_names_are_config_errors(name: str) -> None:
    with pytest.raises(ConfigError, match=r"^run\.name"):
        load_recipe({"run": {"name": name}})
    with pytest.raises(ConfigError, match=r"^run\.name"):
        RunConfig(name=name)


def test_plain_run_names_and_user_out_dirs_pass() -> None:
    recipe = load_recipe({"run": {"name": "fmnist-akd_v2.1", "out_dir": "../elsewhere/runs"}})
    assert recipe.run.name == "fmnist-akd_v2.1" and recipe.run.out_dir == "../elsewhere/runs"


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("method.name=kd", "method.name: unknown method 'kd'. Did you mean 'akd'?"),
        ("model.name=cnn-studnet", "model.name: unknown model 'cnn-studnet'. Did you mean 'cnn-student'?"),
        ("data.name=fmnist", "data.name: unknown dataset 'fmnist'"),
    ],
)
def test_unknown_registry_names_are_refused_at_load(override: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_recipe({}, [override])
    assert needle in str(err.value)


def test_user_recipes_may_name_a_module_factory() -> None:
    assert load_recipe({}, ["model.name='my_pkg.nets:small'"]).model.name == "my_pkg.nets:small"


def test_builtin_names_match_the_registries() -> None:
    from akd_edge.data import DATASETS
    from akd_edge.methods import METHODS
    from akd_edge.models import MODELS

    assert list(BUILTIN_NAMES["method"]) == METHODS.names()
    assert list(BUILTIN_NAMES["model"]) == MODELS.names()
    assert list(BUILTIN_NAMES["dataset"]) == DATASETS.names()


def test_names_registered_at_run_time_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    from akd_edge.models import MODELS, register_model, zoo

    # registered into copies, so the process-wide registry is as before when the test ends
    monkeypatch.setattr(MODELS, "_entries", dict(MODELS._entries))
    monkeypatch.setattr(MODELS, "_help", dict(MODELS._help))
    monkeypatch.setattr(zoo, "_ENTRIES", dict(zoo._ENTRIES))
    register_model("test-hostile-net", role="student", description="test")(lambda n, input_shape=(1, 8, 8): None)
    assert load_recipe({}, ["model.name=test-hostile-net"]).model.name == "test-hostile-net"


def test_loading_a_recipe_does_not_import_torch() -> None:
    code = (
        "import sys, akd_edge.config as c\n"
        "c.load_recipe('fmnist-akd', ['method.name=trades'])\n"
        "heavy = sorted(m for m in ('torch', 'numpy', 'akd_edge.methods', 'akd_edge.models') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == ""
