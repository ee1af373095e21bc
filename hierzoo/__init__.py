"""hierzoo: hierarchical consistency of vision models across taxonomies.

``import hierzoo`` stays light: the model machinery (torch) loads on first use of ``load`` and
friends, and each backend (open_clip, transformers) on the first load of one of its models.
"""

from typing import Any

from hierzoo.taxonomy import Taxonomy, TaxonomyError, bundled_taxonomies, load_taxonomy

__version__ = "0.1.0"

_LAZY = {
    "load": "hierzoo.models",
    "list_models": "hierzoo.models",
    "HierClassifier": "hierzoo.models",
    "Protocol": "hierzoo.models",
    "ModelSpec": "hierzoo.models",
    "read_questions": "hierzoo.tasks",
    "build_questions": "hierzoo.tasks",
    "wrap": "hierzoo.wrapping",
}

__all__ = [
    "Taxonomy",
    "TaxonomyError",
    "bundled_taxonomies",
    "load_taxonomy",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hierzoo' has no attribute {name!r}")
