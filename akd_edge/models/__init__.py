"""The model zoo: ``create_model(name, ...)`` builds a registered architecture (or ``module:factory``)
behind a normalisation layer, so every model takes images in [0, 1]. An architecture is one file here whose
factories carry ``@register_model("name", ...)``: it is found by that decorator and imported below."""

import importlib

from akd_edge.core.registry import model_files
from akd_edge.models.normalize import Normalize, NormalizedModel
from akd_edge.models.zoo import (
    MODELS,
    ModelEntry,
    create_model,
    describe_models,
    get_classifier,
    list_models,
    model_info,
    register_model,
    resolve_factory,
)

for _file in model_files():  # each architecture file registers its factories
    importlib.import_module(f"{__name__}.{_file}")

__all__ = [
    "MODELS",
    "ModelEntry",
    "Normalize",
    "NormalizedModel",
    "create_model",
    "describe_models",
    "get_classifier",
    "list_models",
    "model_info",
    "register_model",
    "resolve_factory",
]
