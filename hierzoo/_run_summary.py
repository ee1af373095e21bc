"""What a run's ``summary.json`` says of its predictions: the metrics, and the counts of the
answer protocols (generated replies, yes/no statements, open answers)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hierzoo.runner import EvalConfig


def summarize_run(rows: list[dict[str, Any]], taxonomy: Any, cfg: EvalConfig) -> dict[str, Any]:
    """Every metric with its 95% interval (percent) from the result rows, as ``hierzoo score``
    does."""
    from hierzoo.metrics import score_results

    n_errors = sum(1 for r in rows if r.get("error"))
    label = cfg.model if not Path(cfg.model).exists() else Path(cfg.model).resolve().name
    summary: dict[str, Any] = {
        "model": cfg.model,
        "model_label": label,
        "taxonomy": cfg.taxonomy_name,
        "task": cfg.task,
        "mode": cfg.mode,
        "protocol": cfg.protocol,
        "questions": question_set_label(cfg),
    }
    if n_errors == len(rows):
        summary.update({"n": 0, "n_errors": n_errors, "metrics": None})
        return summary
    scores = score_results([_circular_misses(r) for r in rows], taxonomy=taxonomy, ci=True)
    absent = sum(1 for r in rows for key in r if key.startswith("absent_level"))
    if absent:  # levels answered from log-probabilities that did not show every option letter
        summary["levels_with_absent_letters"] = absent
    summary.update(
        {
            "n": scores.pop("n"),
            "n_errors": scores.pop("n_errors"),
            "first_scored_level": scores.pop("first_scored_level"),
            "left_out": scores.pop("left_out"),
            "levels": scores.pop("levels"),
            "first_error": scores.pop("first_error"),
            "metrics": scores,
        }
    )
    if cfg.task == "questions" and cfg.protocol == "binary":
        summary.update(binary_answer_stats(rows, cfg.answer))
    elif cfg.task == "questions" and cfg.protocol == "open":
        summary.update(open_answer_stats(rows, cfg.answer))
    elif cfg.task == "questions" and cfg.answer == "generate":
        summary.update(generated_answer_stats(rows))
    if cfg.task == "questions" and cfg.protocol != "paper":  # a prompting experiment's name
        summary["protocol"] = cfg.protocol
    if cfg.parse != "paper":
        summary["parse"] = cfg.parse
    return summary


def question_set_label(cfg: EvalConfig) -> str:
    """What the run asked, for tables: a bundled set's name, a question file's name, or the
    images or labels the questions were built from (with their distractors and seed)."""
    if cfg.questions:
        from hierzoo.tasks import bundled_questions

        given = str(cfg.questions)
        return given if given.lower() in bundled_questions() else Path(given).name
    source = Path(cfg.labels or cfg.images or "").name
    return f"{source} ({cfg.distractors} distractors, seed {cfg.seed})"


def open_answer_stats(rows: list[dict[str, Any]], answer: str) -> dict[str, Any]:
    """What open-ended answers (``--protocol open``) add to a summary, from the result rows'
    ``match_levelK`` fields (samples without an error):

    - ``answer``: ``"generate"`` (free replies) or ``"logits"`` (the level's nodes ranked);
    - ``n_answers``: the levels answered;
    - ``match_tiers``: how many replies each tier matched, ``{"exact": ..., "synonym": ...,
      "fuzzy": ..., "none": ...}`` (``none``: scored wrong), or ``{"ranked": n}``;
    - ``match_tiers_per_level``: the same per level, ``{"level1": {...}, ...}``.
    """
    from hierzoo.open_answers import MATCH_TIERS

    tiers = ("ranked",) if answer == "logits" else MATCH_TIERS
    total = dict.fromkeys(tiers, 0)
    per_level: dict[int, dict[str, int]] = {}
    for row in rows:
        if row.get("error"):
            continue
        for key, how in row.items():
            if not key.startswith("match_level"):
                continue
            level = per_level.setdefault(int(key[len("match_level") :]), dict.fromkeys(tiers, 0))
            level[how] = level.get(how, 0) + 1
            total[how] = total.get(how, 0) + 1
    return {
        "answer": answer,
        "n_answers": sum(total.values()),
        "match_tiers": total,
        "match_tiers_per_level": {f"level{k}": per_level[k] for k in sorted(per_level)},
    }


def binary_answer_stats(rows: list[dict[str, Any]], answer: str) -> dict[str, Any]:
    """What yes/no statements (``--protocol binary``) add to a summary, from the result rows'
    ``binary_levelK`` fields (samples without an error):

    - ``answer``: ``"logits"`` or ``"generate"``;
    - ``n_statements``: the statements asked; ``n_yes``, ``n_no``, ``n_neither`` (a reply
      that starts with neither ``y`` nor ``n``, the paper's ``-1``);
    - ``n_levels``: the levels asked; ``levels_without_yes`` (predicted ``null``, scored
      wrong) and ``levels_with_several_yes`` (the first yes in asked order is the prediction).
    """
    said = [
        list(row[key].values())
        for row in rows
        if not row.get("error")
        for key in row
        if key.startswith("binary_level")
    ]
    flat = [v for level in said for v in level]
    return {
        "answer": answer,
        "n_statements": len(flat),
        "n_yes": flat.count(1),
        "n_no": flat.count(0),
        "n_neither": flat.count(-1),
        "n_levels": len(said),
        "levels_without_yes": sum(1 not in level for level in said),
        "levels_with_several_yes": sum(level.count(1) > 1 for level in said),
    }


def generated_answer_stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What generated answers add to a summary (``--answer generate``), from the result rows:

    - ``answer``: ``"generate"``;
    - ``n_answers``: the replies (asked levels of samples without an error; in circular mode
      the first rotation's);
    - ``n_unknown``: replies in which the paper's rule found no option letter (recorded as
      ``"Unknown"``, scored wrong), and ``n_unknown_per_level`` (``{"level1": ..., ...}``);
    - ``answer_agreement``: the percentage of replies whose parsed letter is the letter with
      the highest probability at the first generated token (``probs_levelK``; a tie goes to the
      earlier letter), among the replies that have those probabilities; an ``Unknown`` reply
      never agrees. ``None`` when no reply has them (a server that returns no
      log-probabilities with its replies).
    """
    from hierzoo.prompts import UNKNOWN

    per_level: dict[int, int] = {}
    n = unknown = agree = with_probs = 0
    for row in rows:
        if row.get("error"):
            continue
        for key in row:
            if not key.startswith("prediction_level"):
                continue
            level = key[len("prediction_level") :]
            letter = row.get(f"predicted_level{level}_letter")
            probs = row.get(f"probs_level{level}") or {}
            n += 1
            missed = letter == UNKNOWN
            unknown += missed
            per_level[int(level)] = per_level.get(int(level), 0) + missed
            with_probs += bool(probs)
            if probs and not missed:
                agree += max(probs, key=probs.__getitem__) == letter
    return {
        "answer": "generate",
        "n_answers": n,
        "n_unknown": unknown,
        "n_unknown_per_level": {f"level{k}": per_level[k] for k in sorted(per_level)},
        "answer_agreement": round(100 * agree / with_probs, 2) if with_probs else None,
    }


def _circular_misses(row: dict[str, Any]) -> dict[str, Any]:
    """In circular mode a level is right only if every rotation was: a level marked
    ``correct_levelk: false`` scores as wrong whatever its first answer."""
    misses = [k for k in row if k.startswith("correct_level") and row[k] is False]
    if not misses:
        return row
    row = dict(row)
    for k in misses:
        row[f"predicted_level{k[len('correct_level') :]}"] = None
    return row
