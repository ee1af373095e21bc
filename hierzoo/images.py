"""Image inputs: paths, PIL images or preprocessed tensors, loaded in DataLoader workers.

A bad image (missing, empty, corrupt, over PIL's decompression-bomb limit) never stops a batch:
its slot carries an error message naming the file and the fix, and the other images go on.
Reading one file lives in :mod:`hierzoo._image_io` (size limit, bit depth), understanding a
model's preprocessing in :mod:`hierzoo._transforms`; both are re-exported here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from hierzoo._image_io import (
    WATCHER_PREFIX,
    ImageError,
    ImageTooLarge,
    check_pixels,
    image_header,
    load_image,
    quiet_torchvision,
)
from hierzoo._image_io import decode_tensor as _decode_tensor
from hierzoo._image_io import existing_file as _existing_file
from hierzoo._image_io import pil_to_tensor as _pil_to_tensor
from hierzoo._transforms import (
    HostGeometry,
    Normalize,
    TensorDecode,
    TensorPreprocess,
    split_transform,
    tensor_decode_split,
    unreproducible_step,
)

__all__ = [
    "CHUNK",
    "HostGeometry",
    "ImageBatch",
    "ImageDataset",
    "ImageError",
    "ImageInput",
    "ImageTooLarge",
    "Normalize",
    "PipelineStats",
    "TensorDecode",
    "TensorPreprocess",
    "as_list",
    "default_workers",
    "die_with_parent",
    "image_header",
    "iterate_images",
    "iterate_images_on_device",
    "load_image",
    "prefetch",
    "read_bytes",
    "rebatch",
    "split_transform",
    "tensor_decode_split",
    "unreproducible_step",
]

ImageInput = str | Path | Image.Image | torch.Tensor


def as_list(images: ImageInput | Sequence[ImageInput]) -> tuple[list[ImageInput], bool]:
    """``(items, single)``: a list of images, and whether one image (not a list) was given.

    A 3-D tensor is one preprocessed image; a 4-D tensor is a batch of them. A NumPy array is
    pixels: ``(H, W)`` or ``(H, W, C)`` uint8 is one image, ``(N, H, W, C)`` a batch (each
    becomes a PIL image).
    """
    if isinstance(images, (str, Path, Image.Image)):
        return [images], True
    if isinstance(images, torch.Tensor):
        if images.ndim == 3:
            return [images], True
        if images.ndim == 4:
            return list(images), False
        raise ValueError(
            "Expected a (C, H, W) or (N, C, H, W) image tensor, but got shape "
            f"{tuple(images.shape)}."
        )
    if isinstance(images, np.ndarray):
        if images.ndim in (2, 3):
            return [_from_array(images)], True
        if images.ndim == 4:
            return [_from_array(a) for a in images], False
        raise ValueError(
            "Expected an (H, W) or (H, W, C) image array, or an (N, H, W, C) batch, but got "
            f"shape {images.shape}."
        )
    items = list(images)
    if not items:
        raise ValueError("Expected at least one image, but got an empty sequence.")
    if any(isinstance(x, np.ndarray) for x in items):
        items = [_from_array(x) if isinstance(x, np.ndarray) else x for x in items]
    return items, False


def _from_array(a: np.ndarray) -> Image.Image:
    """An ``(H, W)`` or ``(H, W, C)`` uint8 array (C = 1, 3 or 4) as a PIL image."""
    if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
        raise ValueError(
            f"Expected an image array of shape (H, W) or (H, W, C) with C in 1, 3, 4 and dtype "
            f"uint8, but got {a.shape} {a.dtype}; convert it (e.g. "
            "Image.fromarray((x * 255).astype(np.uint8)) for floats in [0, 1])."
        )
    return Image.fromarray(a[..., 0] if a.ndim == 3 and a.shape[2] == 1 else a)


class ImageDataset(torch.utils.data.Dataset):
    """Items decoded and transformed on access; failures come back as messages, not exceptions.

    ``transform`` maps a PIL image to what the model eats (a tensor, or the PIL image itself
    when ``None``); a transform with ``reads_files = True`` (:class:`TensorDecode`) is given
    the path itself and does its own reading. Tensors are taken as already preprocessed.
    """

    def __init__(
        self,
        items: Sequence[ImageInput | None],
        transform: Callable[[Image.Image], Any] | None = None,
    ):
        self.items = items
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[int, Any, str | None]:
        item = self.items[index]
        if item is None:
            return index, None, "the image path did not resolve to a file (check --image-root)"
        if isinstance(item, torch.Tensor):
            if item.is_floating_point() and not torch.isfinite(item).all():
                return index, None, "the image tensor holds NaN or infinity"
            return index, item, None
        try:
            return index, self._read(item), None
        except Exception as e:
            return index, None, str(e)

    def _read(self, item: str | Path | Image.Image) -> Any:
        if getattr(self.transform, "reads_files", False):
            return self.transform(item)
        img = load_image(item)
        return self.transform(img) if self.transform is not None else img


@dataclass
class ImageBatch:
    """A batch of decoded images: their positions in the input, the stacked tensor (or a list
    of PIL images), and the positions and messages of the images that failed."""

    indices: list[int]
    data: Any
    failed: dict[int, str]


def _collate(rows: list[tuple[int, Any, str | None]]) -> ImageBatch:
    ok = [(i, x) for i, x, err in rows if err is None]
    failed = {i: err for i, _, err in rows if err is not None}
    data: Any = [x for _, x in ok]
    if data and all(isinstance(x, torch.Tensor) for x in data):
        shapes = {tuple(x.shape) for x in data}
        if len(shapes) == 1:
            data = torch.stack(data)
    return ImageBatch([i for i, _ in ok], data, failed)


def default_workers(n_items: int) -> int:
    """DataLoader workers: none for a handful of images, else one per core but one (at most
    32, and no more than there are chunks of :data:`CHUNK` images to load): decoding a 500x375
    JPEG and resizing it costs a core about 5-8 ms, so a GPU that encodes 2,000 images/s needs
    10-16 of them."""
    if n_items < 64:
        return 0
    return max(0, min(32, (os.cpu_count() or 1) - 1, -(-n_items // CHUNK)))


CHUNK = 32
"""Images a worker loads per task. Workers load chunks, not whole batches, so that a batch of
512 is decoded by many workers at once: the first batch arrives after ``512 / workers`` decodes,
not 512, and the last batches do not wait on one busy worker."""


def _chunks(n_items: int, batch_size: int, chunk: int) -> tuple[list[list[int]], list[int]]:
    """Index chunks of at most ``chunk`` items that never straddle a batch boundary, and how
    many chunks make up each batch (so batches are exactly those of a ``batch_size`` loader)."""
    chunks: list[list[int]] = []
    per_batch: list[int] = []
    for start in range(0, n_items, batch_size):
        end = min(start + batch_size, n_items)
        parts = [list(range(a, min(a + chunk, end))) for a in range(start, end, chunk)]
        chunks += parts
        per_batch.append(len(parts))
    return chunks, per_batch


def _merge(parts: list[ImageBatch]) -> ImageBatch:
    """Chunks of one batch as one batch: tensors concatenated (where they already are, e.g. on
    the device), anything else as a list."""
    indices = [i for c in parts for i in c.indices]
    failed = {k: v for c in parts for k, v in c.failed.items()}
    data = [c.data for c in parts if c.indices]
    if len(data) == 1:
        return ImageBatch(indices, data[0], failed)
    if (
        data
        and all(isinstance(d, torch.Tensor) for d in data)
        and len({tuple(d.shape[1:]) for d in data}) == 1
    ):
        return ImageBatch(indices, torch.cat(data), failed)
    return ImageBatch(indices, [x for d in data for x in d], failed)


def rebatch(
    chunks: Iterator[ImageBatch],
    per_batch: Sequence[int],
    place: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[ImageBatch]:
    """Chunks regrouped into batches, ``per_batch[k]`` chunks for batch ``k``; ``place`` moves
    each chunk's stacked tensor (to the device, say) before the batch is concatenated, so that
    the concatenation happens there and not in host memory."""
    counts = iter(per_batch)
    want = next(counts, 0)
    parts: list[ImageBatch] = []
    for chunk in chunks:
        if place is not None and isinstance(chunk.data, torch.Tensor):
            chunk = ImageBatch(chunk.indices, place(chunk.data), chunk.failed)
        parts.append(chunk)
        if len(parts) == want:
            yield _merge(parts)
            parts = []
            want = next(counts, 0)
    if parts:
        yield _merge(parts)


def iterate_images(
    items: Sequence[ImageInput | None],
    transform: Callable[[Image.Image], Any] | None,
    batch_size: int,
    *,
    num_workers: int | None = None,
    pin_memory: bool = False,
    place: Callable[[torch.Tensor], torch.Tensor] | None = None,
    chunk_size: int | None = None,
) -> Iterator[ImageBatch]:
    """Batches of decoded, transformed images, in input order, decoded in worker processes.

    Workers load chunks of ``chunk_size`` images (default :data:`CHUNK`; the whole batch without
    workers); ``place`` is applied to each chunk's tensor before a batch is put together. The
    workers die with this process (:func:`die_with_parent`).
    """
    workers = default_workers(len(items)) if num_workers is None else num_workers
    chunk = batch_size if workers == 0 else max(1, min(batch_size, chunk_size or CHUNK))
    index_chunks, per_batch = _chunks(len(items), batch_size, chunk)
    loader = torch.utils.data.DataLoader(
        ImageDataset(items, transform),
        batch_sampler=index_chunks,
        num_workers=workers,
        collate_fn=_collate,
        worker_init_fn=die_with_parent,
        pin_memory=pin_memory and torch.cuda.is_available(),
        persistent_workers=False,
        prefetch_factor=_prefetch(workers, batch_size, chunk),
    )
    yield from rebatch(iter(loader), per_batch, place)


def die_with_parent(worker_id: int | None = None) -> None:
    """A loader worker's ``worker_init_fn``: end the worker when the process that started it
    dies, SIGKILL included.

    Without it a worker can outlive a killed parent for good: torch's worker notices its parent
    is gone, but on its way out waits to flush decoded images into a pipe nobody reads any more.
    On Linux the kernel kills the worker when its parent dies (``prctl(PR_SET_PDEATHSIG)``; the
    signal comes when the thread that started the loader ends, and hierzoo iterates a loader
    in one thread from start to end). Elsewhere, or when the worker was not forked by its
    parent (``forkserver``), a daemon thread checks the parent once a second. Every loader of
    :func:`iterate_images` uses it; pass it to a ``DataLoader`` of your own.
    """
    import multiprocessing
    import sys

    parent = multiprocessing.parent_process()
    if parent is None or parent.pid is None:
        return
    if sys.platform.startswith("linux") and os.getppid() == parent.pid and _kill_on_parent_death():
        if os.getppid() != parent.pid:  # it died between the fork and the prctl
            os._exit(1)
        return
    _watch_parent(parent.pid)


def _kill_on_parent_death() -> bool:
    import ctypes
    import signal

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    return prctl(1, signal.SIGKILL, 0, 0, 0) == 0  # 1: PR_SET_PDEATHSIG


def _watch_parent(pid: int) -> None:
    import threading
    import time

    adopted_by = os.getppid()

    def alive() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return os.getppid() == adopted_by

    def watch() -> None:
        while alive():
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name=WATCHER_PREFIX, daemon=True).start()


def _prefetch(workers: int, batch_size: int, chunk: int) -> int | None:
    """Chunks each worker keeps in flight: enough for two batches across all workers."""
    if not workers:
        return None
    return max(2, -(-2 * batch_size // (chunk * workers)))


# --------------------------------------------------------------------------- decoding on the device
class _BytesDataset(ImageDataset):
    """Raw file bytes, read in workers (cheap), their header's pixel count checked against
    PIL's limit; decoding happens on the device."""

    def __init__(self, items: Sequence[ImageInput | None]):
        super().__init__(items, None)

    def _read(self, item: str | Path | Image.Image) -> Any:
        if isinstance(item, Image.Image):
            return item
        path = _existing_file(item)
        data = path.read_bytes()
        header = image_header(data)
        if header is not None:
            check_pixels(str(path), header[1], header[2])
        return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _collate_raw(rows: list[tuple[int, Any, str | None]]) -> ImageBatch:
    ok = [(i, x) for i, x, err in rows if err is None]
    return ImageBatch(
        [i for i, _ in ok], [x for _, x in ok], {i: err for i, _, err in rows if err is not None}
    )


