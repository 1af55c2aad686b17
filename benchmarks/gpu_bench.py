"""GPU training throughput and model FLOP utilisation: xstilts ``train_stage`` vs HF ``Trainer``.

The job (both sides): an XLM-R-Large-shaped encoder (the real architecture: 24 layers,
hidden 1024, 16 heads, FFN 4096, XLM-R's 250k sentencepiece vocabulary taken from the
offline e5-small tokenizer; random weights, seed 0: speed does not depend on the values),
a sentence-pair classification head, bf16 mixed precision, AdamW (fused on both sides),
linear warm-up 10 % + decay, gradient clipping 1.0, the same batch size and number of steps.
Every training sequence is exactly ``seq_len`` tokens long (English Tatoeba sentences joined
and truncated), so tokens/s and MFU are measured at that length.

MFU = achieved model FLOP/s ÷ the GPU's peak dense bf16 FLOP/s, with training FLOPs per token
= 6 × (non-embedding parameters) + 12 × layers × hidden × seq_len (attention scores and
values; PaLM appendix B). The peak comes from the device name (``PEAK_BF16``); an unknown
device gets no MFU rather than a guessed one.

Timed: steady-state steps only. The first ``warmup_steps`` optimizer steps (default: a tenth
of the steps, at least 2: CUDA context, cuBLAS/cuDNN autotuning, allocator growth, lazy
optimizer state) run untimed on both sides; the clock starts after a device synchronisation
and stops after one at the end. xstilts: the ``StageTrainer`` recipe's ``train_step`` (set-up,
logging and saving outside the timing); Trainer: a callback from the end of step
``warmup_steps`` to ``on_train_end``.

Run by ``python -m benchmarks.run`` only where ``torch.cuda.is_available()``; the ``tiny``
shape lets the machinery run on a CPU (``python -m benchmarks.run --only gpu --mode quick``,
which says in its output that it ran on the CPU).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

SHAPES: dict[str, dict[str, Any]] = {
    # xlm-roberta-large's config.json (vocab from the tokenizer)
    "xlmr-large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096,
                   "max_position_embeddings": 514, "type_vocab_size": 1, "layer_norm_eps": 1e-5,
                   "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2},
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128,
             "max_position_embeddings": 514, "type_vocab_size": 1, "layer_norm_eps": 1e-5,
             "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2},
}

# peak dense bf16 tensor FLOP/s by device name (NVIDIA data sheets; first match wins)
PEAK_BF16: list[tuple[str, float]] = [
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H200", 989.4e12), ("H100", 989.4e12),
    ("A100", 312e12), ("L40S", 362e12), ("A10G", 70e12), ("L4", 121e12),
]


def peak_bf16(device_name: str | None) -> float | None:
    if not device_name:
        return None
    return next((v for k, v in PEAK_BF16 if k in device_name), None)


def build_model_dir(out: Path, shape: str) -> Path:
    """A local encoder directory: random weights of ``shape`` + XLM-R's tokenizer (from e5-small)."""
    import torch
    from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaModel

    from xstilts.models import prepare_e5_small

    if (out / "config.json").is_file():
        return out
    tok = AutoTokenizer.from_pretrained(prepare_e5_small())
    cfg = XLMRobertaConfig(vocab_size=len(tok), **SHAPES[shape])
    torch.manual_seed(0)
    model = XLMRobertaModel(cfg, add_pooling_layer=False)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)
    return out


def flops_per_token(n_params_non_embedding: int, layers: int, hidden: int, seq_len: int) -> float:
    return 6.0 * n_params_non_embedding + 12.0 * layers * hidden * seq_len


def _pairs_spec() -> Any:
    """The catalog entry of the synthetic sentence-pair task the benchmark trains."""
    from xstilts.tasks.catalog import TaskSpec

    return TaskSpec(name="pairs", format="classification", role="both", languages=["en"], splits=["train"],
                    eval_split="train", metric="accuracy", primary_metric="accuracy", label_list=["0", "1", "2"])


def _examples(config: dict[str, Any], tokenizer: Any) -> list[Any]:
    """``n_train`` sentence pairs, each side at least ``seq_len`` tokens (truncation makes the pair exact)."""
    import random

    from xstilts.paths import resolve_data_dir
    from xstilts.tasks.types import ClassificationExample

    data = resolve_data_dir(config.get("data_dir"))
    f = Path(data) / "tatoeba" / "tatoeba.deu-eng.eng" if data is not None else None
    if f is not None and f.is_file():
        eng = [ln.strip() for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()]
    else:  # no local data: generated words (speed does not depend on the text)
        rng0 = random.Random(1)
        eng = [" ".join(rng0.choice(["house", "river", "green", "talks", "slowly", "under", "bridge"]) for _ in range(12))
               for _ in range(500)]
    # one batched call: the sub-word count of each sentence (a join adds at most a token or two)
    lengths = [len(ids) for ids in tokenizer(eng, add_special_tokens=False)["input_ids"]]
    rng = random.Random(config.get("seed", 0))

    def side() -> str:
        picked, n = [], 0
        while n < config["seq_len"]:
            i = rng.randrange(len(eng))
            picked.append(eng[i])
            n += lengths[i]
        return " ".join(picked)

    return [ClassificationExample(id=str(i), text_a=side(), text_b=side(), label=rng.choice(["0", "1", "2"]))
            for i in range(config["n_train"])]


