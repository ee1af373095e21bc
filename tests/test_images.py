"""Image loading: chunked workers regrouped into the same batches, and the uint8 / float split
of CLIP transforms, checked against the plain one-batch-per-worker, float-in-workers pipeline."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from hierzoo.images import (
    CHUNK,
    ImageBatch,
    _chunks,
    iterate_images,
    load_image,
    rebatch,
    split_transform,
)


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(1)
    out = []
    for i in range(23):
        w, h = int(rng.integers(30, 90)), int(rng.integers(30, 90))
        p = root / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(p)
        out.append(str(p))
    (root / "bad.jpg").write_bytes(b"\xff\xd8 broken")
    out[5] = str(root / "bad.jpg")
    out[17] = str(root / "missing.jpg")
    return out


def _clip_transform():
    import open_clip

    return open_clip.image_transform(
        32, is_train=False, mean=(0.48, 0.45, 0.40), std=(0.26, 0.26, 0.27)
    )


@pytest.mark.parametrize(
    "n, batch, chunk", [(23, 7, 3), (23, 8, 4), (5, 8, 32), (64, 64, 32), (1, 1, 1)]
)
def test_chunks_tile_each_batch_and_never_straddle(n, batch, chunk):
    chunks, per_batch = _chunks(n, batch, chunk)
    assert [i for c in chunks for i in c] == list(range(n))
    assert all(0 < len(c) <= chunk for c in chunks)
    k = 0
    for b, count in enumerate(per_batch):
        got = [i for c in chunks[k : k + count] for i in c]
        assert got == list(range(b * batch, min((b + 1) * batch, n)))
        k += count
    assert k == len(chunks)


@pytest.mark.parametrize("workers", [0, 2])
def test_chunked_loading_gives_the_batches_of_a_plain_loader(paths, workers):
    """Same indices, tensors and failures per batch as one DataLoader batch per batch."""
    transform = _clip_transform()
    plain = list(iterate_images(paths, transform, 7, num_workers=0))
    got = list(iterate_images(paths, transform, 7, num_workers=workers, chunk_size=3))
    assert len(got) == len(plain) == 4
    for a, b in zip(plain, got):
        assert a.indices == b.indices
        assert a.failed.keys() == b.failed.keys()
        assert torch.equal(a.data, b.data)
    assert 5 in got[0].failed and "Cannot decode" in got[0].failed[5]
    assert 17 in got[2].failed and "No image file" in got[2].failed[17]


def _worker_id(img):
    info = torch.utils.data.get_worker_info()
    return torch.tensor([info.id if info else -1])


def test_one_batch_is_loaded_by_several_workers(paths):
    """The reason for chunks: the first batch does not wait on a single worker."""
    good = [p for i, p in enumerate(paths) if i not in (5, 17)]
    first = next(iter(iterate_images(good, _worker_id, 8, num_workers=2, chunk_size=2)))
    assert set(first.data[:, 0].tolist()) == {0, 1}
    whole = next(iter(iterate_images(good, _worker_id, 8, num_workers=2, chunk_size=8)))
    assert len(set(whole.data[:, 0].tolist())) == 1


def test_rebatch_places_chunks_before_concatenating():
    placed = []

    def place(t):
        placed.append(t.shape[0])
        return t * 10

    chunks = [
        ImageBatch([0, 1], torch.ones(2, 1), {}),
        ImageBatch([], [], {2: "bad"}),
        ImageBatch([3], torch.ones(1, 1), {}),
        ImageBatch([4], torch.ones(1, 1), {}),
    ]
    out = list(rebatch(iter(chunks), [3, 1], place))
    assert [b.indices for b in out] == [[0, 1, 3], [4]]
    assert out[0].failed == {2: "bad"} and placed == [2, 1, 1]
    assert torch.equal(out[0].data, torch.full((3, 1), 10.0))


def test_split_transform_reproduces_the_compose_exactly(paths):
    transform = _clip_transform()
    host, device = split_transform(transform)
    for p in [p for i, p in enumerate(paths) if i not in (5, 17)][:8]:
        img = Image.open(p).convert("RGB")
        u8 = host(img)
        assert u8.dtype == torch.uint8 and u8.shape == (3, 32, 32)
        assert torch.equal(device(u8[None])[0], transform(img))


def test_split_transform_refuses_other_pipelines():
    from torchvision import transforms as T

    assert (
        split_transform(
            T.Compose([T.RandomResizedCrop(32), T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)])
        )
        is None
    )
    assert (
        split_transform(T.Compose([T.Resize(32), T.ToTensor()])) is None
    )  # no Normalize: not a CLIP pipeline
    assert (
        split_transform(
            T.Compose(
                [
                    T.Resize(32),
                    T.Lambda(lambda x: x),
                    T.ToTensor(),
                    T.Normalize((0.5,) * 3, (0.5,) * 3),
                ]
            )
        )
        is None
    )
    assert split_transform(lambda img: img) is None


def test_uint8_workers_give_the_float_pipelines_embeddings(paths, tmp_path):
    """normalize_on_device (the CUDA default) against the float-in-workers pipeline, on the CPU."""
    import hierzoo
    from hierzoo.models.tiny_clip import build_tiny_openclip

    model_dir = build_tiny_openclip(tmp_path / "oc", seed=0)
    floats = hierzoo.load(str(model_dir), device="cpu", cache_dir=False)
    u8 = hierzoo.load(str(model_dir), device="cpu", cache_dir=False, normalize_on_device=True)
    assert floats._split_transform(paths) is None and u8._split_transform(paths) is not None
    a, err_a = floats.encode_images(paths, batch_size=6)
    u8.num_workers = 2
    b, err_b = u8.encode_images(paths, batch_size=6)
    assert err_a == err_b and err_a[5] and err_a[17]
    ok = [i for i in range(len(paths)) if err_a[i] is None]
    torch.testing.assert_close(a[ok], b[ok], atol=1e-6, rtol=0)
    assert torch.isnan(b[[5, 17]]).all()
    pre = torch.stack([floats.transform(Image.open(paths[0]).convert("RGB"))])
    assert u8._split_transform([pre[0]]) is None  # preprocessed tensors stay as given
    torch.testing.assert_close(u8.encode_images(pre)[0], a[:1], atol=1e-6, rtol=0)
    assert CHUNK >= 1


@pytest.mark.parametrize("threads", [0, 3])
def test_read_bytes_in_threads_keeps_order_and_failures(paths, threads):
    from hierzoo.images import read_bytes

    batches = list(read_bytes(paths, 7, threads))
    assert [sorted(b.indices + list(b.failed)) for b in batches] == [
        list(range(s, min(s + 7, 23))) for s in range(0, 23, 7)
    ]
    assert 5 not in batches[0].failed  # a corrupt file is still bytes; the decoder rejects it
    assert "No image file" in batches[2].failed[17]
    for b in batches:
        for i, data in zip(b.indices, b.data):
            with open(paths[i], "rb") as f:
                assert data.numpy().tobytes() == f.read()
    it = read_bytes(paths, 2, threads)
    next(it)
    it.close()  # leaving early cancels the reads still queued


def test_tensor_decode_follows_the_pil_pipeline_within_a_few_grey_levels(paths, tmp_path):
    """torch's antialiased uint8 resize against PIL's: mostly equal, off by one here and there
    (5 at most on these small noise images; 2 on photo-like 200-900 px JPEGs)."""
    from hierzoo.images import TensorDecode, tensor_decode_split

    transform = _clip_transform()
    fast, norm = tensor_decode_split(transform)
    pil, _ = split_transform(transform)
    assert isinstance(fast, TensorDecode) and fast.crop == (32, 32)
    good = [p for i, p in enumerate(paths) if i not in (5, 17)]
    a = torch.stack([fast(p) for p in good]).int()
    b = torch.stack([pil(Image.open(p).convert("RGB")) for p in good]).int()
    assert a.dtype == torch.int32 and a.shape == b.shape
    assert (a - b).abs().max() <= 5 and (a - b).abs().float().mean() < 0.05
    # PNG, grayscale JPEG and a PIL image take the same route to (3, 32, 32)
    Image.open(good[0]).save(tmp_path / "x.png")
    Image.open(good[0]).convert("L").save(tmp_path / "gray.jpg")
    for item in (tmp_path / "x.png", tmp_path / "gray.jpg", Image.open(good[0])):
        assert fast(item).shape == (3, 32, 32)
    assert (fast(tmp_path / "x.png").int() - b[0]).abs().max() <= 1
    torch.testing.assert_close(
        norm(a[:1].to(torch.uint8)), norm(b[:1].to(torch.uint8)), atol=5 / 255 / 0.26 + 1e-6, rtol=0
    )


@pytest.mark.parametrize(
    "builder", ["build_tiny_openclip", "build_tiny_hf_clip", "build_tiny_siglip"]
)
def test_tensor_decode_in_workers_gives_close_embeddings_and_the_same_errors(
    paths, tmp_path, builder
):
    """open_clip's Compose and the transformers processors (CLIP: resize + crop; SigLIP: a
    square resize) all have a tensor twin."""
    import hierzoo
    from hierzoo.models import tiny_clip

    model_dir = getattr(tiny_clip, builder)(tmp_path / "m", seed=0)
    exact = hierzoo.load(str(model_dir), device="cpu", cache_dir=False)
    fast = hierzoo.load(
        str(model_dir), device="cpu", cache_dir=False, worker_decode="tensor", num_workers=2
    )
    a, err_a = exact.encode_images(paths, batch_size=6)
    b, err_b = fast.encode_images(paths, batch_size=6)
    assert [e is None for e in err_a] == [e is None for e in err_b]
    assert "Cannot decode" in err_b[5] and "No image file" in err_b[17]
    ok = [i for i in range(len(paths)) if err_a[i] is None]
    assert (a[ok] * b[ok]).sum(-1).min() > 0.999
    with pytest.raises(ValueError, match="worker_decode"):
        hierzoo.load(str(model_dir), device="cpu", cache_dir=False, worker_decode="turbo")


def test_tensor_decode_gives_the_pil_paths_pixels_for_16_bit_images(tmp_path):
    """torchvision's uint16 and PIL's I;16 both keep the high byte: the same decoded pixels,
    then the same resize. (This test once compared against PIL's own ``convert``, which
    saturates a 16-bit image to white, so both sides were 255 everywhere; the hand-computed
    values are checked in test_image_limits.py.)"""
    from hierzoo.images import _pil_to_tensor, load_image, tensor_decode_split

    fast, _ = tensor_decode_split(_clip_transform())
    pil, _ = split_transform(_clip_transform())
    deep = np.random.default_rng(0).integers(0, 65535, (40, 50), dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    got = fast(tmp_path / "deep.png")
    assert got.dtype == torch.uint8
    assert torch.equal(got, fast.geometry(_pil_to_tensor(load_image(tmp_path / "deep.png"))))
    ref = pil(load_image(tmp_path / "deep.png")).int()
    assert ref.float().std() > 30  # not saturated
    assert (got.int() - ref).abs().max() <= 5


def test_device_decoding_hands_formats_torchvision_lacks_to_pil(paths, tmp_path):
    """--decode-on-device: BMP, TIFF and 16-bit PNG are decoded by PIL, not recorded as errors."""
    from hierzoo.images import (
        TensorPreprocess,
        _pil_to_tensor,
        iterate_images_on_device,
        load_image,
    )

    prep = TensorPreprocess(resize=32, crop=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    src = Image.open(paths[0]).convert("RGB")
    src.save(tmp_path / "x.bmp")
    src.save(tmp_path / "x.tiff")
    Image.fromarray(np.random.default_rng(0).integers(0, 65535, (40, 50), dtype=np.uint16)).save(
        tmp_path / "deep.png"
    )
    items = [str(tmp_path / n) for n in ("x.bmp", "x.tiff", "deep.png")] + [paths[0]]
    (batch,) = list(iterate_images_on_device(items, prep, 8, torch.device("cpu"), num_workers=0))
    assert batch.failed == {} and batch.indices == [0, 1, 2, 3]
    want = [prep(_pil_to_tensor(load_image(p))) for p in items]  # 16-bit: high byte
    for got, ref in zip(batch.data, want):
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def test_default_workers_follow_cores_and_the_work(monkeypatch):
    from hierzoo.images import default_workers

    monkeypatch.setattr("os.cpu_count", lambda: 64)
    assert default_workers(10) == 0  # a handful: decoded in the process
    assert default_workers(100) == 4  # four chunks of 32: four workers
    assert default_workers(100_000) == 32  # capped
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert default_workers(100_000) == 1  # one core left for the model's loop


# ------------------------------------------------------------------ no side effect at import
def test_importing_hierzoo_installs_no_warning_filter():
    """torch and numpy install filters of their own when imported; hierzoo adds none."""
    code = (
        "import numpy, PIL.Image, torch, torchvision.io, torchvision.transforms.v2, open_clip\n"
        "import warnings; before = list(warnings.filters)\n"
        "import hierzoo, hierzoo.images, hierzoo.models.clip\n"
        "hierzoo.images.split_transform(open_clip.image_transform(32, is_train=False))\n"
        "assert warnings.filters == before, warnings.filters[: len(warnings.filters) - len(before)]"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=300)


def test_torchvisions_deprecation_is_silenced_only_where_no_thread_can_race(tmp_path):
    """Under ``-W error::DeprecationWarning``: decoding in a single-threaded process (a loader
    worker, or the main thread alone) silences torchvision's deprecation for that call only and
    leaves the filters as they were; with a second thread alive the filters are not touched."""
    Image.new("RGB", (40, 30), (9, 99, 199)).save(tmp_path / "a.jpg")
    code = f"""
