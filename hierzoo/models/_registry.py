"""The zoo: one frozen spec per checkpoint, and the family -> class table (imported lazily)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path
from typing import Any

PAPER = (
    "Tan, Qing, Gong. Vision LLMs Are Bad at Hierarchical Visual Understanding, and LLMs Are the "
    "Bottleneck (2025)"
)
PAPER_TEMPLATE = ("a photo of a {}.",)

# family -> "module:Class"; the module is imported on first use
FAMILIES: dict[str, str] = {
    "openclip": "hierzoo.models.clip.openclip:OpenClipClassifier",
    "hf-clip": "hierzoo.models.clip.hf:HFClipClassifier",
    "hf-siglip": "hierzoo.models.clip.hf:HFClipClassifier",
    "qwen2.5-vl": "hierzoo.models.vlm.qwen:Qwen2_5_VLClassifier",
    "qwen3-vl": "hierzoo.models.vlm.qwen:Qwen3VLClassifier",
    "llava-onevision": "hierzoo.models.vlm.llava_onevision:LlavaOnevisionClassifier",
    "internvl": "hierzoo.models.vlm.internvl:InternVLClassifier",
    "openai-chat": "hierzoo.models.api.openai_chat:OpenAIChatClassifier",
    "llm": "hierzoo.models.llm:TextLLMClassifier",
    "internlm2": "hierzoo.models.llm:InternLM2Classifier",
}
CLIP_FAMILIES = ("openclip", "hf-clip", "hf-siglip")


def check_family(name: str | None) -> None:
    """``None`` or a model family hierzoo has.

    Raises:
        ValueError: another name, listing the families.
    """
    if name is not None and name not in FAMILIES:
        raise ValueError(
            f"argument --family: invalid choice: {name!r} (choose from "
            f"{', '.join(map(repr, FAMILIES))})"
        )


LLM_FAMILIES = ("llm", "internlm2")
SERVED_FAMILIES = ("openai-chat",)
SERVED_PREFIX = "openai:"
"""``openai:MODEL``: the model ``MODEL`` behind an OpenAI-compatible chat-completions API."""

# transformers config.json model_type -> family
MODEL_TYPES = {
    "clip": "hf-clip",
    "siglip": "hf-siglip",
    "siglip2": "hf-siglip",
    "qwen2_5_vl": "qwen2.5-vl",
    "qwen3_vl": "qwen3-vl",
    "llava_onevision": "llava-onevision",
    "internvl": "internvl",
    "internvl_chat": "internvl",  # OpenGVLab's own format, converted on load
    # text-only LLMs (AutoModelForCausalLM); any other config whose architectures are all
    # ...ForCausalLM and that has no vision part is one too (is_causal_lm_config)
    "qwen2": "llm",
    "qwen2_moe": "llm",
    "qwen3": "llm",
    "qwen3_moe": "llm",
    "llama": "llm",
    "mistral": "llm",
    "mixtral": "llm",
    "gemma": "llm",
    "gemma2": "llm",
    "gemma3_text": "llm",
    "phi3": "llm",
    "internlm2": "internlm2",
}

# config.json keys that mark a model with a vision part, which is never a text-only LLM
_VISION_KEYS = (
    "vision_config",
    "vision_tower",
    "mm_vision_tower",
    "visual",
    "img_processor",
    "vision_encoder",
    "image_token_id",
    "image_token_index",
)

EXTRAS = {"openclip": "clip", "hf-clip": "vlm", "hf-siglip": "vlm", "openai-chat": "api"}


@dataclass(frozen=True)
class ModelSpec:
    """Everything hierzoo needs to know about one checkpoint.

    Attributes:
        name: the zoo name (lower case, ``arch.tag`` style).
        family: the model family (a key of :data:`FAMILIES`).
        hub_id: the Hugging Face Hub repository.
        revision: the hub revision loaded (a branch, tag or commit).
        arch: open_clip's architecture name (for the bundled random-weight configs).
        image_size: the input resolution.
        templates: the default CLIP prompt templates (the paper's single template).
        params: the parameter count, for tables.
        licence: the checkpoint's licence as its model card states it.
        paper: where the checkpoint comes from.
        source: where the weights load from when not the hub (a local directory).
        served: answered by a server over a chat-completions API (``openai:MODEL``): there are
            no weights here, and ``hub_id`` is the model name the server is asked for.
        base_llm: a vision LLM's text-only counterpart in the zoo, the LLM the paper compares
            its text-mode answers with (``hierzoo report`` pairs their runs).
        framing: a text-only LLM's prompt framing, ``"chat"`` or ``"base"`` (``None``: from
            its tokenizer; see :class:`hierzoo.models.llm.TextLLMClassifier`).
        autocast: CLIP-style models: the autocast dtype of their float32 weights on CUDA
            (``"bfloat16"``, ``"float16"``, or ``None`` for plain float32), the paper's for its
            checkpoints.
        pretrained_tag: OpenCLIP checkpoints the paper loaded by architecture and open_clip
            ``pretrained`` tag (``arch`` + this tag): loaded the same way, which fixes their
            image preprocessing to the tag's (``None``: by ``hf-hub:`` id).
        checkpoint_format: ``"internvl_chat"`` for an InternVL checkpoint in OpenGVLab's own
            format (remote code, as InternVL2.5-8B), converted on load into transformers'
            classes and loaded only with ``trust_remote_code`` (its tokenizer is remote code);
            ``None``: the family's transformers format.
    """

    name: str
    family: str
    hub_id: str
    revision: str = "main"
    arch: str | None = None
    image_size: int | None = None
    templates: tuple[str, ...] = PAPER_TEMPLATE
    params: str = ""
    licence: str = ""
    paper: str = ""
    source: str | None = field(default=None, compare=False)
    served: bool = False
    base_llm: str | None = None
    framing: str | None = None
    autocast: str | None = "bfloat16"
    pretrained_tag: str | None = None
    checkpoint_format: str | None = None

    @property
    def location(self) -> str:
        """What the family's loader opens: the local directory, else the hub id."""
        return self.source or self.hub_id


