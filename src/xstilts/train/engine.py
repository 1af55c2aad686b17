"""The training of one stage on ``accelerate``, as a recipe class (:class:`StageTrainer`).

``setup`` builds everything (tasks, model and heads, features and data order, the MLM head,
the compact vocabulary, optimizer, scheduler, accelerator) and restores the newest usable
checkpoint; ``train`` runs the loop (``train_step``; evaluation, best-model selection and
checkpoints when due) and ``finish`` writes the final model and the ``DONE`` record.
Everything a resumed run needs besides tensors is one :class:`~xstilts.train.checkpoint.TrainState`.

Data order is a pure function of the seed and counters (see :mod:`xstilts.train.sampling`),
so a stage killed at any moment and started again with the same config resumes from its
last checkpoint and ends with the same weights as an uninterrupted run (CPU, same seed).

Distribution: every process computes the same global batch order and takes a strided shard
of every batch (``batch_size`` is the global micro-batch size); DDP averages gradients, and
each process's loss is weighted by its share of the batch
(:func:`~xstilts.train.sampling.shard_loss_weight`), so a global batch smaller than the number
of processes (the paper's batch 4 on 8 GPUs) counts every example once.

GPU: ``precision: bf16`` is the recommended setting on a GPU (Ampere or later: A100, H100,
H200; fp32 is the default only because it is exact on every device, and fp32 work there runs
with TF32 matmuls unless ``tf32: false``). After ``accelerator.prepare`` everything follows the
model's device (the compact vocabulary's full embedding and id tables included); batches are
copied through pinned memory with ``non_blocking`` and remapped on the device.
``attn_implementation`` picks the attention kernel (``flash_attention_2`` runs padding-free:
transformers unpads each batch for the varlen kernel; CUDA + flash-attn only) and
``gradient_checkpointing`` trades compute for activation memory. Batches are collated in the
training process (no DataLoader workers: collation of pre-tokenised features is a few ms a
step, and a prefetching worker would draw batches ahead of the resumable stream state).
Dev evaluation runs through the shared inference loop (:func:`xstilts.models.predict.predict`),
which shards the dev batches over the processes and gathers the outputs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xstilts.errors import CheckpointError, XStiltsError
from xstilts.fileio import write_json_atomic
from xstilts.models.cpu_memory import tune_cpu_allocator
from xstilts.models.predict import model_device, to_device
from xstilts.paths import CHECKPOINTS_DIR, MODEL_DIR, TRAIN_LOG_FILE
from xstilts.provenance import provenance
from xstilts.train import checkpoint as ckpt
from xstilts.train.carried import carried_dev_data, carried_heads, check_carried_heads
from xstilts.train.checkpoint import Checkpoint, TrainState
from xstilts.train.config import TrainConfig
from xstilts.train.data import HELDOUT_FILE, TaskData, build_stage_data, heldout_record, resolve_tasks, rows
from xstilts.train.evaluation import dev_predictions, primary_score, score_dev
from xstilts.train.modeling import (
    StageModule,
    build_model,
    build_optimizer,
    build_scheduler,
    configure_tf32,
    freeze_embeddings,
    load_weights,
    make_accelerator,
    max_positions,
    resolve_start,
)
from xstilts.train.records import DoneRecord, StageLog, read_done, write_done
from xstilts.train.sampling import MLM_TASK, shard_batch, shard_loss_weight

logger = logging.getLogger(__name__)

__all__ = ["StageTrainer", "TrainResult", "max_positions", "resolve_start", "train_stage"]


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
    stopped_early: bool = False  # early_stopping_patience ended training before its last step
    #: {task: {metric: value}} of the heads of earlier chain stages (config.carried_dev_tasks) on
    #: their English dev examples, scored with this stage's final encoder (forgetting)
    carried_dev_metrics: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class StepStats:
    """One optimizer step: its loss (on the device: reading it is a host sync), LR and examples."""

    loss: torch.Tensor
    lr: float
    examples: int


class _LossMeter:
    """Running loss between log records, kept on the device; throughput since the loop started."""

    def __init__(self, device: torch.device):
        self.device = device
        self.start = time.time()
        self.examples = 0
        self._reset()

    def _reset(self) -> None:
        self.total, self.n = torch.zeros((), device=self.device), 0

    def add(self, stats: StepStats) -> None:
        self.total += stats.loss
        self.n += 1
        self.examples += stats.examples

    def record(self, step: int, lr: float, steps_per_epoch: int) -> dict[str, Any]:
        """The log record of ``step`` (reads the loss: one host sync); starts a new window."""
        elapsed = max(time.time() - self.start, 1e-9)
        rec = {"step": step, "loss": float(self.total) / self.n, "lr": lr, "epoch": step / steps_per_epoch,
               "examples_per_s": self.examples / elapsed}
        self._reset()
        return rec


def _seed_int(*words: int) -> int:
    return int(np.random.SeedSequence([int(w) for w in words]).generate_state(1)[0])


class StageTrainer:
    """One training stage: ``setup()`` (which calls ``restore()``), then ``train()`` (which calls ``finish()``).

    The loop control (when to log, evaluate, save: jiant's metarunner) lives in :meth:`train`
    and :meth:`_after_step`; the work in :meth:`train_step`, :meth:`evaluate`,
    :meth:`save_checkpoint`, :meth:`save_best`, :meth:`save_final` and :meth:`finish`.
    """

    def __init__(self, config: TrainConfig, output_dir: str | Path, *, task_data: dict[str, TaskData] | None = None):
        self.config = config
        self.output_dir = Path(output_dir).expanduser()
        self.ckpt_dir = self.output_dir / CHECKPOINTS_DIR
        self.config_hash = config.hash()
        self.task_data = task_data
        self.t_start = time.time()
        self.state = TrainState(config_hash=self.config_hash)
        self.compact: Any = None
        self._saved_step = -1
        self._last_eval: tuple[int, dict[str, dict[str, float]]] | None = None
        self._stop_logged = False
        self._batch_shape = (config.batch_size, config.max_length)  # for the out-of-memory message

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Build the stage and restore its newest usable checkpoint. Bad input fails here,
        before any training: ConfigError, UnknownNameError, DataError, CheckpointError, ModelLoadError."""
        from xstilts.train.mlm import build_mlm_head

        tasks = resolve_tasks(self.config, self.task_data)
        ckpt.check_owner(self.ckpt_dir, self.config_hash)
        self.model, self.tokenizer = build_model(self.config, tasks)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.data = build_stage_data(self.config, tasks, self.tokenizer)
        self.carried = self._setup_carried()
        mlm_head = None
        if self.data.mlm is not None:
            mlm_head = build_mlm_head(self.model.encoder, resolve_start(self.config.model))
        self.module = StageModule(self.model, mlm_head)
        resume = ckpt.load_newest(self.ckpt_dir, self.config_hash, lambda c: load_weights(self.module, c),
                                  extra_modules=self.module.mlm_head is not None)
        if self.config.freeze_embeddings:
            freeze_embeddings(self.model)
        self.compact = self._compact_vocabulary()
        self.optimizer = build_optimizer(self.module, self.config)
        self.scheduler = build_scheduler(self.optimizer, self.config, self.data.total_steps)
        self._setup_accelerator()
        self._record_heldout()
        self.restore(resume)
        if self.config.trackers:
            hp = {k: v for k, v in self.config.model_dump(mode="json").items() if isinstance(v, (int, float, str, bool))}
            self.accelerator.init_trackers("xstilts", config=hp)

    def _setup_carried(self) -> Any:
        """Dev data of the carried heads (``carried_dev_tasks``), their heads checked; None without any."""
        if not self.config.carried_dev_tasks:
            return None
        carried = carried_dev_data(self.config, self.tokenizer)
        check_carried_heads(self.config, carried, self.model)
        return carried

    def _compact_vocabulary(self) -> Any:
        """Train only the embedding rows the stage's data uses (exact; see train/compact_vocab.py)."""
        cfg = self.config
        if not cfg.compact_vocab or self.module.mlm_head is not None or cfg.freeze_embeddings or not self.data.tasks:
            return None
        from xstilts.train.compact_vocab import CompactVocabulary, collect_token_ids

        ids: set[int] = set(self.tokenizer.all_special_ids)
        for feats in [*self.data.train.values(), *self.data.dev.values()]:
            ids |= collect_token_ids(feats)
        compact = CompactVocabulary(self.model.encoder, ids)
        compact.apply()
        return compact

    def _setup_accelerator(self) -> None:
        n_tasks = len(self.data.tasks)
        find_unused = n_tasks > 1 or self.module.mlm_head is not None or len(self.model.heads) > n_tasks
        self.accelerator = acc = make_accelerator(self.config, self.output_dir, find_unused)
        self.is_main, self.rank, self.world = acc.is_main_process, acc.process_index, acc.num_processes
        if self.is_main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            ckpt.clean_temporaries(self.ckpt_dir)
        acc.wait_for_everyone()
        self.prepared, self.optimizer = acc.prepare(self.module, self.optimizer)
        self._params = [p for g in self.optimizer.param_groups for p in g["params"]]  # clipped every step
        self.device = acc.device
        if self.compact is not None:  # the full embedding and the id tables follow the model
            self.compact.to(model_device(self.module, self.device))
        configure_tf32(self.config, self.device)
        if self.device.type == "cpu":
            tune_cpu_allocator()  # freed activations reused, not unmapped and faulted in again
        self.log = StageLog(self.output_dir / TRAIN_LOG_FILE, acc, self.is_main)

    def _record_heldout(self) -> None:
        """``heldout.json``: the examples each task held out of its training split for dev evaluation."""
        self.heldout = heldout_record(self.data.tasks)
        if self.heldout and self.is_main:
            write_json_atomic(self.output_dir / HELDOUT_FILE, self.heldout)

    def restore(self, resume: Checkpoint | None) -> None:
        """Optimizer, scheduler, data streams, counters and RNGs of the checkpoint ``resume``."""
        if resume is None:
            self.log.start_fresh()
            return
        self.optimizer.load_state_dict(resume.optimizer)
        self.scheduler.load_state_dict(resume.scheduler)
        self.state = resume.state
        for name, stream_state in self.state.streams.items():
            self.data.streams[name].state = stream_state
        if self.compact is not None:
            self.compact.decay_factor = self.state.compact_decay_factor
        self._saved_step = self.state.step
        self.log.truncate_after(self.state.step)
        ckpt.set_rng_state(resume.rng_for(self.rank))
        logger.info("resuming %s from %s (step %d of %d)", self.output_dir, resume.path, self.state.step,
                    self.data.total_steps)

    # ------------------------------------------------------------------ one step
    def _unwrapped(self) -> StageModule:
        return self.accelerator.unwrap_model(self.prepared)

    def _task_batch(self, task: str, idx: list[int]) -> dict[str, torch.Tensor]:
        batch = self.data.formats[task].collate(rows(self.data.train[task], idx), self.pad_id)
        batch = to_device({k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}, self.device)
        if self.compact is not None:  # on the device, with the table that lives there
            batch["input_ids"] = self.compact.remap(batch["input_ids"])
        return batch

    def _mlm_batch(self, idx: list[int], index: int) -> dict[str, torch.Tensor]:
        from xstilts.train.mlm import collate_mlm, mask_tokens

        b = collate_mlm([self.data.mlm[i] for i in idx], self.pad_id)
        gen = torch.Generator().manual_seed(_seed_int(self.config.seed, 3, index, self.rank))
        ids, labels = mask_tokens(b["input_ids"], b["special_tokens_mask"], self.tokenizer.mask_token_id,
                                  len(self.tokenizer), gen, self.config.mlm.mask_prob)
        return {"input_ids": ids, "attention_mask": b["attention_mask"], "labels": labels}

    def _next_batch(self, task: str, index: int) -> tuple[dict[str, torch.Tensor], int]:
        """This process's share of micro-batch ``index`` (on the device) and the global batch size."""
        global_idx = self.data.streams[task].next()
        idx = shard_batch(global_idx, self.rank, self.world)
        if task == MLM_TASK:
            batch = to_device(self._mlm_batch(idx, index), self.device)
        else:
            batch = self._task_batch(task, idx)
        self._batch_shape = (len(global_idx), int(batch["input_ids"].shape[-1]))
        return batch, len(global_idx)

    def _optimizer_step(self) -> float:
        """Clip, step the optimizer and the scheduler; returns the LR the step used."""
        if self.config.max_grad_norm is not None:
            self.accelerator.clip_grad_norm_(self._params, self.config.max_grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        if self.compact is not None and not self.optimizer.step_was_skipped:
            self.compact.record_step(lr, self.config.weight_decay)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return lr

    def train_step(self) -> StepStats:
        """One optimizer step over ``grad_accum`` micro-batches (gradients synchronised on the last)."""
        cfg, acc = self.config, self.accelerator
        step_loss = torch.zeros((), device=self.device)
        examples = 0
        for k in range(cfg.grad_accum):
            task = self.data.sampler.task_at(self.state.micro_batches)
            batch, n = self._next_batch(task, self.state.micro_batches)
            sync = k == cfg.grad_accum - 1
            weight = shard_loss_weight(n, self.rank, self.world)  # 1.0 unless the shards are uneven
            with contextlib.nullcontext() if sync else acc.no_sync(self.prepared):
                loss = self.prepared(task, batch)["loss"]
                loss = (loss * weight if weight != 1.0 else loss) / cfg.grad_accum
                acc.backward(loss)
            step_loss += loss.detach()
            self.state.micro_batches += 1
            examples += n
        lr = self._optimizer_step()
        self.state.step += 1
        return StepStats(loss=acc.reduce(step_loss, reduction="mean"), lr=lr, examples=examples)

    # ------------------------------------------------------------------ evaluation
    def dev_predictions(self) -> dict[str, dict[str, Any]]:
        """``{task: {example id: prediction}}`` of the current weights on every task's dev set
        (the shared inference loop of zero-shot evaluation; sharded over the processes)."""
        compact = self.compact
        transform = (lambda b: {**b, "input_ids": compact.remap(b["input_ids"])}) if compact is not None else None
        return dev_predictions(self._unwrapped().model, self.data, pad_token_id=self.pad_id,
                               batch_size=self.config.eval_batch_size, precision=self.config.precision,
                               accelerator=self.accelerator, transform=transform)

    def evaluate(self) -> dict[str, dict[str, float]]:
        """``{task: {metric: value}}`` on every task's dev set."""
        return score_dev(self.data, self.dev_predictions())

    def evaluate_carried(self) -> dict[str, dict[str, float]]:
        """``{task: {metric: value}}`` of the carried heads (``carried_dev_tasks``) on their own
        stages' English dev examples, with the current encoder (see :mod:`xstilts.train.carried`).
        The heads are attached for this evaluation only; the encoder runs with its full
        vocabulary (their dev tokens are not all in the compact one)."""
        if self.carried is None or not self.carried.dev:
            return {}
        model = self._unwrapped().model
        full = self.compact.full_view() if self.compact is not None else contextlib.nullcontext()
        with full, carried_heads(model, self.config, self.carried):
            preds = dev_predictions(model, self.carried, pad_token_id=self.pad_id,
                                    batch_size=self.config.eval_batch_size, precision=self.config.precision,
                                    accelerator=self.accelerator)
        return score_dev(self.carried, preds)

    def _evaluate_and_select(self, *, final: bool = False) -> dict[str, dict[str, float]]:
        """Evaluate (or reuse this step's evaluation at the end), log it, keep the best model."""
        step = self.state.step
        if final and self._last_eval is not None and self._last_eval[0] == step:
            metrics = self._last_eval[1]
        else:
            metrics = self.evaluate()
            self._last_eval = (step, metrics)
        score = primary_score(self.data, metrics)
        self.log.log({"step": step, "eval": metrics, "score": score, **({"final": True} if final else {})}, step)
        if score is not None and (self.state.best_score is None or score > self.state.best_score):
            self.state.best_score, self.state.best_step = score, step
            self.save_best(metrics)
        return metrics

    # ------------------------------------------------------------------ saving
    def _save_model(self, directory: Path) -> None:
        current = self.ckpt_dir / f"step-{self.state.step}" / MODEL_DIR
        if current.is_dir() and directory.parent != current.parent:
            # the checkpoint of this very step holds these weights: hard-link it instead of writing again
            ckpt.link_tree(current, directory)
            return
        with self.compact.full_view() if self.compact is not None else contextlib.nullcontext():
            self._unwrapped().model.save(directory, with_heads=True, tokenizer=self.tokenizer)

    def _state_to_save(self) -> TrainState:
        state = self.state
        state.total_steps, state.world_size = self.data.total_steps, self.world
        state.streams = {name: stream.state for name, stream in self.data.streams.items()}
        state.compact_decay_factor = self.compact.decay_factor if self.compact is not None else 1.0
        return state

    def save_checkpoint(self) -> None:
        """Write ``checkpoints/step-N`` atomically (every process its RNG file) and prune old ones."""
        step, acc = self.state.step, self.accelerator
        if self.compact is not None:
            self.compact.sync_full()
        tmp = self.ckpt_dir / f".tmp-step-{step}"
        if self.is_main:
            ckpt.fresh_dir(tmp)
        acc.wait_for_everyone()
        ckpt.write_rng(tmp, self.rank)
        acc.wait_for_everyone()
        if self.is_main:
            self._save_model(tmp / MODEL_DIR)
            head = self._unwrapped().mlm_head
            extra = {"mlm_head": head.own_state_dict()} if head is not None else None
            ckpt.write_checkpoint_files(tmp, self._state_to_save(), self.optimizer.state_dict(),
                                        self.scheduler.state_dict(), extra)
            ckpt.commit_dir(tmp, self.ckpt_dir / f"step-{step}")
            ckpt.prune_checkpoints(self.ckpt_dir, self.config.keep_last)
        acc.wait_for_everyone()
        self._saved_step = step

    def save_best(self, metrics: dict[str, dict[str, float]]) -> None:
        """Write ``checkpoints/best`` (model + its dev metrics) atomically."""
        if self.is_main:
            tmp = ckpt.fresh_dir(self.ckpt_dir / f".tmp-{ckpt.BEST_DIR}")
            self._save_model(tmp / MODEL_DIR)
            write_json_atomic(tmp / ckpt.STATE_FILE, {"step": self.state.step, "dev_metrics": metrics,
                                                          "score": self.state.best_score,
                                                          "config_hash": self.config_hash})
            ckpt.commit_dir(tmp, self.ckpt_dir / ckpt.BEST_DIR)
        self.accelerator.wait_for_everyone()

    def save_final(self) -> Path:
        """Write ``model/``: the best model (``final_model: best``, when there is one) or the last."""
        model_dir = self.output_dir / MODEL_DIR
        tmp = self.output_dir / f".tmp-{MODEL_DIR}"
        best = self.ckpt_dir / ckpt.BEST_DIR / MODEL_DIR
        shutil.rmtree(tmp, ignore_errors=True)
        if self.config.final_model == "best" and best.is_dir():
            ckpt.link_tree(best, tmp)
        else:
            self._save_model(tmp)
        ckpt.commit_dir(tmp, model_dir)
        return model_dir

    # ------------------------------------------------------------------ the loop
    def train(self) -> TrainResult:
        """Train from the restored step to the end, then :meth:`finish`."""
        from tqdm.auto import tqdm

        cfg, data = self.config, self.data
        bar = tqdm(total=data.total_steps, initial=self.state.step, desc="train", unit="step", dynamic_ncols=True,
                   disable=not (self.is_main and cfg.progress))
        logger.info("training %s for %d steps (%d per epoch; %d process(es); tasks %s%s)", self.output_dir,
                    data.total_steps, data.steps_per_epoch, self.world, ", ".join(data.sizes()) or "-",
                    " + MLM" if self.module.mlm_head is not None else "")
        self.prepared.train()
        meter = _LossMeter(self.device)
        try:
            while self.state.step < data.total_steps and not self.patience_exhausted():
                self._after_step(self.train_step(), meter, bar)
        except torch.cuda.OutOfMemoryError as exc:
            raise self._out_of_memory() from exc
        finally:
            bar.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # queued kernels belong to the loop's time
        return self.finish(loop_seconds=time.time() - meter.start)

    def _after_step(self, stats: StepStats, meter: _LossMeter, bar: Any) -> None:
        """Log, evaluate and save when due after an optimizer step."""
        cfg, step, total = self.config, self.state.step, self.data.total_steps
        meter.add(stats)
        if step % cfg.log_every == 0 or step == total:
            rec = meter.record(step, stats.lr, self.data.steps_per_epoch)
            self.log.log(rec, step)
            bar.set_postfix(loss=f"{rec['loss']:.4f}", ex_s=f"{rec['examples_per_s']:.1f}")
        bar.update(1)
        if self.data.dev and cfg.eval_every and step % cfg.eval_every == 0:
            self._evaluate_and_select()
        if cfg.save_every and step % cfg.save_every == 0 and step < total:
            self.save_checkpoint()

    def evals_since_best(self) -> int:
        """Dev evaluations since the one that set the best score (0 when none has a score yet).
        A pure function of the step, the best step and ``eval_every``, so a resumed run stops
        where an uninterrupted one does (jiant's metarunner counts the same evaluations)."""
        every, best = self.config.eval_every, self.state.best_step
        if not every or best is None:
            return 0
        return self.state.step // every - best // every

    def patience_exhausted(self) -> bool:
        """Whether ``early_stopping_patience`` dev evaluations in a row brought no new best score."""
        patience = self.config.early_stopping_patience
        if patience is None or not self.data.dev or self.evals_since_best() < patience:
            return False
        if not self._stop_logged:
            self._stop_logged = True
            logger.info("early stopping at step %d of %d: %d dev evaluations without a new best (best %.4f at "
                        "step %d)", self.state.step, self.data.total_steps, self.evals_since_best(),
                        self.state.best_score, self.state.best_step)
            stop = {"patience": patience, "best_step": self.state.best_step, "best_score": self.state.best_score}
            self.log.log({"step": self.state.step, "early_stop": stop}, self.state.step)
        return True

    def _out_of_memory(self) -> XStiltsError:
        cfg = self.config
        n, length = self._batch_shape
        return XStiltsError(
            f"out of GPU memory at batch size {n} ({math.ceil(n / self.world)} per process) and sequence length "
            f"{length} (max_length {cfg.max_length}). Lower batch_size and raise grad_accum to keep the effective "
            f"batch (e.g. batch_size: {max(1, cfg.batch_size // 2)}, grad_accum: {cfg.grad_accum * 2}), or lower "
            f"max_length.")

    def finish(self, loop_seconds: float = 0.0) -> TrainResult:
        """Last checkpoint, final dev evaluation, final model (last or best) and the ``DONE`` record."""
        if self.state.step != self._saved_step:
            self.save_checkpoint()
        dev_metrics = self._evaluate_and_select(final=True) if self.data.dev else {}
        carried = self.evaluate_carried()
        if carried:
            self.log.log({"step": self.state.step, "carried_eval": carried}, self.state.step)
        st = self.state
        task_batches = {k: s.state.batches_drawn for k, s in self.data.streams.items()}
        model_dir = self.output_dir / MODEL_DIR
        if self.is_main:
            self.save_final()
            write_done(self.output_dir, DoneRecord(
                steps=st.step, config_hash=self.config_hash, dev_metrics=dev_metrics, best_score=st.best_score,
                best_step=st.best_step, world_size=self.world, task_batches=task_batches,
                seconds=time.time() - self.t_start, config=self.config.model_dump(mode="json"),
                stopped_early=st.step < self.data.total_steps,
                dev_holdout={name: rec["n"] for name, rec in self.heldout.items()}, carried_dev_metrics=carried,
                provenance=provenance(config=self.config, device=self.device)))
            drop_checkpoints(self.output_dir, self.config)
        self.accelerator.wait_for_everyone()
        for tracker in self.accelerator.trackers:
            # not end_training(): it also destroys the process group, which belongs to the
            # process (its entry point releases it: xstilts.distributed), not to one stage
            tracker.finish()
        if self.compact is not None:
            self.compact.restore()
        seconds = time.time() - self.t_start
        logger.info("stage finished: %d steps in %.1fs; dev %s%s", st.step, seconds, dev_metrics,
                    f"; carried heads {carried}" if carried else "")
        return TrainResult(model_dir=model_dir, steps=st.step, dev_metrics=dev_metrics, skipped=False,
                           best_score=st.best_score, best_step=st.best_step, output_dir=self.output_dir,
                           seconds=seconds, loop_seconds=loop_seconds, task_batches=task_batches,
                           stopped_early=st.step < self.data.total_steps, carried_dev_metrics=carried)


def drop_checkpoints(output_dir: Path, config: TrainConfig) -> None:
    """Remove a finished stage's ``checkpoints/`` (step models, optimizer state, RNGs, best/) unless
    ``keep_checkpoints``: ``model/`` and ``DONE`` are all a finished stage needs (its model files
    are hard links, so they stay). Also removes what a kill during an earlier removal left."""
    if config.keep_checkpoints:
        return
    for leftover in output_dir.glob(f".trash-{CHECKPOINTS_DIR}-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    path = output_dir / CHECKPOINTS_DIR
    if path.is_dir():
        ckpt.discard_dir(path)
        logger.info("finished stage %s: checkpoints removed (keep_checkpoints: true keeps them)", output_dir)


def _finished(config: TrainConfig, output_dir: Path, done: DoneRecord) -> TrainResult:
    config_hash = config.hash()
    if done.config_hash != config_hash:
        raise CheckpointError(f"{output_dir} holds a finished stage trained with another config (hash "
                              f"{done.config_hash}, this config {config_hash}); use another output dir")
    if not done.config.get("keep_checkpoints"):  # a kill between DONE and the removal left them
        drop_checkpoints(output_dir, config)
    logger.info("stage in %s is already finished (%s steps); nothing to do", output_dir, done.steps)
    return TrainResult(model_dir=output_dir / MODEL_DIR, steps=int(done.steps), dev_metrics=done.dev_metrics,
                       skipped=True, best_score=done.best_score, best_step=done.best_step, output_dir=output_dir,
                       task_batches=done.task_batches, stopped_early=done.stopped_early,
                       carried_dev_metrics=done.carried_dev_metrics)


def train_stage(config: TrainConfig, output_dir: str | Path, *, task_data: dict[str, TaskData] | None = None) -> TrainResult:
    """Train one stage (see docs/ARCHITECTURE.md, layer ``train``); resume if it was interrupted.

    ``task_data`` optionally supplies tasks directly (name -> :class:`TaskData`, e.g. synthetic
    tasks) instead of resolving ``config.tasks`` through the catalog.

    Writes ``output_dir/model/`` (final MultiTaskModel with heads), ``checkpoints/step-N/``
    and ``checkpoints/best/``, ``log.jsonl`` and ``DONE``. A finished stage is not redone
    (``TrainResult.skipped``). Raises :class:`ConfigError`, :class:`UnknownNameError`,
    :class:`CheckpointError`, :class:`ModelLoadError` before any training on bad input.
    """
    output_dir = Path(output_dir).expanduser()
    done = read_done(output_dir)
    if done is not None:
        return _finished(config, output_dir, done)
    trainer = StageTrainer(config, output_dir, task_data=task_data)
    trainer.setup()
    return trainer.train()
