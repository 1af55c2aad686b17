"""Models in and out of the Hugging Face ``AutoModelFor*`` format.

**Out** (:func:`export_hf`, ``xstilts export``): one head of an xstilts model directory becomes a
standard ``AutoModelFor{SequenceClassification,TokenClassification,QuestionAnswering,MultipleChoice}``
directory (``config.json`` with ``id2label``/``label2id``, weights, tokenizer, ``README.md``)
that ``transformers`` alone loads and that gives the same outputs.

**In** (:func:`load_model`, ``xstilts eval --model DIR``): such a directory trained elsewhere
(e.g. by ``transformers.Trainer``) loads as a :class:`MultiTaskModel` with one head, named
after the task it is evaluated on, whose weights are the HF head's and whose label names are
``config.id2label`` (so :meth:`MultiTaskModel.head_for` refuses a task with other labels).

How a head maps (a registry keyed by head kind, :data:`HF_LAYOUTS`; each kind lists the weight
layouts transformers uses, tried in order)::

    classification   RoBERTa/XLM-R  classifier.dense + tanh + classifier.out_proj  (= our dense, out_proj)
                     BERT           <base>.pooler.dense + tanh, classifier          (= our dense, out_proj)
    multiple_choice  BERT, RoBERTa, XLM-R: <base>.pooler.dense + tanh, classifier (one score per choice)
    tagging          classifier            (dropout -> linear, per token)
    extractive_qa    qa_outputs            (linear to start/end logits)

The names alone do not prove that two heads compute the same function (ELECTRA's
``classifier.dense``/``out_proj`` use GELU, not tanh), so every export and import is
**checked numerically**: the HF model and the xstilts model run on the same probe batch and
must give the same outputs (``atol`` 1e-4), else a :class:`~xstilts.errors.ModelLoadError`
names the model type and refuses it. Heads with ``pooling: mean`` are refused (every HF head
pools the first token), as are head kinds with no HF class (retrieval has no head).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from xstilts.errors import ModelLoadError, XStiltsError
from xstilts.models.heads import HeadSpec, MultiTaskModel, head_class
from xstilts.models.loading import save_tokenizer
from xstilts.paths import XSTILTS_MODEL_FILE

log = logging.getLogger(__name__)

#: max |difference| between the HF model's outputs and ours on the probe batch
CHECK_ATOL = 1e-4
_PROBE_TEXTS = ("Zero-shot transfer probe: the quick brown fox jumps over the lazy dog.",
                "Ein zweiter, kürzerer Satz.")


@dataclass(frozen=True)
class HFHeadLayout:
    """How one head kind maps onto a transformers task class.

    ``auto_class``: e.g. ``"AutoModelForTokenClassification"``. ``layouts``: candidate maps
    ``{our parameter prefix: HF parameter prefix}`` (``{base}`` = the HF model's
    ``base_model_prefix``), tried in order; the one whose HF names the model has is used.
    ``outputs``: the output names compared by the numerical check.
    """

    kind: str
    auto_class: str
    layouts: tuple[dict[str, str], ...]
    outputs: tuple[str, ...] = ("logits",)

    @property
    def suffix(self) -> str:
        """The architecture suffix, e.g. ``"ForTokenClassification"``."""
        return self.auto_class[len("AutoModel"):]


HF_LAYOUTS: dict[str, HFHeadLayout] = {}


def register_hf_layout(layout: HFHeadLayout, *, replace: bool = False) -> HFHeadLayout:
    """Add how a head kind maps onto a transformers class (a new head kind registers its own)."""
    head_class(layout.kind)
    if layout.kind in HF_LAYOUTS and not replace:
        raise XStiltsError(f"an HF layout for head kind '{layout.kind}' is already registered")
    HF_LAYOUTS[layout.kind] = layout
    return layout


for _layout in (
    HFHeadLayout("classification", "AutoModelForSequenceClassification",
                 ({"dense.": "classifier.dense.", "out_proj.": "classifier.out_proj."},
                  {"dense.": "{base}.pooler.dense.", "out_proj.": "classifier."})),
    HFHeadLayout("multiple_choice", "AutoModelForMultipleChoice",
                 ({"dense.": "{base}.pooler.dense.", "out_proj.": "classifier."},)),
    HFHeadLayout("tagging", "AutoModelForTokenClassification", ({"out_proj.": "classifier."},)),
    HFHeadLayout("extractive_qa", "AutoModelForQuestionAnswering", ({"out_proj.": "qa_outputs."},),
                 outputs=("start_logits", "end_logits")),
):
    register_hf_layout(_layout)


def _auto(layout: HFHeadLayout) -> Any:
    import transformers

    return getattr(transformers, layout.auto_class)


def _map_names(layout: dict[str, str], names: Sequence[str], prefix: str, *, to_hf: bool) -> dict[str, str] | None:
    """``{source name: target name}`` for every name under the layout's prefixes (None if one is not covered)."""
    pairs = [(ours, hf.replace("{base}", prefix)) for ours, hf in layout.items()]
    out: dict[str, str] = {}
    for name in names:
        for ours, hf in pairs:
            src, dst = (ours, hf) if to_hf else (hf, ours)
            if name.startswith(src):
                out[name] = dst + name[len(src):]
                break
        else:
            return None
    return out