def _s(name: str, family: str, hub_id: str, **kw) -> ModelSpec:
    return ModelSpec(name=name, family=family, hub_id=hub_id, **kw)


_ZOO = [
    # CLIP family
    _s(
        "bioclip",
        "openclip",
        "imageomics/bioclip",
        arch="ViT-B-16",
        image_size=224,
        params="150M",
        licence="MIT",
        paper="Stevens et al. BioCLIP: A Vision Foundation Model for the Tree of Life (CVPR 2024)",
    ),
    _s(
        "bioclip2",
        "openclip",
        "imageomics/bioclip-2",
        arch="ViT-L-14",
        image_size=224,
        params="428M",
        licence="MIT",
        paper="Gu et al. BioCLIP 2: Emergent Properties from Scaling Hierarchical Contrastive "
        "Learning (2025)",
    ),
    _s(
        "openclip-vit-l-14.laion2b",
        "openclip",
        "laion/CLIP-ViT-L-14-laion2B-s32B-b82K",
        arch="ViT-L-14",
        image_size=224,
        params="428M",
        licence="MIT",
        paper=f"OpenCLIP (LAION-2B, s32B b82K); used in {PAPER}",
        autocast="float16",
        pretrained_tag="laion2b_s32b_b82k",
    ),
    _s(
        "openclip-vit-b-32.laion2b",
        "openclip",
        "laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
        arch="ViT-B-32",
        image_size=224,
        params="151M",
        licence="MIT",
        paper="OpenCLIP (LAION-2B, s34B b79K)",
    ),
    _s(
        "clip-vit-l-14.openai",
        "hf-clip",
        "openai/clip-vit-large-patch14",
        image_size=224,
        params="428M",
        licence="MIT",
        paper="Radford et al. Learning Transferable Visual Models From Natural Language "
        "Supervision (2021)",
    ),
    _s(
        "siglip-so400m",
        "hf-siglip",
        "google/siglip-so400m-patch14-384",
        image_size=384,
        params="878M",
        licence="Apache-2.0",
        paper=f"Zhai et al. Sigmoid Loss for Language Image Pre-Training (2023); used in {PAPER}",
        autocast=None,
    ),
    _s(
        "siglip2-so400m",
        "hf-siglip",
        "google/siglip2-so400m-patch14-384",
        image_size=384,
        params="1.1B",
        licence="Apache-2.0",
        paper="Tschannen et al. SigLIP 2 (2025)",
    ),
    # vision LLMs
    *[
        _s(
            f"qwen2.5-vl-{size}",
            "qwen2.5-vl",
            f"Qwen/Qwen2.5-VL-{size.upper()}-Instruct",
            params=size.upper(),
            licence=lic,
            paper=f"Qwen2.5-VL Technical Report (2025); used in {PAPER}",
            base_llm=f"qwen2.5-{size}-instruct",
        )
        for size, lic in (
            ("3b", "Qwen Research"),
            ("7b", "Apache-2.0"),
            ("32b", "Apache-2.0"),
            ("72b", "Qwen"),
        )
    ],
    *[
        _s(
            f"qwen3-vl-{size}",
            "qwen3-vl",
            f"Qwen/Qwen3-VL-{size.upper()}-Instruct",
            params=size.upper(),
            licence="Apache-2.0",
            paper="Qwen3-VL (2025)",
        )
        for size in ("2b", "4b", "8b", "32b")
    ],
    *[
        _s(
            f"llava-ov-{size}",
            "llava-onevision",
            f"llava-hf/llava-onevision-qwen2-{size}-ov-hf",
            params=size.upper(),
            licence="Apache-2.0",
            paper=f"Li et al. LLaVA-OneVision (2024); used in {PAPER}",
            base_llm=f"qwen2-{size}-instruct",
        )
        for size in ("0.5b", "7b", "72b")
    ],
    _s(
        "internvl2.5-8b",
        "internvl",
        "OpenGVLab/InternVL2_5-8B",
        params="8B",
        licence="MIT",
        paper=f"InternVL2.5 (2024); used in {PAPER}",
        base_llm="internlm2.5-7b-chat",
        checkpoint_format="internvl_chat",
    ),
    *[
        _s(
            f"internvl3-{size}",
            "internvl",
            f"OpenGVLab/InternVL3-{size.upper()}-hf",
            params=size.upper(),
            licence="MIT",
            paper=f"InternVL3 (2025); used in {PAPER}",
        )
        for size in ("1b", "2b", "8b", "14b", "38b", "78b")
    ],
    *[
        _s(
            f"internvl3.5-{size}",
            "internvl",
            f"OpenGVLab/InternVL3_5-{size.upper()}-HF",
            params=size.upper(),
            licence="Apache-2.0",
            paper="InternVL3.5 (2025)",
        )
        for size in ("1b", "2b", "4b", "8b", "38b")
    ],
    # models behind an API
    _s(
        "gpt-4o",
        "openai-chat",
        "gpt-4o-2024-11-20",
        licence="OpenAI API (proprietary)",
        paper=f"OpenAI GPT-4o System Card (2024); the snapshot used in {PAPER}",
        served=True,
    ),
]

