"""The machinery every CLIP-style family shares: text embeddings (cached), the image pipeline,
scoring by one matrix product, answers by a gather, and features of the image tower.

Every node name is embedded once per (model, templates) and cached in memory and on disk; every
image is encoded once; all levels of all images are then one matrix product, and all questions
of a batch one matrix product and a gather.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from hierzoo._prompt_texts import check_templates
from hierzoo.images import (
    ImageInput,
    PipelineStats,
    TensorPreprocess,
    as_list,
    iterate_images,
    iterate_images_on_device,
    prefetch,
    split_transform,
    tensor_decode_split,
    unreproducible_step,
)
from hierzoo.models._factory import resolve_dtype
from hierzoo.models._registry import PAPER_TEMPLATE, ModelSpec, model_fingerprint
from hierzoo.models.base import HierClassifier, Protocol, check_batch_size, checked_questions
from hierzoo.models.clip._features import _ClipFeaturesMixin, _progress
from hierzoo.models.clip._text_cache import TextEmbeddingCache
from hierzoo.models.outputs import Answers, NodeScores
from hierzoo.taxonomy import as_taxonomy

if TYPE_CHECKING:
    from hierzoo.tasks import Question
    from hierzoo.taxonomy import Taxonomy

__all__ = ["ClipClassifier"]


class ClipClassifier(_ClipFeaturesMixin, HierClassifier):
    """Shared machinery of the CLIP family; subclasses load the model and encode.

    Hooks: :meth:`_encode_images` (a preprocessed batch -> ``(B, D)``), :meth:`_encode_texts`
    (strings -> ``(T, D)``), ``transform`` (PIL image -> tensor, picklable for DataLoader
    workers), ``logit_scale`` and ``logit_bias`` (the model's own), ``score_kind``.

    Image pipeline options (constructor keywords, also attributes): ``num_workers``;
    ``decode_on_device`` (JPEGs decoded, resized and normalised on the GPU);
    ``normalize_on_device`` (workers stop at uint8, ``ToTensor`` + ``Normalize`` run on the
    device; default on CUDA; the same numbers); ``worker_decode="tensor"`` (workers decode with
    torchvision and resize with torch instead of PIL: about 3x less CPU per image, pixels a
    grey level or two from PIL's here and there).
    """

    label = "CLIP-style model"
    options = frozenset(
        {
            "templates",
            "cache_dir",
            "model_key",
            "batch_size",
            "num_workers",
            "decode_on_device",
            "normalize_on_device",
            "worker_decode",
        }
    )
    score_kind = "softmax"
    text_batch_size = 256

    def __init__(
        self,
        *,
        name: str,
        spec: ModelSpec | None,
        device: torch.device,
        dtype: torch.dtype,
        transform: Callable[[Image.Image], torch.Tensor],
        logit_scale: float,
        logit_bias: float,
        model_key: str,
        templates: Sequence[str] | None = None,
        cache_dir: str | Path | bool | None = None,
        batch_size: int = 64,
        num_workers: int | None = None,
        decode_on_device: bool = False,
        normalize_on_device: bool | None = None,
        worker_decode: str = "pil",
    ):
        check_batch_size(batch_size)
        self.name = name
        self.spec = spec
        self.device = device
        self.dtype = dtype
        self.transform = transform
        self.logit_scale = logit_scale
        self.logit_bias = logit_bias
        self.templates = check_templates(
            templates if templates is not None else (spec.templates if spec else PAPER_TEMPLATE)
        )
        self.text_cache = TextEmbeddingCache(f"{model_key}|{self._precision}", cache_dir)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.decode_on_device = decode_on_device
        self.device_preprocess = (
            TensorPreprocess.from_transform(transform) if decode_on_device else None
        )
        if decode_on_device and self.device_preprocess is None:
            raise ValueError(
                f"decode_on_device=True, but the model's preprocessing has a step hierzoo cannot "
                f"run on tensors ({unreproducible_step(transform) or transform!r}); leave it off "
                "(the model's own PIL pipeline is then used)."
            )
        self.normalize_on_device = normalize_on_device
        self.worker_decode = worker_decode  # checked by the property
        self.pipeline_stats = PipelineStats()
        self.texts_encoded = 0
        self.images_encoded = 0
        self.image_encoder_seconds = 0.0
        self.time_image_encoder = False

    @property
    def worker_decode(self) -> str:
        """How image workers decode and resize: ``"pil"`` (the model's own transform) or
        ``"tensor"`` (torchvision decoding, torch resizing; see
        :class:`hierzoo.images.TensorDecode`)."""
        return self._worker_decode

    @worker_decode.setter
    def worker_decode(self, value: str) -> None:
        if value not in ("pil", "tensor"):
            raise ValueError(f"Expected worker_decode 'pil' or 'tensor', but got {value!r}.")
        if value == "tensor" and tensor_decode_split(self.transform) is None:
            step = unreproducible_step(self.transform) or repr(self.transform)
            raise ValueError(
                f"worker_decode='tensor', but the model's preprocessing has a step hierzoo cannot "
                f"run on tensors ({step}); use worker_decode='pil'."
            )
        self._worker_decode = value

    @classmethod
    def _placed(
        cls,
        model: Any,
        text_side: Any,
        transform: Callable[[Image.Image], torch.Tensor],
        *,
        name: str,
        spec: ModelSpec | None,
        model_key: str | None,
        device: torch.device | str | None,
        dtype: str | torch.dtype | None,
        **kw: Any,
    ) -> Any:
        """The classifier around a loaded model (tokenizer or processor in ``text_side``), moved
        to ``device`` (default: where it is) in ``dtype`` (default: its own), with its own logit
        scale and bias; without a ``model_key`` the text cache stays in memory."""
        from hierzoo.models._factory import resolve_device

        cls.check_options(kw, name)
        first = next(model.parameters())
        device = first.device if device is None else device
        device = resolve_device(device) if not isinstance(device, torch.device) else device
        dtype = resolve_dtype(dtype, first.dtype)
        model = model.to(device=device, dtype=dtype).eval()
        if model_key is None:
            kw["cache_dir"] = False
        bias = getattr(model, "logit_bias", None)
        return cls(
            model,
            text_side,
            name=name,
            spec=spec,
            device=device,
            dtype=dtype,
            transform=transform,
            logit_scale=float(model.logit_scale.detach().exp()),
            logit_bias=float(bias.detach()) if bias is not None else 0.0,
            model_key=model_key or f"in-memory:{id(model)}",
            templates=kw.pop("templates", None),
            **kw,
        )

    # ----------------------------------------------------------------- hooks
    def _encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    # ----------------------------------------------------------------- what callers ask
    def _paper_protocol(self, protocol: Protocol) -> Protocol:
        """The paper's CLIP protocol: the file's option order (a CLIP score does not depend on
        it); ``mode``, ``circular``, ``prompt_variant`` (CLIP models use ``templates``) and
        ``answer`` are passed on, for :meth:`check_protocol` to refuse."""
        return replace(protocol, shuffle_options=False)

    def benchmark_forward(
        self, images: Sequence[ImageInput], batch_size: int
    ) -> Callable[[], Any] | None:
        """The image encoder alone on ``batch_size`` images preprocessed by the model's own
        transform, already on the device."""
        batch = [
            x if isinstance(x, torch.Tensor) else self.transform(_as_pil(x))
            for x in list(images)[:batch_size]
        ]
        pixels = torch.stack(batch).to(self.device, self.dtype)
        return lambda: self.encode_pixels(pixels)

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` image features (not normalised) of a preprocessed ``(B, C, H, W)`` batch on
        the device, under the classifier's autocast and inference mode."""
        with torch.inference_mode(), self._autocast():
            return self._encode_images(pixels)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """``(T, D)`` text features (not normalised) of strings, as they are (no template),
        under the classifier's autocast and inference mode."""
        with torch.inference_mode(), self._autocast():
            return self._encode_texts(texts)

    # ----------------------------------------------------------------- shared machinery
    @property
    def paper_autocast(self) -> torch.dtype | None:
        """The autocast dtype of float32 weights on CUDA: the zoo spec's ``autocast`` (the
        paper's precision for its checkpoints: float16 for OpenCLIP ViT-L/14 under its script's
        ``torch.autocast("cuda")``, none for SigLIP), bfloat16 for other models; ``None``: no
        autocast."""
        name = self.spec.autocast if self.spec is not None else "bfloat16"
        return getattr(torch, name) if name is not None else None

    def _autocast_dtype(self) -> torch.dtype | None:
        if self.device.type == "cuda" and self.dtype == torch.float32:
            return self.paper_autocast
        return None

    @property
    def _precision(self) -> str:
        autocast = self._autocast_dtype()
        short = {torch.bfloat16: "bf16", torch.float16: "fp16"}
        tail = f"+{short[autocast]}-autocast" if autocast is not None else ""
        return f"{str(self.dtype).replace('torch.', '')}{tail}"

    def _autocast(self):
        autocast = self._autocast_dtype()
        if autocast is not None:
            return torch.autocast("cuda", dtype=autocast)
        return torch.autocast(self.device.type, enabled=False)

    @torch.inference_mode()
    def text_embeddings(
        self,
        names: Sequence[str],
        templates: Sequence[str] | None = None,
        ranks: Sequence[str | None] | None = None,
    ) -> torch.Tensor:
        """``(len(names), D)`` unit-norm embeddings on the model's device: each name's templates
        embedded, averaged and renormalised. Cached; only names never seen are encoded.

        ``ranks`` fills ``{rank}`` in rank-aware templates such as ``"a photo of the {rank} {}."``.
        """
        templates = check_templates(templates) if templates is not None else self.templates
        uses_rank = any("{rank}" in t for t in templates)
        if uses_rank and (ranks is None or any(r is None for r in ranks)):
            raise ValueError(
                f"Templates {templates!r} use {{rank}}, but the taxonomy has no rank names; use "
                "templates "
                "without {rank} for this taxonomy."
            )
        keys = [
            f"{r}\x1f{n}" if uses_rank else n for n, r in zip(names, ranks or [None] * len(names))
        ]
        table = self.text_cache.table(templates)
        missing = list(dict.fromkeys(k for k in keys if k not in table))
        if missing:
            chunks = []
            for start in range(0, len(missing), self.text_batch_size):
                part = missing[start : start + self.text_batch_size]
                per_template = []
                for t in templates:
                    texts = [_fill(t, k) for k in part]
                    with self._autocast():
                        emb = self._encode_texts(texts).float()
                    per_template.append(torch.nn.functional.normalize(emb, dim=-1))
                    self.texts_encoded += len(texts)
                mean = torch.stack(per_template).mean(0)
                chunks.append(torch.nn.functional.normalize(mean, dim=-1))
            emb = torch.cat(chunks)
            bad = ~torch.isfinite(emb).all(dim=1)
            if bad.any():
                shown = [missing[i] for i in bad.nonzero()[:3, 0].tolist()]
                raise ValueError(
                    f"The text embeddings of {int(bad.sum())} of {len(missing)} names by "
                    f"{self.name!r} are not finite (NaN or infinity; the first: {shown}): the "
                    "model's text tower gives no usable numbers. Check its weights and "
                    f"precision ({self._precision}; float16 overflows in some text towers: try "
                    "dtype='float32' without a float16 autocast)."
                )
            self.text_cache.add(templates, missing, emb)
        return torch.stack([table[k] for k in keys]).to(self.device)

    def _check_tensors(self, items: Sequence[ImageInput | None]) -> None:
        """Preprocessed image tensors must be what the model's transform makes.

        Raises:
            ValueError: a tensor of another shape, or not floating point, naming its position.
        """
        tensors = [(i, x) for i, x in enumerate(items) if isinstance(x, torch.Tensor)]
        if not tensors:
            return
        from PIL import Image

        want = tuple(self.transform(Image.new("RGB", (32, 32))).shape)
        for i, x in tensors:
            if tuple(x.shape) != want or not x.is_floating_point():
                raise ValueError(
                    f"Expected preprocessed image tensors of shape {want} in floating point (what "
                    f"this model's transform makes), but image {i} is {tuple(x.shape)} "
                    f"{str(x.dtype).replace('torch.', '')}; pass paths or PIL images and the model "
                    "preprocesses them."
                )

    def _stream_pixels(
        self, items: list[ImageInput | None], batch_size: int | None
    ) -> Iterator[tuple[list[int], torch.Tensor | None, dict[int, str]]]:
        """Per batch: input positions, the preprocessed ``(B, C, H, W)`` pixels on the device in
        the model's dtype (``None`` when every image of the batch failed), failures."""
        cuda = self.device.type == "cuda"
        bs = batch_size or self.batch_size
        self._check_tensors(items)
        split = None
        if self.device_preprocess is not None:
            batches = prefetch(
                lambda: iterate_images_on_device(
                    items,
                    self.device_preprocess,
                    bs,
                    self.device,
                    num_workers=self.num_workers,
                    fallback=self.transform,
                    stats=self.pipeline_stats,
                ),
                self.device,
            )
        else:
            split = self._split_transform(items)
            batches = iterate_images(
                items,
                split[0] if split else self.transform,
                bs,
                num_workers=self.num_workers,
                pin_memory=cuda,
                place=lambda t: t.to(self.device, non_blocking=cuda),
            )
        for batch in self.pipeline_stats.waited(batches):
            self.pipeline_stats.batches += 1
            pixels = None
            if batch.indices:
                pixels = (
                    batch.data if isinstance(batch.data, torch.Tensor) else torch.stack(batch.data)
                )
                pixels = pixels.to(self.device, non_blocking=cuda)
                if split is not None:
                    pixels = split[1](pixels)
                if pixels.dtype != self.dtype:
                    pixels = pixels.to(self.dtype)
            yield batch.indices, pixels, batch.failed

    def _split_transform(
        self, items: Sequence[ImageInput | None]
    ) -> tuple[Callable, Callable] | None:
        """The transform as a uint8 half for the workers and a float half for the device: with
        ``worker_decode="tensor"`` torchvision decoding and torch resizing; else, when
        ``normalize_on_device`` (default: on CUDA) and the transform splits, its own PIL steps.
        Never when some inputs are already preprocessed tensors."""
        if any(isinstance(x, torch.Tensor) for x in items):
            return None
        if self.worker_decode == "tensor":
            return tensor_decode_split(self.transform)
        on = (
            self.device.type == "cuda"
            if self.normalize_on_device is None
            else self.normalize_on_device
        )
        return split_transform(self.transform) if on else None

    def _stream_images(
        self, items: list[ImageInput | None], batch_size: int | None
    ) -> Iterator[tuple[list[int], torch.Tensor | None, dict[int, str]]]:
        """Per batch: input positions, ``(B, D)`` unit-norm embeddings on the device, failures."""
        cuda = self.device.type == "cuda"
        for indices, pixels, failed in self._stream_pixels(items, batch_size):
            emb = None
            if pixels is not None:
                start = time.perf_counter()
                with torch.inference_mode(), self._autocast():
                    emb = torch.nn.functional.normalize(self._encode_images(pixels).float(), dim=-1)
                if self.time_image_encoder and cuda:
                    torch.cuda.synchronize(self.device)
                self.image_encoder_seconds += time.perf_counter() - start
                self.images_encoded += len(indices)
            yield indices, emb, failed

    def encode_images(
        self,
        images: ImageInput | Sequence[ImageInput | None],
        *,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> tuple[torch.Tensor, list[str | None]]:
        """``(N, D)`` unit-norm float32 image embeddings on the model's device (NaN rows for
        images that failed) and the per-image errors. Decoding and preprocessing run in
        DataLoader workers; on CUDA, pinned memory, non-blocking copies and the model's autocast
        (:attr:`paper_autocast`)."""
        items, _ = as_list(images) if not isinstance(images, list) else (images, False)
        out: torch.Tensor | None = None
        errors: list[str | None] = [None] * len(items)
        bar = _progress(len(items), "images", progress)
        for indices, emb, failed in self._stream_images(items, batch_size):
            for i, err in failed.items():
                errors[i] = err
            if emb is not None:
                if out is None:
                    out = torch.full((len(items), emb.shape[1]), float("nan"), device=self.device)
                out[torch.as_tensor(indices, device=self.device)] = emb
            bar.update(len(indices) + len(failed))
        bar.close()
        if out is None:
            out = torch.full((len(items), self._embed_dim()), float("nan"), device=self.device)
        return out, errors

    def _embed_dim(self) -> int:
        return int(self.text_embeddings(["x"]).shape[1])

    def _logits(self, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * img @ txt.T + self.logit_bias

    def _probs(self, logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        if self.score_kind == "sigmoid":
            return torch.sigmoid(logits).masked_fill(~valid, float("nan"))
        return torch.softmax(logits.masked_fill(~valid, float("-inf")), dim=-1).masked_fill(
            ~valid, float("nan")
        )

    def score_nodes(
        self,
        images: ImageInput | Sequence[ImageInput],
        taxonomy: Taxonomy,
        *,
        batch_size: int | None = None,
        progress: bool = False,
        templates: Sequence[str] | None = None,
    ) -> NodeScores:
        """``logit_scale * cos(image, node) + logit_bias`` for every node: one matrix product."""
        taxonomy = as_taxonomy(taxonomy)
        check_batch_size(batch_size)
        items, _ = as_list(images)
        ranks = [taxonomy.rank(int(lv)) for lv in taxonomy.level] if taxonomy.ranks else None
        txt = self.text_embeddings(list(taxonomy.names), templates, ranks)
        img, errors = self.encode_images(items, batch_size=batch_size, progress=progress)
        with torch.inference_mode():
            logits = self._logits(img, txt).float().cpu()
        return NodeScores(logits=logits, kind=self.score_kind, taxonomy=taxonomy, errors=errors)

    def check_protocol(self, protocol: Protocol) -> None:
        super().check_protocol(protocol)
        _check_clip_protocol(protocol)
        _protocol_ranks(protocol, protocol.templates or self.templates)

    def _answer_plan(
        self, questions: Sequence[Question], protocol: Protocol
    ) -> tuple[np.ndarray, torch.Tensor, list[Any], list[int]]:
        """Option index ``(N, L, C)`` into the distinct (option, rank) texts, their embeddings,
        the distinct images and each question's slot among them."""
        _check_clip_protocol(protocol)
        if not questions:
            raise ValueError("Expected at least one question, but got none.")
        for q in questions:
            for k in range(q.n_levels):
                if q.answers[k] is not None:
                    q.answer_index(k)  # raises QuestionError naming the value
        ranks = _protocol_ranks(protocol, protocol.templates or self.templates)
        width = max(q.n_levels for q in questions)
        n_opt = max((len(c) for q in questions for c in q.choices), default=0)
        vocab: dict[tuple[str, str | None], int] = {}
        index = np.full((len(questions), width, n_opt), -1, dtype=np.int64)
        for i, q in enumerate(questions):
            for k, opts in enumerate(q.choices):
                if q.answers[k] is None:
                    continue
                lev = protocol.first_level + k
                rank = ranks[lev] if ranks and lev < len(ranks) else None
                for j, o in enumerate(opts):
                    index[i, k, j] = vocab.setdefault((o, rank), len(vocab))
        keys = list(vocab)
        txt = self.text_embeddings(
            [n for n, _ in keys], protocol.templates, [r for _, r in keys] if ranks else None
        )
        items, slot = _unique_images(questions)
        return index, txt, items, slot

    def _answers(
        self,
        questions: Sequence[Question],
        index: np.ndarray,
        img: torch.Tensor,
        txt: torch.Tensor,
        errors: list[str | None],
        protocol: Protocol,
    ) -> Answers:
        """One matrix product of the images against the option texts, and a gather."""
        gather = torch.from_numpy(index).to(self.device)
        valid = gather >= 0
        with torch.inference_mode():
            logits = self._logits(img, txt)
            picked = torch.gather(logits, 1, gather.clamp(min=0).view(len(questions), -1)).view(
                gather.shape
            )
            probs = self._probs(picked.float(), valid)
            choice = picked.masked_fill(~valid, float("-inf")).argmax(-1)
        choice = choice.cpu().numpy()
        asked = valid.any(-1).cpu().numpy()
        failed = np.array([e is not None for e in errors], dtype=bool)
        choice[~asked | failed[:, None]] = -1
        probs = probs.cpu().numpy().astype(np.float32)
        probs[failed] = np.nan
        return Answers(
            choice=choice,
            probs=probs,
            options=[
                [list(c) if q.answers[k] is not None else [] for k, c in enumerate(q.choices)]
                for q in questions
            ],
            errors=list(errors),
            extra={
                "templates": list(protocol.templates or self.templates),
                "score": self.score_kind,
            },
        )

    def iter_answers(
        self,
        questions: Sequence[Question],
        *,
        protocol: Protocol | None = None,
        batch_size: int | None = None,
        chunk_size: int = 256,
    ) -> Iterator[tuple[list[int], Answers]]:
        """Stream answers batch by batch from one image loader: the option texts are embedded
        first (once), then each batch of images answers the questions whose image it completes."""
        questions, protocol = checked_questions(questions, protocol)
        protocol = protocol or Protocol()
        index, txt, items, slot = self._answer_plan(questions, protocol)
        dim = txt.shape[1]
        img = torch.full((len(items), dim), float("nan"), device=self.device)
        img_errors: list[str | None] = [None] * len(items)
        done = np.zeros(len(items), dtype=bool)
        next_q = 0
        for indices, emb, failed in self._stream_images(items, batch_size):
            if emb is not None:
                img[torch.as_tensor(indices, device=self.device)] = emb
            for i, err in failed.items():
                img_errors[i] = err
            done[indices] = True
            done[list(failed)] = True
            start = next_q
            while next_q < len(questions) and done[slot[next_q]]:
                next_q += 1
            if next_q > start:
                pos = list(range(start, next_q))
                sl = torch.as_tensor([slot[p] for p in pos], device=self.device)
                yield (
                    pos,
                    self._answers(
                        [questions[p] for p in pos],
                        index[start:next_q],
                        img[sl],
                        txt,
                        [img_errors[slot[p]] for p in pos],
                        protocol,
                    ),
                )

    def answer(
        self,
        questions: Sequence[Question],
        *,
        protocol: Protocol | None = None,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> Answers:
        """Every level of every question: one matrix product per batch of images against the
        question set's distinct option names, and a gather of each question's options. Options
        are asked in the file's order (the paper's CLIP protocol)."""
        questions, protocol = checked_questions(questions, protocol)
        protocol = protocol or Protocol()
        index, txt, items, slot = self._answer_plan(questions, protocol)
        img, img_errors = self.encode_images(items, batch_size=batch_size, progress=progress)
        sl = torch.as_tensor(slot, device=self.device)
        return self._answers(
            questions, index, img[sl], txt, [img_errors[s] for s in slot], protocol
        )


def _fill(template: str, key: str) -> str:
    rank, _, name = key.rpartition("\x1f")
    return (
        template.replace("{rank}", rank).format(name)
        if "{rank}" in template
        else template.format(name)
    )


def _check_clip_protocol(protocol: Protocol) -> None:
    if protocol.answer != "logits":
        raise ValueError(
            f"--answer {protocol.answer} is for vision LLMs: a CLIP model answers by comparing "
            "embeddings, with nothing to generate; leave --answer at logits."
        )
    if protocol.mode != "image":
        raise ValueError(
            f"Protocol mode {protocol.mode!r} (--mode) needs a language model; CLIP models answer "
            "in image mode only."
        )
    if protocol.circular:
        raise ValueError(
            "Circular mode (--circular) is for vision LLMs: a CLIP model's scores do not depend "
            "on option order."
        )
    if protocol.prompt_variant is not None:
        raise ValueError(
            "`prompt_variant` (--prompt-variant) selects a vision-LLM prompt; CLIP models use "
            "`templates` (--template)."
        )


def _protocol_ranks(protocol: Protocol, templates: Sequence[str]) -> list[str] | None:
    """The rank name of each taxonomy level when ``templates`` use ``{rank}``, else ``None``."""
    if not any("{rank}" in t for t in templates):
        return None
    ranks = protocol.ranks()
    if ranks is None:
        raise ValueError(
            f"Rank-aware templates need a taxonomy with rank names; {protocol.taxonomy_name!r} "
            "has none (set Protocol.taxonomy to cub200, inat21-animal, inat21-plant or a Taxonomy "
            "with ranks, or drop {rank})."
        )
    return ranks


def _text_cache_key(spec: ModelSpec, cache_dir: str | Path | bool | None) -> str | None:
    """The text-embedding cache's model key of a spec: its content fingerprint
    (:func:`~hierzoo.models._registry.model_fingerprint`); ``None`` (memory only) without a disk
    cache, so nothing is hashed for nothing."""
    if cache_dir is False:
        return None
    digests = cache_dir if isinstance(cache_dir, (str, Path)) else None
    return model_fingerprint(spec, digests)


def _as_pil(image: Any) -> Image.Image:
    """A path or PIL image as an RGB PIL image."""
    return (image if isinstance(image, Image.Image) else Image.open(image)).convert("RGB")


def _unique_images(questions: Sequence[Question]) -> tuple[list[Any], list[int]]:
    """Distinct images of a question set (by path) and each question's slot among them."""
    seen: dict[str, int] = {}
    items: list[Any] = []
    slot = []
    for q in questions:
        src = q.path if q.path is not None else (q.image if Path(q.image).exists() else None)
        key = str(src) if src is not None else f"\x00missing:{q.image}"
        if key not in seen:
            seen[key] = len(items)
            items.append(src)
        slot.append(seen[key])
    return items, slot
