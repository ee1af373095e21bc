"""The pieces every ``hierzoo`` command shares: option types checked at parse time, deprecated
spellings, option groups common to ``eval``, ``bench`` and ``probe``, and configs built from
the namespace by a dataclass's field names.

One flag, one meaning across commands: ``--model`` a model, ``--images`` a folder of images,
``--out`` a folder, ``--json`` a switch that prints JSON on stdout, ``--no-plots`` a switch,
``--seed`` an integer (default 42). Imports nothing heavy: ``hierzoo models`` and ``--help``
stay fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

T = TypeVar("T")

DTYPES = ("float32", "bfloat16", "float16")
DEVICE_FORMS = "cpu, cuda (the first GPU), cuda:N (the N-th GPU) or mps"
SEED = 42


# --------------------------------------------------------------------------- the parser
class Parser(argparse.ArgumentParser):
    """Errors in one line that names the value and where the options are listed (argparse's
    own prints the whole usage first, fourteen lines for ``eval``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The parser of the command ``name``."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def require(parser: argparse.ArgumentParser, flag: str) -> None:
    """Make an option of a shared group required in this command."""
    next(a for a in parser._actions if flag in a.option_strings).required = True


# --------------------------------------------------------------------------- option types
def _kind(kind: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Name what an option's value is (``tests/test_cli.py`` checks that a flag keeps one kind
    across commands)."""

    def mark(fn: Callable[..., T]) -> Callable[..., T]:
        fn.kind = kind  # type: ignore[attr-defined]
        return fn

    return mark


def _int(value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, but got {value!r}") from None


@_kind("integer >= 1")
def positive_int(value: str) -> int:
    """An integer >= 1."""
    n = _int(value, "an integer >= 1")
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, but got {value!r}")
    return n


@_kind("integer >= 0")
def non_negative_int(value: str) -> int:
    """An integer >= 0."""
    n = _int(value, "an integer >= 0")
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, but got {value!r}")
    return n


@_kind("integer")
def integer(value: str) -> int:
    """Any integer (a seed)."""
    return _int(value, "an integer")


def _float(value: str, what: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, but got {value!r}") from None
    if x != x or x in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected {what}, but got {value!r}")
    return x


@_kind("number in (0, 1)")
def fraction(value: str) -> float:
    """A number strictly between 0 and 1."""
    x = _float(value, "a number in (0, 1)")
    if not 0 < x < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), but got {value!r}")
    return x


@_kind("number >= 0")
def non_negative_float(value: str) -> float:
    """A finite number >= 0."""
    x = _float(value, "a number >= 0")
    if x < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, but got {value!r}")
    return x


@_kind("batch size")
def batch_size(value: str) -> int:
    """One batch size: an integer >= 1."""
    return positive_int(value)


@_kind("batch size")
def batch_sizes(value: str) -> list[int]:
    """One batch size or a comma list of them to sweep, each an integer >= 1."""
    parts = value.split(",")
    try:
        return [positive_int(p.strip()) for p in parts]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a batch size or a comma list of them (integers >= 1, e.g. 64,128), "
            f"but got {value!r}"
        ) from None


@_kind("run pair")
def run_pair(value: str) -> tuple[str, str]:
    """``VLM_RUN=LLM_RUN``: two run directories (``hierzoo report --pair``)."""
    vlm, sep, llm = value.partition("=")
    if not sep or not vlm or not llm:
        raise argparse.ArgumentTypeError(
            f"expected VLM_RUN=LLM_RUN (two run directories), but got {value!r}"
        )
    return vlm, llm


@_kind("image size")
def image_size(value: str) -> tuple[int, int]:
    """``WxH`` in pixels, e.g. ``500x375``."""
    parts = value.lower().split("x")
    try:
        if len(parts) != 2:
            raise argparse.ArgumentTypeError(value)
        w, h = (positive_int(p) for p in parts)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected WIDTHxHEIGHT in pixels (e.g. 500x375), but got {value!r}"
        ) from None
    return w, h


@_kind("device")
def device(value: str) -> str:
    """A device string torch knows (``cpu``, ``cuda``, ``cuda:1`` ...). torch is imported only
    when the option is given."""
    import torch

    try:
        torch.device(value)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a device torch knows; use {DEVICE_FORMS}"
        ) from None
    return value


@_kind("URL")
def api_base(value: str) -> str:
    """An http(s) base URL of a chat-completions server, without trailing slashes."""
    from hierzoo.models.api.request import normalize_api_base

    try:
        return normalize_api_base(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an http(s) URL such as http://HOST:8000/v1, but got {value!r}"
        ) from None


@_kind("environment variable")
def env_name(value: str) -> str:
    """The name of an environment variable (letters, digits and ``_``, not starting with a
    digit). A value that is not one is not echoed: it may be the secret itself."""
    if not value or value[0].isdigit() or not all(c.isalnum() or c == "_" for c in value):
        raise argparse.ArgumentTypeError(
            "expected the NAME of an environment variable (letters, digits and _), such as "
            "OPENAI_API_KEY; export the key in it, never pass the key itself (the value given is "
            "not shown)"
        )
    return value


@_kind("prompt template")
def template(value: str) -> str:
    """:func:`check_template` at parse time."""
    try:
        from hierzoo.prompts import check_template

        return check_template(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


class LazyChoices(Sequence[str]):
    """``choices=`` read from a constant of a module imported on first use, so building the
    parser imports nothing heavy (``hierzoo models`` never imports torch)."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    @property
    def values(self) -> tuple[str, ...]:
        return tuple(getattr(importlib.import_module(self.module), self.name))

    def __getitem__(self, i: Any) -> Any:
        return self.values[i]

    def __len__(self) -> int:
        return len(self.values)

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __contains__(self, value: object) -> bool:
        return value in self.values


# --------------------------------------------------------------------------- deprecated spellings
def deprecation(parser: argparse.ArgumentParser, old: str, new: str) -> None:
    """One line on stderr naming the spelling to use instead."""
    print(f"{parser.prog}: warning: {old} is deprecated; use {new}", file=sys.stderr)


class Deprecated(argparse.Action):
    """An old spelling that stores into the new option's ``dest`` and says so on stderr.
    ``new`` is the spelling to use; with ``nargs=0`` the option is a switch."""

    def __init__(self, option_strings: list[str], dest: str, new: str = "", **kw: Any):
        self.new = new
        self.deprecated = True
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: ANN001
        deprecation(parser, option_string or self.dest, self.new)
        setattr(namespace, self.dest, True if self.nargs == 0 else values)


def deprecated_flag(parser: Any, old: str, new: str, dest: str, **kw: Any) -> argparse.Action:
    """Add ``old`` as a deprecated spelling of the option ``new`` (stored in ``dest``)."""
    return parser.add_argument(
        old,
        action=Deprecated,
        new=new,
        dest=dest,
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,  # kept working, not advertised: docs list the old spellings
        **kw,
    )


class ImagesOrOldCount(argparse.Action):
    """``bench --images``: a folder; an integer is the old spelling of ``--n-images``."""

    kind = "folder"

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: ANN001
        if values.lstrip("+-").isdigit():
            try:
                namespace.n_images = positive_int(values)
            except argparse.ArgumentTypeError as e:
                raise argparse.ArgumentError(self, str(e)) from None
            deprecation(parser, "--images N (a count)", "--n-images N")
        else:
            namespace.images = values


def old_spellings(argv: list[str]) -> list[str]:
    """``bench --json FILE.json``, the old spelling of ``--record FILE.json`` (``--json`` is
    a switch now), rewritten before parsing."""
    if not argv or argv[0] != "bench":
        return argv
    out = list(argv)
    for i, a in enumerate(argv):
        old = a[len("--json=") :] if a.startswith("--json=") else None
        if a == "--json" and i + 1 < len(argv) and argv[i + 1].endswith(".json"):
            old = ""
        if old is not None:
            print(
                "hierzoo bench: warning: --json FILE is deprecated; use --record FILE",
                file=sys.stderr,
            )
            out[i] = f"--record={old}" if old else "--record"
    return out


# --------------------------------------------------------------------------- shared option groups
def model_options(help: str | None = None) -> argparse.ArgumentParser:
    """``--model``: a zoo name, ``hf-hub:org/repo`` or a model directory."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--model",
        metavar="NAME",
        help=help or "zoo name (`hierzoo models`), hf-hub:org/repo, or a model directory",
    )
    return p


def device_options() -> argparse.ArgumentParser:
    """``--device`` and ``--threads``: where the model runs."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("device")
    g.add_argument(
        "--device",
        type=device,
        help=f"{DEVICE_FORMS} (default: the first GPU if there is one, else the CPU)",
    )
    g.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help="CPU threads of torch (default: torch's own)",
    )
    return p


