"""Zero-shot evaluation of one model on every language of a target task, in one process.

The model (and the head the task needs) is loaded once, and cast once to the inference
precision; for each language the examples are loaded (optionally a seeded subsample) and
featurised through the shared feature cache; the features of all languages run as one
length-sorted stream of batches through :func:`xstilts.models.predict.predict_groups` (the
one inference loop, shared with the training engine's dev evaluation: sorting every
language's features together pads far less than one stream per language), and the outputs
are split back, decoded and scored per language with the task's format. ``out_dir`` receives ``metrics.json`` and
``predictions/<lang>.jsonl`` (``{"id", "prediction", "gold"}`` rows, ``"input"`` too with
``save_inputs``), from which :func:`rescore` recomputes every number (it reads ``id`` and
``prediction`` only, so older files rescore too).

Retrieval tasks (Tatoeba, BUCC) need no head: sentences are embedded with
:class:`RetrievalSettings` (layer, pooling, normalisation, margin, direction) and decoded by
the retrieval format's one decoder (``RetrievalFormat.retrieve``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xstilts.errors import DataNotFoundError, UnknownNameError, XStiltsError
from xstilts.paths import METRICS_FILE, PREDICTIONS_DIR
from xstilts.provenance import provenance

if TYPE_CHECKING:  # pragma: no cover
    from xstilts.tasks.catalog import TaskSpec
    from xstilts.tasks.formats import Format

logger = logging.getLogger(__name__)

POOLINGS = ("mean", "cls")


def default_retrieval_layer(num_layers: int) -> int:
    """XTREME's default ``--specific_layer`` (7 of 12 = ``hidden_states[8]``, 13 of 24 = ``hidden_states[14]``);
    layers are numbered as XTREME numbers them (:mod:`xstilts.evaluate.retrieval_layers`)."""
    from xstilts.evaluate.retrieval_layers import default_retrieval_layer as xtreme_default

    return xtreme_default(num_layers)


@dataclass
class RetrievalSettings:
    """How sentences are embedded and matched for retrieval tasks (all recorded in the output).

    Defaults follow the XTREME reference (``third_party/evaluate_retrieval.py``, docs/PROTOCOL.md):
    mean pooling (attention-mask average) of a middle layer's hidden states, cosine similarity,
    every English sentence looks for its nearest non-English sentence (XTREME's direction;
    ``both_directions`` adds the other one as ``accuracy_xx_to_en``), 512 tokens.
    ``layer`` is numbered as XTREME's ``--specific_layer``: 0 = the first transformer layer's
    output (``hidden_states[layer + 1]``; the embedding output is not a choice), negative
    counts from the end; None = :func:`default_retrieval_layer` (7 of 12, 13 of 24).
    ``margin``: None (cosine) or ``ratio`` /
    ``distance`` / ``absolute`` (margin scoring, k=``k`` neighbours). ``prefix`` is prepended
    to every sentence (e5 models are trained with ``"query: "``).
    """

    layer: int | None = None
    pooling: str = "mean"
    normalize: bool = True
    margin: str | None = None
    both_directions: bool = False
    k: int = 4
    prefix: str = ""
    max_length: int = 512

    def validate(self) -> None:
        from xstilts.metrics import MARGINS

        if self.pooling not in POOLINGS:
            raise UnknownNameError("pooling", self.pooling, POOLINGS)
        if self.margin is not None and self.margin not in MARGINS:
            raise UnknownNameError("margin", self.margin, MARGINS)
        if self.k < 1:
            raise XStiltsError(f"retrieval k must be >= 1, got {self.k}")


@dataclass
class EvalReport:
    """Result of :func:`zero_shot_eval` / :func:`rescore` (percentages)."""

    task: str
    split: str
    per_language: dict[str, dict[str, float]] = field(default_factory=dict)
    average: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    n_examples: dict[str, int] = field(default_factory=dict)
    model: str | None = None
    wall_time_s: float | None = None
    provenance: dict[str, Any] = field(default_factory=dict)  # xstilts.provenance.provenance() of the run

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (what ``metrics.json`` holds)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvalReport:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def average_scores(per_language: dict[str, dict[str, float]]) -> dict[str, float]:
    """Unweighted mean over languages of every metric that all languages report."""
    if not per_language:
        return {}
    keys = set.intersection(*(set(s) for s in per_language.values()))
    return {k: sum(s[k] for s in per_language.values()) / len(per_language) for k in sorted(keys)}


# ---------------------------------------------------------------------- helpers
def resolve_languages(spec: TaskSpec, languages: Sequence[str] | str) -> list[str]:
    """``"all"``, a benchmark name (``"xtreme"``, ``"xtreme-r"``), a comma list or a sequence -> catalog codes."""
    from xstilts.tasks.catalog import check_language

    if isinstance(languages, str):
        key = languages.strip().lower()
        if key == "all":
            return list(spec.languages)
        if key in spec.benchmarks:
            return list(spec.benchmarks[key])
        languages = [x.strip() for x in languages.split(",") if x.strip()]
    if not languages:
        raise XStiltsError(f"no languages requested for task '{spec.name}'")
    out: list[str] = []
    for lang in languages:
        code = check_language(spec, lang)
        if code not in out:
            out.append(code)
    return out


# ---------------------------------------------------------------------- one evaluation run
@dataclass
class _Run:
    """Everything one :func:`zero_shot_eval` call resolved once: task, model, target, options."""

    spec: TaskSpec
    fmt: Format
    split: str
    languages: list[str]
    data_root: Path | None
    max_examples: int | None
    seed: int
    batch_size: int
    device: Any
    precision: str
    model: Any = None
    tokenizer: Any = None
    target: Any = None  # a head name or a models.predict.SentenceEmbedding
    labels: list[str] | None = None  # the head's label names, in the order of its outputs
    retrieval: RetrievalSettings | None = None
    options: Any = None  # FeaturizeOptions
    settings: dict[str, Any] = field(default_factory=dict)
    save_inputs: bool = False  # prediction rows also hold each example's input text

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0


def _resolve_task(task: str, languages: Sequence[str] | str, split: str | None, data_dir: str | Path | None,
                  max_examples: int | None, seed: int, batch_size: int, device: str | None, precision: str) -> _Run:
    """Check the request and resolve the task, split, languages, data dir and device (no model yet)."""
    from xstilts.models.predict import resolve_device
    from xstilts.paths import resolve_data_dir
    from xstilts.tasks.catalog import check_split, get_task
    from xstilts.tasks.formats import get_format

    spec = get_task(task)
    split = check_split(spec, split or spec.eval_split)
    langs = resolve_languages(spec, languages)
    if batch_size < 1:
        raise XStiltsError(f"batch_size must be >= 1, got {batch_size}")
    if max_examples is not None and max_examples < 1:
        raise XStiltsError(f"max_examples must be >= 1, got {max_examples}")
    return _Run(spec=spec, fmt=get_format(spec.format), split=split, languages=langs,
                data_root=resolve_data_dir(data_dir), max_examples=max_examples, seed=seed, batch_size=batch_size,
                device=resolve_device(device, precision), precision=precision)


def _load_model(run: _Run, model: str | Path, head: str | None = None) -> None:
    """Load the model once (with its heads unless the format is scored by embeddings), on the
    device, cast once to the inference precision."""
    from xstilts.models.hf_export import load_model
    from xstilts.models.loading import shared_tokenizer_backends
    from xstilts.models.predict import cast_for_inference

    # a transformers AutoModelFor* directory: its head becomes the head named `head` (or after the task);
    # the tokenizer only encodes and never leaves this run: it may share an earlier load's backend
    with shared_tokenizer_backends():
        run.model, run.tokenizer = load_model(str(model), heads=run.fmt.head_kind is not None,
                                              head_name=head or run.spec.name)
    cast_for_inference(run.model.eval().to(run.device), run.precision)


def _retrieval_target(run: _Run, retrieval: RetrievalSettings | None, max_length: int | None) -> None:
    """Embedding layer / pooling, featurisation and recorded settings of a retrieval evaluation."""
    from xstilts.models import encoder_num_layers
    from xstilts.models.predict import SentenceEmbedding
    from xstilts.tasks.formats import FeaturizeOptions

    from xstilts.evaluate.retrieval_layers import LAYER_CONVENTION, hidden_states_index, resolve_layer

    rs = replace(retrieval) if retrieval is not None else RetrievalSettings()
    rs.validate()
    n_layers = encoder_num_layers(run.model.encoder.config)
    layer = resolve_layer(rs.layer, n_layers)
    hidden = hidden_states_index(layer, n_layers)
    run.retrieval, run.target = rs, SentenceEmbedding(layer=hidden, pooling=rs.pooling)
    run.options = FeaturizeOptions(max_length=max_length or rs.max_length)
    run.settings["retrieval"] = {
        **asdict(rs), "layer": layer, "layer_convention": LAYER_CONVENTION, "hidden_states_index": hidden,
        "num_layers": n_layers, "layer_default": rs.layer is None,
        "similarity": "cosine" if rs.margin is None else f"margin-{rs.margin}",
        "direction": _retrieval_direction(run.spec.metric, rs.both_directions)}


def _retrieval_direction(metric: str, both: bool) -> str:
    """What the retrieval result's primary number retrieves (written into its settings)."""
    if metric == "bucc":
        return "bitext mining over both whole corpora (nearest neighbours both ways, margin-scored)"
    if metric == "map@20":
        return "source (query) -> pool of distinct targets, top 20"
    return "english->xx (XTREME: English queries, non-English indexed)" + (" and xx->english" if both else "")


