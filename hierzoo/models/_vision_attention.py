"""Window-batched attention for the vision towers of Qwen2-VL, Qwen2.5-VL and Qwen3-VL.

Under ``sdpa`` or ``eager`` attention, transformers' vision attention of these families splits
the packed patch sequence at ``cu_seqlens`` and runs one attention call per chunk: per window in
Qwen2.5-VL's windowed blocks (about 20 windows of a 500x375 image), per image in the
full-attention blocks. A batch of images makes hundreds of small attention calls per block,
which leaves a GPU waiting on kernel launches. Here the chunks are grouped by length, each group
is gathered into one ``(chunks, heads, length, head_dim)`` batch and runs as ONE call of the
same attention function (one ``scaled_dot_product_attention`` under ``sdpa``), and the results
are put back in the original order. Everything else (qkv projection, rotary embedding, scaling,
dropout, output layout, ``proj``) is the original's, so the output equals the original's up to
floating-point summation order.

The gather indices depend only on the chunk lengths; all windowed blocks of one forward share
one ``cu_seqlens`` tensor and all full-attention blocks another, so they are built once per
distinct ``cu_seqlens`` per forward (and kept for repeated image geometries).

:func:`patch_vision_attention` replaces the ``forward`` of the attention modules of one vision
tower, not of their class: other models in the process and the language model are untouched.
It checks first that the installed transformers still has the loop it replaces (the forward's
signature and lines, and one small forward compared with the original); where it does not, it
warns and leaves the original in place.
"""

from __future__ import annotations

import inspect
import sys
import types
import warnings
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["is_patched", "patch_vision_attention", "unpatch_vision_attention"]

# (module, class) of the vision attention whose non-flash forward loops over cu_seqlens chunks
_TARGETS = (
    ("transformers.models.qwen2_vl.modeling_qwen2_vl", "VisionAttention"),
    ("transformers.models.qwen2_5_vl.modeling_qwen2_5_vl", "Qwen2_5_VLVisionAttention"),
    ("transformers.models.qwen3_vl.modeling_qwen3_vl", "Qwen3VLVisionAttention"),
)
# implementations that take the per-chunk loop (flash attention already runs varlen in one call)
_IMPLEMENTATIONS = ("sdpa", "eager")
# the lines of the original forward that the batched one reproduces
_MARKERS = (
    ".reshape(seq_length, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)",
    "apply_rotary_pos_emb_vision(query_states, key_states, cos, sin)",
    "for q, k, v in zip(*splits)",
    "scaling=self.scaling",
    "attn_output.reshape(seq_length, -1).contiguous()",
    "self.proj(attn_output)",
)
_PARAMETERS = (
    ["self", "hidden_states", "cu_seqlens", "position_embeddings", "max_seqlen", "kwargs"],
    ["self", "hidden_states", "cu_seqlens", "position_embeddings", "kwargs"],
)
_HELPERS = ("apply_rotary_pos_emb_vision", "eager_attention_forward", "ALL_ATTENTION_FUNCTIONS")
_STATE = "_hierzoo_batched_attention"
_checked: dict[type, str | None] = {}


@dataclass(frozen=True)
class _Group:
    """Chunks of one length: ``n`` chunks of ``length`` positions, gathered at ``index``
    (``(n * length,)``), or ``None`` when they are the whole sequence in order."""

    length: int
    n: int
    index: torch.Tensor | None


@dataclass(frozen=True)
class _Plan:
    groups: tuple[_Group, ...]
    inverse: torch.Tensor | None  # concatenated group outputs -> original order; None: in order


def _build_plan(lengths: tuple[int, ...], device: torch.device) -> _Plan:
    sizes = torch.tensor(lengths, dtype=torch.long)
    starts = sizes.cumsum(0) - sizes
    distinct = sorted({n for n in lengths if n > 0})
    if not distinct:
        return _Plan((), None)
    if len(distinct) == 1:
        return _Plan((_Group(distinct[0], sum(1 for n in lengths if n > 0), None),), None)
    groups, order = [], []
    for length in distinct:
        first = starts[sizes == length]
        index = (first[:, None] + torch.arange(length)).reshape(-1)
        order.append(index)
        groups.append(_Group(length, len(first), index.to(device)))
    perm = torch.cat(order)
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(len(perm))
    return _Plan(tuple(groups), inverse.to(device))


