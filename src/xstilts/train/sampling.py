"""Data order for training: task samplers and length-grouped batches.

Everything here is a *pure function* of the seed and a counter (the micro-batch
index, or a task's epoch), so a resumed run draws exactly the batches an
uninterrupted one would: the only state to checkpoint is a few integers
(:class:`StreamState`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from xstilts.train.config import SamplerConfig

MLM_TASK = "__mlm__"
# distinct streams of randomness derived from the seed (numpy SeedSequence entropy words)
_TASK_DRAW, _BATCH_ORDER, _MLM_DRAW = 1, 2, 3


def task_probabilities(sizes: dict[str, int], config: SamplerConfig) -> dict[str, float]:
    """Probability of drawing each task (jiant semantics: proportional / temperature / uniform, capped sizes)."""
    if not sizes:
        return {}
    capped = {}
    for name, n in sizes.items():
        cap = config.caps if isinstance(config.caps, int) else (config.caps or {}).get(name)
        capped[name] = min(n, cap) if cap is not None else n
    if config.kind == "uniform":
        weights = {k: 1.0 for k in capped}
    elif config.kind == "proportional":
        weights = {k: float(v) for k, v in capped.items()}
    else:
        weights = {k: float(v) ** (1.0 / config.temperature) for k, v in capped.items()}
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("every task has 0 training examples")
    return {k: w / total for k, w in weights.items()}


class TaskSampler:
    """Draws the task of micro-batch ``i`` as a pure function of ``(seed, i)``.

    With an MLM auxiliary, micro-batch ``i`` is an MLM batch with probability
    ``mlm_probability``; otherwise one of the tasks is drawn by ``probabilities``.
    Every process draws the same task for the same ``i`` (needed by DDP).
    """

    def __init__(self, probabilities: dict[str, float], seed: int, mlm_probability: float = 0.0):
        self.names = list(probabilities)
        self.probs = np.asarray([probabilities[n] for n in self.names], dtype=np.float64)
        self.seed = int(seed)
        self.mlm_probability = float(mlm_probability) if self.names else 1.0

    def task_at(self, index: int) -> str:
        """The task of micro-batch ``index``."""
        rng = np.random.default_rng([self.seed, _TASK_DRAW, int(index)])
        u = rng.random()
        if self.mlm_probability > 0 and u < self.mlm_probability:
            return MLM_TASK
        if len(self.names) == 1:
            return self.names[0]
        return self.names[int(rng.choice(len(self.names), p=self.probs))]


def batch_order(
    lengths: Sequence[int],
    batch_size: int,
    seed: int,
    epoch: int,
    stream: int = 0,
    group_by_length: bool = True,
    mega_batch_factor: int = 50,
) -> list[list[int]]:
    """Batches of feature indices for one epoch of one stream, a pure function of (seed, stream, epoch).

    Shuffles, then (when ``group_by_length``) sorts each mega-batch of
    ``batch_size * mega_batch_factor`` features by length so batches need little
    padding, and shuffles the batches. The last batch may be smaller.
    """
    n = len(lengths)
    rng = np.random.default_rng([int(seed), _BATCH_ORDER, int(stream), int(epoch)])
    perm = rng.permutation(n)
    if group_by_length and n > batch_size:
        lens = np.asarray(lengths)
        mega = batch_size * mega_batch_factor
        chunks = [perm[i:i + mega] for i in range(0, n, mega)]
        # stable sort, longest first, so ties keep the shuffled order
        perm = np.concatenate([c[np.argsort(-lens[c], kind="stable")] for c in chunks])
    batches = [perm[i:i + batch_size].tolist() for i in range(0, n, batch_size)]
    if group_by_length and len(batches) > 1:
        order = rng.permutation(len(batches))
        batches = [batches[i] for i in order]
    return batches


def shard_batch(batch: Sequence[int], rank: int, world_size: int) -> list[int]:
    """This process's share of a global batch (strided, like ``DistributedSampler``).

    A batch smaller than the number of processes is padded by repeating its items, so
    every process always gets work (DDP needs every rank to take every step).
    """
    if world_size <= 1:
        return list(batch)
    share = list(batch[rank::world_size])
    if not share:
        share = [batch[rank % len(batch)]]
    return share


def shard_loss_weight(global_size: int, rank: int, world_size: int) -> float:
    """What this process's mean loss is multiplied by so that DDP's average over processes is
    the mean over the global batch's examples: ``world * n_local / n_global``.

    1.0 when the batch splits evenly. A batch smaller than the number of processes (the
    paper's batch 4 on 8 GPUs, or an epoch's short last batch) gives the processes that
    rerun an item (:func:`shard_batch`) weight 0, so no example counts twice; uneven shards
    are weighted by their sizes.
    """
    if world_size <= 1 or global_size <= 0:
        return 1.0
    local = len(range(rank, global_size, world_size))
    if local * world_size == global_size:
        return 1.0
    return world_size * local / global_size


@dataclass
class StreamState:
    """Where one task's data stream is: epoch and position (in batches) within that epoch."""

    epoch: int = 0
    position: int = 0
    batches_drawn: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class BatchStream:
    """An endless stream of batches over one dataset, epoch after epoch, resumable from a :class:`StreamState`."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, stream: int,
                 group_by_length: bool = True, state: StreamState | None = None):
        if len(lengths) == 0:
            raise ValueError("empty dataset")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.stream = stream
        self.group_by_length = group_by_length
        self.state = state or StreamState()
        self._epoch_cache: tuple[int, list[list[int]]] | None = None

    def batches_per_epoch(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def _batches(self, epoch: int) -> list[list[int]]:
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            self._epoch_cache = (epoch, batch_order(self.lengths, self.batch_size, self.seed, epoch,
                                                    self.stream, self.group_by_length))
        return self._epoch_cache[1]

    def next(self) -> list[int]:
        """The next global batch (feature indices); advances the state."""
        batches = self._batches(self.state.epoch)
        if self.state.position >= len(batches):
            self.state.epoch += 1
            self.state.position = 0
            batches = self._batches(self.state.epoch)
        batch = batches[self.state.position]
        self.state.position += 1
        self.state.batches_drawn += 1
        return batch