def _head_target(run: _Run, featurize: dict[str, int], head: str | None = None) -> None:
    """The head to run and the featurisation (the format's eval length unless ``max_length`` is given)."""
    from xstilts.tasks.catalog import task_labels
    from xstilts.tasks.formats import FeaturizeOptions

    spec = run.spec
    choice = run.model.head_for(spec.name, run.fmt.head_kind, spec.label_list, head=head, known_labels=task_labels,
                                also=[spec.train_task] if spec.train_task else [])
    run.target, run.labels = choice.name, choice.labels
    defaults = {"max_length": run.fmt.eval_max_length or FeaturizeOptions().max_length}
    run.options = FeaturizeOptions(**{**defaults, **featurize})
    run.settings["head"] = run.target


def _base_settings(run: _Run, model: str | Path) -> dict[str, Any]:
    import torch

    from xstilts.tasks.catalog import task_origin

    origin = task_origin(run.spec)  # a user catalog's task: rescore reloads that file
    return {"model": str(model), "task": run.spec.name, "split": run.split, "max_examples": run.max_examples,
            "seed": run.seed, "batch_size": run.batch_size,
            "data_dir": str(run.data_root) if run.data_root else None, "torch_threads": torch.get_num_threads(),
            "device": str(run.device), "precision": run.precision, **({"catalog": str(origin)} if origin else {})}