def run_options() -> argparse.ArgumentParser:
    """``--batch-size``, ``--dtype`` and ``--no-progress`` of a run over many images."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("running")
    g.add_argument(
        "--batch-size",
        type=batch_size,
        metavar="N",
        help="images per batch (default: the model's own, sized to the device)",
    )
    g.add_argument(
        "--dtype",
        choices=DTYPES,
        help="weights' dtype (default: the family's: float32 for CLIP models, with bfloat16 "
        "autocast on a GPU; bfloat16 on a GPU and float32 on a CPU for vision LLMs)",
    )
    g.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress bar on stderr",
    )
    return p


def pipeline_options() -> argparse.ArgumentParser:
    """How images reach the model: workers, decoding on the device, the vision tower's
    attention."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("image pipeline")
    g.add_argument(
        "--num-workers",
        type=non_negative_int,
        metavar="N",
        help="image decoding workers, 0 for none (with --decode-on-device: threads reading the "
        "files)",
    )
    g.add_argument(
        "--decode-on-device",
        action="store_true",
        help="CLIP models: decode JPEGs on the GPU (nvJPEG)",
    )
    g.add_argument(
        "--worker-decode",
        choices=["pil", "tensor"],
        help="CLIP models: how workers decode and resize: PIL (default, the paper's pixels) or "
        "torchvision + torch (about 3x less CPU per image, pixels within a few grey levels)",
    )
    g.add_argument(
        "--no-batched-vision-attention",
        dest="batched_vision_attention",
        action="store_false",
        help="Qwen-VL: keep transformers' per-window attention loop in the vision tower",
    )
    return p