_ZOO += [
    # text-only LLMs: the paper's original LLMs (its evaluation/og_llm scripts) and the LLMs of the
    # zoo's vision LLMs (their base_llm)
    *[
        _s(
            f"qwen2.5-{size}-instruct",
            "llm",
            f"Qwen/Qwen2.5-{size.upper()}-Instruct",
            params=size.upper(),
            licence=lic,
            paper="Qwen2.5 Technical Report (2024)" + (f"; used in {PAPER}" if used else ""),
        )
        for size, lic, used in (
            ("3b", "Qwen Research", False),
            ("7b", "Apache-2.0", True),
            ("32b", "Apache-2.0", False),
            ("72b", "Qwen", False),
        )
    ],
    _s(
        "qwen2.5-7b",
        "llm",
        "Qwen/Qwen2.5-7B",
        params="7B",
        licence="Apache-2.0",
        paper=f"Qwen2.5 Technical Report (2024), the base model; used in {PAPER}",
        framing="base",
    ),
    *[
        _s(
            f"qwen2-{size}-instruct",
            "llm",
            f"Qwen/Qwen2-{size.upper()}-Instruct",
            params=size.upper(),
            licence=lic,
            paper="Qwen2 Technical Report (2024)" + (f"; used in {PAPER}" if used else ""),
        )
        for size, lic, used in (
            ("0.5b", "Apache-2.0", False),
            ("7b", "Apache-2.0", True),
            ("72b", "Tongyi Qianwen", False),
        )
    ],
    _s(
        "internlm2.5-7b-chat",
        "internlm2",
        "internlm/internlm2_5-7b-chat",
        params="7B",
        licence="Apache-2.0 (code); weights free for research, commercial use on application",
        paper=f"InternLM2 Technical Report (2024); used in {PAPER}",
    ),
]

