"""The run directory of ``hierzoo eval``: its lock, its identity (``run.json``) and its
predictions files, kept so that a run never mixes results, never loses a finished line and never
writes a file that is not strict JSON."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hierzoo._io import atomic_write, dumps_line, format_diff, settings_diff

if TYPE_CHECKING:
    from hierzoo.tasks import Question


class RunError(ValueError):
    """A run that cannot start: bad settings, bad inputs, a model that cannot load."""


class RunLock:
    """An exclusive ``flock`` on ``out/.lock`` (released by the kernel if the process dies),
    recording who holds it. A second run into the same folder is refused with that record."""

    def __init__(self, out: Path):
        self.path = out / ".lock"
        self.fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "another process"
                os.close(fd)
                raise RunError(
                    f"{self.path.parent} is in use by another hierzoo eval ({holder}); wait for "
                    "it to finish, or pass another --out."
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a lock file that its last holder removed meanwhile
                break
            os.close(fd)
        host = socket.gethostname()
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        record = f"pid {os.getpid()} on {host}, started {started}: {shlex.join(sys.argv)}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        import contextlib

        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self.fd)
        self.fd = None


def read_run_meta(out: Path) -> dict[str, Any] | None:
    """``run.json``, or ``None`` when absent or damaged (warned: the lines' run ids then decide)."""
    path = out / "run.json"
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(meta.get("identity"), dict) or not isinstance(meta.get("run"), str):
            raise ValueError("no identity")
        return meta
    except (ValueError, OSError, AttributeError) as e:
        print(
            f"hierzoo eval: {path} is damaged or from an older hierzoo ({type(e).__name__}); "
            "the predictions' run ids decide whether they are this run's",
            file=sys.stderr,
        )
        return None


# --------------------------------------------------------------------------- identity
def _digest_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def questions_digest(questions: list[Question]) -> str:
    """SHA-256 of the question set's content (every field of every entry, in order)."""
    h = hashlib.sha256()
    for q in questions:
        h.update(json.dumps(q.to_dict(), sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def taxonomy_digest(taxonomy: Any) -> str | None:
    if taxonomy is None:
        return None
    paths = [
        taxonomy.path_names(int(taxonomy.paths[i][taxonomy.leaf_depth[i] - 1]))
        for i in range(taxonomy.n_leaves)
    ]
    return f"{taxonomy.name}:{_digest_json([taxonomy.leaves, paths, taxonomy.ranks])[:16]}"


def run_id(identity: dict[str, Any]) -> str:
    return _digest_json(identity)[:16]


def identity_diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Differing items, skipping those ``new`` does not know yet (``None`` in ``new`` for the
    model's content, dtype, an API model's request settings and a vision LLM's image
    processing, before the model has loaded)."""
    diff = settings_diff(old, new)
    for key in ("model_content", "dtype", "requests", "image_processing"):
        if key in diff and diff[key][1] is None:
            del diff[key]
    return diff


def refusal(out: Path, diff: dict[str, tuple[Any, Any]]) -> RunError:
    shown = {
        k: (short(a), short(b)) if k in ("questions", "model_content") else (a, b)
        for k, (a, b) in diff.items()
    }
    return RunError(
        f"{out} holds a run with other settings ({format_diff(shown)}); resume it with the same "
        "model, questions and flags, or pass a new --out."
    )


def short(v: Any) -> Any:
    return v[:19] + "..." if isinstance(v, str) and len(v) > 22 else v


# --------------------------------------------------------------------------- predictions files
def read_done(
    path: Path, repair: bool, run: str | None = None
) -> tuple[dict[int, dict[str, Any]], list[int]]:
    """Valid lines of a predictions file by sample index, and the numbers of damaged lines.

    A damaged line (torn, not JSON, no sample index) is skipped, wherever it is; with
    ``repair`` the file is rewritten without it (the sample is redone). With ``run``, a line of
    another run id raises :class:`RunError`.
    """
    done: dict[int, dict[str, Any]] = {}
    bad: list[int] = []
    if not path.exists():
        return done, bad
    data = path.read_bytes()
    keep: list[bytes] = []
    for lineno, line in enumerate(data.splitlines(keepends=True), start=1):
        try:
            if not line.endswith(b"\n"):
                raise ValueError("torn")
            row = json.loads(line)
            sample = int(row["sample"])
        except (ValueError, KeyError, TypeError):
            if line.strip():
                bad.append(lineno)
            continue
        if run is not None and row.get("run") != run:
            raise RunError(
                f"{path} holds results of another run (line {lineno} has run id "
                f"{row.get('run')!r}, this run is {run!r}); pass a new --out."
            )
        done[sample] = row
        keep.append(line)
    if repair and bad:
        atomic_write(path, b"".join(keep))
    return done, bad


def shards(out: Path) -> list[Path]:
    return sorted(out.glob("predictions.rank*.jsonl"))


def collect_done(
    out: Path, repair: bool, run: str | None = None
) -> tuple[dict[int, dict[str, Any]], dict[str, list[int]]]:
    """Valid lines of ``predictions.jsonl`` and the rank shards; damaged line numbers per file."""
    done, damaged = {}, {}
    for path in [out / "predictions.jsonl", *shards(out)]:
        rows, bad = read_done(path, repair, run)
        done.update(rows)
        if bad:
            damaged[path.name] = bad
    return done, damaged


def _safe_row(row: dict[str, Any]) -> str:
    """A strict JSON line; a row with a non-finite number becomes an error row (never ``NaN``
    in the file, never a score)."""
    try:
        return dumps_line(row)
    except ValueError:
        keep = {k: row[k] for k in ("sample", "image", "label", "run") if k in row}
        keep["error"] = "the model returned a non-finite score (NaN or infinity)"
        return dumps_line(keep)


class PredictionWriter:
    def __init__(self, path: Path):
        self.path = path
        self.f = open(path, "a", encoding="utf-8")  # noqa: SIM115 (open for the whole run)
        self.n = 0

    def write(self, rows: list[dict[str, Any]]) -> None:
        try:
            self.f.write("".join(_safe_row(r) for r in rows))
            self.f.flush()
            os.fsync(self.f.fileno())
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise RunError(
                    f"The disk is full while writing {self.path}: the {self.n} samples finished "
                    "in this run are kept. Free some space and run the same command again to "
                    "resume."
                ) from None
            raise
        self.n += len(rows)

    def close(self) -> None:
        import contextlib

        with contextlib.suppress(OSError):
            self.f.close()


def write_predictions(out: Path, rows: list[dict[str, Any]]) -> None:
    """Replace ``predictions.jsonl`` with ``rows`` (sorted by sample) and drop the rank shards."""
    rows = sorted(rows, key=lambda r: int(r["sample"]))
    atomic_write(out / "predictions.jsonl", "".join(_safe_row(r) for r in rows))
    for shard in shards(out):
        shard.unlink()


def merge_predictions(out: Path, n: int) -> list[dict[str, Any]]:
    """Merge the rank shards and earlier lines into ``predictions.jsonl``: one line per sample,
    in question order."""
    done, _ = collect_done(out, repair=False)
    rows = [done[i] for i in sorted(done) if i < n]
    write_predictions(out, rows)
    return rows
