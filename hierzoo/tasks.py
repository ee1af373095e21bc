"""Four-choice question sets: the paper's format, image-root remapping, validation, building.

One question set entry covers one image at every level of its path::

    {"image": ".../001.Black_footed_Albatross/x.jpg", "label": "Black-footed Albatross",
     "split": "test", "level1": "procellariiformes",
     "choices_level1": ["procellariiformes", "apodiformes", "podicipediformes", "pelecaniformes"],
     ..., "level4": "black-footed albatross", "choices_level4": [...]}

Levels are numbered from 1 (the top level of the taxonomy); a file may start lower.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

import numpy as np

from hierzoo._io import read_text
from hierzoo.taxonomy import as_taxonomy

if TYPE_CHECKING:
    from hierzoo.taxonomy import Taxonomy

BUNDLED_QUESTIONS = {
    "cub200-random": "CUB200_with_random_choice.jsonl",
    "cub200-similar": "CUB200_with_similar_choice.jsonl",
}
BUNDLED_QUESTION_TAXONOMY = {"cub200-random": "cub200", "cub200-similar": "cub200"}
DISTRACTORS = ("random", "similar")
MAX_OPTIONS = 26
"""The most options a question may have: a vision LLM answers with a letter, A to Z."""


class QuestionError(ValueError):
    """A question set that does not fit its taxonomy or format."""


@dataclass
class Question:
    """One image's questions, one per level.

    Attributes:
        image: the image path as recorded in the file.
        label: the leaf label.
        answers: the right name per level (``None`` where a level is not asked).
        choices: the options per level, the answer among them.
        split: the data split, when recorded.
        path: the resolved local image path (see :class:`ImageResolver`), ``None`` when it
            resolves nowhere, or a :class:`RefusedImagePath` (outside the image root; reading
            it fails with the reason, recorded as the sample's error).
        extra: other fields of the file, written back unchanged.
    """

    image: str
    label: str
    answers: list[str | None]
    choices: list[list[str]]
    split: str | None = None
    path: Path | RefusedImagePath | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_levels(self) -> int:
        return len(self.answers)

    def answer_index(self, level: int) -> int:
        """Position of the right answer among the options of a level (0-based level index)."""
        wanted = (self.answers[level] or "").lower()
        for i, opt in enumerate(self.choices[level]):
            if opt.lower() == wanted:
                return i
        raise QuestionError(
            f"The answer {self.answers[level]!r} of level {level + 1} is not among its options "
            f"{self.choices[level]!r} (image {self.image!r}); add it to choices_level{level + 1}."
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"image": self.image, "label": self.label}
        if self.split is not None:
            out["split"] = self.split
        for k, (ans, opts) in enumerate(zip(self.answers, self.choices), start=1):
            out[f"level{k}"] = ans
            out[f"choices_level{k}"] = list(opts)
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, row: dict[str, Any], where: str = "") -> Question:
        for key in ("image", "label", "level1", "choices_level1"):
            if key not in row:
                raise QuestionError(
                    f"{where}: missing field {key!r}; a question needs image, label, levelK and "
                    "choices_levelK."
                )
        answers: list[str | None] = []
        choices: list[list[str]] = []
        k = 1
        while f"level{k}" in row or f"choices_level{k}" in row:
            opts = row.get(f"choices_level{k}")
            if not isinstance(opts, list) or not all(isinstance(o, str) for o in opts):
                raise QuestionError(
                    f"{where}: choices_level{k} is {opts!r}; expected a list of option names."
                )
            if len(opts) > MAX_OPTIONS:
                raise QuestionError(
                    f"{where}: choices_level{k} has {len(opts)} options; a question has at most "
                    f"{MAX_OPTIONS} (a vision LLM answers with a letter, A to Z). Drop options."
                )
            seen: set[str] = set()
            for o in opts:
                if o.strip().lower() in seen:
                    raise QuestionError(
                        f"{where}: choices_level{k} repeats {o!r} (names are compared "
                        f"case-insensitively): {opts!r}; keep each option once."
                    )
                seen.add(o.strip().lower())
            answer = row.get(f"level{k}")
            if answer is not None and not isinstance(answer, str):
                raise QuestionError(
                    f"{where}: level{k} is {answer!r}; expected the name of the right option (a "
                    "string), or null where the level is not asked."
                )
            answers.append(answer)
            choices.append(list(opts))
            k += 1
        known = (
            {"image", "label", "split"}
            | {f"level{i}" for i in range(1, k)}
            | {f"choices_level{i}" for i in range(1, k)}
        )
        later = sorted(key for key in row if _LEVEL_FIELD.match(key) and key not in known)
        if later:
            raise QuestionError(
                f"{where}: level{k} and choices_level{k} are missing, but {later[0]} is given; "
                f"give every level from level1 (level{k}: null where the level is not asked)."
            )
        return cls(
            image=str(row["image"]),
            label=str(row["label"]),
            answers=answers,
            choices=choices,
            split=row.get("split"),
            extra={key: v for key, v in row.items() if key not in known},
        )


_LEVEL_FIELD = re.compile(r"(choices_)?level[1-9][0-9]*\Z")


class ImagePathError(PermissionError):
    """A recorded image path that hierzoo refuses to read: it resolves outside the image root."""


class RefusedImagePath(os.PathLike):
    """The :attr:`Question.path` of a recorded image path that climbs out of the image root
    (``/x/images/../../out/secret.jpg`` under ``--image-root /x/images``).

    Opening it fails: ``os.fspath`` raises :class:`ImagePathError` naming the recorded path and
    the root, so every image reader (PIL, the tensor decoders, the byte readers) records that
    sample as an error and the run goes on. ``str()`` gives the recorded path.
    """

    __slots__ = ("recorded", "root", "resolved")

    def __init__(self, recorded: str, root: Path, resolved: str):
        self.recorded = recorded
        self.root = root
        self.resolved = resolved

    @property
    def reason(self) -> str:
        return (
            f"The image path {self.recorded!r} resolves to {self.resolved!r}, outside "
            f"--image-root {str(self.root)!r}; it is not read. Fix the path in the question file."
        )

    def __fspath__(self) -> str:
        raise ImagePathError(self.reason)

    def __str__(self) -> str:
        return self.recorded

    def __repr__(self) -> str:
        return f"RefusedImagePath({self.recorded!r}, root={str(self.root)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (RefusedImagePath, (self.recorded, self.root, self.resolved))


class ImageResolver:
    """Map image paths recorded on another machine to files under a local root.

    ``/somewhere/CUB_200_2011/images/001.X/y.jpg`` resolves to the longest tail of that path
    that exists under the root (``root/CUB_200_2011/images/001.X/y.jpg``, else
    ``root/images/001.X/y.jpg``, ...). A tail is only tried when its first name exists directly
    under the root (remembered per name), so a large set costs about two ``stat`` calls per image.
    Relative paths resolve the same way. A tail whose ``..`` climbs out of the root (judged on
    the path's text: symbolic links inside the root are followed as usual) gives a
    :class:`RefusedImagePath`, which is never read.
    """

    def __init__(self, root: str | Path | None):
        self.root = Path(root) if root is not None else None
        self._top_exists: dict[str, bool] = {}
        self._root_text = os.path.normpath(os.path.abspath(root)) if root is not None else ""

    def _exists_top(self, name: str) -> bool:
        if name not in self._top_exists:
            self._top_exists[name] = (self.root / name).exists()
        return self._top_exists[name]

    def __call__(self, recorded: str) -> Path | RefusedImagePath | None:
        """The local path of a recorded image path, ``None`` when no tail exists, or a
        :class:`RefusedImagePath` when the first tail tried leaves the root."""
        if self.root is None:
            p = Path(recorded)
            return p if p.exists() else None
        parts = [p for p in PurePath(recorded).parts if p.strip("/\\") and not p.endswith(":\\")]
        for s in range(len(parts)):
            if self._exists_top(parts[s]):
                cand = self.root.joinpath(*parts[s:])
                text = os.path.normpath(os.path.abspath(cand))
                if os.path.commonpath([text, self._root_text]) != self._root_text:
                    return RefusedImagePath(recorded, self.root, text)
                if cand.exists():
                    return cand
        return None


def bundled_questions() -> list[str]:
    """Names of the question sets that ship with hierzoo."""
    return list(BUNDLED_QUESTIONS)


def bundled_question_taxonomy(name: str | Path) -> str | None:
    """The bundled taxonomy of a bundled question set (``"cub200-similar"`` -> ``"cub200"``),
    or ``None`` for any other name or file."""
    key = str(name).lower()
    return BUNDLED_QUESTION_TAXONOMY.get(key) if key in BUNDLED_QUESTIONS else None


def read_questions(path: str | Path, image_root: str | Path | None = None) -> list[Question]:
    """Read a question file (JSON Lines or a JSON list), or a bundled set by name.

    With ``image_root``, each question's ``path`` is resolved under it (``None`` when missing:
    a run records that image as an error rather than failing).
    """
    key = str(path).lower()
    if key in BUNDLED_QUESTIONS:
        text = (
            resources.files("hierzoo.data.questions")
            .joinpath(BUNDLED_QUESTIONS[key])
            .read_text(encoding="utf-8")
        )
        where = key
    else:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(
                f"No question file at {str(path)!r}; give a .jsonl path or one of "
                f"{bundled_questions()}."
            )
        text = read_text(p, QuestionError)
        where = str(p)
    if text.lstrip().startswith("["):
        listed = _json(text, where)
        if not isinstance(listed, list):
            raise QuestionError(f"{where}: expected a JSON list of questions (or JSON Lines).")
        rows = list(enumerate(listed, start=1))
        index = "question"
    else:
        rows = []
        for i, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                rows.append((i, _json(line, where, i)))
        index = "line"
    resolve = ImageResolver(image_root) if image_root is not None else None
    out = []
    for i, row in rows:
        at = f"{where}:{i}" if index == "line" else f"{where}: question {i}"
        if not isinstance(row, dict):
            raise QuestionError(f"{at}: expected a JSON object, but got {row!r}.")
        q = Question.from_dict(row, where=at)
        q.path = (
            resolve(q.image) if resolve else (Path(q.image) if Path(q.image).exists() else None)
        )
        out.append(q)
    return out


def _json(text: str, where: str, line: int | None = None) -> Any:
    """Parsed JSON, or a :class:`QuestionError` naming the file and line (``line``, or the
    decoder's line in a whole-file list)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise QuestionError(f"{where}:{line or e.lineno}: not valid JSON: {e}.") from None
    except RecursionError:
        at = f"{where}:{line}" if line else where
        raise QuestionError(
            f"{at}: nested deeper than the JSON reader allows; a question is a flat object of "
            "image, label, levelK and choices_levelK."
        ) from None


def write_questions(questions: Iterable[Question], path: str | Path) -> Path:
    """Write questions as JSON Lines (the paper's format); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for q in questions:
            f.write(json.dumps(q.to_dict(), ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def validate_questions(
    questions: Sequence[Question], taxonomy: Taxonomy, *, first_level: int = 0, max_errors: int = 5
) -> None:
    """Check that questions fit a taxonomy; raise one :class:`QuestionError` listing the problems.

    Checks, per question and level: the label is a leaf; no level above the last answered one
    lacks its answer; the level's answer is among its options; the answer is the label's node
    at that level; every option names a node of that level; no option is repeated. Names are
    compared case-insensitively, and a node's synonym counts as its name.
    """
    problems: list[str] = []
    level_names = taxonomy._level_name_ids
    for qi, q in enumerate(questions):
        if len(problems) >= max_errors:
            break
        where = f"question {qi} (image {q.image!r})"
        try:
            leaf_row = taxonomy.leaf_index(q.label)
        except ValueError as e:
            problems.append(f"{where}: label {q.label!r} is not a leaf of {taxonomy.name!r} ({e})")
            continue
        path = taxonomy.paths[leaf_row]
        given = [k for k, a in enumerate(q.answers) if a is not None]
        gap = next((k for k in range(given[-1]) if q.answers[k] is None), None) if given else None
        if gap is not None:
            problems.append(
                f"{where}: level{gap + 1} has no answer but level{given[-1] + 1} has; every path "
                f"of {taxonomy.name!r} has every level: give level{gap + 1} and "
                f"choices_level{gap + 1}"
            )
        for k, (ans, opts) in enumerate(zip(q.answers, q.choices)):
            lev = first_level + k
            if ans is None:
                continue
            lowered = [o.lower() for o in opts]
            if ans.lower() not in lowered:
                problems.append(
                    f"{where}: the answer {ans!r} of level{k + 1} is not among its options "
                    f"{opts!r}; "
                    f"add it to choices_level{k + 1} or fix level{k + 1}"
                )
                continue
            if len(set(lowered)) != len(lowered):
                problems.append(f"{where}: choices_level{k + 1} repeats an option: {opts!r}")
            if lev >= taxonomy.depth or path[lev] < 0:
                problems.append(
                    f"{where}: level{k + 1} is asked, but the path of {q.label!r} has only "
                    f"{int(taxonomy.leaf_depth[leaf_row])} levels"
                )
                continue
            true_name = taxonomy.names[path[lev]]
            if path[lev] not in level_names[lev].get(ans.strip().lower(), []):
                problems.append(
                    f"{where}: level{k + 1} answer {ans!r} is not {q.label!r}'s node at that level "
                    f"({true_name!r}); check the taxonomy or first_level"
                )
            missing = [o for o in opts if o.strip().lower() not in level_names[lev]]
            if missing:
                problems.append(
                    f"{where}: options {missing!r} of level{k + 1} are not nodes of that level of "
                    f"{taxonomy.name!r}"
                )
    if problems:
        more = " (stopped after the first few)" if len(problems) >= max_errors else ""
        raise QuestionError(
            "The question set does not fit the taxonomy:\n  - " + "\n  - ".join(problems) + more
        )


def build_questions(
    taxonomy: Taxonomy,
    samples: Iterable[tuple[str, str]],
    *,
    distractors: str = "random",
    seed: int = 0,
    n_choices: int = 4,
    lowercase: bool = True,
    split: str | None = None,
) -> list[Question]:
    """Build four-choice questions for (image, leaf label) pairs, at every level of each path.

    Per level the options are the right node and ``n_choices - 1`` distractors of the same level:

    - ``random``: drawn uniformly from the other nodes of the level;
    - ``similar``: nearest in the tree first: siblings (same parent), then cousins (same
      grandparent), and so on up; drawn at random within each tier.

    A level with fewer than ``n_choices`` nodes offers all of them (a one-node level, such as a
    single root, offers only the answer). Distractors never repeat the answer's name (a name
    under two parents). Options are shuffled; all draws come from one seeded generator, so the
    same inputs and seed give the same set. Names are lower-cased as in the paper's files unless
    ``lowercase=False``.
    """
    if distractors not in DISTRACTORS:
        raise ValueError(
            f"Expected `distractors` to be one of {DISTRACTORS}, but got {distractors!r}."
        )
    if n_choices < 2:
        raise ValueError(f"Expected `n_choices` >= 2, but got {n_choices}.")
    taxonomy = as_taxonomy(taxonomy)
    samples = list(samples)
    bad = next((s for s in samples if isinstance(s, str) or len(s) != 2), None)
    if bad is not None:
        raise TypeError(
            f"Expected (image, leaf label) pairs, but got {bad!r}; for one image pass "
            "[(image, label)]."
        )
    rng = np.random.default_rng(seed)
    paths = taxonomy.paths
    offsets = taxonomy.level_offsets
    names = [n.lower() for n in taxonomy.names] if lowercase else list(taxonomy.names)
    norm = [n.lower() for n in taxonomy.names]
    under = _nodes_under(taxonomy) if distractors == "similar" else None
    out = []
    for image, label in samples:
        row = taxonomy.leaf_index(label)
        path = paths[row]
        answers: list[str | None] = []
        choices: list[list[str]] = []
        for lev in range(int(taxonomy.leaf_depth[row])):
            node = int(path[lev])
            lo, hi = int(offsets[lev]), int(offsets[lev + 1])
            if under is None:
                pool = [rng.permutation(np.arange(lo, hi))]
            else:
                pool = [
                    rng.permutation(under[(lev, int(path[up]))]) for up in range(lev - 1, -1, -1)
                ]
                pool.append(rng.permutation(np.arange(lo, hi)))
            picked = _take_distinct(pool, node, norm, n_choices - 1)
            opts = [node, *picked]
            rng.shuffle(opts)
            answers.append(names[node])
            choices.append([names[i] for i in opts])
        out.append(
            Question(
                image=str(image),
                label=taxonomy.labels[row],
                answers=answers,
                choices=choices,
                split=split,
            )
        )
    return out


def _take_distinct(pools: list[np.ndarray], answer: int, norm: list[str], k: int) -> list[int]:
    taken: list[int] = []
    seen = {norm[answer]}
    for pool in pools:
        for c in pool.tolist():
            if len(taken) == k:
                return taken
            if norm[c] not in seen:
                seen.add(norm[c])
                taken.append(c)
    return taken


def _nodes_under(taxonomy: Taxonomy) -> dict[tuple[int, int], np.ndarray]:
    """``(level, ancestor) -> node ids of that level below the ancestor``."""
    groups: dict[tuple[int, int], list[int]] = {}
    for nid in range(taxonomy.n_nodes):
        lev = int(taxonomy.level[nid])
        for anc in taxonomy.ancestors(nid)[:-1]:
            groups.setdefault((lev, anc), []).append(nid)
    return {k: np.asarray(v) for k, v in groups.items()}


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
"""File extensions read as images (case-insensitive) when scanning a folder."""


def samples_from_images(
    images: str | Path | None,
    taxonomy: Taxonomy,
    labels: str | Path | None = None,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> list[tuple[str, str]]:
    """(image, leaf) pairs for ``hierzoo eval --images DIR [--labels FILE]``, whatever the layout.

    - ``labels``: a CSV of ``image,leaf`` (:func:`samples_from_csv`; relative paths are relative
      to ``images``, or to the CSV's own folder without ``images``); with the ``oxford-pets``
      taxonomy also a list in the dataset's own format (``annotations/list.txt``,
      ``trainval.txt``, ``test.txt``), naming ``images/NAME.jpg``.
    - A folder of sub-folders: the ImageFolder layout, one sub-folder per leaf
      (:func:`samples_from_folder`).
    - A flat folder of image files: the label is in each file name, ``<Leaf_name>_<n>.<ext>``
      (the Oxford-IIIT Pet layout, ``american_bulldog_12.jpg``). With ``oxford-pets``, the
      dataset's ``annotations/list.txt`` beside the folder, when present, gives the labels instead
      (and which images are labelled); ``DIR`` may also be the dataset's folder that holds
      ``images/`` and ``annotations/``.

    Raises:
        QuestionError: a folder or file that names no leaf, a malformed label file, or a folder
            that mixes image files and sub-folders, naming the culprit and the fix.
    """
    taxonomy = as_taxonomy(taxonomy)
    if labels is not None:
        if taxonomy.name == OXFORD_PETS and _is_pet_list(Path(labels)):
            folder = _pet_images_folder(Path(images)) if images is not None else Path(".")
            return _samples_from_pet_list(Path(labels), folder, taxonomy, must_exist=False)
        # relative paths in a labels CSV are relative to --images, else to the CSV's own folder
        root = images if images is not None else Path(labels).resolve().parent
        return samples_from_csv(labels, image_root=root)
    if images is None:
        raise QuestionError("Give --images DIR (and optionally --labels FILE).")
    root = Path(images)
    if not root.is_dir():
        raise FileNotFoundError(f"No image folder at {str(root)!r}.")
    if taxonomy.name == OXFORD_PETS:
        root = _pet_images_folder(root)
    exts = {e.lower() for e in extensions}
    files = sorted(
        p for p in root.iterdir() if p.suffix.lower() in exts and p.is_file() and p.name[0] != "."
    )
    folders = [p for p in root.iterdir() if p.is_dir() and p.name[0] != "."]
    if files and folders:
        raise QuestionError(
            f"{str(root)!r} holds both image files (such as {files[0].name!r}) and sub-folders "
            f"(such as {folders[0].name!r}); hierzoo reads either one sub-folder per leaf or one "
            "flat folder of <Leaf_name>_<n> files. Move one kind out, or pass --labels CSV."
        )
    if not files:
        return samples_from_folder(root, taxonomy, extensions)
    listing = root.parent / "annotations" / "list.txt"
    if taxonomy.name == OXFORD_PETS and listing.is_file():
        return _samples_from_pet_list(listing, root, taxonomy, must_exist=True, present=files)
    return _samples_from_file_names(files, root, taxonomy)


def _samples_from_file_names(
    files: Sequence[Path], root: Path, taxonomy: Taxonomy
) -> list[tuple[str, str]]:
    out, bad = [], []
    for f in files:
        leaf, why = _file_label(f.stem, taxonomy)
        if leaf is None:
            bad.append(f"{f.name!r}: {why}")
        else:
            out.append((str(f), leaf))
    if bad:
        shown = "\n  - ".join(bad[:5]) + ("\n  - ..." if len(bad) > 5 else "")
        raise QuestionError(
            f"{len(bad)} files in {str(root)!r} name no leaf of taxonomy {taxonomy.name!r}:\n  - "
            f"{shown}\nIn a flat folder each file is named <Leaf_name>_<n>.<ext> (the Oxford-IIIT "
            "Pet layout: american_bulldog_12.jpg); rename or move those files, or pass "
            "--labels CSV."
        )
    return out


def _file_label(stem: str, taxonomy: Taxonomy) -> tuple[str | None, str]:
    """The leaf a ``<Leaf_name>_<n>`` file stem names, or ``None`` and why not."""
    import re

    m = re.fullmatch(r"(.+?)_(\d+)", stem)
    if m is None:
        return None, "the name does not end in _<n> (a number)"
    name = m.group(1)
    leaf = _match_leaf(name, taxonomy)
    if leaf is not None:
        return leaf, ""
    from difflib import get_close_matches

    loose = {_loose(lab): lab for lab in taxonomy.labels}
    close = [loose[c] for c in get_close_matches(_loose(name), list(loose), n=3)]
    return None, f"{name!r} is not a leaf" + (f" (closest: {close})" if close else "")


def _match_leaf(name: str, taxonomy: Taxonomy) -> str | None:
    """The label of the leaf a name means: a label, leaf name or synonym, case-insensitively,
    else with ``_``, ``-`` and spaces read alike; ``None`` when none."""
    try:
        return taxonomy.labels[taxonomy.leaf_index(name)]
    except ValueError:
        pass
    loose = {_loose(lab): lab for lab in taxonomy.labels}
    return loose.get(_loose(name))


OXFORD_PETS = "oxford-pets"
_PET_SPECIES = {1: ("cat", "Felis catus"), 2: ("dog", "Canis familiaris")}


def _pet_images_folder(root: Path) -> Path:
    """The folder of the images: ``root`` itself, or ``root/images`` when ``root`` is the
    dataset's folder (``images/``, and ``annotations/`` beside it)."""
    inner = root / "images"
    if inner.is_dir() and not any(p.suffix.lower() in IMAGE_EXTENSIONS for p in root.iterdir()):
        return inner
    return root


def _is_pet_list(path: Path) -> bool:
    """Whether a label file is in the Oxford-IIIT Pet format: ``Image CLASS-ID SPECIES BREED-ID``
    lines, ``#`` comments."""
    if not path.is_file():
        return False
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                parts = line.split()
                return len(parts) == 4 and all(p.isdigit() for p in parts[1:])
    return False


def _samples_from_pet_list(
    listing: Path,
    folder: Path,
    taxonomy: Taxonomy,
    *,
    must_exist: bool,
    present: Sequence[Path] = (),
) -> list[tuple[str, str]]:
    """Pairs from an Oxford-IIIT Pet list file. CLASS-ID ``k`` is the ``k``-th breed of the
    bundled taxonomy (the dataset numbers its breeds alphabetically, as the taxonomy lists
    them); each line's CLASS-ID and SPECIES are checked against its image name.

    With ``must_exist``, only the listed images among ``present`` are kept, and a warning
    counts the images left out on either side."""
    import warnings

    from hierzoo.taxonomy import load_taxonomy

    classes = load_taxonomy(OXFORD_PETS).labels
    on_disk = {p.stem: p for p in present}
    out: list[tuple[str, str]] = []
    missing: list[str] = []
    for lineno, line in enumerate(read_text(listing, QuestionError).splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        where = f"{listing}:{lineno}"
        parts = line.split()
        if len(parts) != 4 or not all(p.isdigit() for p in parts[1:]):
            raise QuestionError(
                f"{where}: expected 'Image CLASS-ID SPECIES BREED-ID' (the dataset's list format, "
                f"four fields, the last three numbers), but got {line!r}."
            )
        name, class_id, species = parts[0], int(parts[1]), int(parts[2])
        if not 1 <= class_id <= len(classes):
            raise QuestionError(
                f"{where}: class {class_id} of {name!r} is outside 1..{len(classes)}, the "
                "dataset's class ids."
            )
        leaf = classes[class_id - 1]
        by_name, _ = _file_label(name, taxonomy)
        if by_name is not None and by_name != leaf:
            raise QuestionError(
                f"{where}: image {name!r} is given class {class_id} ({leaf!r}), but its name says "
                f"{by_name!r}; fix the line (class ids number the breeds alphabetically)."
            )
        leaf_node = int(taxonomy.leaf_ids[taxonomy.leaf_index(leaf)])
        lineage = {n.lower() for n in taxonomy.path_names(leaf_node)}
        expected = 1 if _PET_SPECIES[1][1].lower() in lineage else 2
        if species != expected:
            kind = _PET_SPECIES.get(species, ("unknown",))[0]
            raise QuestionError(
                f"{where}: image {name!r} is given species {species} ({kind}), but {leaf!r} is a "
                f"{_PET_SPECIES[expected][0]} (species {expected}); 1 is cat, 2 is dog."
            )
        if must_exist and name not in on_disk:
            missing.append(name)
            continue
        image = on_disk.get(name, folder / f"{name}.jpg")
        out.append((str(image), leaf))
    if must_exist:
        kept = {Path(p).stem for p, _ in out}
        unlisted = sorted(on_disk[n].name for n in set(on_disk) - kept)
        for names, what in ((unlisted, f"are not in {listing}"), (missing, "listed are missing")):
            if names:
                warnings.warn(
                    f"{len(names)} image(s) of {str(folder)!r} {what} (such as {names[0]!r}); "
                    "left out.",
                    stacklevel=3,
                )
    return out


def samples_from_folder(
    root: str | Path,
    taxonomy: Taxonomy,
    extensions: Sequence[str] = (".jpg", ".jpeg", ".png", ".webp", ".bmp"),
) -> list[tuple[str, str]]:
    """(image, leaf) pairs from an ImageFolder layout: one sub-folder per leaf.

    A folder name matches a leaf label case-insensitively, with ``_`` read as a space; a leading
    number with a dot (``001.Black_footed_Albatross``, CUB's layout) is ignored.

    Raises:
        QuestionError: a folder that names no leaf, with the closest leaves.
    """
    taxonomy = as_taxonomy(taxonomy)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"No image folder at {str(root)!r}.")
    out = []
    exts = {e.lower() for e in extensions}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        label = _folder_label(folder.name, taxonomy)
        for img in sorted(folder.rglob("*")):
            if img.suffix.lower() in exts:
                out.append((str(img), label))
    if not out:
        raise QuestionError(
            f"No images with extensions {sorted(exts)} in sub-folders of {str(root)!r}."
        )
    return out


def _loose(name: str) -> str:
    import re

    return re.sub(r"[\s_\-]+", " ", name).strip().lower()


def _folder_label(name: str, taxonomy: Taxonomy) -> str:
    import re

    base = re.sub(r"^\d+\.", "", name)
    try:
        return taxonomy.labels[taxonomy.leaf_index(base)]
    except ValueError:
        pass
    loose = {_loose(lab): lab for lab in taxonomy.labels}
    if _loose(base) in loose:
        return loose[_loose(base)]
    from difflib import get_close_matches

    close = get_close_matches(_loose(base), list(loose), n=3)
    raise QuestionError(
        f"Folder {name!r} names no leaf of taxonomy {taxonomy.name!r}"
        + (f"; closest leaves: {[loose[c] for c in close]}." if close else ".")
        + " Rename the folder to the leaf's label, or pass --labels CSV."
    )


def samples_from_csv(
    path: str | Path, image_root: str | Path | None = None
) -> list[tuple[str, str]]:
    """(image, leaf) pairs from a CSV with columns ``image,leaf`` (a header row is optional).

    A relative image path is joined to ``image_root`` (``--images``); an absolute one is kept.

    Raises:
        QuestionError: a file that is not UTF-8, or a row without two cells or with more than
            two non-empty cells, naming the file and line.
    """
    import csv
    import io

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"No label file at {str(path)!r}; expected a CSV with columns image,leaf."
        )
    out = []
    reader = csv.reader(io.StringIO(read_text(path, QuestionError), newline=""))
    for lineno, row in enumerate(reader, start=1):
        if not row or not any(c.strip() for c in row):
            continue
        if lineno == 1 and [c.strip().lower() for c in row[:2]] in (
            ["image", "leaf"],
            ["image", "label"],
        ):
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise QuestionError(
                f"{path}:{lineno}: expected two columns image,leaf, but got {row!r}."
            )
        if any(c.strip() for c in row[2:]):
            raise QuestionError(
                f"{path}:{lineno}: the row has {2 + sum(bool(c.strip()) for c in row[2:])} cells, "
                f"{row!r}; expected two, image,leaf. Quote a leaf name that holds a comma "
                '("Albatross, Laysan").'
            )
        image = row[0].strip()
        if image_root is not None and not Path(image).is_absolute():
            image = str(Path(image_root) / image)
        out.append((image, row[1].strip()))
    return out
