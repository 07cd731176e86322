"""Recipes: the schema (frozen dataclasses, ``schema``), reading a recipe with its overrides (``load``) and the
recipes shipped in the package with what they reached (``shipped``). Every name is handed on from here."""

from akd_edge.config.load import apply_overrides, from_dict, load_recipe, parse_override, read_toml
from akd_edge.config.schema import (
    COMPILE_MODES,
    MAX_LR,
    NORMS,
    SEED_RANGE,
    AttackConfig,
    DataConfig,
    EvalConfig,
    MethodConfig,
    ModelConfig,
    OptimConfig,
    Recipe,
    RunConfig,
    TeacherSpec,
    TrainConfig,
    to_dict,
)
from akd_edge.config.shipped import (
    RECIPES_DIR,
    measured_summary,
    measured_where,
    recipe_results,
    resolve_recipe_path,
    shipped_recipes,
)

__all__ = [
    "COMPILE_MODES", "MAX_LR", "NORMS", "RECIPES_DIR", "SEED_RANGE", "AttackConfig", "DataConfig", "EvalConfig",
    "MethodConfig", "ModelConfig", "OptimConfig", "Recipe", "RunConfig", "TeacherSpec", "TrainConfig",
    "apply_overrides", "from_dict", "load_recipe", "measured_summary", "measured_where", "parse_override",
    "read_toml", "recipe_results", "resolve_recipe_path", "shipped_recipes", "to_dict",
]  # fmt: skip
