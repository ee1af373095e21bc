"""The shared file helpers: atomic writes, settings checks and content fingerprints."""

import json
import os
import shutil

import pytest

from hierzoo._io import (
    SettingsMismatch,
    atomic_write,
    cached_file_digest,
    check_same_settings,
    directory_fingerprint,
    dumps_line,
    file_digest,
    write_json,
)


def test_atomic_write_replaces_whole_and_cleans_up(tmp_path):
    p = tmp_path / "a" / "f.json"
    write_json(p, {"x": 1})
    assert json.loads(p.read_text()) == {"x": 1}

    def broken(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(p, broken)
    assert json.loads(p.read_text()) == {"x": 1}
    assert sorted(os.listdir(p.parent)) == ["f.json"]


def test_strict_json_refuses_nan(tmp_path):
    with pytest.raises(ValueError):
        dumps_line({"p": float("nan")})
    with pytest.raises(ValueError):
        write_json(tmp_path / "s.json", {"p": float("inf")})
    assert not (tmp_path / "s.json").exists()


def test_settings_mismatch_names_every_item():
    check_same_settings({"a": 1, "b": "x"}, {"a": 1, "b": "x"}, what="run", fix="use --out")
    with pytest.raises(SettingsMismatch) as e:
        check_same_settings({"a": 1, "b": "x"}, {"a": 2, "c": 3}, what="run", fix="use --out")
    msg = str(e.value)
    assert "a: 1 -> 2" in msg and "c: None -> 3" in msg and "b: 'x' -> None" in msg
    assert msg.endswith("use --out")


def test_fingerprint_follows_content_not_metadata(tmp_path):
    cache = tmp_path / "cache"
    a = tmp_path / "a"
    a.mkdir()
    (a / "config.json").write_text('{"d": 1}')
    (a / "model.safetensors").write_bytes(b"\x00" * 4096)
    fa = directory_fingerprint(a, cache)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    assert directory_fingerprint(b, cache) == fa
    # same size, same mtime (as cp -p or rsync -a keep them), other bytes
    st = (b / "model.safetensors").stat()
    (b / "model.safetensors").write_bytes(b"\x01" + b"\x00" * 4095)
    os.utime(b / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert directory_fingerprint(b, cache) != fa
    weights = b / "model.safetensors"
    assert cached_file_digest(weights, cache) == file_digest(weights)