import threading, warnings
import torchvision.io, torchvision.transforms.v2
from hierzoo.images import TensorDecode, iterate_images
from hierzoo._image_io import quiet_torchvision
path = {str(tmp_path / "a.jpg")!r}
before = list(warnings.filters)
fast = TensorDecode(16, (16, 16))
assert fast(path).shape == (3, 16, 16)
assert fast(path).shape == (3, 16, 16)
assert warnings.filters == before
with quiet_torchvision():
    assert len(warnings.filters) == len(before) + 1
assert warnings.filters == before
(batch,) = iterate_images([path] * 3, fast, 3, num_workers=1)
assert batch.failed == {{}} and batch.data.shape == (3, 3, 16, 16), batch.failed
assert warnings.filters == before
stop = threading.Event()
other = threading.Thread(target=stop.wait)
other.start()
with quiet_torchvision():
    assert warnings.filters == before
stop.set()
other.join()
assert warnings.filters == before
print("ok")
"""
    out = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


# ----------------------------------------------------------- transforms recognised by type
class _Invert:
    """A callable hierzoo does not know."""

    def __call__(self, img):
        from PIL import ImageOps

        return ImageOps.invert(img)


def _flip(img):
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def _with_step(step):
    from torchvision import transforms as T

    return T.Compose(
        [
            T.Resize(32, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(32),
            step,
            T.ToTensor(),
            T.Normalize((0.48, 0.45, 0.40), (0.26, 0.26, 0.27)),
        ]
    )


def _unknown_steps():
    from torchvision import transforms as T

    class Resize:  # a look-alike: the name of torchvision's class, something else inside
        size, interpolation, max_size = 32, T.InterpolationMode.BICUBIC, None

        def __call__(self, img):
            return img.rotate(90)

    class Normalize(T.Normalize):  # a subclass may change what it does
        def forward(self, tensor):
            return super().forward(tensor).flip(-1)

    norm = ((0.5,) * 3, (0.25,) * 3)
    return {
        "lambda": _with_step(T.Lambda(_flip)),
        "function": _with_step(_flip),
        "callable": _with_step(_Invert()),
        "look-alike": T.Compose([Resize(), T.ToTensor(), T.Normalize(*norm)]),
        "subclass": T.Compose([T.Resize(32), T.ToTensor(), Normalize(*norm)]),
        "lanczos": T.Compose(
            [
                T.Resize(32, interpolation=T.InterpolationMode.LANCZOS),
                T.ToTensor(),
                T.Normalize(*norm),
            ]
        ),
        "max_size": T.Compose([T.Resize(32, max_size=40), T.ToTensor(), T.Normalize(*norm)]),
        "crop first": T.Compose([T.CenterCrop(32), T.Resize(32), T.ToTensor(), T.Normalize(*norm)]),
        "unscaled": T.Compose(
            [T.Resize(32), T.PILToTensor(), T.ConvertImageDtype(torch.uint8), T.Normalize(*norm)]
        ),
    }


@pytest.mark.parametrize("case", list(_unknown_steps()))
def test_a_step_hierzoo_cannot_reproduce_keeps_the_pil_pipeline(case):
    """Every tensor twin refuses, naming the step; before, a Lambda or a function was skipped
    and a class called ``Resize`` was taken for torchvision's."""
    from hierzoo.images import TensorPreprocess, tensor_decode_split, unreproducible_step

    transform = _unknown_steps()[case]
    assert TensorPreprocess.from_transform(transform) is None
    assert tensor_decode_split(transform) is None
    reason = unreproducible_step(transform)
    assert reason and ("cannot reproduce" in reason or "only" in reason), reason
    named = {
        "lambda": "Lambda",
        "function": "_flip",
        "callable": "_Invert",
        "look-alike": "<locals>.Resize",
        "subclass": "<locals>.Normalize",
        "lanczos": "Resize",
        "max_size": "Resize",
        "crop first": "CenterCrop",
        "unscaled": "ConvertImageDtype",
    }
    assert named[case] in reason, reason
    if case not in ("lanczos", "max_size", "crop first", "unscaled"):
        assert split_transform(transform) is None