# ---------------------------------------------------------------------- the numerical check
def _probe_batch(tokenizer: Any, kind_layout: HFHeadLayout) -> dict[str, torch.Tensor]:
    enc = tokenizer(list(_PROBE_TEXTS), padding=True, truncation=True, max_length=64, return_tensors="pt")
    batch = {k: enc[k] for k in ("input_ids", "attention_mask")}
    if kind_layout.kind == "multiple_choice":  # one question, two choices: [1, 2, L]
        batch = {k: v.unsqueeze(0) for k, v in batch.items()}
    return batch


def check_same_outputs(model: MultiTaskModel, head: str, hf_model: Any, tokenizer: Any) -> float:
    """Run both models on a probe batch; the max |difference| of their outputs. ModelLoadError
    when it exceeds :data:`CHECK_ATOL` (the HF head computes another function)."""
    spec = model.head_specs[head]
    layout = HF_LAYOUTS[spec.kind]
    batch = _probe_batch(tokenizer, layout)
    was = model.training, hf_model.training
    model.eval(), hf_model.eval()
    try:
        with torch.no_grad():
            ours = model(head, **batch)
            theirs = hf_model(**batch)
    finally:
        model.train(was[0]), hf_model.train(was[1])
    diff = max(float((ours[k].float() - getattr(theirs, k).float()).abs().max()) for k in layout.outputs)
    if not diff <= CHECK_ATOL:
        mt = getattr(hf_model.config, "model_type", "?")
        raise ModelLoadError(
            f"{type(hf_model).__name__} ({mt}) computes a different function than xstilts's {spec.kind} head "
            f"(outputs differ by up to {diff:.3g} on a probe batch): this model type cannot be converted exactly. "
            f"Supported: {supported_summary()}")
    return diff


def supported_summary() -> str:
    """One line: which head kinds map to which HF classes."""
    return "; ".join(f"{k} -> {v.auto_class}" for k, v in HF_LAYOUTS.items()) + \
        " (classification: RoBERTa/XLM-R-style or BERT-style pooler heads; pooling 'cls' only)"


# ---------------------------------------------------------------------- export
def _choose_head(model: MultiTaskModel, head: str | None, source: Path) -> str:
    if head is not None:
        if head not in model.head_specs:
            raise XStiltsError(f"{source} has no head '{head}'; its heads: {', '.join(model.head_specs) or 'none'}")
        return head
    if len(model.head_specs) != 1:
        raise XStiltsError(f"{source} has {len(model.head_specs)} heads ({', '.join(model.head_specs) or 'none'}): "
                           "an HF model has one; choose it with --head NAME")
    return next(iter(model.head_specs))


def _hf_config(model: MultiTaskModel, spec: HeadSpec, layout: HFHeadLayout, labels: Sequence[str] | None) -> Any:
    """The encoder's config with the task head's labels and architecture."""
    config = model.encoder.config.__class__.from_dict(model.encoder.config.to_dict())
    if head_class(spec.kind).has_labels:
        names = list(spec.labels or labels or [])
        if not names:
            log.warning("head '%s' has no label names: config.id2label uses LABEL_0..LABEL_%d", spec.task,
                        spec.num_labels - 1)
            names = [f"LABEL_{i}" for i in range(spec.num_labels)]
        config.num_labels = len(names)
        config.id2label = dict(enumerate(names))
        config.label2id = {n: i for i, n in enumerate(names)}
    config.finetuning_task = spec.task
    return config


def _fill_hf(model: MultiTaskModel, head: str, hf: Any, layout: HFHeadLayout) -> None:
    """Copy encoder and head weights into ``hf``; ModelLoadError when no layout covers its parameters."""
    prefix = hf.base_model_prefix
    head_state = model.heads[head].state_dict()
    state = {f"{prefix}.{k}": v for k, v in model.encoder.state_dict().items()}
    hf_names = set(hf.state_dict())
    for candidate in layout.layouts:
        mapped = _map_names(candidate, list(head_state), prefix, to_hf=True)
        if mapped is None or not set(mapped.values()) <= hf_names:
            continue
        full = {**state, **{mapped[k]: v for k, v in head_state.items()}}
        missing, unexpected = hf.load_state_dict(full, strict=False)
        if not missing and not unexpected:
            return
    raise ModelLoadError(f"{type(hf).__name__} ({hf.config.model_type}) has a head layout xstilts cannot map "
                         f"onto exactly; supported: {supported_summary()}")


