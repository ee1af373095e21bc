"""Reading result files fast: only the scored fields, streamed, factorised as they are read.

A result file is a JSON list of objects (the paper's scripts) or JSON Lines (hierzoo's runs),
with ``ground_truth_level{k}``, ``predicted_level{k}`` and, for a failed sample, ``error``.
:func:`read_result_columns` keeps, per row, one integer per scored field (an id into one
vocabulary of the distinct values), never the rows themselves: JSON Lines are parsed block by
block, so the file is never held twice; the fast parser reads a JSON list memory-mapped, in
place, never copied into memory whole.

Parsers: with ``msgspec`` installed (``pip install 'hierzoo[fast]'``) each object is decoded
into a small typed record that skips every other field (the options, the letters, the
probabilities) without building it; otherwise the standard library's ``json`` builds each row
and the scored fields are taken from it. Both give the same columns (tested); a block that the
fast parser cannot take exactly as the standard library would (a non-standard literal such as
``NaN``, a level key nested in another field, a torn line) is read again with ``json``.

A large file can be read by several processes (``workers``), each parsing one part of it cut
at a row boundary; their columns are merged into the columns one process reads (tested). A part
that the fast parser cannot take whole sends the file back to the one-process reader.
"""

from __future__ import annotations

import contextlib
import gc
import json
import mmap
import multiprocessing
import os
import re
import sys
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain, repeat
from operator import attrgetter
from pathlib import Path
from typing import Any

import numpy as np

from hierzoo.metrics.names import factorize, hashable, is_name, new_vocabulary

BLOCK_BYTES = 8 << 20
"""JSON Lines are read in blocks of about this many bytes."""
SCAN_BYTES = 8 << 20
"""A memory-mapped JSON list is searched (for level keys) this many bytes at a time."""

Buffer = bytes | memoryview
"""What the fast parser reads: a block of JSON Lines, or a memory-mapped JSON list."""

PARALLEL_BYTES = 64 << 20
"""A file at least this large is split between ``workers`` processes; a smaller one is read by
one (starting a process costs more than it saves)."""
CUT_WINDOW = 1 << 20
"""How far past each cut point a row boundary is looked for."""

LEVEL_KEY = re.compile(r"ground_truth_level([1-9][0-9]*)\Z")
"""A ground-truth key and its level ``k`` (from 1)."""
_GT = b'"ground_truth_level'
_BOM = b"\xef\xbb\xbf"


def fast_parser_available() -> bool:
    """Whether ``msgspec`` (the ``hierzoo[fast]`` extra) can be imported."""
    try:
        import msgspec  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class ResultColumns:
    """The scored fields of a result file's rows, one integer per field.

    Attributes:
        truth: ``(K, N)`` int64, the id of ``ground_truth_level{k+1}`` of each row in ``values``
            (``-1`` where absent or ``null``).
        pred: ``(K, N)`` int64, the id of ``predicted_level{k+1}`` (``-1`` where absent).
        values: the distinct raw values, indexed by id (strings, and whatever else the file
            holds where a name belongs).
        where: ``(N,)`` the position of each row in its source: the line for JSON Lines (from
            1), the entry for a JSON list or a list of rows (from 0).
        unit: ``"line"`` or ``"entry"``, what ``where`` counts.
        source: the file's path, or ``"rows"``.
        n_errors: rows with an ``error`` field (not in the columns).
        predicted_fields: whether any row has a ``predicted_level{k}`` field (``null``
            included) for a scored level.
        level0: whether a row has ``ground_truth_level0`` (levels count from 1; level 0 is
            not read).
    """

    truth: np.ndarray
    pred: np.ndarray
    values: list[Any]
    where: np.ndarray
    unit: str
    source: str
    n_errors: int
    predicted_fields: bool = True
    level0: bool = False

    @property
    def n(self) -> int:
        return self.truth.shape[1]

    def names(self) -> tuple[np.ndarray, np.ndarray, list[Any]]:
        """``(truth, pred, values)`` with values compared as names: a ground truth that is not
        a string becomes its ``str`` (as the paper's scripts read a number), and so does a
        predicted number (``int`` or ``float``), so that ``1`` matches ``1`` and ``"1"``; any
        other predicted value that is not a string (``true``, a list) stays wrong. ``values``
        is extended with the new names."""
        values = list(self.values)
        t_map = np.arange(len(values) + 1)
        t_map[-1] = -1
        p_map = t_map.copy()
        extra: dict[str, int] = {}
        for i, v in enumerate(self.values):
            if v is None or _is_unset(v) or is_name(v):
                continue
            t_map[i] = extra.setdefault(str(v), len(values) + len(extra))
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                p_map[i] = t_map[i]
        values += list(extra)
        return t_map[self.truth], p_map[self.pred], values

    def describe(self, i: int) -> str:
        """Row ``i`` as a user finds it: ``line 12 of results.jsonl``."""
        of = f" of {self.source}" if self.source != "rows" else ""
        return f"{self.unit} {int(self.where[i])}{of}"


