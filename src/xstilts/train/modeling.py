"""The model side of a stage: where it starts, its heads, the training-only modules, the
optimizer and the ``accelerate`` set-up (devices, precision, distribution)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xstilts.errors import CheckpointError, ConfigError, XStiltsError
from xstilts.paths import CHECKPOINTS_DIR, MODEL_DIR, XSTILTS_MODEL_FILE
from xstilts.train import checkpoint as ckpt
from xstilts.train.config import TrainConfig
from xstilts.train.data import TaskData
from xstilts.train.sampling import MLM_TASK

logger = logging.getLogger(__name__)

PRECISION_TO_ACCELERATE = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


class StageModule(nn.Module):
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
    if (p / XSTILTS_MODEL_FILE).is_file() or (p / "config.json").is_file():
        return str(p)
    if (p / MODEL_DIR / XSTILTS_MODEL_FILE).is_file():
        return str(p / MODEL_DIR)
    if (p / CHECKPOINTS_DIR).is_dir():
        steps = ckpt.list_checkpoints(p / CHECKPOINTS_DIR)
        if steps:
            return str(steps[-1] / MODEL_DIR)
        raise CheckpointError(f"{p} is a stage directory with no finished model and no checkpoint")
    raise CheckpointError(f"{p} is not a model or checkpoint directory (no {XSTILTS_MODEL_FILE}, config.json, "
                          f"{MODEL_DIR}/ or {CHECKPOINTS_DIR}/)")


def _check_lengths(config: TrainConfig, encoder: nn.Module) -> None:
    limit = max_positions(encoder)
    mlm_length = config.mlm.max_length if config.mlm else None
    for key, length in (("max_length", config.max_length), ("mlm.max_length", mlm_length)):
        if length is not None and limit is not None and length > limit:
            raise ConfigError(f"{length} is above the model's maximum sequence length {limit}", key=key)


def _attach_heads(model: Any, tasks: Sequence[TaskData], pooling: str) -> None:
    """Add a head per task (or check the one the model has); freeze heads not trained here."""
    from xstilts.models import HeadSpec
    from xstilts.tasks.formats import get_format

    for i, td in enumerate(tasks):  # a new head stores the task's label names; a carried-over one must match them
        spec = HeadSpec.for_labels(td.name, get_format(td.format).head_kind, td.label_list, pooling=pooling)
        model.ensure_head(spec, key=f"tasks.{i}.task")
    trained = {td.name for td in tasks}
    for name, head in model.heads.items():  # heads carried over from an earlier stage but not trained here
        if name not in trained:
            head.requires_grad_(False)


def build_model(config: TrainConfig, tasks: Sequence[TaskData]) -> tuple[Any, Any]:
    """The stage's :class:`~xstilts.models.MultiTaskModel` (with a head per task) and tokenizer.

    The global RNGs are seeded first: head initialisation and dropout depend on the seed only.
    """
    from accelerate.utils import set_seed

    from xstilts.models import MultiTaskModel

    start = resolve_start(config.model)
    if config.init_heads and not (Path(start) / XSTILTS_MODEL_FILE).is_file():
        raise ConfigError(f"init_heads needs an xstilts model directory, but '{config.model}' has no heads", key="init_heads")
    set_seed(config.seed)
    model, tokenizer = MultiTaskModel.from_pretrained(start, heads=config.init_heads)
    _check_lengths(config, model.encoder)
    set_attention(model.encoder, config.attn_implementation)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model.encoder)
    _attach_heads(model, tasks, config.pooling)
    return model, tokenizer


def set_attention(encoder: nn.Module, implementation: str) -> None:
    """Use the attention kernel ``implementation`` ("auto": leave the model's default, SDPA
    where transformers has it). ``flash_attention_2`` needs CUDA and the flash-attn package;
    with it transformers unpads every batch and runs the variable-length kernel (padding-free:
    no work on pad tokens). ConfigError (key ``attn_implementation``) when it cannot be used."""
    if implementation == "auto":
        return
    if implementation == "flash_attention_2":
        from transformers.utils import is_flash_attn_2_available

        if not (torch.cuda.is_available() and is_flash_attn_2_available()):
            raise ConfigError("flash_attention_2 needs a CUDA GPU and the flash-attn package "
                              "(pip install flash-attn); use sdpa or auto", key="attn_implementation")
    setter = getattr(encoder, "set_attn_implementation", None)
    if setter is None:
        raise ConfigError(f"this encoder ({type(encoder).__name__}) cannot change its attention kernel; use auto",
                          key="attn_implementation")
    try:
        setter(implementation)
    except (ValueError, ImportError) as exc:
        raise ConfigError(f"{implementation} is not available for {type(encoder).__name__}: {exc}",
                          key="attn_implementation") from exc


def enable_gradient_checkpointing(encoder: nn.Module) -> None:
    """Recompute the encoder's layer activations in the backward pass (non-reentrant
    checkpointing, which replays the forward's RNG state: the same dropout masks, the same
    gradients). ConfigError (key ``gradient_checkpointing``) for an encoder without support."""
    if not getattr(encoder, "supports_gradient_checkpointing", False):
        raise ConfigError(f"{type(encoder).__name__} does not support gradient checkpointing",
                          key="gradient_checkpointing")
    encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def configure_tf32(config: TrainConfig, device: torch.device) -> None:
    """TF32 matrix multiplies for fp32 work on a CUDA device when ``config.tf32`` (the default):
    Ampere and later GPUs run fp32 matmuls ~8x faster with a 10-bit mantissa product. No effect
    on CPU (nothing is set there) or on bf16 autocast regions."""
    if device.type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = config.tf32
    torch.backends.cudnn.allow_tf32 = config.tf32
    torch.set_float32_matmul_precision("high" if config.tf32 else "highest")


def freeze_embeddings(model: Any) -> None:
    """Stop training the encoder's embeddings (``freeze_embeddings: true``)."""
    emb = getattr(model.encoder, "embeddings", None) or model.encoder.get_input_embeddings()
    emb.requires_grad_(False)