class _Plans:
    """Plans of one vision tower, shared by its attention modules: by ``cu_seqlens`` tensor (the
    very object, held weakly, so the windowed blocks of one forward read its lengths once), and
    by chunk lengths and device (for later forwards of the same image geometry)."""

    def __init__(self, keep: int = 64) -> None:
        self._recent: list[tuple[weakref.ref, int | None, _Plan]] = []
        self._by_lengths: OrderedDict[tuple[tuple[int, ...], torch.device], _Plan] = OrderedDict()
        self._keep = keep

    def get(self, cu_seqlens: torch.Tensor) -> _Plan:
        version = None if torch.is_inference(cu_seqlens) else cu_seqlens._version
        for ref, seen, plan in self._recent:
            if ref() is cu_seqlens and seen == version:
                return plan
        lengths = tuple((cu_seqlens[1:] - cu_seqlens[:-1]).tolist())
        key = (lengths, cu_seqlens.device)
        plan = self._by_lengths.pop(key, None) or _build_plan(lengths, cu_seqlens.device)
        self._by_lengths[key] = plan
        while len(self._by_lengths) > self._keep:
            self._by_lengths.popitem(last=False)
        self._recent = [(weakref.ref(cu_seqlens), version, plan), *self._recent[:3]]
        return plan


