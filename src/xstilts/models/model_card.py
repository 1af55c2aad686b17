"""The model card (``README.md``) of an exported model: training chain, data and scores.

Everything is read from what the stages wrote about themselves (JSON files named in
:mod:`xstilts.paths`): the stage's ``DONE`` record (its config, steps, English dev scores and
provenance), the ``DONE`` of every stage it started from (the training chain), and, when the
stage lies in an experiment's output dir, the ``metrics.json`` of the eval stages that
evaluated its model (zero-shot scores per language). A model dir outside a stage gets a card
naming its base model and head only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from xstilts.paths import DONE_FILE, METRICS_FILE, STAGE_FILE, STAGES_DIR, XSTILTS_MODEL_FILE

_PIPELINE_TAGS = {"AutoModelForSequenceClassification": "text-classification",
                  "AutoModelForTokenClassification": "token-classification",
                  "AutoModelForQuestionAnswering": "question-answering",
                  "AutoModelForMultipleChoice": "multiple-choice"}
_MAX_CHAIN = 32


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _stage_dir_of(path: Path) -> Path | None:
    """The stage directory holding model dir (or stage dir) ``path``, if it has a ``DONE`` record."""
    for cand in (path, path.parent):
        if (cand / DONE_FILE).is_file():
            return cand
    return None


def _stage_entry(stage_dir: Path, done: dict[str, Any]) -> dict[str, Any]:
    config = done.get("config") or {}
    tasks = [{k: t.get(k) for k in ("task", "languages", "split", "max_examples") if t.get(k) is not None}
             for t in config.get("tasks") or []]
    return {"stage": stage_dir.name, "tasks": tasks, "mlm": bool(config.get("mlm")), "steps": done.get("steps"),
            "dev_metrics": done.get("dev_metrics") or {}, "finished_at": done.get("finished_at"),
            "hyperparameters": {k: config.get(k) for k in ("learning_rate", "batch_size", "grad_accum", "num_epochs",
                                                           "max_steps", "max_length", "seed", "precision")
                                if config.get(k) is not None},
            "start": config.get("model")}


def training_chain(stage_dir: Path) -> tuple[list[dict[str, Any]], str | None]:
    """The stages that produced ``stage_dir``'s model, first to last, and the base model it started from."""
    chain: list[dict[str, Any]] = []
    current: Path | None = stage_dir
    start: str | None = None
    while current is not None and len(chain) < _MAX_CHAIN:
        done = _read_json(current / DONE_FILE)
        if not isinstance(done, dict):
            break
        entry = _stage_entry(current, done)
        chain.insert(0, entry)
        start = entry["start"]
        current = _stage_dir_of(Path(start)) if start and Path(start).is_dir() else None
    return chain, start


def zero_shot_results(stage_dir: Path) -> list[dict[str, Any]]:
    """``metrics.json`` summaries of the eval stages (same output dir) that evaluated this stage's model."""
    if stage_dir.parent.name != STAGES_DIR:
        return []
    ref = f"stage:{stage_dir.name}"
    out = []
    for stage_file in sorted(stage_dir.parent.glob(f"*/{STAGE_FILE}")):
        stage = _read_json(stage_file)
        if not isinstance(stage, dict) or stage.get("kind") != "eval":
            continue
        if (stage.get("settings") or {}).get("model") != ref:
            continue
        metrics = _read_json(stage_file.parent / METRICS_FILE)
        if isinstance(metrics, dict) and metrics.get("per_language"):
            out.append({k: metrics.get(k) for k in ("task", "split", "average", "per_language", "n_examples")})
    return out


def describe_source(source: Path, model_dir: Path, head: str) -> dict[str, Any]:
    """What the card says about an export of ``head`` from ``model_dir`` (``source`` as given)."""
    meta = _read_json(model_dir / XSTILTS_MODEL_FILE) or {}
    stage_dir = _stage_dir_of(source) or _stage_dir_of(model_dir)
    card: dict[str, Any] = {"head": head, "source": str(source), "base_model": meta.get("base_model"),
                            "xstilts_version": meta.get("xstilts_version"), "chain": [], "zero_shot": [],
                            "provenance": {}}
    if stage_dir is None:
        return card
    chain, start = training_chain(stage_dir)
    done = _read_json(stage_dir / DONE_FILE) or {}
    card.update(chain=chain, zero_shot=zero_shot_results(stage_dir), provenance=done.get("provenance") or {})
    if start and not _stage_dir_of(Path(start)):
        card["base_model"] = start
    return card


