"""The training loop of one stage, on ``accelerate``.

Data order is a pure function of the seed and counters (see :mod:`xstilts.train.sampling`),
so a stage killed at any moment and started again with the same config resumes from its
last checkpoint and ends with the same weights as an uninterrupted run (CPU, same seed).

Distribution: every process computes the same global batch order and takes a strided shard
of every batch (``batch_size`` is the global micro-batch size); DDP averages gradients.
Evaluation shards the dev set through an accelerate-prepared DataLoader and gathers the
outputs with ``gather_for_metrics``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from xstilts.errors import CheckpointError, ConfigError, DataError, XStiltsError
from xstilts.tasks.formats._common import stack_in_order
from xstilts.train import checkpoint as ckpt
from xstilts.train.config import TrainConfig
from xstilts.train.data import (
    TaskData,
    check_nonempty,
    feature_lengths,
    featurize_task,
    has_labels,
    load_task_data,
    rows,
)
from xstilts.train.sampling import MLM_TASK, BatchStream, StreamState, TaskSampler, shard_batch, task_probabilities

logger = logging.getLogger(__name__)

_LABEL_KEYS = ("labels", "start_positions", "end_positions")
_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


@dataclass
class TrainResult:
    """What a stage produced. ``dev_metrics``: {task: {metric: value}} on the English dev set."""

    model_dir: Path
    steps: int
    dev_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    skipped: bool = False
    best_score: float | None = None
    best_step: int | None = None
    output_dir: Path | None = None
    seconds: float = 0.0
    loop_seconds: float = 0.0  # the training loop alone (no set-up, final evaluation or saving)
    task_batches: dict[str, int] = field(default_factory=dict)  # micro-batches drawn per task ("__mlm__" for MLM)


class _StageModule(nn.Module):
    """The multi-task model plus training-only modules (the MLM head); one forward for DDP."""

    def __init__(self, model: nn.Module, mlm_head: nn.Module | None):
        super().__init__()
        self.model = model
        self.mlm_head = mlm_head

    def forward(self, task: str, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if task != MLM_TASK:
            return self.model(task, **batch)
        labels = batch["labels"]
        hidden = self.model.encode(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        chosen = labels != -100
        logits = self.mlm_head(hidden[chosen])
        loss = nn.functional.cross_entropy(logits.float(), labels[chosen])
        return {"loss": loss}


def max_positions(encoder: nn.Module) -> int | None:
    """Longest sequence the encoder's position embeddings allow (None: relative positions, no limit)."""
    cfg = encoder.config
    n = getattr(cfg, "max_position_embeddings", None)
    if n is None:
        return None
    if getattr(cfg, "model_type", "") in ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert"):
        n -= (getattr(cfg, "pad_token_id", 1) or 1) + 1  # RoBERTa position ids start after the padding index
    return int(n)


def resolve_start(model: str) -> str:
    """Where a stage starts: a stage output dir or checkpoint dir maps to its ``model/``.

    A directory that is none of an xstilts model dir, a stage/checkpoint dir or a
    ``save_pretrained`` directory is a :class:`CheckpointError`.
    """
    p = Path(model).expanduser()
    if not p.is_dir():
        return model
    if (p / "xstilts_model.json").is_file() or (p / "config.json").is_file():
        return str(p)
    if (p / "model" / "xstilts_model.json").is_file():
        return str(p / "model")
    if (p / "checkpoints").is_dir():
        steps = ckpt.list_checkpoints(p / "checkpoints")
        if steps:
            return str(steps[-1] / "model")
        raise CheckpointError(f"{p} is a stage directory with no finished model and no checkpoint")
    raise CheckpointError(f"{p} is not a model or checkpoint directory (no xstilts_model.json, config.json, model/ or checkpoints/)")


