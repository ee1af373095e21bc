"""Chat-template surgery and the letter-token rule: how a vision LLM's prompt splits around the
user text, and which token ids the option letters are as the first assistant token.

Pure functions over a transformers processor (no model); the classifier caches their results.
"""

from __future__ import annotations

from typing import Any

from hierzoo import prompts

SENTINEL = "<<hierzoo-user-text>>"
_CHECK_TEXT = "Which one?\nA. first option\nB. second\nAnswer with the letter."


def _text(text: str) -> list[dict[str, str]]:
    return [{"type": "text", "text": text}]


def messages(
    user: str, mode: str, system: str | None = None, preamble: str | None = None
) -> list[dict[str, Any]]:
    """The paper's messages as a model's chat template is given them: the system message
    (default: the mode's) as a list of text parts (the ``-ov-hf`` LLaVA-OneVision template
    renders a plain-string content as an empty turn; every template hierzoo knows renders the
    list form as the text itself), then the user turn: ``preamble``, the image (image mode) and
    ``user``."""
    system = prompts.system_message(mode) if system is None else system
    turn = prompts.messages(user, mode=mode, preamble=preamble)[1]
    return [{"role": "system", "content": _text(system)}, turn]


def render(
    processor: Any, user: str, mode: str, system: str | None = None, preamble: str | None = None
) -> str:
    """The chat template over the system message (default: the mode's) and ``user`` (after
    ``preamble`` and the image), ending with the opening of the assistant turn."""
    return processor.apply_chat_template(
        messages(user, mode, system, preamble), tokenize=False, add_generation_prompt=True
    )


def split_template(
    processor: Any,
    mode: str,
    name: str,
    check_prefix: bool,
    system: str | None = None,
    preamble: str | None = None,
) -> tuple[str, str]:
    """``(head, tail)``: the chat-template text before and after the user text of a mode.

    The head is the system turn and the start of the user turn with the image placeholder;
    the tail closes the user turn and opens the assistant turn. A full prompt is
    ``head + user_text + tail``. ``check_prefix``: also check that the head's tokens end where
    the head's text ends (a KV cache of the head can then serve every question). ``system``:
    the system message (default: the paper's for the mode); ``preamble``: text at the start of
    the user turn, before the image.

    Raises:
        ValueError: a template that does not place the user text verbatim once, that changes
            it, that leaves the system message out, or (``check_prefix``) whose tokens merge
            across the end of the head.
    """
    system = prompts.system_message(mode) if system is None else system
    full = render(processor, SENTINEL, mode, system, preamble)
    if full.count(SENTINEL) != 1:
        raise ValueError(
            f"The chat template of {name!r} does not place the user text verbatim once in the "
            f"prompt ({full!r}); hierzoo cannot build its prompts."
        )
    head, tail = full.split(SENTINEL)
    if system and system not in head:
        raise ValueError(
            f"The chat template of {name!r} leaves the system message out of the prompt "
            f"({head!r}); hierzoo cannot send the system message through it."
        )
    if render(processor, _CHECK_TEXT, mode, system, preamble) != head + _CHECK_TEXT + tail:
        raise ValueError(
            f"The chat template of {name!r} changes the user text; hierzoo cannot build its "
            "prompts."
        )
    if check_prefix and not clean_boundary(processor.tokenizer, head, tail):
        raise ValueError(
            f"The tokens of {name!r} merge across the end of the shared prefix "
            f"{head[-20:]!r}; load it with prefix_cache=False."
        )
    return head, tail


def clean_boundary(tokenizer: Any, head: str, tail: str) -> bool:
    """Whether the head's tokens end where the head's text ends: a user text and the tail
    tokenized on their own continue the head's tokens exactly as in the whole prompt (a KV
    cache of the head can then serve every question)."""
    split = (
        tokenizer(head, add_special_tokens=False)["input_ids"]
        + tokenizer(_CHECK_TEXT + tail, add_special_tokens=False)["input_ids"]
    )
    return split == tokenizer(head + _CHECK_TEXT + tail, add_special_tokens=False)["input_ids"]


