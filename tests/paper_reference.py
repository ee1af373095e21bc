"""The paper's protocol, transcribed from its scripts as plain Python, for tests to compare with.

Source: the public repository of "Vision LLMs Are Bad at Hierarchical Visual Understanding, and
LLMs Are the Bottleneck" (github: yuanqing-ai/LLM-Hierarchical-Consistency, MIT). Each function
names the script and lines it transcribes (paths relative to that repository). Nothing here
imports hierzoo: these are the slow, obvious versions of what the paper's scripts do, written
out once so that hierzoo's requests (text, tiles, pixels, option orders, parsed answers, metrics)
can be checked against them. Third-party code the scripts call (qwen_vl_utils, LLaVA-NeXT's
``process_images``, InternVL's remote ``chat``, InternLM2's remote ``chat``) is transcribed too,
with its own source named.

Only numpy, PIL, torch and torchvision are used.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

# --------------------------------------------------------------------------------------------
# Strings (verbatim)
# --------------------------------------------------------------------------------------------

INSTRUCTION = "Answer with the option's letter from the given choices directly."
"""Closing line of every multiple-choice question (e.g. evaluation/vllm/qwen/eval_CUB.py:145)."""

SYSTEM_EXPERT = (
    "You are an expert in hierarchical image classification. Given an image, classify it at its "
    "current hierarchy level by selecting the most appropriate option from the provided choices "
    "(labeled with letters). Respond with only the corresponding letter."
)
"""System message of the Qwen2.5-VL image runs (evaluation/vllm/qwen/eval_CUB.py:150) and of the
Qwen CoT runs (prompt_engineering/cot/qwen/eval_img_cub_cot.py:150)."""

SYSTEM_HELPFUL = "You are a helpful assistant."
"""System message of the text runs (evaluation/llm/qwen/eval_text_cub.py:149), the og_llm Qwen
chat runs (evaluation/og_llm/qwen/eval_text_og_cub.py:151) and GPT-4o
(evaluation/vllm/gpt/gpt_img_all.py:128); also the system turn of LLaVA-NeXT's ``qwen_1_5``
conversation template (LLaVA-NeXT llava/conversation.py, ``conv_qwen``)."""

COT_QWEN = "Let\u2019s think step by step. "
"""Qwen CoT suffix, with a typographic apostrophe U+2019 (prompt_engineering/cot/qwen/*.py, e.g.
eval_img_cub_cot.py:145)."""

COT_ASCII = "Let's think step by step. "
"""LLaVA and InternVL CoT suffix, ASCII apostrophe
(prompt_engineering/cot/llava/eval_img_cub_cot.py:112,
prompt_engineering/cot/internvl/eval_img_cub_cot.py:223)."""

INTERNVL_SYSTEM = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的"
    "多模态大语言模型。"
)
"""InternVL's built-in system message of its ``internvl2_5`` conversation template (OpenGVLab/
InternVL internvl_chat/internvl/conversation.py:395-401), which ``model.chat`` sends
(modeling_internvl_chat.py:357-358). InternVL2.5-8B and InternVL3-8B both use ``internvl2_5``
(internvl_chat/shell/internvl2.5/... and internvl3.0/... ``--conv_style "internvl2_5"``)."""

INTERNLM_META_INSTRUCTION = (
    "You are an AI assistant whose name is InternLM (书生·浦语).\n"
    "- InternLM (书生·浦语) is a conversational language model that is developed by Shanghai AI "
    "Laboratory (上海人工智能实验室). It is designed to be helpful, honest, and harmless.\n"
    "- InternLM (书生·浦语) can understand and communicate fluently in the language chosen by the "
    "user such as English and 中文."
)
"""InternLM2(.5)-chat's default ``meta_instruction`` of its remote ``chat`` (modeling_internlm2.py
of internlm/internlm2_5-7b-chat), used by evaluation/og_llm/interlm2.5/*.py, which pass none."""

BIO_COT_ANIMAL = (
    "You are an expert in hierarchical image classification. Given an image and a multiple-choice "
    "question about a specific taxonomy level (e.g., genus, family), first infer the most likely "
    "species from the image, then reason step-by-step through the taxonomy hierarchy to identify "
    "the correct label. Respond with only the letter corresponding to the correct answer.\n"
    "Example: if the image depicts *Caenurgina crassiuscula*, then the correct genus is "
    "*Caenurgina*, family is *Erebidae*, order is *Lepidoptera*, class is *Insecta*, phylum is "
    "*Arthropoda*, and kingdom is *Animalia*.\n"
    "For instance, if the question is:\n"
    "*Given the animal in the image, what is its taxonomic classification at the phylum level?*\n"
    "A. Annelida\nB. Arthropoda\nC. Mollusca\nD. Chordata\n"
    "You should select option **B**, labeled with *Arthropoda*."
)
"""prompt_engineering/bio_cot/eval_animal_bio.py:158."""

BIO_COT_PLANT = (
    "You are an expert in hierarchical image classification. Given an image and a multiple-choice "
    "question about a specific taxonomy level (e.g., genus, family), first infer the most likely "
    "species from the image, then reason step-by-step through the taxonomy hierarchy to identify "
    "the correct label. Respond with only the letter corresponding to the correct answer.\n"
    "Example: if the image depicts *Oenothera curtiflora*, then the correct genus is *Oenothera*, "
    "family is *Onagraceae*, order is *Myrtales*, class is *Magnoliopsida*, phylum is "
    "*Tracheophyta*, and kingdom is *Plantae*.\n"
    "For instance, if the question is:\n"
    "*Given the plant in the image, what is its taxonomic classification at the phylum level?*\n"
    "A. Chlorophyta\nB. Bryophyta\nC. Rhodophyta\nD. Tracheophyta\n"
    "You should select option **D**, labeled with *Tracheophyta*."
)
"""prompt_engineering/bio_cot/eval_plant_bio.py:159."""

BINARY_SYSTEM = (
    "You are an expert in hierarchical image classification. Given an image and a corresponding "
    "statement, determine whether the statement accurately reflects the content of the image. "
    "Respond with a single word: Yes or No."
)
"""prompt_engineering/eval_CUB_binary.py:138."""

BINARY_QUESTION = "Is this statement correct? Please answer Yes or No."
"""prompt_engineering/eval_CUB_binary.py:133 (after the statement and a newline)."""

BINARY_STATEMENT = "The bird in the image belongs to the {rank} {item}."
"""prompt_engineering/eval_CUB_binary.py:83-90; ``rank`` is order / family / genus for levels
t = 0 / 1 / 2 and species for every deeper level."""

BINARY_RANKS = ("order", "family", "genus", "species")

COT_CUB_TEMPLATE_0 = "Based on taxonomy, what is the {rank} of the bird in this image?"
"""The CoT scripts' CUB-200 question, variant 0 (``--prompt_order 0``), rank order / family /
genus for t = 0 / 1 / 2 and species beyond (prompt_engineering/cot/qwen/eval_img_cub_cot.py:77-86;
the same in cot/llava/eval_img_cub_cot.py:64-73 and cot/internvl/eval_img_cub_cot.py:157-166)."""

COT_CUB_RANKS = ("order", "family", "genus", "species")

COT_MAX_NEW_TOKENS = {"qwen2.5-vl": 10, "llava-onevision": 10, "internvl": 5}
"""The CoT scripts' reply length on CUB-200: ``max_new_tokens=10``
(cot/qwen/eval_img_cub_cot.py:186, cot/llava/eval_img_cub_cot.py:124), ``5``
(cot/internvl/eval_img_cub_cot.py:227)."""

COT_SUFFIX = {"qwen2.5-vl": COT_QWEN, "llava-onevision": COT_ASCII, "internvl": COT_ASCII}
"""Which CoT text each family's scripts write (U+2019 in the Qwen scripts only)."""


def cot_question(prompt_template: str, cmap: Mapping[str, str], family: str) -> str:
    """The CoT question of ``family``'s scripts (cot/qwen/eval_img_cub_cot.py:145,
    cot/llava/eval_img_cub_cot.py:112 without LLaVA's leading newline, cot/internvl/
    eval_img_cub_cot.py:223): ``template \n options \n`` + the CoT text + the instruction."""
    return question(prompt_template, cmap, COT_SUFFIX[family] + INSTRUCTION)


BIO_COT_TEMPLATE_1 = (
    "Given the {noun} in the image, what is its taxonomic classification at the {rank} level?"
)
"""The bio-CoT scripts' question, variant 1 as scripts/bio_cot_pmt.sh:1-2 run them
(``--prompt_order 1``): prompt_engineering/bio_cot/eval_animal_bio.py:93-107 (noun ``animal``),
eval_plant_bio.py:94-108 (``plant``); rank kingdom, phylum, class, order, family, genus for
t = 0..5 and species beyond."""

BIO_COT_RANKS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")

BIO_COT_MAX_NEW_TOKENS = 5
"""prompt_engineering/bio_cot/eval_animal_bio.py:200, eval_plant_bio.py:201."""

BIO_COT_SYSTEM = {"inat21-animal": BIO_COT_ANIMAL, "inat21-plant": BIO_COT_PLANT}


def bio_cot_messages(system: str, text: str) -> list[dict[str, Any]]:
    """The bio-CoT conversation: the system message as a plain string, the user turn the image
    then the question of :func:`question` (bio_cot/eval_animal_bio.py:157-175)."""
    return qwen_messages(text, image="image", system=system)


TAXONOMY_CONTEXT = "Here is a taxonomy: "
"""Prefix of the taxonomy-in-prompt experiment (prompt_engineering/taxonomy/*.py); the taxonomy
is ``str(json.load(open("data/taxonomies/hierarchy_CUB200.json")))``: Python's ``repr`` of the
dict (single quotes), not JSON."""

OPENCLIP_TEMPLATE = "a photo of a {}."
"""evaluation/clip/openclip.py:16 and evaluation/clip/siglip.py:69."""

GPT_MODEL = "gpt-4o-2024-11-20"
"""evaluation/vllm/gpt/gpt_img_all.py:145, evaluation/llm/gpt/gpt_cub_text.py:104."""

GPT_PARAMS = {"model": GPT_MODEL, "max_tokens": 5, "temperature": 0.2, "seed": 42}
"""evaluation/vllm/gpt/gpt_img_all.py:144-150."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
"""InternVL's normalisation (evaluation/vllm/internvl/eval_img_cub.py:17-18)."""

QWEN_IMAGE_FACTOR = 28
QWEN_MIN_PIXELS = 4 * 28 * 28
QWEN_MAX_PIXELS = 16384 * 28 * 28
"""qwen_vl_utils defaults (QwenLM/Qwen2.5-VL
qwen-vl-utils/src/qwen_vl_utils/vision_process.py:25-27; the same for Qwen2.5-VL in 0.0.8 to
0.0.14)."""

QWEN_PROCESSOR_MIN_PIXELS = 3136
QWEN_PROCESSOR_MAX_PIXELS = 12845056
"""Qwen2.5-VL checkpoints' ``preprocessor_config.json`` (min_pixels / max_pixels)."""

QWEN_MAX_SIDE = 1680
"""The scripts' cap on the longer side (evaluation/vllm/qwen/eval_CUB.py:169-173)."""

LLAVA_PAD_IMAGE_TOKENS = 27 * 27 + 1
"""Image positions of a padded LLaVA-OneVision image: SigLIP's 27 x 27 patch features of the one
384 px view and the ``image_newline`` embedding (LLaVA-NeXT llava/model/llava_arch.py,
``prepare_inputs_labels_for_multimodal``, "single image operations" branch, with
``mm_patch_merge_type`` ``spatial_unpad``)."""

INTERNVL_TOKENS_PER_TILE = 256
"""``num_image_token`` of the 448 px InternVL2.5 / 3 models: (448 / 14) ** 2 * 0.5 ** 2."""

LLAVA_IMAGE_TOKEN_INDEX = -200
"""LLaVA-NeXT llava/constants.py ``IMAGE_TOKEN_INDEX``."""

# --------------------------------------------------------------------------------------------
# Question files: level keys, option letters, option order
# --------------------------------------------------------------------------------------------


def level_keys(entry: Mapping[str, Any], numeric: bool) -> tuple[list[str], list[str]]:
    """``(level_keys, choices_keys)`` of a question-file entry, as the scripts sort them.

    ``numeric=False`` is the plain ``sorted()`` of most scripts (string order: ``level1,
    level10, level11, level2, ...``; e.g. evaluation/vllm/qwen/eval_CUB.py:43-44);
    ``numeric=True`` is ``sorted(..., key=lambda x: int(x[5:]))`` (e.g.
    evaluation/vllm/qwen/eval_animal.py:43-44). The two lists are zipped position by position.
    """
    levels = [k for k in entry if k.startswith("level") and k[5:].isdigit()]
    choices = [k for k in entry if k.startswith("choices_level") and k[13:].isdigit()]
    if numeric:
        return sorted(levels, key=lambda x: int(x[5:])), sorted(choices, key=lambda x: int(x[13:]))
    return sorted(levels), sorted(choices)


def choice_map(choices: Sequence[str]) -> dict[str, str]:
    """``{"A": first, "B": second, ...}`` (every script: ``{chr(65 + i): opt ...}``)."""
    return {chr(65 + i): opt for i, opt in enumerate(choices)}


def shuffled_choice_maps(
    entries: Iterable[Mapping[str, Any]],
    *,
    seed: int = 42,
    numeric: bool,
    rng: random.Random | None = None,
) -> list[dict[str, dict[str, str]]]:
    """The option orders of an image run: per entry, ``{level_key: choice_map}`` of every asked
    level, in the order the script asks them.

    Transcribes the loop of the image scripts (evaluation/vllm/qwen/eval_CUB.py:36-77 with the
    seed at :209-210 and :241-242): ``random.seed(42)`` once in ``__main__``; entries in file
    order; levels in :func:`level_keys` order; a level whose ground truth is ``None`` is skipped
    *before* ``random.shuffle`` (it draws nothing); every other level's option list is shuffled
    in place with the module-level generator. ``random.Random(seed)`` draws the same sequence as
    ``random.seed(seed)`` on the module generator. Entries whose image fails to load are skipped
    by the scripts before any shuffle (eval_CUB.py:50-56); pass only the entries the run asks.
    """
    rng = rng if rng is not None else random.Random(seed)
    out = []
    for entry in entries:
        keys, ckeys = level_keys(entry, numeric)
        maps: dict[str, dict[str, str]] = {}
        for key, ckey in zip(keys, ckeys):
            if entry[key] is None:
                continue
            choices = list(entry[ckey])
            rng.shuffle(choices)
            maps[key] = choice_map(choices)
        out.append(maps)
    return out


def shuffled_indices(
    n_options: Sequence[Sequence[int | None]], *, seed: int = 42, numeric: bool
) -> list[list[list[int]]]:
    """The same draws as :func:`shuffled_choice_maps`, as original option positions: for
    question ``i`` and level ``k`` (0-based, ``level{k+1}``), ``n_options[i][k]`` options or
    ``None`` (not asked); returns per question and level the original positions in asked order
    (``[]`` when not asked). ``random.shuffle`` permutes by position only, so shuffling
    ``list(range(n))`` gives the permutation it applies to the names."""
    rng = random.Random(seed)
    out = []
    for counts in n_options:
        orders: list[list[int]] = [[] for _ in counts]
        names = [f"level{k + 1}" for k in range(len(counts))]
        visit = sorted(names, key=lambda x: int(x[5:])) if numeric else sorted(names)
        for name in visit:
            k = int(name[5:]) - 1
            if counts[k] is None:
                continue
            order = list(range(counts[k]))
            rng.shuffle(order)
            orders[k] = order
        out.append(orders)
    return out


# --------------------------------------------------------------------------------------------
# Run scripts: the --prompt_order of every run
# --------------------------------------------------------------------------------------------

_TAXONOMIES = ("inat21-animal", "inat21-plant", "imagenet-artifact", "imagenet-animal", "cub200")

_IMAGE = _TAXONOMIES + ("food101",)

RUN_SCRIPT_VARIANTS: dict[tuple[str, str], dict[str, int]] = {
    # scripts/all_image_benchmarks.sh (its order: iNat21-Animal, iNat21-Plant, ImgNet-Artifact,
    # ImgNet-Animal, CUB-200, Food-101)
    ("image", "llava-ov-7b"): dict(zip(_IMAGE, (0, 0, 0, 0, 0, 0))),  # :12-32
    ("image", "internvl2.5-8b"): dict(zip(_IMAGE, (1, 0, 0, 2, 0, 0))),  # :37-57
    ("image", "internvl3-8b"): dict(zip(_IMAGE, (1, 0, 0, 0, 0, 0))),  # :63-88
    ("image", "qwen2.5-vl-7b"): dict(zip(_IMAGE, (1, 1, 0, 0, 0, 0))),  # :95-120
    ("image", "qwen2.5-vl-32b"): dict(zip(_IMAGE, (1, 0, 0, 0, 0, 0))),  # :128-153
    ("image", "qwen2.5-vl-72b"): dict(zip(_IMAGE, (1, 0, 0, 0, 0, 0))),  # :160-185
    # GPT-4o: --dataset_prompt natural_animal, natural_plant, artifact, animal, cub, food
    # (:192-217); the fixed wordings of evaluation/vllm/gpt/gpt_img_all.py:51-104 equal these
    # variants
    ("image", "gpt-4o"): dict(zip(_IMAGE, (0, 0, 1, 1, 0, 0))),
    # scripts/all_text_benchmarks.sh
    ("text", "llava-ov-7b"): dict(zip(_TAXONOMIES, (1, 1, 2, 2, 1))),  # :4-20
    ("text", "internvl2.5-8b"): dict(zip(_TAXONOMIES, (1, 1, 2, 2, 1))),  # :25-41
    ("text", "internvl3-8b"): dict(zip(_TAXONOMIES, (1, 1, 2, 2, 1))),  # :47-68
    ("text", "qwen2.5-vl-7b"): dict(zip(_TAXONOMIES, (1, 1, 2, 2, 1))),  # :76-96
    ("text", "qwen2.5-vl-32b"): dict(zip(_TAXONOMIES, (1, 1, 2, 2, 1))),  # :104-124
    ("text", "qwen2.5-vl-72b"): dict(zip(_TAXONOMIES, (1, 1, 2, 2, 1))),  # :131-151
    # GPT-4o text scripts: one wording each (evaluation/llm/gpt/gpt_cub_text.py:62-66,
    # gpt_natural_text.py, gpt_imgnet_text.py:61)
    ("text", "gpt-4o"): dict(zip(_TAXONOMIES, (1, 1, 2, 2, 1))),
    # scripts/all_og_llm_on_text.sh
    ("text", "qwen2.5-7b-instruct"): dict(zip(_TAXONOMIES, (1, 1, 2, 2, 1))),  # :4-16
    ("text", "qwen2-7b-instruct"): dict(zip(_TAXONOMIES, (1, 1, 2, 2, 1))),  # :21-33
    ("text", "qwen2.5-7b"): dict(zip(_TAXONOMIES, (1, 1, 2, 2, 1))),  # --base, :39-51
    ("text", "internlm2.5-7b-chat"): dict(zip(_TAXONOMIES, (2, 2, 1, 1, 1))),  # :56-68
}
"""``--prompt_order`` of every run of the paper's run scripts, keyed by (mode, model): the
number each command asks for, including the commands that do not run as written (line
continuations without a space, wrong test sets, a missing script; see the notes in
hierzoo/data/prompts.json)."""


# --------------------------------------------------------------------------------------------
# Question text and answer parsing
TAXONOMY_QWEN_SYSTEM = "You are a helpful assistant. "
"""The start of the Qwen taxonomy run's system message, which continues with
:data:`TAXONOMY_CONTEXT` and the taxonomy (prompt_engineering/taxonomy/eval_CUB_tax_qwen.py:164)."""

TAXONOMY_MAX_NEW_TOKENS = {"qwen2.5-vl": 10, "internvl": 5}
"""eval_CUB_tax_qwen.py:200; eval_CUB_tax_internvl.py:236."""


def taxonomy_context(taxonomy_json: str) -> str:
    """The taxonomy as the scripts put it in the prompt: ``str(json.load(open(file)))``, Python's
    repr of the leaf -> path dict (prompt_engineering/taxonomy/eval_CUB_tax_qwen.py:26-29,
    eval_CUB_tax_internvl.py:108-112)."""
    import json

    return str(json.loads(taxonomy_json))


def taxonomy_qwen_system(context: str) -> str:
    """The Qwen taxonomy run's system message (eval_CUB_tax_qwen.py:164)."""
    return TAXONOMY_QWEN_SYSTEM + TAXONOMY_CONTEXT + context


def taxonomy_internvl_question(context: str, question_text: str) -> str:
    """The InternVL taxonomy run's question, the taxonomy before the image
    (eval_CUB_tax_internvl.py:231-232): ``"Here is a taxonomy: " + context + "<image>\n" +
    question``, where ``question`` is :func:`question` (the instruction after a newline)."""
    return TAXONOMY_CONTEXT + context + "<image>\n" + question_text


# --------------------------------------------------------------------------------------------


def option_block(cmap: Mapping[str, str]) -> str:
    """``"A. x\\nB. y..."`` (every script: ``"\\n".join([f"{key}. {val}" ...])``)."""
    return "\n".join(f"{key}. {val}" for key, val in cmap.items())


def question(prompt_template: str, cmap: Mapping[str, str], suffix: str = INSTRUCTION) -> str:
    """The question text of Qwen, InternVL, GPT-4o and the text and og_llm runs:
    ``template \\n options \\n suffix`` (evaluation/vllm/qwen/eval_CUB.py:145). CoT passes
    ``suffix = COT_QWEN + INSTRUCTION`` (or ``COT_ASCII + ...``)."""
    return prompt_template + "\n" + option_block(cmap) + "\n" + suffix


def question_llava(prompt_template: str, cmap: Mapping[str, str], suffix: str = INSTRUCTION) -> str:
    """LLaVA's image-run question: a leading newline, then as :func:`question`
    (evaluation/vllm/llava/eval_CUB.py:112). The user message is ``"<image>" + this``
    (eval_CUB.py:114). LLaVA's *text* runs have no leading newline
    (evaluation/llm/llava/eval_text_cub.py:95)."""
    return "\n" + question(prompt_template, cmap, suffix)


def question_taxonomy_qwen(prompt_template: str, cmap: Mapping[str, str]) -> str:
    """Qwen's taxonomy-in-prompt question: the instruction is glued to the last option with no
    newline (prompt_engineering/taxonomy/eval_CUB_tax_qwen.py:159)."""
    return prompt_template + "\n" + option_block(cmap) + INSTRUCTION


def parse_letter(reply: str, cmap: Mapping[str, str]) -> tuple[str, str]:
    """``(letter, option)``: the first option letter, in the order A, B, C, ..., that occurs
    anywhere in the reply (case-sensitive substring), else ``("Unknown", "Unknown")``
    (evaluation/vllm/qwen/eval_CUB.py:196-197). "Answer: C" parses as A (the A of "Answer");
    "D. Anatidae" as A too."""
    letter = next((key for key in cmap if key in reply), "Unknown")
    return letter, cmap.get(letter, "Unknown")


def parse_binary(reply: str) -> tuple[int, str]:
    """``(answer, reply)`` of a yes/no statement: the reply stripped and lower-cased; 1 if it
    starts with ``y``, 0 with ``n``, else -1 (prompt_engineering/eval_CUB_binary.py:182, 193-198).
    A failed generation is recorded as ``"Error"`` (not lower-cased) and gives -1."""
    reply = reply.strip().lower()
    if reply.startswith("y"):
        return 1, reply
    if reply.startswith("n"):
        return 0, reply
    return -1, reply


def text_leaf_letter(cmap: Mapping[str, str], label: str, lowercase_label: bool = False) -> str:
    """The letter recorded for the leaf level in text mode, where the leaf is not asked: the
    option equal to the entry's ``label`` ignoring case, else ``"Unknown"``
    (evaluation/llm/qwen/eval_text_cub.py:70-73). LLaVA lower-cases the label first and compares
    it with the option as written (evaluation/llm/llava/eval_text_cub.py:27, 51:
    ``lowercase_label=True``). The recorded ``predicted_levelK`` is the label itself."""
    if lowercase_label:
        label = label.lower()
        return next((k for k, v in cmap.items() if v == label), "Unknown")
    return next((k for k, v in cmap.items() if v.lower() == label.lower()), "Unknown")


# --------------------------------------------------------------------------------------------
# Message layouts and prompts
# --------------------------------------------------------------------------------------------


def qwen_messages(
    text: str, image: Any | None = None, system: str = SYSTEM_EXPERT
) -> list[dict[str, Any]]:
    """Qwen2.5-VL's messages: the system message as a plain string, then the user turn with the
    image first and the text after (evaluation/vllm/qwen/eval_CUB.py:147-162). Text mode
    (``image=None``): ``SYSTEM_HELPFUL`` and a text-only content list
    (evaluation/llm/qwen/eval_text_cub.py:146-158)."""
    content: list[dict[str, Any]] = []
    if image is not None:
        content.append({"type": "image", "image": image})
    content.append({"type": "text", "text": text})
    return [{"role": "system", "content": system}, {"role": "user", "content": content}]


def qwen2_5_vl_render(system: str, text: str, image: bool = True) -> str:
    """What Qwen2.5-VL's chat template renders for :func:`qwen_messages` with
    ``add_generation_prompt=True`` (one image: ``<|vision_start|><|image_pad|><|vision_end|>``,
    which the processor expands to the image's tokens)."""
    vision = "<|vision_start|><|image_pad|><|vision_end|>" if image else ""
    return (
        f"<|im_start|>system\n{system}<|im_end|>\n"
        f"<|im_start|>user\n{vision}{text}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def chatml(system: str | None, user: str) -> str:
    """LLaVA-NeXT's CHATML conversation (llava/conversation.py, ``SeparatorStyle.CHATML`` in
    ``get_prompt``) with one user message and an open assistant turn; ``system`` is the text of
    the system turn (``None``: no system turn at all, which ``get_prompt`` does when the
    template's ``system`` field is empty). ``conv_templates["qwen_1_5"]`` has system
    ``"You are a helpful assistant."``."""
    head = "" if system is None else f"<|im_start|>system\n{system}<|im_end|>\n"
    return f"{head}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def llava_image_prompt(question_text: str, system: str | None) -> str:
    """LLaVA-OneVision's image-run prompt: ``"<image>" + question_llava(...)`` as the user
    message of the conversation template ``"qwen_animal"`` (evaluation/vllm/llava/eval_CUB.py:
    114-119). ``qwen_animal`` is not in LLaVA-NeXT's public ``conv_templates``: its system turn
    is unknown, so it is a parameter here (its layout is assumed to be ``qwen_1_5``'s CHATML)."""
    return chatml(system, "<image>" + question_text)


def llava_text_prompt(question_text: str) -> str:
    """LLaVA-OneVision's text-run prompt: ``conv_templates["qwen_1_5"]`` (system "You are a
    helpful assistant.") with the question as the user message
    (evaluation/llm/llava/eval_text_cub.py:95-101)."""
    return chatml(SYSTEM_HELPFUL, question_text)


def tokenizer_image_token(
    prompt: str, tokenize: Callable[[str], list[int]], bos_token_id: int | None = None
) -> list[int]:
    """LLaVA-NeXT's ``tokenizer_image_token`` (llava/mm_utils.py:341-360): each piece between
    ``<image>`` markers tokenized on its own (``tokenize`` returns ids with the tokenizer's
    special tokens, as ``tokenizer(chunk).input_ids``), joined with ``IMAGE_TOKEN_INDEX``; a
    leading BOS is kept once and, as in the original, the first token of every later piece is
    dropped when there is one (Qwen2 tokenizers add no BOS: nothing is dropped)."""
    chunks = [tokenize(c) for c in prompt.split("<image>")]
    ids: list[int] = []
    offset = 0
    if chunks and chunks[0] and bos_token_id is not None and chunks[0][0] == bos_token_id:
        offset = 1
        ids.append(chunks[0][0])
    for i, chunk in enumerate(chunks):
        if i:
            # the separator is [index] * (offset + 1), sliced [offset:] like every piece
            ids.append(LLAVA_IMAGE_TOKEN_INDEX)
        ids.extend(chunk[offset:])
    return ids


def llava_ov_hf_render(messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool) -> str:
    """What the ``llava-hf/llava-onevision-qwen2-*-ov-hf`` chat template renders (the template of
    transformers' convert_llava_onevision_weights_to_hf.py): per message
    ``<|im_start|>{role}\\n``, then ``<image>\\n`` per image item, ``<video>\\n`` per video
    item, the text items' text, ``<|im_end|>\\n``. Its ``selectattr('type', ...)`` filters run
    over the *characters* of a plain-string content, which have no ``type``: a string content
    renders as nothing, so a plain-string system message becomes an empty system turn."""
    out = []
    for m in messages:
        content = m["content"]
        items = [] if isinstance(content, str) else list(content)
        out.append(f"<|im_start|>{m['role']}\n")
        out += ["<image>\n" for c in items if c.get("type") == "image"]
        out += ["<video>\n" for c in items if c.get("type") == "video"]
        out += [c["text"] for c in items if c.get("type") == "text"]
        out.append("<|im_end|>\n")
    if add_generation_prompt:
        out.append("<|im_start|>assistant\n")
    return "".join(out)


def internvl_query(
    question_text: str,
    num_patches: int | None,
    system: str = INTERNVL_SYSTEM,
    num_image_token: int = INTERNVL_TOKENS_PER_TILE,
) -> str:
    """The prompt InternVL's remote ``model.chat`` builds (OpenGVLab/InternVL internvl_chat/
    internvl/model/internvl_chat/modeling_internvl_chat.py:343-377, template ``internvl2_5``:
    conversation.py:393-401, ``SeparatorStyle.MPT``: conversation.py:238-247).

    With an image (``num_patches`` tiles) and no ``<image>`` in the question, ``"<image>\\n"`` is
    put in front (the image scripts write it themselves: evaluation/vllm/internvl/
    eval_img_cub.py:218); the one ``<image>`` becomes ``<img>`` + ``<IMG_CONTEXT>`` x
    256 x tiles + ``</img>``. Text mode: ``num_patches=None``. The tokenizer then adds its own
    BOS if it has one (InternVL2.5-8B's InternLM2 tokenizer does; InternVL3's Qwen2 one does not).
    """
    if num_patches is not None and "<image>" not in question_text:
        question_text = "<image>\n" + question_text
    query = (
        f"<|im_start|>system\n{system}<|im_end|>\n"
        f"<|im_start|>user\n{question_text}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    if num_patches is not None:
        image = "<img>" + "<IMG_CONTEXT>" * (num_image_token * num_patches) + "</img>"
        query = query.replace("<image>", image, 1)
    return query


def internvl_response(decoded: str) -> str:
    """InternVL's reply: the decoded text (``skip_special_tokens=True``) up to ``<|im_end|>``,
    stripped (modeling_internvl_chat.py:388-389)."""
    return decoded.split("<|im_end|>")[0].strip()


def internlm_prompt(
    query: str, meta_instruction: str = INTERNLM_META_INSTRUCTION, bos: str = "<s>"
) -> str:
    """InternLM2(.5)-chat's remote ``chat`` prompt (``build_inputs``): BOS, the system turn with
    the meta instruction, the user turn, the open assistant turn. Used by
    evaluation/og_llm/interlm2.5/*.py (``model.chat(tokenizer, question, history=[],
    max_new_tokens=5, do_sample=False)``, e.g. eval_text_cub.py:154)."""
    return (
        f"{bos}<|im_start|>system\n{meta_instruction}<|im_end|>\n"
        f"<|im_start|>user\n{query}<|im_end|>\n<|im_start|>assistant\n"
    )


def og_llm_messages(question_text: str) -> list[dict[str, str]]:
    """The og_llm Qwen chat runs: system "You are a helpful assistant." and the question as a
    plain-string user turn (evaluation/og_llm/qwen/eval_text_og_cub.py:148-158), through the
    tokenizer's chat template with ``add_generation_prompt=True``."""
    return [
        {"role": "system", "content": SYSTEM_HELPFUL},
        {"role": "user", "content": question_text},
    ]


def og_llm_base_prompt(question_text: str) -> str:
    """The og_llm ``--base`` runs: the raw question with ``" Answer:"`` appended, no chat
    template (evaluation/og_llm/qwen/eval_text_og_cub.py:145-146)."""
    return question_text + " Answer:"


def gpt_messages(question_text: str, base64_image: str | None = None) -> list[dict[str, Any]]:
    """GPT-4o's messages: system "You are a helpful assistant.", then the user turn with the
    question text first and the image (the file's bytes in base64, always labelled
    ``image/jpeg``, ``detail: "low"``) after it (evaluation/vllm/gpt/gpt_img_all.py:125-141).
    Text runs: the text item only (evaluation/llm/gpt/gpt_cub_text.py:89-100)."""
    content: list[dict[str, Any]] = [{"type": "text", "text": question_text}]
    if base64_image is not None:
        content.append(
            {
                "type": "image_url",
                "image_url": {"url": f"data:image/jpeg;base64,{base64_image}", "detail": "low"},
            }
        )
    return [{"role": "system", "content": SYSTEM_HELPFUL}, {"role": "user", "content": content}]


def binary_question(rank_index: int, item: str) -> str:
    """The user text of one yes/no statement (prompt_engineering/eval_CUB_binary.py:82-90, 133)."""
    rank = BINARY_RANKS[min(rank_index, len(BINARY_RANKS) - 1)]
    return BINARY_STATEMENT.format(rank=rank, item=item) + "\n" + BINARY_QUESTION


# --------------------------------------------------------------------------------------------
# Qwen2.5-VL images: qwen_vl_utils, then the scripts' 1680 px cap, then the processor
# --------------------------------------------------------------------------------------------


def _round_by_factor(number: float, factor: int) -> int:
    return round(number / factor) * factor


def _ceil_by_factor(number: float, factor: int) -> int:
    return math.ceil(number / factor) * factor


def _floor_by_factor(number: float, factor: int) -> int:
    return math.floor(number / factor) * factor


def smart_resize(
    height: int,
    width: int,
    factor: int = QWEN_IMAGE_FACTOR,
    min_pixels: int = QWEN_MIN_PIXELS,
    max_pixels: int = QWEN_MAX_PIXELS,
) -> tuple[int, int]:
    """``(height, width)``: qwen_vl_utils' ``smart_resize`` (vision_process.py:59-85): each side
    rounded to a multiple of ``factor`` (Python's ``round``, halves to even), then scaled down
    (floor) or up (ceil) to stay within the pixel range. transformers' Qwen2-VL image processor
    applies the same formula with its own ``min_pixels`` / ``max_pixels``."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError("absolute aspect ratio must be smaller than 200")
    h_bar = max(factor, _round_by_factor(height, factor))
    w_bar = max(factor, _round_by_factor(width, factor))
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = _floor_by_factor(height / beta, factor)
        w_bar = _floor_by_factor(width / beta, factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = _ceil_by_factor(height * beta, factor)
        w_bar = _ceil_by_factor(width * beta, factor)
    return h_bar, w_bar


def qwen_to_rgb(image: Image.Image) -> Image.Image:
    """qwen_vl_utils' ``to_rgb`` (>= 0.0.9; vision_process.py:88-94): RGBA is composited on
    white, anything else ``convert("RGB")``."""
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.split()[3])
        return background
    return image.convert("RGB")


def qwen_fetch_image(
    image: Image.Image,
    factor: int = QWEN_IMAGE_FACTOR,
    min_pixels: int = QWEN_MIN_PIXELS,
    max_pixels: int = QWEN_MAX_PIXELS,
) -> Image.Image:
    """qwen_vl_utils' ``fetch_image`` for ``{"type": "image", "image": path}`` without
    min/max_pixels (vision_process.py:97-140): RGB, then ``image.resize((w, h))`` to
    :func:`smart_resize`'s size with PIL's default filter (BICUBIC for RGB images). ``factor``
    is ``fetch_image``'s ``size_factor`` (28 for Qwen2.5-VL); the pixel range its defaults."""
    image = qwen_to_rgb(image)
    width, height = image.size
    h, w = smart_resize(height, width, factor, min_pixels, max_pixels)
    return image.resize((w, h))


def qwen_cap(image: Image.Image, max_side: int = QWEN_MAX_SIDE) -> Image.Image:
    """The scripts' cap, applied to ``process_vision_info``'s already resized image
    (evaluation/vllm/qwen/eval_CUB.py:168-173): if the longer side exceeds 1680, LANCZOS resize
    by ``1680 / longer`` with each side truncated by ``int()`` (so the longer side can come out
    at 1679)."""
    width, height = image.size
    max_dim = max(width, height)
    if max_dim > max_side:
        scale_factor = max_side / max_dim
        return image.resize((int(width * scale_factor), int(height * scale_factor)), Image.LANCZOS)
    return image


def paper_qwen_image(
    image: Image.Image,
    factor: int = QWEN_IMAGE_FACTOR,
    min_pixels: int = QWEN_MIN_PIXELS,
    max_pixels: int = QWEN_MAX_PIXELS,
) -> Image.Image:
    """The image the paper's Qwen scripts hand the processor: :func:`qwen_fetch_image` first,
    then :func:`qwen_cap` (that order)."""
    return qwen_cap(qwen_fetch_image(image, factor, min_pixels, max_pixels))


def paper_qwen_sizes(width: int, height: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Sizes only, ``((w, h) handed to the processor, (w, h) the processor resizes to)``, for an
    original ``width x height`` image under :func:`paper_qwen_image` and the processor's own
    ``smart_resize`` (checkpoint min/max pixels)."""
    h, w = smart_resize(height, width)
    if max(w, h) > QWEN_MAX_SIDE:
        s = QWEN_MAX_SIDE / max(w, h)
        w, h = int(w * s), int(h * s)
    ph, pw = smart_resize(
        h, w, min_pixels=QWEN_PROCESSOR_MIN_PIXELS, max_pixels=QWEN_PROCESSOR_MAX_PIXELS
    )
    return (w, h), (pw, ph)


def qwen_image_tokens(width: int, height: int, patch: int = 14, merge: int = 2) -> int:
    """LLM tokens of a processor-sized image: 14 px patches merged 2 x 2."""
    return (height // patch) * (width // patch) // (merge * merge)


# --------------------------------------------------------------------------------------------
# LLaVA-OneVision images: image_aspect_ratio "pad"
# --------------------------------------------------------------------------------------------


def expand2square(image: Image.Image, background_color: tuple[int, ...]) -> Image.Image:
    """LLaVA-NeXT's ``expand2square`` (llava/mm_utils.py:300-311): the image pasted on a square
    canvas of its longer side, centred with the offset floored, the rest ``background_color``."""
    width, height = image.size
    if width == height:
        return image
    if width > height:
        result = Image.new(image.mode, (width, width), background_color)
        result.paste(image, (0, (width - height) // 2))
        return result
    result = Image.new(image.mode, (height, height), background_color)
    result.paste(image, ((height - width) // 2, 0))
    return result


def llava_pad_background(image_mean: Sequence[float] = (0.5, 0.5, 0.5)) -> tuple[int, ...]:
    """``tuple(int(x * 255) for x in image_processor.image_mean)`` (llava/mm_utils.py:331):
    (127, 127, 127) for SigLIP's mean 0.5."""
    return tuple(int(x * 255) for x in image_mean)


def llava_pad_pixels(
    image: Image.Image,
    image_mean: Sequence[float] = (0.5, 0.5, 0.5),
    image_std: Sequence[float] = (0.5, 0.5, 0.5),
    size: int = 384,
) -> torch.Tensor:
    """``(3, 384, 384)`` float32 pixels of one image under ``image_aspect_ratio="pad"``
    (llava/mm_utils.py:329-333 with LLaVA-NeXT's ``SigLipImageProcessor.preprocess``,
    llava/model/multimodal_encoder/siglip_encoder.py:35-67): the RGB image padded to a square with
    :func:`llava_pad_background`, resized to 384 x 384 with PIL BICUBIC (transformers'
    ``resize`` goes through PIL for a uint8 array), times 1/255, minus mean, over std. The
    scripts cast it to float16 (evaluation/vllm/llava/eval_CUB.py:39-41)."""
    square = expand2square(image.convert("RGB"), llava_pad_background(image_mean))
    resized = square.resize((size, size), Image.BICUBIC)
    x = (np.asarray(resized, dtype=np.float64) * (1 / 255)).astype(np.float32)
    mean = np.asarray(image_mean, dtype=np.float32)
    std = np.asarray(image_std, dtype=np.float32)
    x = (x - mean) / std
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


# --------------------------------------------------------------------------------------------
# InternVL images: load_image(max_num=4)
# --------------------------------------------------------------------------------------------


def build_transform(input_size: int = 448) -> Callable[[Image.Image], torch.Tensor]:
    """evaluation/vllm/internvl/eval_img_cub.py:20-28: RGB, ``T.Resize((s, s), BICUBIC)`` (a no-op
    on the 448 px tiles), ``ToTensor``, ImageNet ``Normalize``."""
    import torchvision.transforms as T
    from torchvision.transforms.functional import InterpolationMode

    return T.Compose(
        [
            T.Lambda(lambda img: img.convert("RGB") if img.mode != "RGB" else img),
            T.Resize((input_size, input_size), interpolation=InterpolationMode.BICUBIC),
            T.ToTensor(),
            T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ]
    )


def target_ratios(min_num: int = 1, max_num: int = 12) -> list[tuple[int, int]]:
    """The candidate grids ``(columns, rows)`` in the order the script tries them: a ``set``
    sorted by tile count (eval_img_cub.py:50-53); ties keep the set's iteration order."""
    ratios = set(
        (i, j)
        for n in range(min_num, max_num + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if i * j <= max_num and i * j >= min_num
    )
    return sorted(ratios, key=lambda x: x[0] * x[1])


def find_closest_aspect_ratio(
    aspect_ratio: float,
    ratios: Sequence[tuple[int, int]],
    width: int,
    height: int,
    image_size: int,
) -> tuple[int, int]:
    """eval_img_cub.py:30-43: the grid whose columns/rows is closest to the image's width/height;
    on an exact tie the later grid wins if the image's area exceeds half the grid's pixel area."""
    best_ratio_diff = float("inf")
    best_ratio = (1, 1)
    area = width * height
    for ratio in ratios:
        target_aspect_ratio = ratio[0] / ratio[1]
        ratio_diff = abs(aspect_ratio - target_aspect_ratio)
        if ratio_diff < best_ratio_diff:
            best_ratio_diff = ratio_diff
            best_ratio = ratio
        elif (
            ratio_diff == best_ratio_diff
            and area > 0.5 * image_size * image_size * ratio[0] * ratio[1]
        ):
            best_ratio = ratio
    return best_ratio


def dynamic_preprocess(
    image: Image.Image,
    min_num: int = 1,
    max_num: int = 12,
    image_size: int = 448,
    use_thumbnail: bool = False,
) -> list[Image.Image]:
    """eval_img_cub.py:45-81: resize (PIL default filter: BICUBIC) to the chosen grid of
    448 px tiles, crop the tiles row by row, and append the whole image resized to 448 x 448
    when ``use_thumbnail`` and there is more than one tile."""
    orig_width, orig_height = image.size
    aspect_ratio = orig_width / orig_height
    ratios = target_ratios(min_num, max_num)
    cols, rows = find_closest_aspect_ratio(
        aspect_ratio, ratios, orig_width, orig_height, image_size
    )
    target_width = image_size * cols
    target_height = image_size * rows
    blocks = cols * rows
    resized_img = image.resize((target_width, target_height))
    tiles = []
    per_row = target_width // image_size
    for i in range(blocks):
        box = (
            (i % per_row) * image_size,
            (i // per_row) * image_size,
            ((i % per_row) + 1) * image_size,
            ((i // per_row) + 1) * image_size,
        )
        tiles.append(resized_img.crop(box))
    assert len(tiles) == blocks
    if use_thumbnail and len(tiles) != 1:
        tiles.append(image.resize((image_size, image_size)))
    return tiles


def load_image(
    image: Image.Image | str, input_size: int = 448, max_num: int = 12
) -> tuple[list[Image.Image], torch.Tensor]:
    """eval_img_cub.py:83-89 (``load_image(image_path, max_num=4)`` at :136): the tiles (thumbnail
    included) and their ``(tiles, 3, 448, 448)`` float32 pixels; the script casts to bfloat16."""
    if isinstance(image, str):
        image = Image.open(image)
    image = image.convert("RGB")
    transform = build_transform(input_size=input_size)
    tiles = dynamic_preprocess(image, image_size=input_size, use_thumbnail=True, max_num=max_num)
    return tiles, torch.stack([transform(t) for t in tiles])


# --------------------------------------------------------------------------------------------
# Scoring: utils/metric.py and utils/metric_binary.py
# --------------------------------------------------------------------------------------------


def normalize_case(path: Sequence[str | None]) -> list[str | None]:
    """utils/metric.py:5-7."""
    return [item.lower() if item is not None else None for item in path]


def extract_hierarchies(
    results: Sequence[Mapping[str, Any]], cub: bool = False
) -> tuple[list[list[str]], list[list[str]]]:
    """``(ground_truth_paths, predicted_paths)`` (utils/metric.py:256-318): levels from 1 with
    ``--cub``, else from 2 (the single root level dropped); each path reads
    ``ground_truth_levelK`` / ``predicted_levelK`` for K = start, start+1, ... while the key
    exists (it stops at the first missing key), leaving out ``None`` values; a sample is kept
    only when both paths are non-empty. "Unknown" / "Error" predictions are kept (wrong)."""
    truths, preds = [], []
    for item in results:
        gt, pred = [], []
        level = 1 if cub else 2
        while f"ground_truth_level{level}" in item:
            value = item[f"ground_truth_level{level}"]
            if value is not None:
                gt.append(value)
            level += 1
        level = 1 if cub else 2
        while f"predicted_level{level}" in item:
            value = item[f"predicted_level{level}"]
            if value is not None:
                pred.append(value)
            level += 1
        if gt and pred:
            truths.append(gt)
            preds.append(pred)
    return truths, preds


def extract_binary_hierarchies(
    results: Sequence[Mapping[str, Any]],
) -> tuple[list[list[str]], list[list[str | None]]]:
    """utils/metric_binary.py:258-321: levels from 1; the predicted option of a level is the first
    option, in ``choices_levelK`` letter order (the asked order), whose lower-cased name is a key
    of the sample with value 1 (the eval script stores ``result_entry[option] = answer`` under
    the option's own spelling, eval_CUB_binary.py:93-94); ``None`` when no option was answered
    yes; the predicted path keeps ``None``."""
    truths, preds = [], []
    for item in results:
        gt: list[str] = []
        level = 1
        while f"ground_truth_level{level}" in item:
            value = item[f"ground_truth_level{level}"]
            if value is not None:
                gt.append(value)
            level += 1
        pred: list[str | None] = []
        level = 1
        while f"ground_truth_level{level}" in item and f"choices_level{level}" in item:
            prediction = None
            for _letter, choice in item[f"choices_level{level}"].items():
                key = f"{choice.lower()}"
                if key in item and item[key] == 1:
                    prediction = choice
                    break
            pred.append(prediction)
            level += 1
        if gt and pred:
            truths.append(gt)
            preds.append(pred)
    return truths, preds


def hca(preds: Sequence[Sequence[str | None]], truths: Sequence[Sequence[str | None]]) -> float:
    """utils/metric.py:148-165 with ``ignore_first_layer=False`` (as ``__main__`` calls it): the
    share (in %) of samples whose lower-cased predicted path equals the true path (same length
    included)."""
    ok = sum(1 for p, t in zip(preds, truths) if normalize_case(p) == normalize_case(t))
    return ok / len(truths) * 100


def por(preds: Sequence[Sequence[str | None]], truths: Sequence[Sequence[str | None]]) -> float:
    """utils/metric.py:72-92: mean of (levels right, zipped) / len(true path), in %."""
    total = 0.0
    for p, t in zip(preds, truths):
        p, t = normalize_case(p), normalize_case(t)
        total += sum(1 for a, b in zip(p, t) if a == b) / len(t) if len(t) > 0 else 0
    return total / len(preds) * 100


def strict_por(
    preds: Sequence[Sequence[str | None]], truths: Sequence[Sequence[str | None]]
) -> float:
    """utils/metric.py:10-38: mean of (longest right prefix) / len(true path), in %."""
    total = 0.0
    for p, t in zip(preds, truths):
        p, t = normalize_case(p), normalize_case(t)
        n = 0
        for a, b in zip(p, t):
            if a != b:
                break
            n += 1
        total += n / len(t) if len(t) > 0 else 0
    return total / len(preds) * 100


def tor(preds: Sequence[Sequence[str | None]], truths: Sequence[Sequence[str | None]]) -> float:
    """utils/metric.py:41-69: mean of (consecutive level pairs both right) / (len(true) - 1), in %;
    a one-level path scores 0."""
    total = 0.0
    for p, t in zip(preds, truths):
        p, t = normalize_case(p), normalize_case(t)
        pairs = 0
        for j in range(len(t) - 1):
            if j + 1 < len(p) and p[j] == t[j] and p[j + 1] == t[j + 1]:
                pairs += 1
        total += pairs / (len(t) - 1) if len(t) - 1 > 0 else 0
    return total / len(preds) * 100


def leaf_accuracy(
    preds: Sequence[Sequence[str | None]], truths: Sequence[Sequence[str | None]]
) -> float:
    """utils/metric.py:220-253: the last predicted name against the last true name, lower-cased
    (``None`` as ``""``), in %."""
    ok = sum(1 for p, t in zip(preds, truths) if (p[-1] or "").lower() == (t[-1] or "").lower())
    return ok / len(truths) * 100


def layer_accuracy(
    preds: Sequence[Sequence[str | None]], truths: Sequence[Sequence[str | None]]
) -> dict[int, float]:
    """utils/metric.py:94-145 with ``ignore_first_layer=False``: per 1-based position, the share
    right among samples whose true path has that position (0.0 where none has)."""
    depth = max(max(len(p) for p in preds), max(len(t) for t in truths))
    right = {i: 0 for i in range(1, depth + 1)}
    total = {i: 0 for i in range(1, depth + 1)}
    for p, t in zip(preds, truths):
        p, t = normalize_case(p), normalize_case(t)
        for j in range(depth):
            if j < len(t):
                total[j + 1] += 1
                if j < len(p) and p[j] == t[j]:
                    right[j + 1] += 1
    return {k: (right[k] / n * 100 if n > 0 else 0.0) for k, n in total.items()}


def por_f1(preds: Sequence[Sequence[str | None]], truths: Sequence[Sequence[str | None]]) -> float:
    """utils/metric.py:167-191 (computed, not printed, by metric.py; printed by
    metric_binary.py:361): per sample F1 of zipped matches over len(pred) and len(true), in %."""
    total = 0.0
    for p, t in zip(preds, truths):
        p, t = normalize_case(p), normalize_case(t)
        m = sum(1 for a, b in zip(p, t) if a == b)
        prec = m / len(p) if len(p) > 0 else 0
        rec = m / len(t) if len(t) > 0 else 0
        total += 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0
    return total / len(preds) * 100


def paper_metrics(
    results: Sequence[Mapping[str, Any]], cub: bool = False, binary: bool = False
) -> dict[str, Any]:
    """Everything ``utils/metric.py --file_path F [--cub]`` (or ``utils/metric_binary.py``)
    computes for a result list."""
    if binary:
        truths, preds = extract_binary_hierarchies(results)
    else:
        truths, preds = extract_hierarchies(results, cub=cub)
    return {
        "n": len(truths),
        "tor": tor(preds, truths),
        "por": por(preds, truths),
        "strict_por": strict_por(preds, truths),
        "hca": hca(preds, truths),
        "leaf": leaf_accuracy(preds, truths),
        "por_f1": por_f1(preds, truths),
        "layers": layer_accuracy(preds, truths),
    }


# --------------------------------------------------------------------------------------------
# CLIP-style models: loading and precision
# --------------------------------------------------------------------------------------------
OPENCLIP_MODEL = "ViT-L-14"
OPENCLIP_PRETRAINED = "laion2b_s32b_b82k"
"""evaluation/clip/openclip.py:9-11: ``open_clip.create_model_and_transforms(model_name,
pretrained=pretrained)`` with these defaults, ``open_clip.get_tokenizer(model_name)``."""

OPENCLIP_AUTOCAST = "float16"
"""evaluation/clip/openclip.py:25: float32 weights under ``torch.autocast(device_type="cuda")``,
whose CUDA default dtype is float16."""

SIGLIP_AUTOCAST = None
"""evaluation/clip/siglip.py:12-13: ``AutoModel.from_pretrained(model_path)`` (float32), no
autocast."""