def _batched_forward(
    self: Any,
    hidden_states: torch.Tensor,
    cu_seqlens: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
    max_seqlen: int | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """The original forward with the per-chunk attention loop replaced by one call per chunk
    length; under other attention implementations (flash), the original forward."""
    impl = self.config._attn_implementation
    if impl not in _IMPLEMENTATIONS:
        return _original(self, hidden_states, cu_seqlens, position_embeddings, max_seqlen, kwargs)
    family = sys.modules[type(self).__module__]
    seq_length = hidden_states.shape[0]
    query, key, value = (
        self.qkv(hidden_states)
        .reshape(seq_length, 3, self.num_heads, -1)
        .permute(1, 0, 2, 3)
        .unbind(0)
    )
    cos, sin = position_embeddings
    query, key = family.apply_rotary_pos_emb_vision(query, key, cos, sin)
    attention = (
        family.eager_attention_forward if impl == "eager" else family.ALL_ATTENTION_FUNCTIONS[impl]
    )
    dropout = 0.0 if not self.training else self.attention_dropout
    plan = getattr(self, _STATE).plans.get(cu_seqlens)
    if not plan.groups:  # no positions at all
        return _original(self, hidden_states, cu_seqlens, position_embeddings, max_seqlen, kwargs)
    outputs = []
    for group in plan.groups:
        q, k, v = (
            (t if group.index is None else t.index_select(0, group.index))
            .reshape(group.n, group.length, self.num_heads, -1)
            .transpose(1, 2)
            for t in (query, key, value)
        )
        out = attention(
            self,
            q,
            k,
            v,
            attention_mask=None,
            scaling=self.scaling,
            dropout=dropout,
            is_causal=False,
            **kwargs,
        )[0]  # (n, length, heads, head_dim)
        outputs.append(out.reshape(group.n * group.length, self.num_heads, -1))
    attn_output = (
        outputs[0] if plan.inverse is None else torch.cat(outputs).index_select(0, plan.inverse)
    )
    attn_output = attn_output.reshape(seq_length, -1).contiguous()
    return self.proj(attn_output)


def _original(
    module: Any,
    hidden_states: torch.Tensor,
    cu_seqlens: torch.Tensor,
    position_embeddings: Any,
    max_seqlen: int | None,
    kwargs: dict[str, Any],
) -> torch.Tensor:
    if max_seqlen is not None:
        kwargs = {**kwargs, "max_seqlen": max_seqlen}
    return getattr(module, _STATE).original(
        hidden_states, cu_seqlens, position_embeddings=position_embeddings, **kwargs
    )


@dataclass
class _State:
    attribute: str  # the attribute replaced: "forward", or accelerate's "_old_forward"
    previous: Any  # its instance value before, None when it was the class's
    original: Any  # the bound forward that ran before
    plans: _Plans


def _target_classes() -> dict[type, str]:
    """The vision attention classes of the families already imported (a model of a family that
    was never imported cannot be in memory)."""
    found = {}
    for module_name, cls_name in _TARGETS:
        module = sys.modules.get(module_name)
        cls = getattr(module, cls_name, None) if module is not None else None
        if isinstance(cls, type):
            found[cls] = module_name
    return found


def _incompatibility(cls: type) -> str | None:
    """Why the batched forward cannot stand in for ``cls.forward`` here, or ``None``."""
    if cls in _checked:
        return _checked[cls]
    family = sys.modules[cls.__module__]
    names = list(inspect.signature(cls.forward).parameters)
    try:
        source = inspect.getsource(cls.forward)
    except (OSError, TypeError):
        source = None
    if names not in [list(p) for p in _PARAMETERS]:
        why = f"its forward takes {names}, expected {_PARAMETERS[0]}"
    elif missing := [h for h in _HELPERS if not hasattr(family, h)]:
        why = f"{cls.__module__} has no {missing}"
    elif source is None:
        why = "the source of its forward cannot be read to check it"
    elif missing := [m for m in _MARKERS if m not in source]:
        why = f"its forward no longer contains {missing}"
    else:
        why = None
    _checked[cls] = why
    return why


def _self_check(module: Any) -> str | None:
    """Run one small forward (chunks of several lengths, two of each) through ``module``, the
    original and the batched way; the reason they differ, or ``None``."""
    weight = module.qkv.weight
    if weight.device.type == "meta":
        return None
    lengths = [3, 5, 3, 2, 5, 4]
    generator = torch.Generator().manual_seed(0)
    cu = torch.tensor([0, *lengths]).cumsum(0).to(weight.device, torch.int32)
    try:  # an attribute or helper that changed name or shape fails here
        head_dim = weight.shape[1] // module.num_heads
        hidden = torch.randn(sum(lengths), weight.shape[1], generator=generator).to(weight)
        angles = torch.rand(sum(lengths), head_dim, generator=generator).to(weight.device)
        rotary = (angles.cos(), angles.sin())
        with torch.no_grad():
            want = getattr(module, _STATE).original(hidden, cu, position_embeddings=rotary)
            got = _batched_forward(module, hidden, cu, position_embeddings=rotary)
    except Exception as e:
        return f"a test forward failed ({type(e).__name__}: {e})"
    if got.shape != want.shape:
        return f"a test forward gives shape {tuple(got.shape)}, the original {tuple(want.shape)}"
    scale = want.float().abs().max().clamp(min=1e-6)
    err = ((got.float() - want.float()).abs().max() / scale).item()
    tol = 1e-4 if weight.dtype == torch.float32 else 5e-2
    if not err <= tol:
        return f"a test forward differs from the original (relative error {err:.3g} > {tol})"
    return None


def patch_vision_attention(tower: torch.nn.Module) -> int:
    """Swap the per-chunk attention loop of the Qwen2-VL / Qwen2.5-VL / Qwen3-VL vision attention
    modules inside ``tower`` for window-batched attention; returns how many were patched.

    Modules under flash attention are left alone (their varlen kernel is one call already), as
    are modules already patched. Where the installed transformers' forward is not the one this
    replaces (another signature, other lines, or a test forward that differs), nothing of that
    class is patched and a ``RuntimeWarning`` says why.
    """
    classes = _target_classes()
    modules = [m for m in tower.modules() if type(m) in classes]
    plans = _Plans()
    patched = 0
    for module in modules:
        cls = type(module)
        if is_patched(module) or module.config._attn_implementation not in _IMPLEMENTATIONS:
            continue
        why = _incompatibility(cls)
        if why is None and "forward" in module.__dict__ and "_old_forward" not in module.__dict__:
            why = "its forward is already replaced on the instance by something else"
        if why is None:
            attribute = "_old_forward" if "_old_forward" in module.__dict__ else "forward"
            previous = module.__dict__.get(attribute)
            original = previous if previous is not None else types.MethodType(cls.forward, module)
            setattr(module, _STATE, _State(attribute, previous, original, plans))
            if patched == 0:
                why = _self_check(module)
            if why is None:
                setattr(module, attribute, types.MethodType(_batched_forward, module))
                patched += 1
            else:
                delattr(module, _STATE)
        if why is not None:
            warnings.warn(
                f"hierzoo keeps transformers' per-window vision attention of {cls.__name__} "
                f"(transformers {sys.modules['transformers'].__version__}): {why}. Results are "
                "unaffected; the vision tower is slower. Pass batched_vision_attention=False to "
                "silence this.",
                RuntimeWarning,
                stacklevel=2,
            )
            break
    return patched


def unpatch_vision_attention(tower: torch.nn.Module) -> int:
    """Put back the original forward of every module patched inside ``tower``; returns how many."""
    n = 0
    for module in tower.modules():
        state = module.__dict__.get(_STATE)
        if state is None:
            continue
        if state.previous is None:
            delattr(module, state.attribute)
        else:
            setattr(module, state.attribute, state.previous)
        delattr(module, _STATE)
        n += 1
    return n


def is_patched(module: torch.nn.Module) -> bool:
    """Whether ``module`` runs the window-batched attention."""
    return _STATE in module.__dict__