def _features(config: dict[str, Any], tokenizer: Any, examples: list[Any]) -> list[dict[str, Any]]:
    from xstilts.tasks.formats import FeaturizeOptions, get_format

    feats = get_format("classification").featurize(examples, tokenizer, FeaturizeOptions(max_length=config["seq_len"]),
                                                    ["0", "1", "2"])
    assert all(len(f["input_ids"]) == config["seq_len"] for f in feats), "every sequence must be seq_len tokens"
    return feats


def _result(config: dict[str, Any], seconds: float, steps: int, model_dir: str) -> dict[str, Any]:
    import torch
    from transformers import AutoConfig, AutoModel

    cfg = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):  # shapes only: counts the parameters without allocating them
        model = AutoModel.from_config(cfg)
    emb = sum(p.numel() for n, p in model.named_parameters() if n.startswith("embeddings."))
    # the layers only (the benchmark model has no pooler; the classifier head is negligible)
    non_emb = sum(p.numel() for n, p in model.named_parameters() if n.startswith("encoder."))
    tokens = steps * config["batch_size"] * config["seq_len"]
    tps = tokens / seconds
    fpt = flops_per_token(non_emb, cfg.num_hidden_layers, cfg.hidden_size, config["seq_len"])
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    peak = peak_bf16(device)
    return {"seconds": seconds, "steps": steps, "tokens_per_s": tps, "examples_per_s": steps * config["batch_size"] / seconds,
            "model_tflops": tps * fpt / 1e12, "mfu": (tps * fpt / peak) if peak else None, "device": device or "cpu",
            "params_non_embedding": non_emb, "params_embedding": emb}


def warmup_steps(config: dict[str, Any]) -> int:
    """Untimed optimizer steps before the clock starts (both sides)."""
    return int(config.get("warmup_steps", max(2, config["steps"] // 10)))


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure_ours(config: dict[str, Any], workdir: Path) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from xstilts.train import TaskData, TrainConfig
    from xstilts.train.engine import StageTrainer

    tok = AutoTokenizer.from_pretrained(config["model_dir"])
    td = TaskData(_pairs_spec(), train=_examples(config, tok))
    cfg = TrainConfig(
        model=config["model_dir"], tasks=[{"task": "pairs"}], learning_rate=1e-5, weight_decay=0.01, warmup_ratio=0.1,
        max_steps=config["steps"], batch_size=config["batch_size"], max_length=config["seq_len"], max_grad_norm=1.0,
        seed=config.get("seed", 0), precision=config.get("precision", "bf16"), eval_every=0, save_every=0,
        progress=False,
    )
    trainer = StageTrainer(cfg, workdir / "stage", task_data={"pairs": td})
    trainer.setup()
    warm = warmup_steps(config)
    for _ in range(warm):
        trainer.train_step()
    _sync()
    t0 = time.perf_counter()
    for _ in range(config["steps"] - warm):
        trainer.train_step()
    _sync()
    return _result(config, time.perf_counter() - t0, config["steps"] - warm, config["model_dir"])


def measure_baseline(config: dict[str, Any], workdir: Path) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainerCallback, TrainingArguments)

    tok = AutoTokenizer.from_pretrained(config["model_dir"])
    feats = _features(config, tok, _examples(config, tok))
    keep = [k for k in ("input_ids", "attention_mask", "labels") if k in feats[0]]
    ds = Dataset.from_list([{k: f[k] for k in keep} for f in feats])
    torch.manual_seed(config.get("seed", 0))
    model = AutoModelForSequenceClassification.from_pretrained(config["model_dir"], num_labels=3)
    args = TrainingArguments(
        output_dir=str(workdir / "trainer"), per_device_train_batch_size=config["batch_size"], learning_rate=1e-5,
        weight_decay=0.01, warmup_steps=0.1, lr_scheduler_type="linear", max_steps=config["steps"], max_grad_norm=1.0,
        logging_strategy="no", save_strategy="no", eval_strategy="no", report_to=[], seed=config.get("seed", 0),
        bf16=config.get("precision", "bf16") == "bf16", use_cpu=not torch.cuda.is_available(), dataloader_num_workers=2,
        dataloader_pin_memory=torch.cuda.is_available(), optim="adamw_torch_fused", disable_tqdm=True,
    )

    warm = warmup_steps(config)

    class LoopTimer(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == warm:
                _sync()
                self.t0 = time.perf_counter()

        def on_train_end(self, args, state, control, **kw):
            _sync()
            self.t1 = time.perf_counter()

    timer = LoopTimer()
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=DataCollatorWithPadding(tok), callbacks=[timer])
    trainer.train()
    return _result(config, timer.t1 - timer.t0, trainer.state.global_step - warm, config["model_dir"])