def load_weights(module: StageModule, checkpoint: ckpt.Checkpoint) -> None:
    """Load a checkpoint's model (and MLM head) weights into ``module``; raises on a corrupt file."""
    from xstilts.models import MultiTaskModel

    loaded, _ = MultiTaskModel.load(checkpoint.model_dir, heads=True)
    module.model.load_state_dict(loaded.state_dict())
    del loaded
    if module.mlm_head is not None:
        module.mlm_head.load_state_dict(checkpoint.extra_modules["mlm_head"], strict=False)


def _named_param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay, seen = [], [], set()
    for name, p in module.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if name.endswith("bias") or "norm" in name.lower() else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(module: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (no decay on biases and norms) with the fused kernel where torch has one for these
    parameters (CPU and CUDA in torch >= 2.4): the same update maths in one kernel, ~5x faster
    than the multi-tensor path on CPU for e5-small's 25M dense parameters; else the default."""
    groups = _named_param_groups(module, config.weight_decay)
    try:
        return torch.optim.AdamW(groups, lr=config.learning_rate, fused=True)
    except (RuntimeError, ValueError, TypeError) as err:  # device/dtype without a fused kernel
        logger.debug("fused AdamW unavailable (%s); using the default implementation", err)
        return torch.optim.AdamW(groups, lr=config.learning_rate)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int) -> Any:
    """Linear warm-up over ``warmup_ratio`` of the steps, then linear decay to 0."""
    import math

    from transformers import get_linear_schedule_with_warmup

    return get_linear_schedule_with_warmup(optimizer, math.ceil(config.warmup_ratio * total_steps), total_steps)


def make_accelerator(config: TrainConfig, output_dir: Path, find_unused: bool) -> Any:
    """An ``accelerate.Accelerator`` for the stage's precision and the launched processes."""
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.state import AcceleratorState, GradientState

    from xstilts.models.predict import CPU_PRECISION_ADVICE, warn_if_bf16_emulated

    mp = PRECISION_TO_ACCELERATE[config.precision]
    if config.precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError(f"fp16 mixed precision needs a GPU; {CPU_PRECISION_ADVICE}", key="precision")
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
    from xstilts.tracking import require_trackers

    trackers = require_trackers(config.trackers)  # a missing optional package: an error naming the pip extra
    acc = Accelerator(mixed_precision=mp, log_with=trackers or None, project_dir=str(output_dir),
                      kwargs_handlers=kwargs, cpu=cpu)
    warn_if_bf16_emulated(acc.device, config.precision)
    if acc.num_processes != world:
        raise XStiltsError(f"launched with WORLD_SIZE={world} but accelerate set up {acc.num_processes} process(es); "
                           "use `accelerate launch` or `torchrun` with a matching configuration")
    return acc
