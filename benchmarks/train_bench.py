"""Training throughput of one target stage: xstilts ``train_stage`` vs a plain HF ``Trainer``.

The job (both sides): PAN-X English NER, ``n_train`` training sentences (a subsample seeded
like xstilts's own: the run's seed, so both sides see the same sentences),
one epoch, the same model weights, the same features (xstilts's tagging featuriser,
labels on first sub-tokens), batch size, max length, AdamW (lr, weight decay 0.01 off
bias/LayerNorm, eps 1e-8, betas 0.9/0.999), linear warm-up 10 % + linear decay,
gradient clipping 1.0, seed and precision. The ``Trainer`` gets its best options for
this job: length-grouped batches (``train_sampling_strategy="group_by_length"``) with dynamic padding (``DataCollatorForTokenClassification``),
no logging/saving/evaluation during training, no dataloader workers (2 cores), and
the fastest AdamW torch offers on the device (``adamw_torch_fused``).

Variants (``run.py`` reports each as its own row, so the ratio says where the speed comes from):

- ``compact_vocab`` (config, default true): xstilts with its compact vocabulary on or off
  (off = the dense 250k-row embedding, gradient and AdamW update, as the Trainer has them).
- ``trimmed`` (config, default false): the Trainer gets what xstilts's compact vocabulary
  gives: its input embedding cut to the token ids the data uses (features remapped, rows
  copied; the same numbers as the full matrix for those ids), and xstilts's own batch order
  (``xstilts.train.sampling.batch_order``: the same shuffle and 50x mega-batch sort window as
  ``group_by_length``), so what is left of the ratio is the loop itself.

Timed: the training loop alone on both sides, from its first batch to its last optimizer
step (xstilts: ``TrainResult.loop_seconds``; Trainer: a callback from ``on_train_begin`` to
``on_train_end``), on features already tokenised, so set-up, saving and evaluation are
outside the comparison. Then, untimed,
both models are scored on the same PAN-X English dev sentences with the same
decoder and scorer, so the speed is compared at equal dev F1.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any



def _model_path(name: str, workdir: Path) -> str:
    if name == "e5-small":
        from xstilts.models import prepare_e5_small

        return str(prepare_e5_small())
    if name == "tiny":
        from tests.helpers import tiny_encoder_dir

        return str(tiny_encoder_dir(workdir / "tiny", hidden_size=64, layers=2))
    return name


def _data(config: dict[str, Any], tokenizer: Any):
    from xstilts.tasks.catalog import get_task
    from xstilts.tasks.formats import FeaturizeOptions, get_format
    from xstilts.tasks.loading import load_examples

    task = get_task("panx")
    fmt = get_format(task.format)
    opts = FeaturizeOptions(max_length=config["max_length"])
    train = load_examples(task, "en", "train", data_dir=config.get("data_dir"), max_examples=config["n_train"], seed=config["seed"])
    dev = load_examples(task, "en", "dev", data_dir=config.get("data_dir"), max_examples=config["n_dev"], seed=config["seed"])
    return task, fmt, opts, train, dev


def _dev_f1(fmt, task, dev, dev_feats, logits_list) -> float:
    import numpy as np

    width = max(x.shape[0] for x in logits_list)
    k = logits_list[0].shape[-1]
    logits = np.full((len(logits_list), width, k), -1e4, dtype=np.float32)
    for i, x in enumerate(logits_list):
        logits[i, : x.shape[0]] = x
    preds = fmt.decode(dev, dev_feats, {"logits": logits}, label_list=task.label_list)
    return fmt.score(dev, preds, task.metric, language="en")[task.primary_metric]


def _predict(model_call, fmt, feats, pad_id, batch_size=64):
    import torch

    outs = []
    with torch.inference_mode():
        for i in range(0, len(feats), batch_size):
            chunk = feats[i : i + batch_size]
            batch = fmt.collate(chunk, pad_id)
            batch.pop("labels", None)
            logits = model_call(batch).float()
            for j, f in enumerate(chunk):
                outs.append(logits[j, : len(f["input_ids"])].numpy())
    return outs


def _tokens(feats) -> int:
    return int(sum(sum(f["attention_mask"]) for f in feats))


def measure_baseline(config: dict[str, Any], workdir: Path) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification, Trainer, TrainingArguments

    path = _model_path(config["model"], workdir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    task, fmt, opts, train, dev = _data(config, tokenizer)
    feats = fmt.featurize(train, tokenizer, opts, task.label_list)
    dev_feats = fmt.featurize(dev, tokenizer, opts, task.label_list)
    torch.manual_seed(config["seed"])
    model = AutoModelForTokenClassification.from_pretrained(path, num_labels=len(task.label_list))
    order = None
    if config.get("trimmed"):
        feats, dev_feats = _trim_vocabulary(model, tokenizer, feats, dev_feats)
        order = _xstilts_order(feats, config)
    keep = [k for k in ("input_ids", "attention_mask", "token_type_ids", "labels") if k in feats[0]]
    ds = Dataset.from_list([{k: f[k] for k in keep} for f in feats])
    args = TrainingArguments(
        output_dir=str(workdir / "trainer"),
        per_device_train_batch_size=config["batch_size"],
        learning_rate=config["lr"],
        weight_decay=0.01,
        warmup_steps=0.1,  # a float < 1 is a ratio of total steps (transformers v5)
        lr_scheduler_type="linear",
        num_train_epochs=1,
        max_grad_norm=1.0,
        train_sampling_strategy="group_by_length",
        logging_strategy="no",
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        seed=config["seed"],
        bf16=config["precision"] == "bf16",
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        optim="adamw_torch_fused",
        disable_tqdm=True,
    )
    from transformers import TrainerCallback

    class LoopTimer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_train_end(self, args, state, control, **kw):
            self.t1 = time.perf_counter()

    timer = LoopTimer()
    trainer_cls = Trainer if order is None else _ordered_trainer(Trainer, order)
    trainer = trainer_cls(model=model, args=args, train_dataset=ds, data_collator=DataCollatorForTokenClassification(tokenizer),
                          callbacks=[timer])
    trainer.train()
    elapsed = timer.t1 - timer.t0

    model.eval()
    pad = tokenizer.pad_token_id

    def call(batch):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config["precision"] == "bf16"):
            return model(**batch).logits

    f1 = _dev_f1(fmt, task, dev, dev_feats, _predict(call, fmt, dev_feats, pad))
    return {"seconds": elapsed, "examples_per_s": len(feats) / elapsed, "tokens_per_s": _tokens(feats) / elapsed,
            "dev_f1": f1, "steps": trainer.state.global_step}


def _trim_vocabulary(model, tokenizer, feats, dev_feats):
    """Cut ``model``'s input embedding to the ids ``feats``/``dev_feats`` use (and the special
    tokens), rows copied, and remap the features' ids: the compact vocabulary, by hand."""
    import torch

    from xstilts.train.compact_vocab import collect_token_ids

    ids = sorted(collect_token_ids(feats) | collect_token_ids(dev_feats) | set(tokenizer.all_special_ids))
    table = {old: new for new, old in enumerate(ids)}
    full = model.get_input_embeddings()
    with torch.no_grad():
        trimmed = torch.nn.Embedding(len(ids), full.weight.shape[1], _weight=full.weight[torch.tensor(ids)].clone())
    model.set_input_embeddings(trimmed)
    remap = [dict(f, input_ids=[table[i] for i in f["input_ids"]]) for f in feats]
    remap_dev = [dict(f, input_ids=[table[i] for i in f["input_ids"]]) for f in dev_feats]
    # the collator pads with the tokenizer's id and XLM-R's position ids skip it: it must keep its number
    # (it does: the special ids are the lowest, and the table keeps the order)
    assert table[tokenizer.pad_token_id] == tokenizer.pad_token_id, "the pad id moved in the trimmed vocabulary"
    return remap, remap_dev


