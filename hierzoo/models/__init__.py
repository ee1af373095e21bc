"""Model families behind one interface, loaded by zoo name, hub id or directory.

The zoo (``ZOO``, ``ModelSpec``, ``list_models``, ``resolve``) imports without torch, so
``hierzoo models`` prints its table at once; the rest loads torch on first use.
"""

from typing import Any

from hierzoo.models._registry import (
    FAMILIES,
    ZOO,
    ModelSpec,
    UnknownModelError,
    list_models,
    resolve,
)
from hierzoo.prompts import Protocol

_LAZY = {
    "load": "hierzoo.models._factory",
    "load_for_dry_run": "hierzoo.models._factory",
    "resolve_device": "hierzoo.models._factory",
    "HierClassifier": "hierzoo.models.base",
    "OptionError": "hierzoo.models.base",
    "STRATEGIES": "hierzoo.models.outputs",
    "Answers": "hierzoo.models.outputs",
    "Features": "hierzoo.models.outputs",
    "NodeScores": "hierzoo.models.outputs",
    "PathPrediction": "hierzoo.models.outputs",
}

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
    "load_for_dry_run",
    "resolve",
    "resolve_device",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hierzoo.models' has no attribute {name!r}")