@dataclass
class PipelineStats:
    """Where an image pipeline's time went, summed over batches (seconds).

    ``input_wait``: the model's loop waiting for its next batch (the pipeline could not keep
    up); ``read_wait``: the device decoder waiting for file bytes; ``decode``: inside the
    batched JPEG decode calls (synchronous: torchvision's nvJPEG call returns when its stream
    is done). Decoding runs on the prefetch thread, so it overlaps the model's work.
    ``preprocess`` (vision LLMs): inside the processor, on the model's thread.
    """

    input_wait: float = 0.0
    read_wait: float = 0.0
    decode: float = 0.0
    preprocess: float = 0.0
    batches: int = 0

    def reset(self) -> None:
        self.input_wait = self.read_wait = self.decode = self.preprocess = 0.0
        self.batches = 0

    def waited(self, items: Iterator[Any], field: str = "input_wait") -> Iterator[Any]:
        """``items``, adding the time spent waiting for each to ``field``."""
        import time

        while True:
            start = time.perf_counter()
            item = next(items, _END)
            setattr(self, field, getattr(self, field) + time.perf_counter() - start)
            if item is _END:
                return
            yield item


def read_bytes(
    items: Sequence[ImageInput | None], batch_size: int, threads: int
) -> Iterator[ImageBatch]:
    """Batches of raw file bytes (PIL images pass through), read by ``threads`` threads, one
    batch ahead. Threads, not worker processes: reading a file releases the GIL, and worker
    processes cost more to start and to hand bytes back than the reading itself."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    ds = _BytesDataset(items)
    starts = list(range(0, len(items), batch_size))
    if threads <= 0:
        for s in starts:
            yield _collate_raw([ds[i] for i in range(s, min(s + batch_size, len(items)))])
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="hierzoo-read") as pool:

        def submit(s: int) -> list[Any]:
            return [
                pool.submit(ds.__getitem__, i) for i in range(s, min(s + batch_size, len(items)))
            ]

        pending = deque(submit(s) for s in starts[:2])
        ahead = 2
        try:
            while pending:
                futures = pending.popleft()
                if ahead < len(starts):
                    pending.append(submit(starts[ahead]))
                    ahead += 1
                yield _collate_raw([f.result() for f in futures])
        finally:
            for futures in pending:
                for f in futures:
                    f.cancel()


def iterate_images_on_device(
    items: Sequence[ImageInput | None],
    preprocess: TensorPreprocess,
    batch_size: int,
    device: torch.device,
    *,
    num_workers: int | None = None,
    fallback: Callable[[Image.Image], torch.Tensor] | None = None,
    stats: PipelineStats | None = None,
) -> Iterator[ImageBatch]:
    """Batches of preprocessed tensors on ``device``: ``num_workers`` threads read the files'
    bytes and check their headers' pixel counts (:func:`read_bytes`), JPEGs are decoded on the
    device in one batched call (nvJPEG on CUDA), PNGs and WebPs by torchvision on the CPU, then
    resized and normalised there. Other formats and files whose header hierzoo cannot read go
    through PIL (and ``fallback`` when given); a JPEG the decoder rejects is that image's error.
    Time spent waiting and decoding is added to ``stats``."""
    import time

    from torchvision.io import ImageReadMode, decode_jpeg

    stats = stats if stats is not None else PipelineStats()
    threads = min(8, os.cpu_count() or 1) if num_workers is None else num_workers

    def via_pil(image: Image.Image) -> torch.Tensor:
        return (
            fallback(image).to(device) if fallback else preprocess(_pil_to_tensor(image).to(device))
        )

    for batch in stats.waited(read_bytes(items, batch_size, threads), "read_wait"):
        failed = dict(batch.failed)
        kinds = [
            image_header(memoryview(x.numpy()))
            if isinstance(x, torch.Tensor) and x.ndim == 1
            else None
            for x in batch.data
        ]
        jpeg = [j for j, kind in enumerate(kinds) if kind is not None and kind[0] == "jpeg"]
        decoded: dict[int, torch.Tensor] = {}
        if jpeg:
            start = time.perf_counter()
            try:
                with quiet_torchvision():
                    out = decode_jpeg(
                        [batch.data[j] for j in jpeg], mode=ImageReadMode.RGB, device=device
                    )
                decoded.update(zip(jpeg, out))
                stats.decode += time.perf_counter() - start
            except RuntimeError:
                for j in jpeg:  # one bad file fails the batched call: decode one by one
                    try:
                        with quiet_torchvision():
                            decoded[j] = decode_jpeg(
                                batch.data[j], mode=ImageReadMode.RGB, device=device
                            )
                    except RuntimeError as e:
                        failed[batch.indices[j]] = (
                            f"Cannot decode image {str(items[batch.indices[j]])!r} ({e}); the "
                            "file is corrupt."
                        )
        # decoded images of one size are resized together: a few kernels per batch, not one
        # per image
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for j, t in decoded.items():
            if batch.indices[j] not in failed:
                by_shape.setdefault(tuple(t.shape), []).append(j)
        done: dict[int, torch.Tensor] = {}
        for group in by_shape.values():
            out = preprocess(torch.stack([decoded[j] for j in group]))
            done.update(zip(group, out))
        tensors, indices = [], []
        for j, (i, x) in enumerate(zip(batch.indices, batch.data)):
            if i in failed:
                continue
            try:
                if j in done:
                    t = done[j]
                elif isinstance(x, torch.Tensor) and x.ndim == 1 and kinds[j] is not None:
                    try:  # a PNG or WebP whose size the reader checked
                        t = preprocess(_decode_tensor(x).to(device))
                    except RuntimeError:  # a file torchvision rejects: PIL decides
                        t = via_pil(load_image(items[i]))
                elif isinstance(x, torch.Tensor) and x.ndim == 1:  # GIF, TIFF, BMP ...
                    t = via_pil(load_image(items[i]))
                elif isinstance(x, torch.Tensor):
                    t = x.to(device)
                else:
                    t = via_pil(load_image(x))
            except ImageError as e:  # names the file and the fix already
                failed[i] = str(e)
                continue
            except Exception as e:
                failed[i] = (
                    f"Cannot decode image {str(items[i])!r} ({type(e).__name__}: {e}); the file "
                    "is corrupt or not an image."
                )
                continue
            tensors.append(t)
            indices.append(i)
        yield ImageBatch(indices, torch.stack(tensors) if tensors else [], failed)


_END = object()


def prefetch(
    make: Callable[[], Iterator[ImageBatch]], device: torch.device, depth: int = 2
) -> Iterator[ImageBatch]:
    """Run a batch generator in a background thread, ``depth`` batches ahead, so decoding the
    next batch overlaps the model's forward pass on this one. On CUDA the thread's work runs
    on a side stream and each batch is handed over with an event the consumer's stream waits
    on. Errors in the thread are raised here; leaving the loop early stops the thread."""
    import queue
    import threading
    from contextlib import nullcontext

    cuda = device.type == "cuda"
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        stream = torch.cuda.Stream(device) if cuda else None
        try:
            with torch.cuda.stream(stream) if stream is not None else nullcontext():
                for batch in make():
                    event = None
                    if stream is not None:
                        event = torch.cuda.Event()
                        event.record(stream)
                    if not put((batch, event)):
                        return
            put(_END)
        except BaseException as e:  # handed to the consumer, raised there
            put(e)

    thread = threading.Thread(target=work, name="hierzoo-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            got = q.get()
            if got is _END:
                return
            if isinstance(got, BaseException):
                raise got
            batch, event = got
            if event is not None:
                current = torch.cuda.current_stream(device)
                current.wait_event(event)
                if isinstance(batch.data, torch.Tensor):
                    batch.data.record_stream(current)
            yield batch
    finally:
        stop.set()
        thread.join(timeout=5)