def to_hf_model(model: MultiTaskModel, head: str, tokenizer: Any, *,
                labels: Sequence[str] | None = None) -> tuple[Any, float]:
    """A transformers ``AutoModelFor*`` model equal to ``model``'s encoder + head ``head``, and
    the max |difference| of their outputs on the probe batch (at most :data:`CHECK_ATOL`).
    ``labels``: names for a head saved without them."""
    spec = model.head_specs[head]
    layout = HF_LAYOUTS.get(spec.kind)
    if layout is None:
        raise XStiltsError(f"head '{head}' is a {spec.kind} head, which has no Hugging Face task class; "
                           f"exportable: {', '.join(HF_LAYOUTS)}")
    if getattr(spec, "pooling", "cls") != "cls" and spec.kind in ("classification", "multiple_choice"):
        raise XStiltsError(f"head '{head}' pools with '{spec.pooling}'; every Hugging Face {layout.suffix} head "
                           "pools the first token, so it cannot be exported exactly (train with pooling: cls)")
    config = _hf_config(model, spec, layout, labels)
    try:
        hf = _auto(layout).from_config(config)
    except ValueError as exc:
        raise ModelLoadError(f"transformers has no {layout.auto_class} for model type "
                             f"'{config.model_type}': {exc}") from None
    _fill_hf(model, head, hf, layout)
    return hf.eval(), check_same_outputs(model, head, hf, tokenizer)


@dataclass
class ExportResult:
    """What :func:`export_hf` wrote."""

    out_dir: Path
    head: str
    auto_class: str
    architecture: str
    labels: list[str] | None
    max_abs_diff: float
    pushed_to: str | None = None
    card: dict[str, Any] = field(default_factory=dict)


def export_hf(source: str | Path, out_dir: str | Path, *, head: str | None = None,
              labels: Callable[[str], Sequence[str] | None] | None = None,
              push_to_hub: str | None = None) -> ExportResult:
    """Write one head of an xstilts model (a model dir or a stage dir holding ``model/``) as a
    standard transformers ``AutoModelFor*`` directory with its tokenizer and a model card.

    ``head``: which head (default: the only one). ``labels(head name)``: label names for a head
    saved without them (e.g. the catalog's). ``push_to_hub``: also upload to that hub repo
    (fails at once, before anything is written, when the hub cannot be reached).
    """
    from xstilts.models.model_card import describe_source, write_model_card

    source = Path(source).expanduser()
    model_dir = resolve_model_dir(source)
    if push_to_hub:
        _check_hub(push_to_hub)
    model, tokenizer = MultiTaskModel.load(model_dir, heads=True)
    name = _choose_head(model, head, source)
    hf, diff = to_hf_model(model, name, tokenizer, labels=labels(name) if labels else None)
    layout = HF_LAYOUTS[model.head_specs[name].kind]
    out = Path(out_dir).expanduser()
    card = describe_source(source, model_dir, name)

    def write(directory: Path) -> None:
        hf.save_pretrained(directory)
        save_tokenizer(tokenizer, directory)
        write_model_card(directory, card, hf, layout)

    _write_atomic(out, write)
    has_labels = head_class(layout.kind).has_labels
    result = ExportResult(out, name, layout.auto_class, type(hf).__name__,
                          list(hf.config.id2label.values()) if has_labels else None, diff, card=card)
    if push_to_hub:
        _push(out, push_to_hub)
        result.pushed_to = push_to_hub
    return result


def _push(directory: Path, repo: str) -> None:
    """Upload the exported directory (model, tokenizer, card) to the hub repo ``repo``."""
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(repo, exist_ok=True)
        api.upload_folder(repo_id=repo, folder_path=str(directory), commit_message="xstilts export")
    except Exception as exc:  # noqa: BLE001 - any hub failure is one clear error; the export itself is kept
        raise XStiltsError(f"the model was exported to {directory}, but uploading it to the hub repo '{repo}' "
                           f"failed: {type(exc).__name__}: {exc}") from None


def resolve_model_dir(source: Path) -> Path:
    """``source`` itself when it is an xstilts model dir, else its ``model/`` (a stage dir)."""
    from xstilts.paths import MODEL_DIR

    for cand in (source, source / MODEL_DIR):
        if (cand / XSTILTS_MODEL_FILE).is_file():
            return cand
    raise XStiltsError(f"{source} is neither an xstilts model directory ({XSTILTS_MODEL_FILE}) nor a finished stage "
                       f"directory ({MODEL_DIR}/{XSTILTS_MODEL_FILE})")