def seed_option(parser: Any, what: str) -> None:
    """``--seed``: an integer, 42 by default (the paper's) in every command."""
    parser.add_argument(
        "--seed",
        type=integer,
        default=SEED,
        metavar="N",
        help=f"seed of {what} (default {SEED}, as the paper)",
    )


def no_plots_option(parser: Any, what: str) -> None:
    """``--no-plots`` (``--no-plot`` a deprecated spelling)."""
    parser.add_argument("--no-plots", action="store_true", help=f"no {what} (no matplotlib needed)")
    deprecated_flag(parser, "--no-plot", "--no-plots", dest="no_plots", nargs=0)


# --------------------------------------------------------------------------- configs
def _nearest_existing(p: Path) -> Path | None:
    """The closest path above ``p`` that exists: a folder, or a file standing in the way."""
    return next((a for a in p.parents if a.exists()), None)


def check_output_file(path: str, flag: str) -> None:
    """Stop before any work when ``path`` cannot be written as a file, naming the flag.

    Raises:
        ValueError: ``path`` is a folder, lies under a file, or its folder is not writable.
    """
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{flag} {path!r} is a folder; give a file name ({p / 'record.json'}).")
    parent = _nearest_existing(p)
    if parent is not None and not parent.is_dir():
        raise ValueError(
            f"{flag} {path!r} lies under {str(parent)!r}, a file; give a path in a folder."
        )
    if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path!r}: {str(parent)!r} is not writable; give another path.")


def check_output_dir(path: str, flag: str) -> None:
    """Stop before any work when ``path`` cannot be a folder to write in, naming the flag.

    Raises:
        ValueError: ``path`` is a file or lies under one.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{flag} {path!r} is a file; give a folder (it is created if needed).")
    parent = _nearest_existing(p)
    if parent is not None and not parent.is_dir():
        raise ValueError(f"{flag} {path!r} lies under {str(parent)!r}, a file; give a folder.")


def config_from(cls: type[T], args: argparse.Namespace, **values: Any) -> T:
    """``cls(...)`` from the namespace entries named like the dataclass's fields (``None``
    leaves a field at its default), plus ``values``."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    return cls(**{**given, **values})
