"""Build docs/api.md, the API reference, from the public API's signatures and docstrings.

    python scripts/gen_api_docs.py           # rewrite docs/api.md
    python scripts/gen_api_docs.py --check   # exit 1 if docs/api.md is not what this builds

``tests/test_api_docs.py`` runs the check, so a changed signature or docstring fails the tests
until the page is rebuilt. What is documented is the table ``SECTIONS`` below: a module and the
names it exports (its ``__all__``, else every public function and class defined in it), or an
explicit list. Google-style sections (``Args:``, ``Returns:``, ``Raises:``, ``Attributes:``)
become lists; Sphinx roles (:class:`X`) become code spans.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "api.md"
WIDTH = 88

# (title, module, names or None for the module's exports, {class: members to document})
SECTIONS: list[tuple[str, str, list[str] | None, dict[str, list[str]]]] = [
    (
        "hierzoo",
        "hierzoo",
        [
            "load",
            "wrap",
            "list_models",
            "load_taxonomy",
            "bundled_taxonomies",
            "read_questions",
            "build_questions",
            "Taxonomy",
            "TaxonomyError",
        ],
        {},
    ),
    ("hierzoo.models", "hierzoo.models", None, {}),
    (
        "hierzoo.models: family classes",
        "hierzoo.models.clip",
        ["OpenClipClassifier", "HFClipClassifier"],
        {"OpenClipClassifier": ["from_model"], "HFClipClassifier": ["from_model"]},
    ),
    (
        "hierzoo.models: vision LLMs",
        "hierzoo.models.vlm",
        [
            "LLMClassifier",
            "VisionLLMClassifier",
            "Qwen2_5_VLClassifier",
            "Qwen3VLClassifier",
            "LlavaOnevisionClassifier",
            "InternVLClassifier",
        ],
        {
            "LLMClassifier": [],
            "VisionLLMClassifier": [],
            "Qwen2_5_VLClassifier": [],
            "Qwen3VLClassifier": [],
            "LlavaOnevisionClassifier": [],
            "InternVLClassifier": [],
        },
    ),
    (
        "hierzoo.models: text-only LLMs",
        "hierzoo.models.llm",
        ["TextLLMClassifier", "InternLM2Classifier", "TextProcessor"],
        {
            "TextLLMClassifier": [
                "from_model",
                "default_protocol",
                "paper_prompt_variant",
                "answer",
                "template",
            ],
            "InternLM2Classifier": [],
            "TextProcessor": [],
        },
    ),
    (
        "hierzoo.models.api: models behind a chat-completions API",
        "hierzoo.models.api",
        [
            "OpenAIChatClassifier",
            "NotAvailableOverApi",
            "ApiSettings",
            "ChatClient",
            "ChatResult",
            "ApiError",
            "ApiAuthError",
            "ApiNotFoundError",
            "RequestSettings",
            "paper_settings",
            "build_request",
            "describe_request",
            "request_key",
            "image_data_url",
            "LetterAnswer",
            "letter_answer",
            "response_letter_answer",
            "first_token_top_logprobs",
            "reply_text",
            "ResponseFormatError",
            "ResponseCache",
            "ResponseCacheWarning",
            "Usage",
            "estimate_cost",
            "retry_after_seconds",
            "retry_delay",
        ],
        {
            "ChatClient": ["run", "send"],
            "OpenAIChatClassifier": [
                "from_spec",
                "request_settings",
                "default_protocol",
                "answer",
                "iter_answers",
                "describe_requests",
                "identity",
                "provenance",
            ],
        },
    ),
    ("hierzoo.metrics", "hierzoo.metrics", None, {}),
    ("hierzoo.tasks", "hierzoo.tasks", None, {}),
    ("hierzoo.prompts", "hierzoo.prompts", None, {}),
    ("hierzoo.sft", "hierzoo.sft", None, {}),
]

SECTION_RE = re.compile(
    r"^(Args|Arguments|Attributes|Returns|Yields|Raises|Example|Examples|Note|Notes):\s*$"
)
ITEM_RE = re.compile(r"^([\w*.,\[\] |]+?)(\s*\([^)]*\))?:\s+(.*)$")
ROLE_RE = re.compile(r":(?:class|meth|func|data|mod|attr|obj|exc):`(~?)([^`]+)`")


# --------------------------------------------------------------------------- what to document
def exported(module: Any, names: list[str] | None) -> list[tuple[str, Any]]:
    """``(name, object)`` of a section, in the order given or of ``__all__`` (else the module's
    public functions and classes in definition order)."""
    if names is None:
        names = list(getattr(module, "__all__", []))
        if not names:
            names = [
                n
                for n, obj in vars(module).items()
                if not n.startswith("_")
                and (inspect.isfunction(obj) or inspect.isclass(obj))
                and obj.__module__ == module.__name__
            ]
    return [(n, getattr(module, n)) for n in names if not n.startswith("__")]


def class_members(cls: type, wanted: list[str] | None) -> list[tuple[str, Any]]:
    """Public methods and properties a class defines itself (or ``wanted``), in source order."""
    if wanted is not None:
        return [(n, inspect.getattr_static(cls, n)) for n in wanted]
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    out = []
    for name, obj in vars(cls).items():
        if (name.startswith("_") and name != "__call__") or name in fields:
            continue
        if isinstance(obj, (staticmethod, classmethod, property)) or inspect.isfunction(obj):
            out.append((name, obj))
    return out


# --------------------------------------------------------------------------- signatures
def _annotation(a: Any) -> str:
    if a is inspect.Parameter.empty:
        return ""
    return a if isinstance(a, str) else inspect.formatannotation(a)


def _param(p: inspect.Parameter) -> str:
    prefix = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "")
    text = prefix + p.name
    ann = _annotation(p.annotation)
    if ann:
        text += f": {ann}"
    if p.default is not p.empty:
        text += f" = {p.default!r}" if ann else f"={p.default!r}"
    return text


def signature(name: str, obj: Any, drop_first: bool = False) -> str:
    """``name(params) -> return`` on one line, or one parameter per line when long."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return name
    params = list(sig.parameters.values())
    if drop_first and params:
        params = params[1:]
    params = [p for p in params if not p.name.startswith("_")]
    parts: list[str] = []
    for i, p in enumerate(params):
        if p.kind == p.KEYWORD_ONLY and (
            i == 0 or params[i - 1].kind not in (p.KEYWORD_ONLY, p.VAR_POSITIONAL)
        ):
            parts.append("*")
        parts.append(_param(p))
        if p.kind == p.POSITIONAL_ONLY and (
            i + 1 == len(params) or params[i + 1].kind != p.POSITIONAL_ONLY
        ):
            parts.append("/")
    ret = _annotation(sig.return_annotation)
    tail = f" -> {ret}" if ret and not inspect.isclass(obj) else ""
    one = f"{name}({', '.join(parts)}){tail}"
    if len(one) <= WIDTH:
        return one
    return f"{name}(\n" + "".join(f"    {p},\n" for p in parts) + f"){tail}"


