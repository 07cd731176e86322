"""The model zoo: ``create_model(name, ...)`` builds a registered architecture (or ``module:factory``)
behind a normalisation layer, so every model takes images in [0, 1]."""

from akd_edge.models import cnn, mobilenetv2, resnet, wrn  # noqa: F401  (register the architectures)
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
