"""Recipe schema: parsing, overrides and errors that name the key."""

import pytest

from akd_edge.config import AttackConfig, Recipe, load_recipe, parse_override, to_dict
from akd_edge.core.errors import ConfigError


def test_defaults_build_and_round_trip() -> None:
    recipe = load_recipe({})
    assert isinstance(recipe, Recipe)
    assert load_recipe(to_dict(recipe)) == recipe


def test_override_sets_nested_fields_with_toml_types() -> None:
    recipe = load_recipe({}, ["train.epochs=3", "train.attack.eps=0.05", "method.name=akd", "data.augment=true"])
    assert recipe.train.epochs == 3
    assert recipe.train.attack.eps == pytest.approx(0.05)
    assert recipe.method.name == "akd"
    assert recipe.data.augment is True
    graphs = load_recipe({}, ["train.compile=true", "train.compile_mode=reduce-overhead"])
    assert (graphs.train.compile, graphs.train.compile_mode) == (True, "reduce-overhead")


def test_int_is_accepted_where_float_is_expected() -> None:
    assert load_recipe({"train": {"attack": {"eps": 1}}}).train.attack.eps == 1.0


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"train": {"epoch": 3}}, "unknown key 'train.epoch' (did you mean 'train.epochs'?)"),
        ({"trian": {}}, "unknown key 'trian'"),
        ({"train": {"epochs": "three"}}, "train.epochs: expected int"),
        ({"train": {"epochs": 0}}, "train.epochs: must be >= 1"),
        ({"train": {"attack": {"eps": -1.0}}}, "train.attack.eps: must be >= 0"),
        ({"eval": {"attack": {"norm": "l1"}}}, "eval.attack.norm"),
        ({"data": {"augment": 1}}, "data.augment: expected bool"),
        ({"method": {"name": "kd"}}, "method.name"),
        ({"method": {"alpha": 1.5}}, "method.alpha: must be in [0, 1]"),
        ({"teachers": [{"which": "best"}]}, "teachers[0].path: is required"),
        ({"train": {"compile": True, "compile_mode": "fast"}}, "train.compile_mode: must be one of default, reduce"),
        ({"train": {"compile_mode": "reduce-overhead"}}, "set train.compile = true"),
    ],
)
def test_bad_values_name_the_key(data: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_recipe(data)
    assert needle in str(err.value)


def test_override_syntax_errors() -> None:
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("train.epochs")
    assert parse_override("run.name=my-run") == (["run", "name"], "my-run")


def test_step_size_defaults() -> None:
    assert AttackConfig(eps=0.1, steps=10).resolved_step_size == pytest.approx(0.025)
    assert AttackConfig(name="fgsm", eps=0.1).resolved_step_size == pytest.approx(0.125)
    assert AttackConfig(eps=0.1, steps=10, step_size=0.01).resolved_step_size == 0.01


def test_missing_recipe_file_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="akd-edge recipes"):
        load_recipe("no-such-recipe")