# --------------------------------------------------------------------------- docstrings
def _inline(text: str) -> str:
    """Sphinx roles and double-backtick literals as Markdown code spans, outside code fences."""
    parts = re.split(r"(^```.*?^```$)", text, flags=re.S | re.M)
    for i in range(0, len(parts), 2):
        part = ROLE_RE.sub(
            lambda m: f"`{m.group(2).split('.')[-1] if m.group(1) else m.group(2)}`", parts[i]
        )
        parts[i] = re.sub(r"``(.+?)``", r"`\1`", part, flags=re.S)
    return "".join(parts)


def docstring(obj: Any) -> str:
    """A Google-style docstring as Markdown."""
    doc = inspect.getdoc(obj) or ""
    if not doc:
        return ""
    lines = doc.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        m = SECTION_RE.match(line)
        if m:
            out.append(f"**{m.group(1)}:**")
            out.append("")
            i += 1
            items: list[str] = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith(" ")):
                body = lines[i]
                if not body.strip():
                    if i + 1 < len(lines) and lines[i + 1].startswith(" "):
                        i += 1
                        continue
                    break
                indent = len(body) - len(body.lstrip())
                item = ITEM_RE.match(body.strip())
                if (
                    indent <= 4
                    and item
                    and m.group(1) not in ("Example", "Examples", "Note", "Notes")
                ):
                    items.append(f"- `{item.group(1)}`{item.group(2) or ''}: {item.group(3)}")
                elif items and body.strip().startswith("- "):
                    items.append("  " + body.strip())  # a list inside an item
                elif items:
                    items[-1] += " " + body.strip()
                else:
                    items.append(f"- {body.strip()}")
                i += 1
            out.extend(items)
            out.append("")
            continue
        if line.rstrip().endswith("::"):
            out.append(line.rstrip()[:-1])
            out.append("")
            i += 1
            block: list[str] = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith(" ")):
                block.append(lines[i])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            while block and not block[0].strip():
                block.pop(0)
            out.append("```")
            out.extend(textwrap.dedent("\n".join(block)).splitlines())
            out.append("```")
            out.append("")
            continue
        if line.startswith("    ") and out and out[-1] and not out[-1].startswith("```"):
            out[-1] += " " + line.strip()  # a continuation indented under a term
        else:
            out.append(line)
        i += 1
    return _inline("\n".join(out).strip()) + "\n"