ZOO: dict[str, ModelSpec] = {s.name: s for s in _ZOO}


class UnknownModelError(ValueError):
    """A model name that is neither in the zoo, nor a hub id, nor a model directory."""


def list_models(family: str | None = None) -> list[str]:
    """Zoo names, optionally of one family (``"openclip"``, ``"qwen2.5-vl"``, or ``"clip"`` /
    ``"vlm"`` / ``"llm"`` / ``"api"`` for all CLIP-style, all local vision-LLM, all text-only-LLM
    or all API families)."""
    if family is None:
        return list(ZOO)
    groups = {
        "clip": CLIP_FAMILIES,
        "vlm": tuple(
            f for f in FAMILIES if f not in CLIP_FAMILIES + LLM_FAMILIES + SERVED_FAMILIES
        ),
        "llm": LLM_FAMILIES,
        "api": SERVED_FAMILIES,
    }
    wanted = groups.get(family, (family,))
    if not set(wanted) <= set(FAMILIES):
        raise ValueError(
            f"Expected `family` to be one of {sorted(FAMILIES) + sorted(groups)}, but got "
            f"{family!r}."
        )
    return [n for n, s in ZOO.items() if s.family in wanted]


def read_config(path: str | Path) -> dict[str, Any] | None:
    """A directory's ``config.json`` as a dict; ``None`` when it has none, or one that is not a
    JSON object."""
    try:
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def _kind_of_dir(path: Path) -> tuple[str | None, str | None]:
    """The family of a local model directory and its ``checkpoint_format`` (see
    :attr:`ModelSpec.checkpoint_format`), from one read of its files."""
    if (path / "open_clip_config.json").is_file():
        return "openclip", None
    config = read_config(path)
    if config is None:
        return None, None
    family = MODEL_TYPES.get(config.get("model_type"))
    if family is None and is_causal_lm_config(config):
        family = "llm"
    kind = config.get("model_type")
    return family, kind if kind == "internvl_chat" else None


def family_of_dir(path: Path) -> str | None:
    """The family of a local model directory: open_clip's layout or a saved transformers model."""
    return _kind_of_dir(path)[0]


def is_causal_lm_config(config: dict[str, Any]) -> bool:
    """Whether a transformers ``config.json`` (as a dict) is a text-only causal LM: its
    ``model_type`` is one of the text-only LLMs' in :data:`MODEL_TYPES`, or every name in its
    ``architectures`` ends in ``ForCausalLM``; and it has no vision part (a ``vision_config``,
    an image token ... as vision LLMs' configs have)."""
    if any(key in config for key in _VISION_KEYS):
        return False
    if MODEL_TYPES.get(config.get("model_type")) in LLM_FAMILIES:
        return True
    names = config.get("architectures") or []
    return bool(names) and all(str(n).endswith("ForCausalLM") for n in names)


def model_fingerprint(spec: ModelSpec, cache_dir: str | Path | None = None) -> str:
    """What a spec's weights are, by content: ``"dir:<sha256>"`` for a local directory (its
    weight, config and tokenizer files, :func:`hierzoo._io.directory_fingerprint`; file digests
    remembered under ``cache_dir``), ``"hub:<repo>@<commit>"`` for a hub model whose snapshot
    is in the local hub cache (:func:`hierzoo.models._hub.model_fingerprint`), else
    ``"hub:<repo>@<revision>"``."""
    from hierzoo.models._hub import model_fingerprint as content

    return content(spec, cache_dir) or f"hub:{spec.hub_id}@{spec.revision}"