def _xstilts_order(feats, config: dict[str, Any]) -> list[int]:
    """xstilts's epoch-0 batch order of these features (shuffle + 50x mega-batch length sort), flattened."""
    from xstilts.train.sampling import batch_order

    lengths = [len(f["input_ids"]) for f in feats]
    return [i for batch in batch_order(lengths, config["batch_size"], config["seed"], 0) for i in batch]


def _ordered_trainer(trainer_cls, order: list[int]):
    """A ``Trainer`` whose training sampler yields ``order`` (one epoch)."""
    from torch.utils.data import Sampler

    class FixedOrder(Sampler):
        def __iter__(self):
            return iter(order)

        def __len__(self) -> int:
            return len(order)

    class OrderedTrainer(trainer_cls):
        def _get_train_sampler(self, *args, **kwargs):
            return FixedOrder()

    return OrderedTrainer


def measure_ours(config: dict[str, Any], workdir: Path) -> dict[str, Any]:
    import torch

    from xstilts.models import MultiTaskModel, load_encoder
    from xstilts.tasks.cache import featurize_cached
    from xstilts.train import TrainConfig, train_stage

    path = _model_path(config["model"], workdir)
    _, tokenizer = load_encoder(path)
    task, fmt, opts, train, dev = _data(config, tokenizer)
    feats = featurize_cached(task, train, tokenizer, opts)  # warm the shared cache: timing excludes tokenising
    dev_feats = fmt.featurize(dev, tokenizer, opts, task.label_list)

    cfg = TrainConfig(
        model=path,
        tasks=[{"task": "panx", "languages": ["en"], "max_examples": config["n_train"]}],
        learning_rate=config["lr"],
        weight_decay=0.01,
        warmup_ratio=0.1,
        num_epochs=1,
        batch_size=config["batch_size"],
        max_length=config["max_length"],
        max_grad_norm=1.0,
        seed=config["seed"],
        precision=config["precision"],
        eval_every=0,
        eval_max_examples=config["n_dev"],
        save_every=0,
        compact_vocab=config.get("compact_vocab", True),
        group_by_length=config.get("group_by_length", True),
        progress=False,
        data_dir=config.get("data_dir"),
    )
    result = train_stage(cfg, workdir / "stage")
    elapsed = result.loop_seconds

    model, _ = MultiTaskModel.load(result.model_dir)
    model.eval()

    def call(batch):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config["precision"] == "bf16"):
            return model("panx", **batch)["logits"]

    f1 = _dev_f1(fmt, task, dev, dev_feats, _predict(call, fmt, dev_feats, tokenizer.pad_token_id))
    return {"seconds": elapsed, "examples_per_s": len(feats) / elapsed, "tokens_per_s": _tokens(feats) / elapsed,
            "dev_f1": f1, "steps": result.steps}