# --------------------------------------------------------------------------- rendering
def _anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9 -]", "", title.lower()).replace(" ", "-")


def render_object(qualname: str, name: str, obj: Any, members: list[str] | None) -> list[str]:
    out: list[str] = []
    if inspect.isclass(obj):
        kind = "exception" if issubclass(obj, BaseException) else "class"
        base = next(
            (
                b.__name__
                for b in obj.__mro__[1:]
                if b.__module__.startswith("hierzoo") and not b.__name__.startswith("_")
            ),
            None,
        )
        below = f" (a `{base}`)" if base else ""
        out += [f"### `{qualname}`", "", f"*{kind}*{below}", ""]
        own_init = "__init__" in vars(obj) or dataclasses.is_dataclass(obj)
        if kind == "class" and own_init:
            out += ["```python", signature(name, obj), "```", ""]
        out.append(docstring(obj))
        for member, value in class_members(obj, members):
            out += render_member(f"{name}.{member}", value)
        return out
    if inspect.isfunction(obj):
        return [
            f"### `{qualname}`",
            "",
            "```python",
            signature(name, obj),
            "```",
            "",
            docstring(obj),
        ]
    value = repr(obj)
    shown = (
        value
        if len(value) <= WIDTH and " at 0x" not in value
        else f"{type(obj).__name__} (see the source)"
    )
    return [f"### `{qualname}`", "", f"*constant*: `{shown}`", ""]


def render_member(qualname: str, value: Any) -> list[str]:
    if isinstance(value, property):
        return [f"#### `{qualname}`", "", "*property*", "", docstring(value.fget)]
    func = value.__func__ if isinstance(value, (classmethod, staticmethod)) else value
    kind = (
        "classmethod"
        if isinstance(value, classmethod)
        else "staticmethod"
        if isinstance(value, staticmethod)
        else ""
    )
    head = [f"#### `{qualname}`", ""] + ([f"*{kind}*", ""] if kind else [])
    short = qualname.split(".")[-1]
    sig = signature(short, func, drop_first=not isinstance(value, staticmethod))
    return head + ["```python", sig, "```", "", docstring(func)]


def render() -> str:
    sys.path.insert(0, str(ROOT))
    out = [
        "# API reference",
        "",
        "Generated from the signatures and docstrings by `python scripts/gen_api_docs.py`; do not",
        "edit by hand (`tests/test_api_docs.py` fails when this page is stale). Guides: "
        "[embedding.md](embedding.md) (calling hierzoo from your own code), "
        "[models.md](models.md), "
        "[metrics.md](metrics.md), [questions.md](questions.md).",
        "",
    ]
    out += [f"- [{title}](#{_anchor(title)})" for title, *_ in SECTIONS]
    out.append("")
    for title, module_name, names, members in SECTIONS:
        module = importlib.import_module(module_name)
        out += [f"## {title}", ""]
        if names is None and module.__doc__:
            out += [docstring(module), ""]
        for name, obj in exported(module, names):
            qualname = f"{module_name}.{name}" if module_name != "hierzoo" else f"hierzoo.{name}"
            out += render_object(qualname, name, obj, members.get(name))
    text = "\n".join(out)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.rstrip() + "\n"


def missing_annotations() -> list[str]:
    """Public functions and methods of the documented API with a parameter or return value
    without a type hint."""
    missing = []
    for _, module_name, names, members in SECTIONS:
        module = importlib.import_module(module_name)
        for name, obj in exported(module, names):
            targets = []
            if inspect.isfunction(obj):
                targets.append((f"{module_name}.{name}", obj))
            elif inspect.isclass(obj):
                for member, value in class_members(obj, members.get(name)):
                    if isinstance(value, property):
                        value = value.fget
                    func = (
                        value.__func__ if isinstance(value, (classmethod, staticmethod)) else value
                    )
                    targets.append((f"{module_name}.{name}.{member}", func))
            for qualname, func in targets:
                sig = inspect.signature(func)
                for p in list(sig.parameters.values()):
                    if p.name in ("self", "cls"):
                        continue
                    if p.annotation is p.empty:
                        missing.append(f"{qualname}: parameter {p.name!r}")
                if sig.return_annotation is sig.empty and func.__name__ != "__init__":
                    missing.append(f"{qualname}: return value")
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/api.md is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.is_file() or OUT.read_text(encoding="utf-8") != text:
            print(
                f"{OUT.relative_to(ROOT)} is stale: run python scripts/gen_api_docs.py",
                file=sys.stderr,
            )
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