def _load_language(run: _Run, lang: str, report: EvalReport) -> list[Any] | None:
    """The examples of one language (retrieval: with the prefix), or None when skipped (recorded)."""
    from xstilts.tasks.loading import load_examples

    try:
        examples = load_examples(run.spec, lang, run.split, data_dir=run.data_root, max_examples=run.max_examples,
                                 seed=run.seed)
    except DataNotFoundError as exc:
        report.skipped[lang] = str(exc)
        logger.warning("%s/%s skipped: %s", run.spec.name, lang, exc)
        return None
    if not examples:
        report.skipped[lang] = "no examples"
        return None
    return examples


def _featurize(run: _Run, examples: list[Any]) -> list[dict[str, Any]]:
    from xstilts.tasks.cache import featurize_cached

    if run.retrieval is not None and run.retrieval.prefix:
        p = run.retrieval.prefix
        examples = [replace(ex, source=p + ex.source, target=p + ex.target) for ex in examples]
    return featurize_cached(run.spec, examples, run.tokenizer, run.options).to_list()  # rows: feature dicts


def _decode_and_score(run: _Run, lang: str, examples: list[Any], features: list[dict[str, Any]],
                      outputs: dict[str, np.ndarray]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Scores and prediction rows of one language."""
    fmt, spec = run.fmt, run.spec
    if run.retrieval is not None:
        rs = run.retrieval
        found = fmt.retrieve(examples, features, outputs["embeddings"], spec.metric, margin=rs.margin, k=rs.k,
                             normalize=rs.normalize, both_directions=rs.both_directions)
        if found.threshold is not None:
            run.settings.setdefault("per_language", {})[lang] = {"threshold": found.threshold}
        return fmt.score_retrieval(examples, found), found.to_rows()
    preds = fmt.decode(examples, features, outputs, run.labels or spec.label_list)  # labels by name
    scores = fmt.score(examples, preds, spec.metric, language=lang)
    return scores, [{"id": ex.id, "prediction": fmt.prediction_to_json(preds[ex.id])} for ex in examples]


#: features of several languages run as one length-sorted stream of batches, up to this many
#: features per stream (bounds the memory held by the outputs of a stream's languages)
STREAM_FEATURES = 50_000


@dataclass
class _Language:
    """One language's examples and features, waiting for its stream's forward passes."""

    lang: str
    examples: list[Any]
    features: list[dict[str, Any]]


def _evaluate_languages(run: _Run, report: EvalReport, out_path: Path | None) -> None:
    """Load and featurise every language, run the features of up to :data:`STREAM_FEATURES`
    features' worth of languages as ONE length-sorted stream of batches (least padding: the
    languages' sentences of a length share batches), then decode and score each language."""
    pending: list[_Language] = []
    for lang in run.languages:
        examples = _load_language(run, lang, report)
        if examples is None:
            continue
        if run.spec.metric == "bucc":  # whole comparable corpora, mined per language (not pairs)
            from xstilts.evaluate.bucc_eval import bucc_language

            scores, rows = bucc_language(run, lang, examples)
            report.per_language[lang], report.n_examples[lang] = scores, len(examples)
            if out_path is not None:
                _write_jsonl(out_path / PREDICTIONS_DIR / f"{lang}.jsonl", rows)
            continue
        pending.append(_Language(lang, examples, _featurize(run, examples)))
        if sum(len(p.features) for p in pending) >= STREAM_FEATURES:
            _run_stream(run, pending, report, out_path)
            pending = []
    if pending:
        _run_stream(run, pending, report, out_path)


def _run_stream(run: _Run, pending: list[_Language], report: EvalReport, out_path: Path | None) -> None:
    from xstilts.models.predict import predict_groups

    outputs = predict_groups(run.model, run.target, run.fmt, [p.features for p in pending], batch_size=run.batch_size,
                             pad_token_id=run.pad_id, device=run.device, precision=run.precision, progress=True,
                             desc=f"{run.spec.name} ({len(pending)} languages)")
    for item, out in zip(pending, outputs):
        _score_language(run, item, out, report, out_path)


def _score_language(run: _Run, item: _Language, outputs: dict[str, np.ndarray], report: EvalReport,
                    out_path: Path | None) -> None:
    """Decode and score one language into ``report`` (and its predictions file)."""
    lang, examples = item.lang, item.examples
    scores, rows = _decode_and_score(run, lang, examples, item.features, outputs)
    report.per_language[lang] = scores
    report.n_examples[lang] = len(examples)
    logger.info("%s/%s: %s (%d examples)", run.spec.name, lang, _fmt_scores(scores), len(examples))
    if out_path is not None:
        from xstilts.tasks.loading import readable_rows

        # + gold (and input): readable on their own
        rows = readable_rows(examples, rows, fmt=run.fmt, inputs=run.save_inputs)
        _write_jsonl(out_path / PREDICTIONS_DIR / f"{lang}.jsonl", rows)


def _require_scores(run: _Run, report: EvalReport) -> None:
    """DataNotFoundError when every language was skipped (an empty report hides a wrong data dir)."""
    if report.per_language:
        return
    where = run.data_root if run.data_root is not None else "none (no --data-dir, XSTILTS_DATA_DIR or ../shared/data)"
    reasons = "; ".join(f"{lang}: {why}" for lang, why in list(report.skipped.items())[:3])
    more = f" (and {len(report.skipped) - 3} more languages)" if len(report.skipped) > 3 else ""
    raise DataNotFoundError(
        f"{run.spec.name}/{run.split}: no language could be evaluated, every one of "
        f"{', '.join(run.languages)} was skipped. Data dir: {where}. Looked for: {reasons}{more}. "
        f"Pass --data-dir (data_dir) pointing at the folder that holds the task's files.")


# ---------------------------------------------------------------------- public API
def zero_shot_eval(
    model: str | Path,
    task: str,
    languages: Sequence[str] | str = "all",
    split: str | None = None,
    data_dir: str | Path | None = None,
    max_examples: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    out_dir: Path | str | None = None,
    retrieval: RetrievalSettings | None = None,
    max_length: int | None = None,
    precision: str = "fp32",
    device: str | None = None,
    doc_stride: int | None = None,
    max_query_length: int | None = None,
    head: str | None = None,
    save_inputs: bool = False,
) -> EvalReport:
    """Evaluate ``model`` zero-shot on every requested language of ``task`` (see module docstring).

    ``model``: an xstilts model directory (the head is ``head`` when given, else the one named
    after the task, else after its ``train_task``; never another task's head, and its labels
    must be the task's, mapped by name: :meth:`~xstilts.models.MultiTaskModel.head_for`), a
    transformers ``AutoModelFor*`` directory (its head, named after the task, with its
    ``config.id2label``: :func:`xstilts.models.hf_export.load_model`), or for
    retrieval tasks anything :func:`~xstilts.models.load_encoder` accepts (``e5-small``, a hub
    id, a directory).
    Languages whose data is missing are reported in ``EvalReport.skipped``; the others run;
    DataNotFoundError (naming the data dir and the files looked for) when none can run.
    ``max_length`` / ``doc_stride`` / ``max_query_length``: featurisation (default: the
    format's eval length, e.g. 384 for QA, and :class:`FeaturizeOptions`' stride / query
    length; retrieval: ``retrieval.max_length``). ``device``: ``None``/``"auto"`` = the GPU
    when torch sees one, else the CPU. ``precision``: ``fp32`` (default, exact), or ``bf16`` /
    ``fp16`` (fp16 on CUDA only): the model is cast once to that dtype (HF's
    ``bf16_full_eval``; retrieval embeddings are pooled in fp32). Each predictions row holds the
    example's ``id``, ``prediction`` and ``gold``; ``save_inputs`` adds its ``input`` text.
    """
    t0 = time.perf_counter()
    run = _resolve_task(task, languages, split, data_dir, max_examples, seed, batch_size, device, precision)
    run.save_inputs = save_inputs
    _load_model(run, model, head)
    run.settings = _base_settings(run, model)
    if run.fmt.head_kind is None:
        _retrieval_target(run, retrieval, max_length)
    else:
        given = {"max_length": max_length, "doc_stride": doc_stride, "max_query_length": max_query_length}
        _head_target(run, {k: v for k, v in given.items() if v is not None}, head)
    run.settings["featurize"] = asdict(run.options)
    report = EvalReport(task=run.spec.name, split=run.split, settings=run.settings, model=str(model))
    out_path = Path(out_dir) if out_dir is not None else None
    if out_path is not None:
        (out_path / PREDICTIONS_DIR).mkdir(parents=True, exist_ok=True)
    _evaluate_languages(run, report, out_path)
    _require_scores(run, report)
    report.average = average_scores(report.per_language)
    report.wall_time_s = round(time.perf_counter() - t0, 2)
    report.provenance = provenance(config=run.settings, device=run.device)
    if out_path is not None:
        write_report(report, out_path)
    return report


def _fmt_scores(scores: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.2f}" for k, v in scores.items())


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".jsonl.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)


def write_report(report: EvalReport, out_dir: Path | str) -> Path:
    """Write ``out_dir/metrics.json`` atomically; return its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / METRICS_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report.to_json(), indent=2, ensure_ascii=False, allow_nan=True) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


# ---------------------------------------------------------------------- rescoring
def _read_predictions(path: Path) -> list[dict[str, Any]]:
    from xstilts.errors import DataError
    from xstilts.tasks.readers import iter_jsonl

    rows = []
    for line, row in iter_jsonl(path, "one JSON object per line with 'id' and 'prediction' (predictions/*.jsonl)"):
        if "id" not in row or "prediction" not in row:
            raise DataError(path, "expected an object with 'id' and 'prediction'", line=line)
        rows.append(row)
    return rows


def _read_metrics(out_dir: Path) -> EvalReport:
    from xstilts.errors import DataError

    mpath = out_dir / METRICS_FILE
    if not mpath.is_file():
        raise DataNotFoundError(f"{mpath} not found: rescore needs the output directory of an evaluation (xstilts eval --out)")
    try:
        return EvalReport.from_json(json.loads(mpath.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError) as exc:
        raise DataError(mpath, f"not a metrics file of xstilts eval ({exc})") from None


def _gold_examples(spec: TaskSpec, old: EvalReport, lang: str, root: Path | None, path: Path) -> list[Any]:
    """The examples an evaluation scored in ``lang`` (same split, subsample and seed)."""
    from xstilts.tasks.loading import load_examples

    st = old.settings
    try:
        return load_examples(spec, lang, old.split, data_dir=root, max_examples=st.get("max_examples"),
                             seed=st.get("seed", 0))
    except (DataNotFoundError, UnknownNameError) as exc:
        raise XStiltsError(f"{path}: predictions for language '{lang}' of {spec.name}/{old.split}, but no gold data: {exc}") from None


def _rescore_language(spec: TaskSpec, fmt: Format, examples: list[Any], rows: list[dict[str, Any]], lang: str,
                      path: Path) -> dict[str, float]:
    """Scores of one predictions file (formats scored by embeddings: the retrieval decoder's rows)."""
    from xstilts.tasks.formats._common import check_coverage

    if fmt.head_kind is None:
        from xstilts.tasks.formats.retrieval import Retrieval

        try:
            return fmt.score_retrieval(examples, Retrieval.from_rows(spec.metric, rows))
        except XStiltsError as exc:
            raise XStiltsError(f"{path}: {exc}") from None
    preds = {str(r["id"]): fmt.prediction_from_json(r["prediction"]) for r in rows}
    check_coverage(examples, preds, f"{path}")
    return fmt.score(examples, preds, spec.metric, language=lang)


def _recorded_task(old: EvalReport, out_dir: Path) -> Any:
    """The evaluated task; a user catalog's task is looked up after loading the recorded catalog file."""
    from xstilts.tasks.catalog import get_task, use_catalogs

    recorded = old.settings.get("catalog")
    if recorded and Path(recorded).is_file():
        use_catalogs([recorded])
    try:
        return get_task(old.task)
    except UnknownNameError:
        gone = f" (its catalog {recorded} is gone)" if recorded else ""
        raise XStiltsError(f"{out_dir / METRICS_FILE}: task '{old.task}' is in no loaded catalog{gone}; "
                           "pass --catalog FILE holding its entry") from None


def rescore(out_dir: Path | str, *, data_dir: str | Path | None = None, write: bool = False) -> EvalReport:
    """Recompute every score of an evaluation from ``out_dir/predictions/*.jsonl`` and the gold data.

    Uses the task, split, subsample (``max_examples`` + ``seed``) and retrieval settings
    recorded in ``metrics.json``. Raises XStiltsError for predictions of a language with no
    gold data, or a predictions file that misses ids. ``write=True`` rewrites metrics.json.
    """
    from xstilts.paths import resolve_data_dir
    from xstilts.tasks.formats import get_format

    out_dir = Path(out_dir)
    old = _read_metrics(out_dir)
    spec = _recorded_task(old, out_dir)
    fmt = get_format(spec.format)
    root = resolve_data_dir(data_dir if data_dir is not None else old.settings.get("data_dir"))
    pred_files = sorted((out_dir / PREDICTIONS_DIR).glob("*.jsonl"))
    if not pred_files:
        raise DataNotFoundError(f"no predictions in {out_dir / PREDICTIONS_DIR}")
    report = EvalReport(task=old.task, split=old.split, settings=old.settings, skipped=dict(old.skipped), model=old.model,
                        provenance=old.provenance)
    for path in pred_files:
        examples = _gold_examples(spec, old, path.stem, root, path)
        report.per_language[path.stem] = _rescore_language(spec, fmt, examples, _read_predictions(path), path.stem, path)
        report.n_examples[path.stem] = len(examples)
    report.average = average_scores(report.per_language)
    if write:
        write_report(report, out_dir)
    return report