def _adamw(groups: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
    """AdamW with the fused kernel where torch has one for these parameters (CPU and CUDA in
    torch >= 2.4): the same update maths in one kernel, ~5x faster than the multi-tensor path
    on CPU for e5-small's 25M dense parameters; else the default implementation."""
    groups = list(groups)
    try:
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, ValueError, TypeError) as err:  # device/dtype without a fused kernel
        logger.debug("fused AdamW unavailable (%s); using the default implementation", err)
        return torch.optim.AdamW(groups, lr=lr)


def _named_param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay, seen = [], [], set()
    for name, p in module.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        low = name.lower()
        (no_decay if name.endswith("bias") or "norm" in low else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _seed_int(*words: int) -> int:
    return int(np.random.SeedSequence([int(w) for w in words]).generate_state(1)[0])


def _make_accelerator(config: TrainConfig, output_dir: Path, find_unused: bool) -> Any:
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.state import AcceleratorState, GradientState

    mp = _PRECISION[config.precision]
    if config.precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("fp16 mixed precision needs a GPU; use bf16 or fp32 on CPU", key="precision")
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") not in (None, mp):
        # a previous stage in this process used another precision: accelerate's state is a
        # process-wide singleton, so start it afresh (the process group itself is kept)
        AcceleratorState._reset_state()
        GradientState._reset_state()
    kwargs = [DistributedDataParallelKwargs(find_unused_parameters=find_unused)]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    # accelerate only sets up multi-process CPU (gloo) when asked for the CPU explicitly
    cpu = world > 1 and not torch.cuda.is_available()
    acc = Accelerator(mixed_precision=mp, log_with=config.trackers or None, project_dir=str(output_dir),
                      kwargs_handlers=kwargs, cpu=cpu)
    if acc.num_processes != world:
        raise XStiltsError(f"launched with WORLD_SIZE={world} but accelerate set up {acc.num_processes} process(es); "
                           "use `accelerate launch` or `torchrun` with a matching configuration")
    return acc


def _read_done(output_dir: Path) -> dict[str, Any] | None:
    f = output_dir / "DONE"
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{f} is unreadable ({exc}); delete it to finish the stage again") from None


class _Logger:
    """Appends JSON lines to output_dir/log.jsonl (main process) and to accelerate trackers."""

    def __init__(self, path: Path, accelerator: Any, enabled: bool):
        self.path, self.acc, self.enabled = path, accelerator, enabled

    def truncate_after(self, step: int) -> None:
        """Drop records a killed run wrote after its last checkpoint (they are redone)."""
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by the kill
            if rec.get("step", 0) <= step:
                kept.append(line)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(k + "\n" for k in kept))
        os.replace(tmp, self.path)

    def log(self, record: dict[str, Any], step: int) -> None:
        if self.enabled:
            with self.path.open("a") as fh:
                fh.write(json.dumps(record, sort_keys=True) + "\n")
        flat: dict[str, float] = {}
        for k, v in record.items():
            if isinstance(v, (int, float)) and k != "step":
                flat[k] = v
            elif isinstance(v, dict):
                for task, scores in v.items():
                    if isinstance(scores, dict):
                        flat.update({f"{k}/{task}/{m}": s for m, s in scores.items() if isinstance(s, (int, float))})
        if self.acc.trackers and flat:
            self.acc.log(flat, step=step)


