"""Evaluation throughput: xstilts ``zero_shot_eval`` vs a per-language ``transformers`` loop.

The job (both sides): one model (e5-small's encoder + a QA head and a NER head, the
same weights on both sides) is evaluated zero-shot on every local language of a QA
target (XQuAD, 12 languages) and a tagging target (PAN-X, every local language), on
the first ``max_examples`` examples of each language (same deterministic subsample).

- xstilts: one ``zero_shot_eval`` call per task; the model is loaded once, the features of
  all languages are sorted by length together (one stream) and cut into dynamically padded
  batches of at most the batch size where they waste the fewest tokens, run under
  ``inference_mode``.
  The feature cache is cold (a fresh cache dir), so tokenising is timed too.
- baseline: what a ``transformers`` user writes: for each language, ``Trainer.predict``
  on that language's features (the same featuriser, 384-token QA windows, stride 128),
  then the same decoder (n-best span post-processing / first-sub-token tags), with the
  same batch size. (transformers 5 removed the ``question-answering`` pipeline.)

Precision: ``fp32`` on both sides, or ``bf16`` on both sides (xstilts: ``precision="bf16"``,
the model cast once to bf16; Trainer: ``bf16_full_eval=True``, the whole model cast to bf16).

Scores: both sides score every language with the task's own scorer and report the average
of the primary metric per task (``score_xquad``, ``score_panx``), so the speed is compared at identical scores
(fp32: the same numbers up to float rounding of differently padded batches; bf16: within
bf16 rounding). ``run.py`` records both and flags a difference.

Tokenizer: xstilts unpickles the snapshot of a directory's tokenizer that the first load of the
same files wrote (``models.loading``; XLM-R: ~1 s, against 2.8-4 s for ``from_pretrained``, which
the baseline runs). The snapshot is keyed by the files' content and a model saved from a loaded
one writes the same files, so in a chain of stages only the first load of the base model's files
and the first of the files the first stage saves pay ``from_pretrained`` (plus ~0.2 s of
pickling); so do the first runs after the cache is cleared or transformers is upgraded. The
benchmark writes the snapshot before xstilts's clock starts, times the load from it, and records
what the first load took (``tokenizer_first_load_s``, untimed) and whether a snapshot was used
(``tokenizer_snapshot``: ``XSTILTS_TOKENIZER_SNAPSHOTS=0`` turns them off).

Timed: model loading + every language, end to end. Examples/s = questions + sentences
over seconds. The heads are untrained (this measures speed, not quality). Imports are not
timed on either side: the baseline imports ``datasets`` and transformers' ``Trainer`` before
its clock starts, xstilts imports ``datasets`` and the modules ``zero_shot_eval`` loads lazily
(the model loader, the inference loop, the feature cache) before its clock. Each side runs in
a process of its own, so neither inherits the other's loaded tokenizer or parsed files.

Memory: on the CPU xstilts's inference loop sets glibc's malloc to keep freed activations for
reuse (``models/cpu_memory.py``; when its first batch runs, so its featurising and model load
run with glibc's defaults). The baseline runs with glibc's defaults, except in the row with
``baseline_malloc``, where the same settings apply from its process's start: what they are
worth to anyone, and how much of the ratio is left without them.

Padding: the baseline side also counts the tokens its batches hold (each batch padded to its
longest feature, per language, in dataset order) and the tokens the same features take in one
length-sorted stream per task (what ``zero_shot_eval`` runs; :func:`padded_tokens`). Their ratio is
the speed-up that length sorting alone buys at equal tokens/s: the bound for a loop that runs
every real token through every layer, as both sides do.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def _languages(task: str, data_dir: str | None) -> list[str]:
    from xstilts.tasks.catalog import get_task
    from xstilts.tasks.loading import local_availability

    spec = get_task(task)
    avail = local_availability(spec, data_dir)
    return sorted({lang for (lang, split) in avail if split == spec.eval_split})


def _model_dir(workdir: Path, model: str) -> Path:
    """An xstilts model dir (encoder + QA head + NER head) and HF copies with the same weights."""
    import torch

    from xstilts.models import HeadSpec, MultiTaskModel, load_encoder, prepare_e5_small
    from xstilts.tasks.catalog import get_task

    path = str(prepare_e5_small()) if model == "e5-small" else model
    torch.manual_seed(0)
    encoder, tok = load_encoder(path)
    mtm = MultiTaskModel(encoder, [HeadSpec("xquad", "extractive_qa"), HeadSpec("panx", "tagging", num_labels=len(get_task("panx").label_list))], base_model=path)
    out = workdir / "model"
    mtm.save(out, tokenizer=tok)
    return out


def measure_ours(config: dict[str, Any], workdir: Path) -> dict[str, Any]:
    # imported before the clock, as the baseline imports datasets and transformers' Trainer before
    # its clock: the libraries zero_shot_eval imports when it first needs them
    import datasets  # noqa: F401
    import xstilts.models.hf_export  # noqa: F401
    import xstilts.models.predict  # noqa: F401
    import xstilts.tasks.cache  # noqa: F401
    from xstilts.evaluate import zero_shot_eval
    from xstilts.models.loading import ensure_tokenizer_snapshot, tokenizer_snapshot_path
    from xstilts.paths import ENCODER_SUBDIR

    from benchmarks.common import cold_feature_cache

    model_dir = _model_dir(workdir, config["model"])
    cold_feature_cache(workdir)  # tokenising is timed
    # the tokenizer snapshot of the model dir's files exists, as for every load after the first of
    # the same files (the snapshot's load is timed). The first load's cost (from_pretrained +
    # pickling) is measured here, untimed, and recorded.
    tokenizer_snapshot_path(model_dir / ENCODER_SUBDIR).unlink(missing_ok=True)
    t_first = time.perf_counter()
    snapshot = ensure_tokenizer_snapshot(model_dir / ENCODER_SUBDIR)
    first_load_s = time.perf_counter() - t_first if snapshot is not None else None
    n = 0
    scores: dict[str, float] = {}
    t0 = time.perf_counter()
    for task in ("xquad", "panx"):
        langs = _languages(task, config.get("data_dir"))
        rep = zero_shot_eval(model_dir, task, languages=langs, data_dir=config.get("data_dir"),
                             max_examples=config["max_examples"], batch_size=config["batch_size"],
                             precision=config.get("precision", "fp32"))
        n += sum(rep.n_examples.values())
        scores[f"score_{task}"] = _primary_average(task, rep.per_language)
    elapsed = time.perf_counter() - t0
    return {"seconds": elapsed, "examples": n, "examples_per_s": n / elapsed, **scores,
            "tokenizer_snapshot": snapshot is not None, "tokenizer_first_load_s": first_load_s}


def padded_tokens(groups: list[list[int]], batch_size: int, *, sort: bool) -> int:
    """Tokens in the batches of ``groups`` (feature lengths, one list per language), every batch
    padded to its longest feature. ``sort=False``: each group batched in its own order, batches of
    ``batch_size`` (the per-language loop); ``sort=True``: all groups as one length-sorted stream
    cut into batches as ``predict_groups`` cuts it on the CPU (``sorted_batch_sizes`` with the
    CPU's batch cost: at most ``batch_size``)."""
    from xstilts.models.predict import BATCH_COST_TOKENS, sorted_batch_sizes

    if not sort:
        batches = [run[i:i + batch_size] for run in groups for i in range(0, len(run), batch_size)]
        return sum(max(batch) * len(batch) for batch in batches)
    stream, tokens, end = sorted(length for group in groups for length in group), 0, 0
    for size in sorted_batch_sizes(stream, batch_size, BATCH_COST_TOKENS):
        end += size
        tokens += stream[end - 1] * size  # padded to its last (longest) feature
    return tokens


def _primary_average(task: str, per_language: dict[str, dict[str, float]]) -> float:
    """The unweighted mean over languages of the task's primary metric."""
    from xstilts.tasks.catalog import get_task

    key = get_task(task).primary_metric
    return sum(s[key] for s in per_language.values()) / len(per_language)


def measure_baseline(config: dict[str, Any], workdir: Path) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from safetensors.torch import load_file
    from transformers import (AutoModelForQuestionAnswering, AutoModelForTokenClassification, AutoTokenizer,
                              DataCollatorForTokenClassification, DataCollatorWithPadding, Trainer, TrainingArguments)

    from xstilts.tasks.catalog import get_task
    from xstilts.tasks.formats import FeaturizeOptions, get_format
    from xstilts.tasks.loading import load_examples

    if config.get("baseline_malloc"):  # the settings xstilts applies on the CPU, from the start
        from xstilts.models.cpu_memory import tune_cpu_allocator

        tune_cpu_allocator()
    model_dir = _model_dir(workdir, config["model"])
    data_dir = config.get("data_dir")
    n = 0
    per_language: dict[str, dict[str, dict[str, float]]] = {"xquad": {}, "panx": {}}
    lengths: dict[str, list[list[int]]] = {"xquad": [], "panx": []}
    t0 = time.perf_counter()
    enc_dir = model_dir / "encoder"
    tok = AutoTokenizer.from_pretrained(enc_dir)
    heads = load_file(str(model_dir / "heads.safetensors"))
    args = TrainingArguments(output_dir=str(workdir / "trainer"), per_device_eval_batch_size=config["batch_size"],
                             report_to=[], use_cpu=not torch.cuda.is_available(), disable_tqdm=True, dataloader_num_workers=0,
                             bf16_full_eval=config.get("precision", "fp32") == "bf16")
    qa = AutoModelForQuestionAnswering.from_pretrained(enc_dir)
    _copy_linear(qa.qa_outputs, heads, "xquad")
    xquad = get_task("xquad")
    qa_fmt = get_format("extractive_qa")
    qa_trainer = Trainer(model=qa, args=args, data_collator=DataCollatorWithPadding(tok))
    for lang in _languages("xquad", data_dir):
        exs = load_examples(xquad, lang, xquad.eval_split, data_dir=data_dir, max_examples=config["max_examples"], seed=0)
        feats = qa_fmt.featurize(exs, tok, FeaturizeOptions(max_length=384, doc_stride=128))
        lengths["xquad"].append([len(f["input_ids"]) for f in feats])
        keep = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in feats[0]]
        out = qa_trainer.predict(Dataset.from_list([{k: f[k] for k in keep} for f in feats]))
        start, end = out.predictions[:2] if isinstance(out.predictions, tuple) else out.predictions
        preds = qa_fmt.decode(exs, feats, {"start_logits": start, "end_logits": end})
        per_language["xquad"][lang] = qa_fmt.score(exs, preds, xquad.metric, language=lang)
        n += len(exs)
    panx = get_task("panx")
    fmt = get_format("tagging")
    tag = AutoModelForTokenClassification.from_pretrained(enc_dir, num_labels=len(panx.label_list))
    _copy_linear(tag.classifier, heads, "panx")
    trainer = Trainer(model=tag, args=args, data_collator=DataCollatorForTokenClassification(tok))
    for lang in _languages("panx", data_dir):
        exs = load_examples(panx, lang, panx.eval_split, data_dir=data_dir, max_examples=config["max_examples"], seed=0)
        feats = fmt.featurize(exs, tok, FeaturizeOptions(max_length=128), panx.label_list)
        lengths["panx"].append([len(f["input_ids"]) for f in feats])
        keep = [k for k in ("input_ids", "attention_mask", "token_type_ids", "labels") if k in feats[0]]
        out = trainer.predict(Dataset.from_list([{k: f[k] for k in keep} for f in feats]))
        logits = out.predictions
        preds = fmt.decode(exs, feats, {"logits": logits}, label_list=panx.label_list)
        per_language["panx"][lang] = fmt.score(exs, preds, panx.metric, language=lang)
        n += len(exs)
    elapsed = time.perf_counter() - t0  # decoding and scoring are timed on both sides
    bs = config["batch_size"]
    padding = {"tokens": sum(sum(g) for groups in lengths.values() for g in groups),
               "padded_tokens": sum(padded_tokens(g, bs, sort=False) for g in lengths.values()),
               "sorted_padded_tokens": sum(padded_tokens(g, bs, sort=True) for g in lengths.values())}
    return {"seconds": elapsed, "examples": n, "examples_per_s": n / elapsed, **padding,
            **{f"score_{task}": _primary_average(task, langs) for task, langs in per_language.items()}}


def _copy_linear(linear, heads: dict, task: str) -> None:
    """Copy the final projection of an xstilts head into an HF head (speed only: shapes match)."""
    import torch

    ws = [k for k in heads if k.startswith(f"{task}.") and k.endswith("weight") and heads[k].shape == linear.weight.shape]
    if ws:
        with torch.no_grad():
            linear.weight.copy_(heads[ws[-1]])
            bias = ws[-1][: -len("weight")] + "bias"
            if bias in heads:
                linear.bias.copy_(heads[bias])