def letter_token_ids(
    tokenizer: Any, tail: str, n: int, name: str, separator: str = ""
) -> list[int]:
    """Token ids of the first ``n`` option letters as the first assistant token.

    The rule: tokenize the template's tail (which ends the prompt, ``...assistant\\n``)
    alone and followed by ``separator`` and the letter; the one extra token is the letter's id.
    Tokenizers that spell a letter ``"A"`` after a newline and ``" A"`` after a space get the
    right one (a prompt ending ``" Answer:"`` takes ``separator=" "``: the letter ``" A"``).

    Raises:
        ValueError: a letter that is not one token after the tail.
    """
    base = tokenizer(tail, add_special_tokens=False)["input_ids"]
    ids = []
    for letter in prompts.letters(n):
        got = tokenizer(tail + separator + letter, add_special_tokens=False)["input_ids"]
        if got[: len(base)] != base or len(got) != len(base) + 1:
            raise ValueError(
                f"Option letter {letter!r} is not one token after the prompt's end "
                f"{tail[-12:]!r} for {name!r} (tokens {got[len(base) - 1 :]}); constrained "
                "letter scoring needs single-token letters."
            )
        ids.append(got[-1])
    return ids


def answer_token_ids(tokenizer: Any, tail: str, words: tuple[str, ...], name: str) -> list[int]:
    """Token ids of the first token of each answer word (``("Yes", "No")``) as the first
    assistant token: ``tail + word`` tokenized, the first token after the tail's. A greedy reply
    starts with the word whose first token has the highest logit of all tokens; the
    ``logits`` answer compares these ids only.

    Raises:
        ValueError: a word that does not start a new token after the tail, or two words whose
            first tokens are the same.
    """
    base = tokenizer(tail, add_special_tokens=False)["input_ids"]
    ids = []
    for word in words:
        got = tokenizer(tail + word, add_special_tokens=False)["input_ids"]
        if got[: len(base)] != base or len(got) == len(base):
            raise ValueError(
                f"The answer {word!r} merges with the prompt's end {tail[-12:]!r} for {name!r}; "
                "its logit cannot be read: use --answer generate."
            )
        ids.append(got[len(base)])
    if len(set(ids)) < len(ids):
        raise ValueError(
            f"The answers {list(words)} start with the same token for {name!r}; their logits "
            "cannot tell them apart: use --answer generate."
        )
    return ids


def answer_end(processor: Any, name: str, system: str | None = None) -> str:
    """The text that closes an assistant turn right after its content (``<|im_end|>``), in a
    conversation with ``system`` (default: the paper's text-mode message)."""
    msgs = [*messages("x", "text", system), {"role": "assistant", "content": _text(SENTINEL)}]
    rendered = processor.apply_chat_template(msgs, tokenize=False)
    if rendered.count(SENTINEL) != 1:
        raise ValueError(
            f"The chat template of {name!r} does not render an assistant turn's text; hierzoo "
            "cannot find where an answer ends."
        )
    after = rendered.split(SENTINEL)[-1]
    tok = processor.tokenizer
    ids = tok(after, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"The chat template of {name!r} does not close the assistant turn.")
    return tok.decode(ids[:1])


def leading_special_text(tokenizer: Any, name: str, needs: str) -> str:
    """The text of the special tokens ``tokenizer(text)`` puts before a text (a BOS; ``""`` when
    none), which a prompt tokenized without special tokens must write itself to equal it.

    Raises:
        ValueError: a tokenizer that also adds special tokens after a text; ``needs`` names what
            needs the prompt's last token to be its own.
    """
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x")["input_ids"]
    at = next(i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain)
    if len(full) != at + len(plain):
        raise ValueError(
            f"The tokenizer of {name!r} adds special tokens after a text "
            f"({full[at + len(plain) :]}); {needs} needs the prompt's last token to be its own."
        )
    return tokenizer.decode(full[:at])