def train_stage(config: TrainConfig, output_dir: str | Path, *, task_data: dict[str, TaskData] | None = None) -> TrainResult:
    """Train one stage (see docs/ARCHITECTURE.md, layer ``train``); resume if it was interrupted.

    ``task_data`` optionally supplies tasks directly (name -> :class:`TaskData`, e.g. synthetic
    tasks) instead of resolving ``config.tasks`` through the catalog.

    Writes ``output_dir/model/`` (final MultiTaskModel with heads), ``checkpoints/step-N/``
    and ``checkpoints/best/``, ``log.jsonl`` and ``DONE``. A finished stage is not redone
    (``TrainResult.skipped``). Raises :class:`ConfigError`, :class:`UnknownNameError`,
    :class:`CheckpointError`, :class:`ModelLoadError` before any training on bad input.
    """
    t_start = time.time()
    output_dir = Path(output_dir).expanduser()
    config_hash = config.hash()
    done = _read_done(output_dir)
    if done is not None:
        if done.get("config_hash") != config_hash:
            raise CheckpointError(f"{output_dir} holds a finished stage trained with another config (hash "
                                  f"{done.get('config_hash')}, this config {config_hash}); use another output dir")
        logger.info("stage in %s is already finished (%s steps); nothing to do", output_dir, done.get("steps"))
        return TrainResult(model_dir=output_dir / "model", steps=int(done.get("steps", 0)),
                           dev_metrics=done.get("dev_metrics", {}), skipped=True, best_score=done.get("best_score"),
                           best_step=done.get("best_step"), output_dir=output_dir,
                           task_batches=done.get("task_batches", {}))

    from transformers import get_linear_schedule_with_warmup

    from xstilts.models import HeadSpec, MultiTaskModel
    from xstilts.tasks.formats import get_format
    from xstilts.tasks.formats.base import FeaturizeOptions

    # ---------------------------------------------------------------- tasks (validated before any model load)
    tds: list[TaskData] = []
    for i, mix in enumerate(config.tasks):
        if task_data is not None and mix.task in task_data:
            td = task_data[mix.task]
        else:
            td = load_task_data(mix, config, i)
        fmt = get_format(td.format)
        if fmt.head_kind is None:
            raise ConfigError(f"task '{td.name}' has format '{td.format}' (no head): it cannot be trained", key=f"tasks.{i}.task")
        if mix.head is not None and mix.head != fmt.head_kind:
            raise ConfigError(f"head '{mix.head}' does not fit task '{td.name}' (format '{td.format}' needs "
                              f"'{fmt.head_kind}')", key=f"tasks.{i}.head")
        check_nonempty(td)
        tds.append(td)
    ckpt_dir = output_dir / "checkpoints"
    existing = ckpt.list_checkpoints(ckpt_dir)  # CheckpointError on a step-N dir that is not a checkpoint
    resume_state = ckpt.read_state(existing[-1], config_hash) if existing else None

    # ---------------------------------------------------------------- model
    start = resolve_start(config.model)
    if config.init_heads and not (Path(start) / "xstilts_model.json").is_file():
        raise ConfigError(f"init_heads needs an xstilts model directory, but '{config.model}' has no heads", key="init_heads")
    from accelerate.utils import set_seed

    set_seed(config.seed)  # head / MLM-head initialisation and dropout are seeded (restored on resume)
    mtm, tokenizer = MultiTaskModel.from_pretrained(start, heads=config.init_heads)
    limit = max_positions(mtm.encoder)
    for key, length in (("max_length", config.max_length), ("mlm.max_length", config.mlm.max_length if config.mlm else None)):
        if length is not None and limit is not None and length > limit:
            raise ConfigError(f"{length} is above the model's maximum sequence length {limit}", key=key)
    for i, td in enumerate(tds):
        kind = get_format(td.format).head_kind
        num_labels = len(td.label_list) if td.label_list else 2
        if td.name in mtm.head_specs:
            have = mtm.head_specs[td.name]
            if have.kind != kind or (kind in ("classification", "tagging") and have.num_labels != num_labels):
                raise ConfigError(f"the model's head '{td.name}' is a {have.kind} head with {have.num_labels} labels; "
                                  f"the task needs {kind} with {num_labels}", key=f"tasks.{i}.task")
        else:
            mtm.add_head(HeadSpec(task=td.name, kind=kind, num_labels=num_labels, pooling=config.pooling))
    trained = {td.name for td in tds}
    for name, head in mtm.heads.items():  # heads carried over from an earlier stage but not trained here
        if name not in trained:
            head.requires_grad_(False)

    # ---------------------------------------------------------------- features
    options = FeaturizeOptions(max_length=config.max_length, doc_stride=config.doc_stride,
                               max_query_length=config.max_query_length)
    train_feats, dev_feats, streams = {}, {}, {}
    for s, td in enumerate(tds):
        feats = featurize_task(td, td.train, tokenizer, options)
        if not has_labels(feats):
            raise DataError(td.name, "training examples carry no gold labels")
        train_feats[td.name] = feats
        if td.dev:
            dev_feats[td.name] = list(featurize_task(td, td.dev, tokenizer, options))
        streams[td.name] = BatchStream(feature_lengths(feats), config.batch_size, config.seed, s, config.group_by_length)
    mlm_feats, mlm_head = None, None
    if config.mlm is not None:
        from xstilts.train.mlm import build_mlm_head, read_mlm_lines, tokenize_mlm

        if tokenizer.mask_token_id is None:
            raise ConfigError("the model's tokenizer has no mask token: MLM is not possible", key="mlm")
        lines = read_mlm_lines(config.mlm.files, config.mlm.max_examples, config.seed)
        mlm_feats = tokenize_mlm(lines, tokenizer, config.mlm.max_length or config.max_length)
        streams[MLM_TASK] = BatchStream([len(f["input_ids"]) for f in mlm_feats], config.batch_size, config.seed,
                                        len(tds), config.group_by_length)
        mlm_head = build_mlm_head(mtm.encoder)

    sizes = {td.name: len(train_feats[td.name]) for td in tds}
    sampler = TaskSampler(task_probabilities(sizes, config.sampler), config.seed,
                          config.mlm.probability if config.mlm else 0.0)
    n_task_batches = sum(streams[td.name].batches_per_epoch() for td in tds)
    if tds:
        micro_per_epoch = math.ceil(n_task_batches / (1.0 - (config.mlm.probability if config.mlm else 0.0)))
    else:
        micro_per_epoch = streams[MLM_TASK].batches_per_epoch()
    steps_per_epoch = max(1, math.ceil(micro_per_epoch / config.grad_accum))
    total_steps = config.max_steps or max(1, math.ceil(config.num_epochs * steps_per_epoch))
    warmup = math.ceil(config.warmup_ratio * total_steps)

    module = _StageModule(mtm, mlm_head)
    if resume_state is not None:
        last = existing[-1]
        loaded, _ = MultiTaskModel.load(last / "model", heads=True)
        mtm.load_state_dict(loaded.state_dict())
        del loaded
        if mlm_head is not None:
            mlm_head.load_state_dict(ckpt.load_torch(last / "extra_modules.pt")["mlm_head"], strict=False)
    if config.freeze_embeddings:
        emb = getattr(mtm.encoder, "embeddings", None) or mtm.encoder.get_input_embeddings()
        emb.requires_grad_(False)

    compact = None
    if config.compact_vocab and mlm_head is None and not config.freeze_embeddings and tds:
        from xstilts.train.compact_vocab import CompactVocabulary, collect_token_ids

        ids: set[int] = set(tokenizer.all_special_ids)
        for name in train_feats:
            ids |= collect_token_ids(train_feats[name])
        for name in dev_feats:
            ids |= collect_token_ids(dev_feats[name])
        compact = CompactVocabulary(mtm.encoder, ids)
        compact.apply()

    optimizer = _adamw(_named_param_groups(module, config.weight_decay), config.learning_rate)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total_steps)

    accelerator = _make_accelerator(config, output_dir, find_unused=len(tds) > 1 or mlm_head is not None or
                                    len(mtm.heads) > len(tds))
    is_main = accelerator.is_main_process
    rank, world = accelerator.process_index, accelerator.num_processes
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        ckpt.clean_temporaries(ckpt_dir)
    accelerator.wait_for_everyone()
    prepared_module, optimizer = accelerator.prepare(module, optimizer)
    device = accelerator.device

    step, micro = 0, 0
    best_score, best_step = None, None
    log = _Logger(output_dir / "log.jsonl", accelerator, is_main)
    if resume_state is not None:
        last = existing[-1]
        optimizer.load_state_dict(ckpt.load_torch(last / "optimizer.pt"))
        scheduler.load_state_dict(ckpt.load_torch(last / "scheduler.pt"))
        step, micro = int(resume_state["step"]), int(resume_state["micro_batches"])
        for name, st in resume_state["streams"].items():
            streams[name].state = StreamState(**st)
        if compact is not None:
            compact.decay_factor = float(resume_state.get("compact_decay_factor", 1.0))
        best_score, best_step = resume_state.get("best_score"), resume_state.get("best_step")
        log.truncate_after(step)
        rng_file = last / f"rng-{rank}.pt"
        ckpt.set_rng_state(ckpt.load_torch(rng_file if rng_file.is_file() else last / "rng-0.pt"))
        logger.info("resuming %s from %s (step %d of %d)", output_dir, last, step, total_steps)
    else:
        if is_main and (output_dir / "log.jsonl").exists():
            (output_dir / "log.jsonl").unlink()
    if config.trackers:
        hp = {k: v for k, v in config.model_dump(mode="json").items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("xstilts", config=hp)

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    formats = {td.name: get_format(td.format) for td in tds}
    by_name = {td.name: td for td in tds}

    def unwrapped() -> _StageModule:
        return accelerator.unwrap_model(prepared_module)

    def next_batch(task: str, index: int) -> tuple[dict[str, torch.Tensor], int, int]:
        global_idx = streams[task].next()
        idx = shard_batch(global_idx, rank, world)
        if task == MLM_TASK:
            from xstilts.train.mlm import collate_mlm, mask_tokens

            b = collate_mlm([mlm_feats[i] for i in idx], pad_id)
            gen = torch.Generator().manual_seed(_seed_int(config.seed, 3, index, rank))
            ids, labels = mask_tokens(b["input_ids"], b["special_tokens_mask"], tokenizer.mask_token_id,
                                      len(tokenizer), gen, config.mlm.mask_prob)
            batch = {"input_ids": ids, "attention_mask": b["attention_mask"], "labels": labels}
        else:
            batch = formats[task].collate(rows(train_feats[task], idx), pad_id)
            batch = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
            if compact is not None:
                batch["input_ids"] = compact.remap(batch["input_ids"])
        batch = {k: v.to(device) for k, v in batch.items()}
        return batch, len(global_idx), int(batch["input_ids"].shape[-1])

    def evaluate() -> dict[str, dict[str, float]]:
        results: dict[str, dict[str, float]] = {}
        net = prepared_module
        net.eval()
        for name, feats in dev_feats.items():
            td, fmt = by_name[name], formats[name]

            def collate(idx: list[int], feats=feats, fmt=fmt) -> dict[str, torch.Tensor]:
                b = fmt.collate([feats[i] for i in idx], pad_id)
                b = {k: v for k, v in b.items() if isinstance(v, torch.Tensor) and k not in _LABEL_KEYS}
                b["_index"] = torch.tensor(idx, dtype=torch.long)
                return b

            loader = accelerator.prepare_data_loader(
                torch.utils.data.DataLoader(list(range(len(feats))), batch_size=config.eval_batch_size,
                                            shuffle=False, collate_fn=collate))
            collected: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
            with torch.no_grad(), accelerator.autocast():
                for b in loader:
                    index = accelerator.gather_for_metrics(b.pop("_index")).cpu().numpy()
                    if compact is not None:
                        b["input_ids"] = compact.remap(b["input_ids"])
                    out = unwrapped().model(name, **b)
                    for k, v in out.items():
                        if k == "loss":
                            continue
                        v = v.float()
                        if v.dim() >= 2 and td.format in ("tagging", "extractive_qa"):
                            v = accelerator.pad_across_processes(v, dim=1, pad_index=-1e4)
                        collected.setdefault(k, []).append((index, accelerator.gather_for_metrics(v).cpu().numpy()))
            outputs = {k: stack_in_order(parts, len(feats), -1e4) for k, parts in collected.items()}
            preds = fmt.decode(td.dev, feats, outputs, label_list=td.label_list)
            results[name] = fmt.score(td.dev, preds, td.metric, language="en")
        net.train()
        return results

    def primary(metrics: dict[str, dict[str, float]]) -> float | None:
        vals = [m[by_name[t].primary_metric] for t, m in metrics.items() if by_name[t].primary_metric in m]
        return float(np.mean(vals)) if vals else None

    def save_model(directory: Path) -> None:
        current = ckpt_dir / f"step-{step}" / "model"
        if current.is_dir() and directory.parent != current.parent:
            # the checkpoint of this very step holds these weights: hard-link it instead of writing again
            ckpt.link_tree(current, directory)
            return
        ctx = compact.full_view() if compact is not None else contextlib.nullcontext()
        with ctx:
            unwrapped().model.save(directory, with_heads=True, tokenizer=tokenizer)

    def save_checkpoint() -> None:
        if compact is not None:
            compact.sync_full()
        tmp = ckpt_dir / f".tmp-step-{step}"
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        torch.save(ckpt.rng_state(), tmp / f"rng-{rank}.pt")
        accelerator.wait_for_everyone()
        if is_main:
            save_model(tmp / "model")
            if mlm_head is not None:
                torch.save({"mlm_head": unwrapped().mlm_head.own_state_dict()}, tmp / "extra_modules.pt")
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            state = {"step": step, "micro_batches": micro, "total_steps": total_steps, "config_hash": config_hash,
                     "streams": {k: s.state.to_dict() for k, s in streams.items()}, "best_score": best_score,
                     "best_step": best_step, "world_size": world,
                     "compact_decay_factor": compact.decay_factor if compact is not None else 1.0}
            ckpt.write_json_atomic(tmp / ckpt.STATE_FILE, state)
            ckpt.commit_dir(tmp, ckpt_dir / f"step-{step}")
            ckpt.prune_checkpoints(ckpt_dir, config.keep_last)
        accelerator.wait_for_everyone()

    def save_best(metrics: dict[str, dict[str, float]]) -> None:
        if is_main:
            tmp = ckpt_dir / ".tmp-best"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            save_model(tmp / "model")
            ckpt.write_json_atomic(tmp / ckpt.STATE_FILE, {"step": step, "dev_metrics": metrics, "score": best_score,
                                                          "config_hash": config_hash})
            ckpt.commit_dir(tmp, ckpt_dir / "best")
        accelerator.wait_for_everyone()

    # ---------------------------------------------------------------- loop
    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=step, desc="train", unit="step", dynamic_ncols=True,
               disable=not (is_main and config.progress))
    logger.info("training %s for %d steps (%d per epoch; %d process(es); tasks %s%s)", output_dir, total_steps,
                steps_per_epoch, world, ", ".join(sizes) or "-", " + MLM" if mlm_head is not None else "")
    prepared_module.train()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    # the running loss stays on the device; it is read (a host sync) only when it is logged
    loss_sum, loss_n, examples_seen, t0 = torch.zeros((), device=device), 0, 0, time.time()
    last_eval: dict[str, dict[str, float]] | None = None
    last_eval_step = -1
    saved_step = int(resume_state["step"]) if resume_state else -1
    batch_size_now, length_now = config.batch_size, config.max_length
    try:
        while step < total_steps:
            step_loss = torch.zeros((), device=device)
            for k in range(config.grad_accum):
                task = sampler.task_at(micro)
                batch, n_ex, length_now = next_batch(task, micro)
                batch_size_now = n_ex
                sync = k == config.grad_accum - 1
                ctx = contextlib.nullcontext() if sync else accelerator.no_sync(prepared_module)
                with ctx:
                    out = prepared_module(task, batch)
                    loss = out["loss"] / config.grad_accum
                    accelerator.backward(loss)
                step_loss += loss.detach()
                micro += 1
                examples_seen += n_ex
            if config.max_grad_norm is not None:
                accelerator.clip_grad_norm_(params, config.max_grad_norm)
            lr_now = scheduler.get_last_lr()[0]
            optimizer.step()
            if compact is not None and not optimizer.step_was_skipped:
                compact.record_step(lr_now, config.weight_decay)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            loss_sum += accelerator.reduce(step_loss, reduction="mean")
            loss_n += 1
            elapsed = max(time.time() - t0, 1e-9)
            if step % config.log_every == 0 or step == total_steps:
                rec = {"step": step, "loss": float(loss_sum) / loss_n, "lr": lr_now, "epoch": step / steps_per_epoch,
                       "examples_per_s": examples_seen / elapsed}
                log.log(rec, step)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", ex_s=f"{rec['examples_per_s']:.1f}")
                loss_sum, loss_n = torch.zeros((), device=device), 0
            bar.update(1)
            if dev_feats and config.eval_every and step % config.eval_every == 0:
                last_eval, last_eval_step = evaluate(), step
                score = primary(last_eval)
                log.log({"step": step, "eval": last_eval, "score": score}, step)
                if score is not None and (best_score is None or score > best_score):
                    best_score, best_step = score, step
                    save_best(last_eval)
            if config.save_every and step % config.save_every == 0 and step < total_steps:
                save_checkpoint()
                saved_step = step
    except torch.cuda.OutOfMemoryError as exc:
        raise XStiltsError(
            f"out of GPU memory at batch size {batch_size_now} ({math.ceil(batch_size_now / world)} per process) and "
            f"sequence length {length_now} (max_length {config.max_length}). Lower batch_size and raise grad_accum "
            f"to keep the effective batch (e.g. batch_size: {max(1, config.batch_size // 2)}, grad_accum: "
            f"{config.grad_accum * 2}), or lower max_length."
        ) from exc
    finally:
        bar.close()

    if device.type == "cuda":
        torch.cuda.synchronize(device)  # queued kernels belong to the loop's time
    loop_seconds = time.time() - t0
    # ---------------------------------------------------------------- end
    if step != saved_step:
        save_checkpoint()
    dev_metrics: dict[str, dict[str, float]] = {}
    if dev_feats:
        dev_metrics = last_eval if last_eval_step == step and last_eval else evaluate()
        score = primary(dev_metrics)
        log.log({"step": step, "eval": dev_metrics, "score": score, "final": True}, step)
        if score is not None and (best_score is None or score > best_score):
            best_score, best_step = score, step
            save_best(dev_metrics)
    model_dir = output_dir / "model"
    task_batches = {k: s.state.batches_drawn for k, s in streams.items()}
    if is_main:
        if config.final_model == "best" and (ckpt_dir / "best" / "model").is_dir():
            tmp = output_dir / ".tmp-model"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(ckpt_dir / "best" / "model", tmp)
            ckpt.commit_dir(tmp, model_dir)
        else:
            tmp = output_dir / ".tmp-model"
            shutil.rmtree(tmp, ignore_errors=True)
            save_model(tmp)
            ckpt.commit_dir(tmp, model_dir)
        ckpt.write_json_atomic(output_dir / "DONE", {
            "steps": step, "dev_metrics": dev_metrics, "config_hash": config_hash, "best_score": best_score,
            "best_step": best_step, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "world_size": world,
            "task_batches": task_batches, "seconds": time.time() - t_start,
            "config": config.model_dump(mode="json")})
    accelerator.wait_for_everyone()
    if config.trackers:
        accelerator.end_training()
    if compact is not None:
        compact.restore()
    seconds = time.time() - t_start
    logger.info("stage finished: %d steps in %.1fs; dev %s", step, seconds, dev_metrics)
    return TrainResult(model_dir=model_dir, steps=step, dev_metrics=dev_metrics, skipped=False, best_score=best_score,
                       best_step=best_step, output_dir=output_dir, seconds=seconds,
                       loop_seconds=loop_seconds, task_batches=task_batches)