def test_known_steps_of_torchvision_v1_v2_and_open_clip_are_reproduced():
    from torchvision.transforms import v2

    from hierzoo.images import TensorPreprocess, unreproducible_step

    norm = ((0.5, 0.4, 0.3), (0.2, 0.3, 0.4))
    plain = v2.Compose(
        [
            v2.Resize(40, interpolation=v2.InterpolationMode.BILINEAR),
            v2.CenterCrop(32),
            v2.RGB(),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(*norm),
        ]
    )
    assert unreproducible_step(plain) is None
    assert TensorPreprocess.from_transform(plain) == TensorPreprocess(
        resize=40, crop=(32, 32), mean=norm[0], std=norm[1], interpolation="bilinear"
    )
    assert unreproducible_step(_clip_transform()) is None
    assert TensorPreprocess.from_transform(_clip_transform()).crop == (32, 32)
    assert "is not a torchvision Compose" in unreproducible_step(_flip)


def test_an_image_processor_with_other_resampling_is_not_reproduced(tmp_path):
    from transformers import CLIPImageProcessor

    from hierzoo.images import TensorPreprocess, unreproducible_step

    class Wrapped:
        def __init__(self, ip):
            self.image_processor = ip

    kw = {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}}
    ok = TensorPreprocess.from_transform(Wrapped(CLIPImageProcessor(**kw)))
    assert ok is not None and ok.resize == 32 and ok.crop_offset == "floor"
    for bad in ({"resample": 1}, {"do_normalize": False}, {"rescale_factor": 1 / 127.5}):
        transform = Wrapped(CLIPImageProcessor(**kw, **bad))
        assert TensorPreprocess.from_transform(transform) is None, bad
        reason = unreproducible_step(transform)
        assert "CLIPImageProcessor" in reason and "only resize" in reason, reason