class _Builder:
    """Collects blocks of factorised columns into :class:`ResultColumns`."""

    def __init__(self) -> None:
        self.vocab = new_vocabulary()
        self.vocab[None]  # id 0: absent or null
        self.blocks: list[tuple[np.ndarray, np.ndarray]] = []
        self.n_errors = 0
        self.predicted_fields = False
        self.level0 = False

    def add(self, ids: np.ndarray, errors: np.ndarray, where: np.ndarray) -> None:
        """``ids``: ``(2K, n)`` (truth rows then prediction rows), ``errors``: ``(n,)`` bool."""
        keep = ~errors
        self.n_errors += int(errors.sum())
        if not keep.all():
            ids, where = ids[:, keep], where[keep]
        self.blocks.append((ids, where))

    def add_dicts(self, rows: list[Any], where: np.ndarray, source: str, unit: str) -> None:
        bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
        if bad is not None:
            at = f"line {int(where[bad])}" if unit == "line" else f"entry {int(where[bad])}"
            raise ValueError(
                f"{source}: {at} is {rows[bad]!r}; expected one JSON object per sample."
            )
        n = len(rows)
        depth = 0
        for key in set().union(*rows) if rows else ():
            m = LEVEL_KEY.match(key)
            if m:
                depth = max(depth, int(m.group(1)))
            self.level0 |= key == "ground_truth_level0"
        keys = [f"ground_truth_level{k}" for k in range(1, depth + 1)]
        keys += [f"predicted_level{k}" for k in range(1, depth + 1)]
        if not self.predicted_fields:
            self.predicted_fields = any(k in r for r in rows for k in keys[depth:])
        ids = np.empty((2 * depth, n), dtype=np.int64)
        for j, key in enumerate(keys):
            values = map(dict.get, rows, repeat(key))
            try:
                ids[j] = factorize(values, n, self.vocab)
            except TypeError:
                values = map(hashable, map(dict.get, rows, repeat(key)))
                ids[j] = factorize(values, n, self.vocab)
        errors = np.fromiter(map(bool, map(dict.get, rows, repeat("error"))), dtype=bool, count=n)
        self.add(ids, errors, where)

    def build(self, source: str, unit: str) -> ResultColumns:
        depth = max((b[0].shape[0] // 2 for b in self.blocks), default=0)
        n = sum(b[0].shape[1] for b in self.blocks)
        truth = np.full((depth, n), -1, dtype=np.int64)
        pred = np.full((depth, n), -1, dtype=np.int64)
        where = np.zeros(n, dtype=np.int64)
        at = 0
        for ids, w in self.blocks:
            k, m = ids.shape[0] // 2, ids.shape[1]
            truth[:k, at : at + m] = ids[:k]
            pred[:k, at : at + m] = ids[k:]
            where[at : at + m] = w
            at += m
        values = list(self.vocab)
        missing = np.array([v is None or _is_unset(v) for v in values] + [True])
        truth = np.where(missing[truth], -1, truth)
        pred = np.where(missing[pred], -1, pred)
        return ResultColumns(
            truth,
            pred,
            values,
            where,
            unit,
            source,
            self.n_errors,
            self.predicted_fields,
            self.level0,
        )


def _is_unset(v: Any) -> bool:
    """msgspec's ``UNSET``: a field the row does not have."""
    return type(v).__name__ == "UnsetType" and type(v).__module__ == "msgspec"


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Building a million small containers runs the cyclic collector thousands of times over
    objects that cannot form cycles; pause it while they are built."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


# --------------------------------------------------------------------------- fast records
@lru_cache(maxsize=64)
def _record(depth: int) -> tuple[Any, Any, Any, list[str]]:
    """A msgspec record type with the scored fields of ``depth`` levels, its JSON Lines and
    JSON list decoders, and its field names (truth first, then predictions)."""
    import msgspec

    fields = [f"ground_truth_level{k}" for k in range(1, depth + 1)]
    fields += [f"predicted_level{k}" for k in range(1, depth + 1)]
    spec = [(f, Any, msgspec.UNSET) for f in fields] + [("error", Any, None)]
    record = msgspec.defstruct(f"Levels{depth}", spec, gc=False)
    return record, msgspec.json.Decoder(record), msgspec.json.Decoder(list[record]), fields


def _depth_in(data: Buffer) -> int:
    """The levels ``1..K`` whose ground-truth key occurs in ``data`` (stops at the first gap;
    :func:`_decode_fast` checks that nothing was missed)."""
    k = 0
    while _contains(data, b'"ground_truth_level%d"' % (k + 1)):
        k += 1
    return k


def _pieces(data: Buffer, overlap: int) -> Iterator[bytes | bytearray]:
    """``data`` in pieces of about :data:`SCAN_BYTES` that overlap by ``overlap`` bytes (a
    pattern of ``overlap + 1`` bytes lies whole in the piece where it starts), copied into one
    reused buffer; bytes come whole."""
    if isinstance(data, bytes):
        yield data
        return
    if len(data) <= SCAN_BYTES + overlap:
        yield bytes(data)
        return
    buf = bytearray(SCAN_BYTES + overlap)
    view = memoryview(buf)
    try:
        for at in range(0, len(data), SCAN_BYTES):
            part = data[at : at + SCAN_BYTES + overlap]
            view[: len(part)] = part
            yield buf if len(part) == len(buf) else buf[: len(part)]
    finally:
        view.release()


def _count(data: Buffer, pattern: bytes) -> int:
    """``data.count(pattern)`` for bytes or a memory map's view."""
    return sum(piece.count(pattern) for piece in _pieces(data, len(pattern) - 1))


def _contains(data: Buffer, pattern: bytes) -> bool:
    """``pattern in data`` for bytes or a memory map's view."""
    return any(pattern in piece for piece in _pieces(data, len(pattern) - 1))


def _decode_fast(
    data: Buffer, builder: _Builder, first_line: int | None = None, n_lines: int = 0
) -> bool:
    """Decode ``data`` (``n_lines`` JSON Lines from ``first_line``, or a JSON list when it is
    ``None``) into ``builder`` with msgspec; ``False`` (and nothing added) when it must be read
    with ``json`` instead. Values first seen in a block that is read again keep their ids (ids
    stay unique)."""

    depth = _depth_in(data[: 1 << 16])
    while True:
        done = _decode_records(data, builder, first_line, n_lines, depth)
        if done is not None:
            return done
        wider = _depth_in(data)  # the first lines have fewer levels than later ones
        if wider == depth:
            return False
        depth = wider


def _decode_records(
    data: Buffer, builder: _Builder, first_line: int | None, n_lines: int, depth: int
) -> bool | None:
    """:func:`_decode_fast` for ``depth`` levels; ``None`` when the data has more levels."""
    import msgspec

    _, line_decoder, list_decoder, fields = _record(depth)
    try:
        if first_line is None:
            records = list_decoder.decode(data)
        else:
            records = line_decoder.decode_lines(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return False
    n = len(records)
    if depth:
        values = chain.from_iterable(map(attrgetter(*fields), records))
        try:
            ids = factorize(values, n * len(fields), builder.vocab).reshape(n, -1).T
        except TypeError:
            return False
    else:
        ids = np.empty((0, n), dtype=np.int64)
    unset = builder.vocab.get(msgspec.UNSET, -1)
    given = int(np.count_nonzero(ids[:depth] != unset))
    if not builder.predicted_fields:
        builder.predicted_fields = bool(np.count_nonzero(ids[depth:] != unset))
    if given != _count(data, _GT):  # more levels, a level key after a gap or in another field
        return None
    errors = np.fromiter(map(bool, map(attrgetter("error"), records)), dtype=bool, count=n)
    if first_line is None:
        where = np.arange(n)
    elif n_lines == n:
        where = first_line + np.arange(n)
    else:
        where = _line_numbers(data, first_line)
        if len(where) != n:  # an object over several lines, or several on one line
            return False
    builder.add(ids, errors, where)
    return True


# --------------------------------------------------------------------------- files
def _open_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return data[3:] if data.startswith(_BOM) else data


@contextlib.contextmanager
def _mapped(path: Path, private: bool = False) -> Iterator[memoryview]:
    """The file's bytes (after a byte-order mark), memory-mapped: read in place, never copied
    whole into memory. ``private``: writable, copy-on-write (a byte written changes this
    process's view only, never the file)."""
    with (
        open(path, "rb") as f,
        mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY if private else mmap.ACCESS_READ) as mm,
        memoryview(mm) as whole,
        whole[3 if whole[:3] == _BOM else 0 :] as view,
    ):
        yield view


_NOT_UTF8 = {
    b"\x1f\x8b": "gzip-compressed: decompress it first (gunzip FILE)",
    b"PK\x03\x04": "a zip archive: extract the results file from it first",
    b"\xff\xfe": "UTF-16 text: save it as UTF-8",
    b"\xfe\xff": "UTF-16 text: save it as UTF-8",
}


def _head(path: Path) -> bytes:
    """The first 4 KiB of a result file (after a UTF-8 byte-order mark).

    Raises:
        ValueError: a compressed file, or text that is not UTF-8, naming the fix.
    """
    with open(path, "rb") as f:
        head = f.read(4096)
    for magic, what in _NOT_UTF8.items():
        if head.startswith(magic):
            raise ValueError(f"{path} is {what.replace('FILE', str(path))}.")
    if b"\x00" in head:
        raise ValueError(
            f"{path} holds NUL bytes: it is not UTF-8 JSON (UTF-16 or binary data); a results "
            "file is a JSON list of rows or JSON Lines, in UTF-8."
        )
    return head[3:] if head.startswith(_BOM) else head


def _no_file(path: Path) -> Exception:
    if path.is_dir():
        hint = (
            " (a run's results are its predictions.jsonl)"
            if (path / "predictions.jsonl").is_file()
            else ""
        )
        return IsADirectoryError(f"{str(path)!r} is a folder; give a result file{hint}.")
    return FileNotFoundError(f"No result file at {str(path)!r}.")


def _is_list(head: bytes) -> bool:
    return head.lstrip()[:1] == b"["


def read_result_columns(
    path: str | Path, *, parser: str | None = None, workers: int = 1
) -> ResultColumns:
    """Read a result file's scored fields (see :class:`ResultColumns`).

    ``parser``: ``"msgspec"`` (the default when installed), or ``"json"`` (the standard
    library). A torn last JSON line (an interrupted write) is skipped with a warning.

    ``workers``: with msgspec, a file of at least :data:`PARALLEL_BYTES` is cut into this many
    parts at row boundaries, read by as many processes (this one and ``workers - 1`` started
    ones), and merged; the columns equal those one process reads. The processes are started
    with ``spawn``, which imports the calling script again: call this from a script under
    ``if __name__ == "__main__":``. :func:`available_cpus` is a good value.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: a line or entry that is not a JSON object, a file that does not parse, or
            ``workers`` below 1.
    """
    path = Path(path)
    if not path.is_file():
        raise _no_file(path)
    fast = _use_fast(parser)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(
            f"Expected `workers` to be a whole number of processes, 1 or more, but got "
            f"{workers!r}; use 1 to read in this process."
        )
    builder = _Builder()
    head = _head(path)
    if fast and workers > 1 and path.stat().st_size >= PARALLEL_BYTES:
        cols = _read_in_parts(path, _is_list(head), workers)
        if cols is not None:
            return cols
    if _is_list(head):
        done = False
        if fast:
            with _mapped(path) as data:
                done = _decode_fast(data, builder)
        if not done:
            rows = _parse_list(_open_bytes(path), path)
            for at in range(0, len(rows), 4096):
                part = rows[at : at + 4096]
                builder.add_dicts(part, np.arange(at, at + len(part)), str(path), "entry")
        return builder.build(str(path), "entry")
    for block, first_line, n_lines in _blocks(path):
        if fast and _decode_fast(block, builder, first_line, n_lines):
            continue
        rows, where = _parse_lines(block, first_line, path, last=not block.endswith(b"\n"))
        builder.add_dicts(rows, where, str(path), "line")
    return builder.build(str(path), "line")


# --------------------------------------------------------------------------- in parts
_ROW_GAP = re.compile(rb"\}\s*(,)\s*\{")


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity where the system tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _cuts(data: memoryview, parts: int, as_list: bool) -> list[int] | None:
    """Where to cut ``data`` into ``parts``: for a JSON list the offsets of the commas between
    two rows (``}`` and ``{`` around them), for JSON Lines the offsets just after a newline.
    ``None`` when no boundary lies within :data:`CUT_WINDOW` of a cut point. A JSON list cut
    inside a string or inside a row does not parse as a list of rows, so such a cut is never
    taken for a right one (the file is read whole)."""
    n, cuts = len(data), []
    for i in range(1, parts):
        point = max(i * n // parts, cuts[-1] + 1 if cuts else 0)
        window = bytes(data[point : point + CUT_WINDOW])
        if as_list:
            m = _ROW_GAP.search(window)
            at = point + m.start(1) if m else -1
        else:
            at = window.find(b"\n")
            at = point + at + 1 if at >= 0 else -1
        if at < 0:
            return None
        if at < n:
            cuts.append(at)
    return cuts


def _read_part(path: str, cuts: list[int], i: int, as_list: bool):
    """Read part ``i`` of a file cut at ``cuts`` (see :func:`_cuts`), in a process of its own:
    its :class:`ResultColumns` (ids as int32, values picklable) and its number of lines, or
    ``None`` when the part needs the standard library's reader."""
    builder = _Builder()
    lines = 0
    if as_list:
        # a part of a list is made a list in place: the comma before it becomes "[", the comma
        # after it "]", in this process's copy-on-write view of the file
        with _mapped(Path(path), private=True) as data:
            start = cuts[i - 1] if i else 0
            end = cuts[i] + 1 if i < len(cuts) else len(data)
            if i:
                data[start] = ord("[")
            if i < len(cuts):
                data[end - 1] = ord("]")
            with data[start:end] as part:
                done = _decode_fast(part, builder)
        if not done:
            return None
    else:
        start = cuts[i - 1] if i else 0
        end = cuts[i] if i < len(cuts) else None
        for block, first_line, n_lines in _blocks(Path(path), start, end):
            if not _decode_fast(block, builder, first_line, n_lines):
                return None
            lines = first_line + n_lines - 1
    cols = builder.build(path, "entry" if as_list else "line")
    small = np.int32 if len(cols.values) < 2**31 else np.int64
    cols.truth, cols.pred = cols.truth.astype(small), cols.pred.astype(small)
    cols.values = [None if _is_unset(v) else v for v in cols.values]
    return cols, lines


def _start_method() -> str:
    """``fork`` (quick, and imports nothing again) on Linux while this process runs no other
    Python thread, else ``spawn``."""
    if sys.platform.startswith("linux") and threading.active_count() == 1:
        return "fork"
    return "spawn"


def _part_worker(send: Any, job: tuple) -> None:
    """A started process: read one part and send its columns (``None`` when it cannot)."""
    try:
        result = _read_part(*job)
    except Exception:
        result = None
    with contextlib.suppress(OSError):  # the reader stopped listening (it failed itself)
        send.send(result)
    send.close()


def _read_in_parts(path: Path, as_list: bool, workers: int) -> ResultColumns | None:
    """:func:`read_result_columns` by ``workers`` processes, one part each (this process reads
    the first while the others read theirs); ``None`` when the file cannot be cut or a part
    must be read whole (then the reader that reports a file's problems reads it)."""
    with _mapped(path) as data:
        cuts = _cuts(data, workers, as_list)
    if not cuts:
        return None
    jobs = [(str(path), cuts, i, as_list) for i in range(len(cuts) + 1)]
    context = multiprocessing.get_context(_start_method())
    started = []
    try:
        for job in jobs[1:]:
            recv, send = context.Pipe(duplex=False)
            proc = context.Process(target=_part_worker, args=(send, job), daemon=True)
            proc.start()
            send.close()
            started.append((proc, recv))
        parts = [_read_part(*jobs[0])]
        for _, recv in started:
            try:
                parts.append(recv.recv())
            except EOFError:  # the process died
                parts.append(None)
    except OSError:  # no process could be started
        return None
    finally:
        for proc, recv in started:
            recv.close()
            proc.join(timeout=5)  # it has sent its part, or stops sending once recv is closed
            if proc.is_alive():
                proc.kill()
                proc.join()
    if any(p is None for p in parts):
        return None
    return _merge(parts, str(path), "entry" if as_list else "line")


def _merge(parts: list[tuple[ResultColumns, int]], source: str, unit: str) -> ResultColumns:
    """The columns of consecutive parts of one file as one process reads them: one vocabulary
    (ids in order of first appearance), positions counted across the parts."""
    builder = _Builder()
    before = 0  # the entries (rows and errors) or the lines of the parts before
    for cols, lines in parts:
        remap = np.append(factorize(cols.values, len(cols.values), builder.vocab), -1)
        ids = remap[np.concatenate([cols.truth, cols.pred])]
        builder.add(ids, np.zeros(cols.n, dtype=bool), cols.where + before)
        builder.n_errors += cols.n_errors
        builder.predicted_fields |= cols.predicted_fields
        builder.level0 |= cols.level0
        before += cols.n + cols.n_errors if unit == "entry" else lines
    return builder.build(source, unit)


def _use_fast(parser: str | None) -> bool:
    if parser not in (None, "json", "msgspec"):
        raise ValueError(f"Expected `parser` to be 'json' or 'msgspec', but got {parser!r}.")
    if parser == "msgspec" and not fast_parser_available():
        raise ImportError("parser='msgspec' needs msgspec: pip install 'hierzoo[fast]'")
    return parser != "json" and fast_parser_available()


def _blocks(path: Path, start: int = 0, end: int | None = None) -> Iterator[tuple[bytes, int, int]]:
    """Whole lines of a JSON Lines file, about :data:`BLOCK_BYTES` at a time (a block is
    completed to the end of its last line), with the number of the first line of each block and
    its number of lines. A last line without a newline comes alone, in a block of its own.

    ``start`` / ``end``: only the bytes between these offsets (after a byte-order mark), lines
    numbered from 1 at ``start``; ``end`` must follow a newline."""
    line = 1
    with open(path, "rb") as f:
        if f.read(3) != _BOM:
            f.seek(0)
        f.seek(start, os.SEEK_CUR)
        left = -1 if end is None else end - start  # -1: to the end of the file
        while left:
            block = f.read(BLOCK_BYTES if left < 0 else min(BLOCK_BYTES, left))
            if not block:
                break
            if not block.endswith(b"\n"):
                block += f.readline()
            if left > 0:
                left -= len(block)
            if not block.endswith(b"\n"):  # the end of the file, without a newline
                cut = block.rfind(b"\n") + 1
                if cut:
                    n_lines = block.count(b"\n", 0, cut)
                    yield block[:cut], line, n_lines
                    line += n_lines
                if block[cut:].strip():
                    yield block[cut:], line, 1
                break
            n_lines = block.count(b"\n")
            yield block, line, n_lines
            line += n_lines


def _line_numbers(block: bytes, first_line: int) -> np.ndarray:
    """The line number of each non-blank line of ``block``."""
    lines = block.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    blank = np.fromiter((not line.strip() for line in lines), dtype=bool, count=len(lines))
    return first_line + np.flatnonzero(~blank)


def _parse_lines(
    block: bytes, first_line: int, path: Path, last: bool
) -> tuple[list[Any], np.ndarray]:
    """Parse the lines of a block with the standard library; a torn final line of the file is
    skipped with a warning, any other line that does not parse is an error naming it."""
    lines = block.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    rows, where = [], []
    with _gc_paused():
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                number = first_line + i
                if last and i == len(lines) - 1 and line.lstrip()[:1] == b"{":
                    warnings.warn(
                        f"{path}:{number}: skipped a torn last line (an interrupted write).",
                        stacklevel=4,
                    )
                    continue
                raise ValueError(_bad_line(path, number, line, e)) from e
            where.append(first_line + i)
    return rows, np.array(where, dtype=np.int64)


def _bad_line(path: Path, number: int, line: bytes, e: Exception) -> str:
    """What is wrong with a line of a JSON Lines file that does not parse, and the fix."""
    text = line.strip()
    if isinstance(e, UnicodeDecodeError):
        return (
            f"{path}:{number} is not UTF-8 text ({e.reason} at byte {e.start} of the line); "
            "a results file is UTF-8 JSON."
        )
    if text in (b"{", b"[") or text.startswith(b'"') or text.startswith(b"}"):
        fix = (
            f"{path} holds JSON spread over several lines (line {number} is {_short(text)}), "
            "not JSON Lines: a results file is a JSON list of rows, or one whole JSON object "
            "per line (json.dumps(row) without indent)"
        )
        if path.name == "summary.json":
            fix += "; a run's results are in predictions.jsonl, next to summary.json"
        return fix + "."
    if isinstance(e, json.JSONDecodeError) and e.msg == "Extra data":
        return (
            f"{path}:{number} holds more than one JSON value; JSON Lines has one object per line."
        )
    return f"{path}:{number} is not a JSON object: {e}."


def _short(text: bytes) -> str:
    shown = text[:60].decode("utf-8", "replace")
    return repr(shown + ("..." if len(text) > 60 else ""))


def _parse_list(data: bytes, path: Path) -> list[Any]:
    with _gc_paused():
        try:
            rows = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} starts like a JSON list but does not parse: {e}.") from e
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list of objects, one per sample.")
    return rows


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Every row of a result file as a dict (see :func:`hierzoo.metrics.read_results`)."""
    path = Path(path)
    if not path.is_file():
        raise _no_file(path)
    head = _head(path)
    if not head.strip():
        return []
    if _is_list(head):
        rows = _parse_list(_open_bytes(path), path)
        bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
        if bad is not None:
            raise ValueError(
                f"{path}: entry {bad} is {rows[bad]!r}; expected one JSON object per sample."
            )
        return rows
    out: list[dict[str, Any]] = []
    for block, first_line, _ in _blocks(path):
        rows, where = _parse_lines(block, first_line, path, last=not block.endswith(b"\n"))
        bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
        if bad is not None:
            raise ValueError(
                f"{path}: line {int(where[bad])} is {rows[bad]!r}; expected one JSON object "
                "per sample."
            )
        out.extend(rows)
    return out


def columns_from_rows(rows: list[dict[str, Any]]) -> ResultColumns:
    """:class:`ResultColumns` of rows already in memory (``where`` counts entries from 0)."""
    builder = _Builder()
    for at in range(0, len(rows), 4096):
        part = rows[at : at + 4096]
        builder.add_dicts(part, np.arange(at, at + len(part)), "rows", "entry")
    return builder.build("rows", "entry")
