"""Every decoder (PIL, torchvision in the workers, the device decoder) checks an image's pixel
count from its header against PIL's decompression-bomb limit before decoding, and brings 16-bit
and float images to 8 bits by their value range instead of saturating them."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hierzoo.images import (
    ImageTooLarge,
    TensorDecode,
    TensorPreprocess,
    image_header,
    iterate_images,
    iterate_images_on_device,
    load_image,
    read_bytes,
)

CPU = torch.device("cpu")


def write_png(path: Path, width: int, height: int, rows, *, bit_depth=8, color_type=0) -> Path:
    """A PNG written row by row (a huge one costs one row of memory)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    z = zlib.compressobj(6)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr))
        f.write(chunk(b"IDAT", b"".join(z.compress(b"\x00" + r) for r in rows) + z.flush()))
        f.write(chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """A 20000x20000 1-bit grey PNG: 48 KB on disk, 1.2 GB as RGB."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    return write_png(path, 20000, 20000, (bytes(2500) for _ in range(20000)), bit_depth=1)


def jpeg_claiming(path: Path, width: int, height: int) -> Path:
    """A small valid JPEG whose frame header is rewritten to claim ``width`` x ``height``."""
    Image.new("RGB", (16, 16), (200, 30, 30)).save(path, quality=90)
    data = bytearray(path.read_bytes())
    i = 2
    while data[i + 1] not in (0xC0, 0xC2):
        i += 2 + struct.unpack_from(">H", data, i + 2)[0]
    struct.pack_into(">HH", data, i + 5, height, width)
    path.write_bytes(bytes(data))
    return path


def _prep() -> TensorPreprocess:
    return TensorPreprocess(resize=16, crop=(16, 16), mean=(0.5,) * 3, std=(0.25,) * 3)


def _assert_names_the_limit(msg: str, path: Path, size: str, pixels: str) -> None:
    for part in (str(path), size, pixels, "89,478,485", "PIL.Image.MAX_IMAGE_PIXELS = "):
        assert part in msg, (part, msg)


# ------------------------------------------------------------------------------ headers
def test_image_header_reads_the_size_pil_reads(tmp_path):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (37, 53, 3), dtype=np.uint8))
    rgba = Image.fromarray(rng.integers(0, 255, (37, 53, 4), dtype=np.uint8))
    files = {
        "a.jpg": lambda p: rgb.save(p, quality=80),
        "prog.jpg": lambda p: rgb.save(p, progressive=True),
        "exif.jpg": lambda p: rgb.save(p, exif=b"Exif\x00\x00" + bytes(3000)),
        "grey.jpg": lambda p: rgb.convert("L").save(p),
        "a.png": lambda p: rgba.save(p),
        "lossy.webp": lambda p: rgb.save(p, quality=70),
        "lossless.webp": lambda p: rgb.save(p, lossless=True),
        "alpha.webp": lambda p: rgba.save(p, quality=70),
    }
    for name, save in files.items():
        save(tmp_path / name)
        kind = {"jpg": "jpeg"}.get(name.split(".")[1], name.split(".")[1])
        assert image_header((tmp_path / name).read_bytes()) == (kind, 53, 37), name
    for name in ("a.gif", "a.bmp", "a.tiff"):
        rgb.save(tmp_path / name)
        assert image_header((tmp_path / name).read_bytes()) is None, name
    whole = (tmp_path / "a.jpg").read_bytes()
    assert image_header(whole[:40]) is None  # cut before the frame header
    assert image_header(b"\xff\xd8\xff garbage") is None
    assert image_header(b"") is None


# ------------------------------------------------------------------------------ size limit
def test_every_decoder_refuses_a_20000_square_png_before_decoding(bomb):
    """The PIL path, the tensor path (alone and in a loader) and the device decoder's reader
    all record the same kind of error, naming the file, its size, the limit and the fix."""
    assert bomb.stat().st_size < 100_000
    with pytest.raises(ImageTooLarge) as e:
        load_image(bomb)
    _assert_names_the_limit(str(e.value), bomb, "20000x20000", "400,000,000")
    fast = TensorDecode(16, (16, 16))
    with pytest.raises(ImageTooLarge) as e:
        fast(bomb)
    _assert_names_the_limit(str(e.value), bomb, "20000x20000", "400,000,000")
    (batch,) = iterate_images([str(bomb)], fast, 4, num_workers=0)
    _assert_names_the_limit(batch.failed[0], bomb, "20000x20000", "400,000,000")
    (raw,) = read_bytes([str(bomb)], 4, threads=0)
    _assert_names_the_limit(raw.failed[0], bomb, "20000x20000", "400,000,000")
    (dev,) = iterate_images_on_device([str(bomb)], _prep(), 4, CPU, num_workers=1)
    assert dev.indices == []
    _assert_names_the_limit(dev.failed[0], bomb, "20000x20000", "400,000,000")


def test_a_jpeg_claiming_a_huge_frame_never_reaches_the_jpeg_decoder(tmp_path):
    """nvJPEG (here its CPU twin, the same torchvision call) would allocate what the frame
    header claims; the reader refuses it first, and a good JPEG beside it is decoded."""
    huge = jpeg_claiming(tmp_path / "huge.jpg", 30000, 30000)
    good = tmp_path / "good.jpg"
    Image.new("RGB", (20, 24), (10, 200, 10)).save(good)
    (dev,) = iterate_images_on_device([str(huge), str(good)], _prep(), 4, CPU, num_workers=0)
    assert dev.indices == [1] and list(dev.failed) == [0]
    _assert_names_the_limit(dev.failed[0], huge, "30000x30000", "900,000,000")
    with pytest.raises(ImageTooLarge, match="30000x30000"):
        TensorDecode(16, (16, 16))(huge)
    with pytest.raises(ImageTooLarge, match="30000x30000"):
        load_image(huge)


def test_refusing_a_bomb_costs_no_memory(bomb):
    """In a fresh process, every decoder given the 20000x20000 PNG: its peak memory grows by
    far less than the 400 MB one grey plane of the image would take."""
    code = f"""
import json, resource, torch
from hierzoo.images import TensorDecode, TensorPreprocess, iterate_images_on_device, load_image
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
errors = []
for decode in (load_image, TensorDecode(16, (16, 16))):
    try:
        decode({str(bomb)!r})
    except OSError as e:
        errors.append(type(e).__name__)
prep = TensorPreprocess(resize=16, crop=(16, 16), mean=(0.5,) * 3, std=(0.25,) * 3)
for batch in iterate_images_on_device([{str(bomb)!r}], prep, 2, torch.device("cpu")):
    errors.append(batch.failed[0][:5])
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({{"grown_mb": grown / 1024, "errors": errors}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["errors"] == ["ImageTooLarge", "ImageTooLarge", "Image"], got
    assert got["grown_mb"] < 150, got


def test_pils_rule_twice_the_limit_refused_above_it_a_warning(tmp_path, monkeypatch):
    """With the limit lowered to 1,000 pixels: 40x40 (1,600) decodes with PIL's warning in
    every path, 50x50 (2,500) is refused in every path, and ``None`` turns the check off."""
    warn = tmp_path / "warn.jpg"
    Image.new("RGB", (40, 40), (1, 2, 3)).save(warn)
    big = tmp_path / "big.jpg"
    Image.new("RGB", (50, 50), (1, 2, 3)).save(big)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    fast = TensorDecode(16, (16, 16))
    decoders = {
        "pil": load_image,
        "tensor": fast,
        "device": lambda p: next(
            iterate_images_on_device([str(p)], _prep(), 1, CPU, num_workers=0)
        ),
    }
    for name, decode in decoders.items():
        with pytest.warns(Image.DecompressionBombWarning):
            out = decode(warn)
        assert not getattr(out, "failed", None), name
        if name == "device":
            (batch,) = iterate_images_on_device([str(big)], _prep(), 1, CPU, num_workers=0)
            assert "50x50 (2,500 pixels" in batch.failed[0] and "of 1,000" in batch.failed[0]
        else:
            with pytest.raises(ImageTooLarge, match=r"50x50 \(2,500 pixels"):
                decode(big)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert load_image(big).size == (50, 50) and fast(big).shape == (3, 16, 16)


def test_a_format_only_pil_reads_is_refused_by_pils_own_check(tmp_path, monkeypatch):
    Image.new("RGB", (50, 50), (1, 2, 3)).save(tmp_path / "big.tiff")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for decode in (load_image, TensorDecode(16, (16, 16))):
        with pytest.raises(ImageTooLarge, match=r"big\.tiff.*2500 pixels.*MAX_IMAGE_PIXELS"):
            decode(tmp_path / "big.tiff")


# ------------------------------------------------------------------------------ bit depth
def _grey16(tmp_path: Path) -> tuple[Path, np.ndarray]:
    values = np.array(
        [[0, 255, 256, 511, 32767, 32768, 65279, 65280, 65535], [1000, 2000, 3000] * 3],
        dtype=np.uint16,
    )
    Image.fromarray(values).save(tmp_path / "grey16.png")
    hand = np.array([[0, 0, 1, 1, 127, 128, 254, 255, 255], [3, 7, 11] * 3], dtype=np.uint8)
    return tmp_path / "grey16.png", hand


def test_a_16_bit_grey_png_keeps_its_high_byte_in_every_path(tmp_path):
    """v >> 8, computed by hand, in the PIL path, the tensor path (torchvision's uint16) and the
    device decoder; not 255 for everything above 255."""
    path, hand = _grey16(tmp_path)
    assert Image.open(path).mode in ("I;16", "I")
    want = torch.from_numpy(np.repeat(hand[None], 3, axis=0))
    assert torch.equal(torch.from_numpy(np.array(load_image(path))).permute(2, 0, 1), want)
    exact = TensorDecode(resize=(2, 9), crop=None)
    assert torch.equal(exact.geometry(want), exact(path))  # decoded == hand, then one resize
    prep = TensorPreprocess(resize=(2, 9), crop=None, mean=(0.5,) * 3, std=(0.25,) * 3)
    (dev,) = iterate_images_on_device([str(path)], prep, 1, CPU, num_workers=0)
    torch.testing.assert_close(dev.data[0], prep(want), atol=1e-6, rtol=0)
    pil = Image.open(path)
    assert np.array_equal(np.asarray(load_image(pil))[..., 0], hand)  # a PIL image given directly


def test_a_16_bit_colour_png_is_the_same_in_pil_and_torchvision(tmp_path):
    """PIL reads 16-bit RGB PNGs by their high byte itself; torchvision's uint16 is brought to
    the same pixels."""
    rng = np.random.default_rng(3)
    values = rng.integers(0, 65536, (6, 7, 3)).astype(">u2")
    path = write_png(
        tmp_path / "rgb16.png", 7, 6, [r.tobytes() for r in values], bit_depth=16, color_type=2
    )
    hand = (values.astype(np.int64) >> 8).astype(np.uint8)
    assert np.array_equal(np.asarray(load_image(path)), hand)
    exact = TensorDecode(resize=(6, 7), crop=None)
    assert torch.equal(exact(path), exact.geometry(torch.from_numpy(hand).permute(2, 0, 1)))


def test_32_bit_integer_greys_are_clipped_to_16_bits_then_scaled():
    img = Image.fromarray(np.array([[-5, 0, 256, 65535, 70000]], dtype=np.int32), mode="I")
    assert np.asarray(load_image(img))[0, :, 0].tolist() == [0, 0, 1, 255, 255]


@pytest.mark.parametrize(
    "values, hand",
    [
        ([0.0, 0.25, 0.5, 0.75, 1.0], [0, 64, 128, 191, 255]),  # in [0, 1]: x 255, half up
        ([-1.0, 0.0, 1.0, 3.0, 1.5], [0, 64, 128, 255, 159]),  # its own range: (x + 1) / 4
        ([0.0, 100.0, 200.0, 255.0, 300.0], [0, 85, 170, 217, 255]),  # [0, 300]
        ([float("nan"), 0.2, 0.4, 0.6, 0.8], [0, 51, 102, 153, 204]),  # NaN as 0
    ],
)
def test_a_float_tiff_is_scaled_by_its_value_range_in_every_path(tmp_path, values, hand):
    path = tmp_path / "f.tiff"
    Image.fromarray(np.array([values, values[::-1]], dtype=np.float32)).save(path)
    assert Image.open(path).mode == "F"
    want = np.array([hand, hand[::-1]], dtype=np.uint8)
    assert np.array_equal(np.asarray(load_image(path))[..., 0], want)
    want_t = torch.from_numpy(np.repeat(want[None], 3, axis=0))
    exact = TensorDecode(resize=(2, 5), crop=None)
    assert torch.equal(exact(path), exact.geometry(want_t))
    prep = TensorPreprocess(resize=(2, 5), crop=None, mean=(0.5,) * 3, std=(0.25,) * 3)
    (dev,) = iterate_images_on_device([str(path)], prep, 1, CPU, num_workers=0)
    torch.testing.assert_close(dev.data[0], prep(want_t), atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------ on CUDA
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_nvjpeg_path_refuses_bombs_and_scales_deep_images_on_cuda(bomb, tmp_path):
    cuda = torch.device("cuda")
    huge = jpeg_claiming(tmp_path / "huge.jpg", 30000, 30000)
    good = tmp_path / "good.jpg"
    Image.new("RGB", (20, 24), (10, 200, 10)).save(good)
    deep, hand = _grey16(tmp_path)
    items = [str(bomb), str(huge), str(good), str(deep)]
    prep = _prep()
    (dev,) = iterate_images_on_device(items, prep, 4, cuda, num_workers=2)
    assert dev.indices == [2, 3] and sorted(dev.failed) == [0, 1]
    _assert_names_the_limit(dev.failed[0], bomb, "20000x20000", "400,000,000")
    _assert_names_the_limit(dev.failed[1], huge, "30000x30000", "900,000,000")
    (cpu,) = iterate_images_on_device(items[2:], prep, 4, CPU, num_workers=0)
    torch.testing.assert_close(dev.data.cpu(), cpu.data, atol=0.05, rtol=0)
