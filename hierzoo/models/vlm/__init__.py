"""Vision LLMs answering the paper's four-choice questions by their option-letter logits.

Families (each a small subclass of :class:`VisionLLMClassifier`, one module each): Qwen2.5-VL and
Qwen3-VL (:mod:`~hierzoo.models.vlm.qwen`), LLaVA-OneVision (``-ov-hf``,
:mod:`~hierzoo.models.vlm.llava_onevision`) and InternVL (``-hf``,
:mod:`~hierzoo.models.vlm.internvl`), loaded through transformers. The shared machinery, one job
per module:

- ``_lm``: :class:`LLMClassifier`: what vision LLMs and text-only LLMs
  (:mod:`hierzoo.models.llm`) share: the model and processor, the template split and letter
  tokens, positions, the token budget;
- ``_base``: :class:`VisionLLMClassifier`: loading, the family hooks, the image pipeline;
- ``_chat``: chat-template surgery and the letter-token rule;
- ``_answering``: questions asked in fused passes and collected into answers;
- ``_schedule``: token-budget scheduling of images and rows per pass;
- ``_prefix_cache``: the prompt head's KV cache and the continuations from it;
- ``_scoring``: node log-likelihoods (``score_nodes``);
- ``_features``: vision-tower, projector and LLM-layer features.
"""

from hierzoo.models.vlm._base import VisionLLMClassifier, cap_image_side
from hierzoo.models.vlm._lm import LLMClassifier
from hierzoo.models.vlm.internvl import InternVLClassifier
from hierzoo.models.vlm.llava_onevision import LlavaOnevisionClassifier
from hierzoo.models.vlm.qwen import Qwen2_5_VLClassifier, Qwen3VLClassifier

__all__ = [
    "InternVLClassifier",
    "LLMClassifier",
    "LlavaOnevisionClassifier",
    "Qwen2_5_VLClassifier",
    "Qwen3VLClassifier",
    "VisionLLMClassifier",
    "cap_image_side",
]
