"""Files written once and checked on reuse: atomic writes, the "settings differ" refusal, content
fingerprints, the cache directory, and UTF-8 text read with the file named on failure. Pure
standard library, so every layer may import it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".npz", ".msgpack")
"""Files whose bytes define a model directory's numbers (weights); configs and tokenizers are
hashed too, see :func:`directory_fingerprint`."""

_CONFIG_SUFFIXES = (".json", ".model", ".txt", ".jinja", ".tiktoken", ".py")


def default_cache_dir() -> Path:
    """``$HIERZOO_CACHE``, else ``$XDG_CACHE_HOME/hierzoo``, else ``~/.cache/hierzoo``."""
    if os.environ.get("HIERZOO_CACHE"):
        return Path(os.environ["HIERZOO_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hierzoo"


def atomic_write(
    path: str | os.PathLike[str],
    data: str | bytes | Callable[[Path], None],
    *,
    fsync: bool = True,
) -> Path:
    """Write ``path`` so that a reader sees the old file or the whole new one, never a part.

    ``data`` is the text, the bytes, or a function that writes the file at the temporary path it
    is given (for writers that take a path, such as ``safetensors.torch.save_file``). The
    temporary file sits beside ``path`` (same file system), named per process, and is removed
    when writing fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if callable(data):
            data(tmp)
        else:
            with open(tmp, "wb") as f:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
                if fsync:
                    f.flush()
                    os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> Path:
    """:func:`atomic_write` of strict JSON (``NaN`` and infinities are refused, not written)."""
    return atomic_write(path, json.dumps(obj, indent=indent, allow_nan=False, ensure_ascii=False))


def dumps_line(row: Mapping[str, Any]) -> str:
    """One strict JSON line (no ``NaN``: the JSON Lines files hierzoo writes are standard JSON)."""
    return json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n"


class SettingsMismatch(ValueError):
    """Stored results were made under other settings than the ones asked for now."""


def settings_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (old, new)}`` for every key whose value differs (a missing key reads as ``None``)."""
    keys = list(new) + [k for k in old if k not in new]
    return {k: (old.get(k), new.get(k)) for k in keys if old.get(k) != new.get(k)}


def format_diff(diff: Mapping[str, tuple[Any, Any]]) -> str:
    """``"dtype: 'float32' -> 'bfloat16', seed: 42 -> 0"``."""
    return ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())


def check_same_settings(
    old: Mapping[str, Any], new: Mapping[str, Any], *, what: str, fix: str
) -> None:
    """Refuse to reuse ``what`` (stored under ``old``) for a run under ``new``.

    Raises:
        SettingsMismatch: naming every differing item, then ``fix``.
    """
    diff = settings_diff(old, new)
    if diff:
        raise SettingsMismatch(f"{what} was made with other settings ({format_diff(diff)}); {fix}")


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        _update(h, f)
    return h.hexdigest()


def _update(h: Any, f: IO[bytes]) -> None:
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    # ctime cannot be set by cp -p, rsync -a or touch: any write or metadata change moves it
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def cached_file_digest(path: str | os.PathLike[str], cache_dir: str | Path | None = None) -> str:
    """:func:`file_digest` remembered per file under ``cache_dir`` (default
    :func:`default_cache_dir`), keyed by device, inode, size, mtime and ctime.

    The ctime cannot be preserved by copying tools or set by hand, so a file whose bytes
    changed is always hashed again; an unchanged multi-gigabyte weight file is hashed once.
    """
    path = Path(path).resolve()
    key = _stat_key(path)
    store = Path(cache_dir or default_cache_dir()) / "digests"
    entry = store / (hashlib.sha1(str(path).encode()).hexdigest() + ".json")
    try:
        saved = json.loads(entry.read_text())
        if saved.get("path") == str(path) and saved.get("stat") == key:
            return str(saved["sha256"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    digest = file_digest(path)
    with contextlib.suppress(OSError):  # a read-only cache only costs the hash next time
        write_json(entry, {"path": str(path), "stat": key, "sha256": digest}, indent=None)
    return digest


def directory_fingerprint(root: str | os.PathLike[str], cache_dir: str | Path | None = None) -> str:
    """A content fingerprint of a model directory: the SHA-256 of every weight, config and
    tokenizer file's relative path and content digest (sorted). Two copies of the same files
    have the same fingerprint wherever they live; replacing any weight changes it."""
    root = Path(root)
    h = hashlib.sha256()
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and (p.suffix in WEIGHT_SUFFIXES or p.suffix in _CONFIG_SUFFIXES)
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    for p in files:
        h.update(p.relative_to(root).as_posix().encode())
        h.update(b"\0")
        h.update(cached_file_digest(p, cache_dir).encode())
        h.update(b"\n")
    return h.hexdigest()


def read_text(path: str | os.PathLike[str], error: type[Exception] = ValueError) -> str:
    """The text of a UTF-8 file, without a leading byte-order mark (spreadsheets write one).

    Raises:
        error: the file is not UTF-8, naming the file, the first bad byte and the fix.
    """
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise error(
            f"{path} is not UTF-8 text: byte 0x{data[e.start]:02x} at offset {e.start} (line "
            f"{line}) is not valid UTF-8. Save the file as UTF-8 (from a spreadsheet: 'CSV UTF-8')."
        ) from None
