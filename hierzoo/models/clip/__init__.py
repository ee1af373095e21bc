"""CLIP-style models (OpenCLIP, BioCLIP, CLIP, SigLIP): scoring by text embeddings.

- :mod:`hierzoo.models.clip._base`: :class:`ClipClassifier`, the machinery every family shares:
  text embeddings, the image pipeline, scoring and answers;
- :mod:`hierzoo.models.clip._features`: features of the image and text towers;
- :mod:`hierzoo.models.clip._text_cache`: the text-embedding cache, checked before it is used;
- :mod:`hierzoo.models.clip.openclip`: :class:`OpenClipClassifier` (``open_clip``);
- :mod:`hierzoo.models.clip.hf`: :class:`HFClipClassifier` (transformers CLIP and SigLIP).
"""

from hierzoo.models.clip._base import ClipClassifier
from hierzoo.models.clip._text_cache import TextEmbeddingCache, default_cache_dir
from hierzoo.models.clip.hf import HFClipClassifier
from hierzoo.models.clip.openclip import OpenClipClassifier

__all__ = [
    "ClipClassifier",
    "HFClipClassifier",
    "OpenClipClassifier",
    "TextEmbeddingCache",
    "default_cache_dir",
]