def _check_hub(repo: str) -> None:
    from xstilts.hub import MODEL_OFFLINE_VARS, hub_endpoint, hub_offline_reason

    why = hub_offline_reason(MODEL_OFFLINE_VARS)
    if why is not None:
        raise XStiltsError(f"cannot push to the hub repo '{repo}': {why} ({hub_endpoint()}). Export without "
                           "--push-to-hub and upload the directory later (`hf upload REPO DIR`)")


def _write_atomic(out: Path, write: Callable[[Path], Any]) -> None:
    """Write into a temporary sibling, then rename it to ``out`` (an existing ``out`` is replaced)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        write(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------- import
def hf_task_layout(directory: str | Path) -> HFHeadLayout | None:
    """The head layout of a transformers ``*For<Task>`` directory (its ``config.architectures``),
    or None for anything else (an xstilts dir, an encoder, a hub id)."""
    path = Path(str(directory)).expanduser()
    if not (path / "config.json").is_file() or (path / XSTILTS_MODEL_FILE).is_file():
        return None
    try:
        archs = json.loads((path / "config.json").read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, json.JSONDecodeError):
        return None
    for layout in HF_LAYOUTS.values():
        if any(str(a).endswith(layout.suffix) for a in archs):
            return layout
    return None


def from_hf_model(hf: Any, layout: HFHeadLayout, head_name: str, tokenizer: Any, *, base_model: str) -> MultiTaskModel:
    """A :class:`MultiTaskModel` whose encoder is ``hf``'s and whose one head ``head_name`` holds
    its head weights and label names (checked on a probe batch)."""
    prefix = hf.base_model_prefix
    hf_state = hf.state_dict()
    head_names = [k for k in hf_state if not k.startswith(prefix + ".") or k.startswith(f"{prefix}.pooler.")]
    has_labels = head_class(layout.kind).has_labels
    labels = [hf.config.id2label[i] for i in range(hf.config.num_labels)] if has_labels else None
    spec = HeadSpec.for_labels(head_name, layout.kind, labels)
    for candidate in layout.layouts:
        mapped = _map_names(candidate, head_names, prefix, to_hf=False)
        if mapped is None:
            continue
        encoder = hf.base_model
        model = MultiTaskModel(encoder, base_model=base_model)
        model.add_head(spec)
        missing, unexpected = model.heads[head_name].load_state_dict({mapped[k]: hf_state[k] for k in head_names},
                                                                     strict=False)
        if missing or unexpected:
            continue
        check_same_outputs(model, head_name, hf, tokenizer)
        if any(v.startswith("{base}.pooler.") for v in candidate.values()):
            encoder.pooler = None  # its weights are the head's now (an unused pooler would also break DDP)
        return model
    raise ModelLoadError(f"{type(hf).__name__}: its head ({', '.join(head_names)}) has no xstilts equivalent; "
                         f"supported: {supported_summary()}")


def load_hf_task_model(directory: str | Path, head_name: str) -> tuple[MultiTaskModel, Any]:
    """Load a transformers ``AutoModelFor*`` directory as a MultiTaskModel with one head ``head_name``."""
    from transformers import AutoTokenizer

    layout = hf_task_layout(directory)
    if layout is None:
        raise ModelLoadError(f"{directory} is not a transformers {'/'.join(v.suffix for v in HF_LAYOUTS.values())} "
                             "model directory")
    try:
        hf = _auto(layout).from_pretrained(str(directory), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load {directory} as {layout.auto_class} (with its tokenizer): {exc}") from None
    log.info("%s: a transformers %s; its head is used as '%s' with labels %s", directory, type(hf).__name__,
             head_name, list(hf.config.id2label.values()) if head_class(layout.kind).has_labels else "-")
    return from_hf_model(hf, layout, head_name, tokenizer, base_model=str(directory)), tokenizer


def load_model(name_or_path: str | Path, *, heads: bool | list[str] = True,
               head_name: str | None = None) -> tuple[MultiTaskModel, Any]:
    """Load anything an evaluation accepts: an xstilts model dir or encoder (through
    :meth:`MultiTaskModel.from_pretrained`), or a transformers ``AutoModelFor*`` directory whose
    head becomes the head ``head_name`` (when ``heads`` asks for heads)."""
    if heads and head_name and hf_task_layout(name_or_path) is not None:
        return load_hf_task_model(name_or_path, head_name)
    return MultiTaskModel.from_pretrained(str(name_or_path), heads=heads)
