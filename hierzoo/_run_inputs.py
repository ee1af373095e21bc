"""The inputs of a run, checked before anything is claimed or loaded: the question set (read,
built from a taxonomy or from the user's images), whether its images resolve, the model's spec
and whether its family can run the mode and task."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from hierzoo.rundir import RunError
from hierzoo.tasks import (
    Question,
    QuestionError,
    build_questions,
    read_questions,
    samples_from_images,
    validate_questions,
)

if TYPE_CHECKING:
    from hierzoo.runner import EvalConfig

_IMAGE_PROBE = 32


def prepare_questions(cfg: EvalConfig) -> tuple[list[Question], Any, bool]:
    """The question set (read, or built from images), validated before any model work, and
    its taxonomy; ``built`` is true when hierzoo built it (saved as ``questions.jsonl``)."""
    from hierzoo import load_taxonomy

    name = cfg.taxonomy_name
    taxonomy = load_taxonomy(name) if name else None
    if cfg.questions:
        questions = read_questions(cfg.questions, image_root=cfg.image_root)
        built = False
    elif cfg.images or cfg.labels:
        if taxonomy is None:
            raise RunError(
                "--images / --labels need --taxonomy NAME: hierzoo builds the questions from the "
                "taxonomy."
            )
        pairs = samples_from_images(cfg.images, taxonomy, labels=cfg.labels)
        questions = build_questions(taxonomy, pairs, distractors=cfg.distractors, seed=cfg.seed)
        for q in questions:
            q.path = Path(q.image) if Path(q.image).is_file() else None
        built = True
    else:
        raise RunError(
            "Give --questions FILE, or --taxonomy NAME with --images DIR (and optionally "
            "--labels CSV)."
        )
    if cfg.limit:
        questions = questions[: cfg.limit]
    if not questions:
        raise RunError("The question set is empty.")
    for i, q in enumerate(questions):
        for k in range(q.n_levels):
            if q.answers[k] is not None:
                try:
                    q.answer_index(k)
                except QuestionError as e:
                    raise RunError(f"Question {i}: {e}") from None
    if taxonomy is not None:
        try:
            validate_questions(questions, taxonomy)
        except QuestionError as e:
            raise RunError(
                f"{e}\nCheck that --taxonomy {name} is the taxonomy of these questions."
            ) from None
    return questions, taxonomy, built


def check_images_resolve(cfg: EvalConfig, questions: list[Question]) -> None:
    """Stop before loading the model when none of the first images exist (a wrong root), with
    the path tried and the flag that fixes it. Text mode and ``--task path`` need no image."""
    if cfg.mode == "text" or cfg.task == "path":
        return
    head = questions[:_IMAGE_PROBE]
    if any(q.path is not None for q in head):
        return
    recorded = head[0].image
    if cfg.questions:
        if cfg.image_root:
            raise RunError(
                f"None of the first {len(head)} images is under --image-root {cfg.image_root!r} "
                f"(the first is recorded as {recorded!r}; hierzoo looks for the longest tail of "
                "that path under the root). Pass the folder that holds the dataset's image "
                "folders as --image-root (see docs/questions.md)."
            )
        raise RunError(
            f"None of the first {len(head)} images exists (the first is recorded as "
            f"{recorded!r}); pass --image-root DIR, the local folder the recorded paths map to."
        )
    flag = "--images (the folder the CSV's relative paths start from)" if cfg.labels else "--images"
    raise RunError(
        f"None of the first {len(head)} images exists (the first tried: {recorded!r}); check "
        f"{flag}."
    )


def resolve_spec(cfg: EvalConfig) -> Any:
    """The model's spec (zoo name, hub id or directory), or a :class:`RunError` naming the fix."""
    from hierzoo.models import UnknownModelError, resolve

    try:
        return resolve(cfg.model)
    except UnknownModelError as e:
        raise RunError(str(e)) from None


def check_mode(cfg: EvalConfig, spec: Any) -> None:
    """Stop before any image is read or the model is loaded when the model's family cannot run
    the run's mode or task at all (a text-only LLM in image mode), naming the setting to use."""
    from hierzoo.models._factory import family_class

    try:
        cls = family_class(spec.family)
    except ImportError:
        return  # loading the model names the missing extra
    try:
        cls.check_mode(cfg.mode, cfg.task, name=cfg.model)
    except ValueError as e:
        raise RunError(str(e)) from None