@pytest.mark.parametrize("case", ["lambda", "callable"])
def test_a_classifier_with_an_unknown_step_keeps_the_pil_pixels(paths, tmp_path, case):
    """The CLIP classifier asks: with a Lambda or an unknown callable in its preprocessing,
    the uint8 split is not used (the PIL pipeline's embeddings, exactly), and the tensor
    decode and the device decoder are refused by name instead of skipping the step."""
    import open_clip

    from hierzoo.models.clip import OpenClipClassifier
    from hierzoo.models.tiny_clip import build_tiny_openclip

    model_dir = build_tiny_openclip(tmp_path / "oc", seed=0)
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    tok = open_clip.get_tokenizer(f"local-dir:{model_dir}")
    transform = _unknown_steps()[case]
    good = [p for i, p in enumerate(paths) if i not in (5, 17)][:6]

    def wrap(**kw):
        return OpenClipClassifier.from_model(
            model, tok, transform, device="cpu", cache_dir=False, num_workers=0, **kw
        )

    pil = wrap(normalize_on_device=False)
    split = wrap(normalize_on_device=True)
    a, _ = pil.encode_images(good, batch_size=4)
    b, _ = split.encode_images(good, batch_size=4)
    assert torch.equal(a, b)
    with torch.inference_mode():
        pixels = torch.stack([transform(load_image(p)) for p in good])
        want = torch.nn.functional.normalize(model.encode_image(pixels).float(), dim=-1)
    torch.testing.assert_close(a, want, atol=1e-5, rtol=0)
    for kw in ({"worker_decode": "tensor"}, {"decode_on_device": True}):
        with pytest.raises(ValueError, match=r"cannot run on tensors \(.*(Lambda|_Invert)"):
            wrap(**kw)