def family_of_model(model: Any) -> str:
    """The family of a model object held in memory: an open_clip ``CLIP`` / ``CustomTextCLIP``,
    or a transformers model by its ``config.model_type`` (any other text-only
    ``...ForCausalLM``: a text-only LLM).

    Raises:
        TypeError: a model of another kind, naming the kinds hierzoo knows.
    """
    if (
        type(model).__module__.split(".")[0] == "open_clip"
        and hasattr(model, "encode_image")
        and hasattr(model, "encode_text")
    ):
        return "openclip"
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if (
        model_type not in MODEL_TYPES
        and type(model).__name__.endswith("ForCausalLM")
        and hasattr(config, "to_dict")
        and is_causal_lm_config({**config.to_dict(), "architectures": [type(model).__name__]})
    ):
        return "llm"
    if model_type is None:
        raise TypeError(
            f"hierzoo.wrap does not know a {type(model).__module__}.{type(model).__name__}: "
            "expected an open_clip CLIP / CustomTextCLIP, a transformers model whose "
            f"config.model_type is one of {sorted(MODEL_TYPES)}, or a peft PeftModel around one."
        )
    if model_type not in MODEL_TYPES:
        raise TypeError(
            f"hierzoo.wrap does not know transformers model_type {model_type!r} "
            f"({type(model).__name__}); expected one of {sorted(MODEL_TYPES)}."
        )
    return MODEL_TYPES[model_type]


def resolve(name_or_path: str | Path) -> ModelSpec:
    """The spec for a zoo name, an ``hf-hub:org/repo`` id, a zoo hub id, a local directory, or
    ``openai:MODEL`` (a model behind a chat-completions API; nothing is asked of the network).

    Raises:
        UnknownModelError: with the closest zoo names, or what the directory lacks.
    """
    key = str(name_or_path)
    if key.startswith(SERVED_PREFIX):
        return _served_spec(key)
    if key.lower() in ZOO:
        return ZOO[key.lower()]
    path = Path(key).expanduser()
    if path.is_dir():
        family, kind = _kind_of_dir(path)
        if family is None:
            raise UnknownModelError(
                f"{key!r} is a directory but not a model hierzoo knows: expected open_clip's "
                "open_clip_config.json + weights, or a transformers config.json whose model_type "
                f"is one of {sorted(MODEL_TYPES)} or whose architectures are ...ForCausalLM (a "
                "text-only LLM)."
            )
        return ModelSpec(
            name=str(path),
            family=family,
            hub_id=str(path),
            source=str(path.resolve()),
            checkpoint_format=kind,
        )
    hub = key[len("hf-hub:") :] if key.startswith("hf-hub:") else key
    for spec in ZOO.values():
        if spec.hub_id.lower() == hub.lower():
            return spec
    if key.startswith("hf-hub:"):
        family, kind = _family_of_hub(hub)
        return ModelSpec(name=key, family=family, hub_id=hub, checkpoint_format=kind)
    close = get_close_matches(key.lower(), list(ZOO), n=3, cutoff=0.5)
    hint = f" Did you mean {close}?" if close else ""
    raise UnknownModelError(
        f"Unknown model {key!r}: not a zoo name, an hf-hub:org/repo id or a model directory.{hint} "
        "`hierzoo models` lists the zoo."
    )


def _served_spec(key: str) -> ModelSpec:
    """``openai:MODEL``: the zoo's entry for ``MODEL`` (``openai:gpt-4o``, the paper's snapshot)
    when it has one, else a spec for the name as given (case kept: servers match it exactly)."""
    model = key[len(SERVED_PREFIX) :].strip()
    if not model:
        raise UnknownModelError(
            f"{key!r} names no model: write openai:MODEL, the name the server serves (e.g. "
            "openai:gpt-4o, openai:Qwen/Qwen2.5-VL-72B-Instruct)."
        )
    for spec in ZOO.values():
        if spec.served and model in (spec.name, spec.hub_id):
            return spec
    return ModelSpec(name=key, family=SERVED_FAMILIES[0], hub_id=model, served=True)


def _family_of_hub(repo: str) -> tuple[str, str | None]:
    """Ask the hub (or its local cache, offline) which family a repository holds, and in
    which format (see :attr:`ModelSpec.checkpoint_format`)."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as e:
        raise ImportError(
            "Loading hf-hub: ids needs huggingface_hub: pip install 'hierzoo[vlm]'."
        ) from e
    errors = []
    for filename in ("open_clip_config.json", "config.json"):
        try:
            local = Path(hf_hub_download(repo, filename))
        except Exception as e:  # not found, offline, gated ...
            errors.append(f"{filename}: {type(e).__name__}")
            continue
        family, kind = _kind_of_dir(local.parent)
        if family is not None:
            return family, kind
    raise UnknownModelError(
        f"Cannot tell which family hf-hub:{repo} is ({'; '.join(errors)}). On a machine without "
        "network, "
        f"download it elsewhere (`hf download {repo}`, into the same HF_HOME) and pass the "
        "directory."
    )