# ---------------------------------------------------------------------- rendering
def _fmt_scores(scores: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in scores.items() if isinstance(v, (int, float))) or "-"


def _chain_lines(card: dict[str, Any]) -> list[str]:
    lines = [f"0. start: `{card.get('base_model') or 'unknown'}`"]
    for i, st in enumerate(card["chain"], 1):
        data = "; ".join(f"{t['task']} ({'/'.join(t.get('languages', ['en']))}, {t.get('split', 'train')}"
                         + (f", at most {t['max_examples']} examples" if t.get("max_examples") else "") + ")"
                         for t in st["tasks"]) or "-"
        hp = ", ".join(f"{k} {v}" for k, v in st["hyperparameters"].items())
        dev = "; ".join(f"{task}: {_fmt_scores(s)}" for task, s in st["dev_metrics"].items()) or "-"
        lines.append(f"{i}. stage `{st['stage']}`: {data}{' + MLM' if st['mlm'] else ''}; {st['steps']} steps "
                     f"({hp}). English dev: {dev}")
    return lines


def _zero_shot_lines(card: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for res in card["zero_shot"]:
        langs = res.get("per_language") or {}
        metrics = list(res.get("average") or {}) or sorted({m for s in langs.values() for m in s})
        lines += ["", f"### {res.get('task')} ({res.get('split')}), zero-shot", "",
                  "| language | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
        for lang, scores in list(langs.items()) + [("**average**", res.get("average") or {})]:
            lines.append(f"| {lang} | " + " | ".join(f"{scores.get(m, float('nan')):.2f}" for m in metrics) + " |")
    return lines


def _git_text(git: dict[str, Any]) -> str:
    return f", git {git.get('commit')}{' (dirty)' if git.get('dirty') else ''}" if git else ""


def render_model_card(card: dict[str, Any], hf_model: Any, auto_class: str) -> str:
    """The README.md text (YAML front matter + Markdown)."""
    config = hf_model.config
    labels = list(config.id2label.values()) if auto_class in ("AutoModelForSequenceClassification",
                                                              "AutoModelForTokenClassification") else None
    prov = card.get("provenance") or {}
    git = prov.get("git") or {}
    front = ["---", "library_name: transformers", f"pipeline_tag: {_PIPELINE_TAGS.get(auto_class, 'other')}",
             "tags: [xstilts, cross-lingual, zero-shot]", "---", ""]
    body = [f"# {card['head']} ({type(hf_model).__name__})", "",
            f"Exported by xstilts {card.get('xstilts_version') or ''} from `{card['source']}` (head `{card['head']}`). "
            f"Load it with `transformers.{auto_class}.from_pretrained(DIR)`; it gives the same outputs as the "
            "xstilts model (checked at export).", "", "## Training chain", "", *_chain_lines(card)]
    if labels:
        body += ["", "## Labels", "", ", ".join(f"{i}: `{n}`" for i, n in enumerate(labels))]
    if card["zero_shot"]:
        body += ["", "## Zero-shot scores", *_zero_shot_lines(card)]
    if prov:
        pk = prov.get("packages") or {}
        body += ["", "## Provenance", "",
                 f"- code: xstilts {pk.get('xstilts')}" + _git_text(git),
                 "- libraries: " + ", ".join(f"{k} {v}" for k, v in pk.items() if k != "xstilts"),
                 f"- python {prov.get('python')}, device {(prov.get('device') or {}).get('name')}"]
    return "\n".join(front + body) + "\n"


def write_model_card(directory: Path, card: dict[str, Any], hf_model: Any, layout: Any) -> Path:
    """Write ``directory/README.md`` and ``directory/xstilts_export.json`` (the card's data)."""
    path = Path(directory) / "README.md"
    path.write_text(render_model_card(card, hf_model, layout.auto_class), encoding="utf-8")
    (Path(directory) / "xstilts_export.json").write_text(json.dumps(card, indent=2, default=str) + "\n",
                                                        encoding="utf-8")
    return path


__all__ = ["describe_source", "render_model_card", "training_chain", "write_model_card",
           "zero_shot_results"]
