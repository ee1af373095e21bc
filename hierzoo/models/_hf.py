"""What the transformers families share: their processor, given or found where the model was
loaded from."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_processor(model: Any, given: Any, label: str) -> Any:
    """The transformers processor ``given``, loaded from a path or hub id, or from where the
    model was loaded (``model.name_or_path``); it must hold an image processor and a tokenizer.

    Raises:
        ValueError: no processor to be had, or one without an image processor and a tokenizer.
    """
    if given is None:
        given = getattr(model, "name_or_path", "") or None
        if given is None:
            raise ValueError(
                f"A {label} needs its processor: hierzoo.wrap(model, "
                "AutoProcessor.from_pretrained(CHECKPOINT)) (this model does not say where it was "
                "loaded from)."
            )
    if isinstance(given, (str, Path)):
        from transformers import AutoProcessor

        try:
            given = AutoProcessor.from_pretrained(str(given))
        except Exception as e:  # not found, offline, no processor files ...
            raise ValueError(
                f"Could not load the processor of the {label} from {str(given)!r} "
                f"({type(e).__name__}: {e}); pass it: hierzoo.wrap(model, processor)."
            ) from e
    if not (hasattr(given, "image_processor") and hasattr(given, "tokenizer")):
        raise ValueError(
            f"A {label} needs its processor (image processor + tokenizer, AutoProcessor), but "
            f"got a {type(given).__name__}; pass AutoProcessor.from_pretrained(CHECKPOINT)."
        )
    return given
