"""Model families behind one interface, loaded by zoo name, hub id or directory."""

from hierzoo.models._factory import load, resolve_device
from hierzoo.models._registry import (
    FAMILIES,
    ZOO,
    ModelSpec,
    UnknownModelError,
    list_models,
    resolve,
)
from hierzoo.models.base import HierClassifier, OptionError, Protocol
from hierzoo.models.outputs import (
    STRATEGIES,
    Answers,
    Features,
    NodeScores,
    PathPrediction,
)

__all__ = [
    "FAMILIES",
    "STRATEGIES",
    "ZOO",
    "Answers",
    "Features",
    "HierClassifier",
    "ModelSpec",
    "NodeScores",
    "OptionError",
    "PathPrediction",
    "Protocol",
    "UnknownModelError",
    "list_models",
    "load",
    "resolve",
    "resolve_device",
]
