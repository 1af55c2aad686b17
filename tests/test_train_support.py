"""Support for the train tests (no tests here): synthetic copy-the-label tasks and a subprocess worker.

Each task is learnable only by reading the text: the label word (or answer, or entity
word) appears in the input, everything else is random filler.
"""

from __future__ import annotations

import random

from xstilts.tasks.catalog import TaskSpec
from xstilts.tasks.types import Answer, ClassificationExample, MultipleChoiceExample, QAExample, TaggingExample
from xstilts.train.data import TaskData

FILLER = ("house river green table window music paper stone cloud bread garden light horse city "
          "summer blue train letter forest coffee").split()
LABELS = ["yes", "no", "maybe"]
NAMES = ["Anna", "Pedro", "Yuki", "Omar"]


def task_spec(name: str, format: str, metric: str, primary_metric: str, label_list: list[str] | None = None) -> TaskSpec:
    """A catalog entry for a synthetic task (English train and dev splits)."""
    return TaskSpec(name=name, format=format, role="both", languages=["en"], splits=["train", "dev"],
                    eval_split="dev", metric=metric, primary_metric=primary_metric, label_list=label_list)


def _filler(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(FILLER) for _ in range(n)]


def classification_task(n_train: int = 240, n_dev: int = 60, seed: int = 0, name: str = "copycls") -> TaskData:
    """Three classes; the label word appears somewhere in text_a."""
    rng = random.Random(seed)

    def make(i: int) -> ClassificationExample:
        label = rng.choice(LABELS)
        words = _filler(rng, rng.randint(3, 8))
        words.insert(rng.randint(0, len(words)), label)
        return ClassificationExample(id=f"{name}-{i}", text_a=" ".join(words), label=label)

    return TaskData(task_spec(name, "classification", "accuracy", "accuracy", list(LABELS)),
                    train=[make(i) for i in range(n_train)], dev=[make(n_train + i) for i in range(n_dev)])


def multiple_choice_task(n_train: int = 240, n_dev: int = 60, seed: int = 1, name: str = "copymc") -> TaskData:
    """Three choices; the right one is the person named in the context, the others are filler words."""
    rng = random.Random(seed)

    def make(i: int) -> MultipleChoiceExample:
        answer = rng.choice(NAMES)
        choices = rng.sample(FILLER, 2)
        label = rng.randrange(3)
        choices.insert(label, answer)
        words = _filler(rng, 5)
        words.insert(rng.randint(0, 5), answer)
        return MultipleChoiceExample(id=f"{name}-{i}", context=" ".join(words), question="who is it?",
                                     choices=choices, label=label)

    return TaskData(task_spec(name, "multiple_choice", "accuracy", "accuracy"),
                    train=[make(i) for i in range(n_train)], dev=[make(n_train + i) for i in range(n_dev)])


def qa_task(n_train: int = 240, n_dev: int = 60, seed: int = 2, name: str = "copyqa") -> TaskData:
    """The answer is the person name in the context."""
    rng = random.Random(seed)

    def make(i: int) -> QAExample:
        name_ = rng.choice(NAMES)
        before, after = " ".join(_filler(rng, rng.randint(1, 6))), " ".join(_filler(rng, rng.randint(1, 6)))
        context = f"{before} {name_} {after}"
        return QAExample(id=f"{name}-{i}", context=context, question="who is it?",
                         answers=[Answer(text=name_, start=len(before) + 1)])

    return TaskData(task_spec(name, "extractive_qa", "squad", "f1"),
                    train=[make(i) for i in range(n_train)], dev=[make(n_train + i) for i in range(n_dev)])


def tagging_task(n_train: int = 240, n_dev: int = 60, seed: int = 3, name: str = "copyner") -> TaskData:
    """Person names are B-PER, everything else O."""
    rng = random.Random(seed)

    def make(i: int) -> TaggingExample:
        tokens = _filler(rng, rng.randint(3, 7))
        tokens.insert(rng.randint(0, len(tokens)), rng.choice(NAMES))
        tags = ["B-PER" if t in NAMES else "O" for t in tokens]
        return TaggingExample(id=f"{name}-{i}", tokens=tokens, tags=tags)

    return TaskData(task_spec(name, "tagging", "ner_f1", "f1", ["O", "B-PER", "I-PER"]),
                    train=[make(i) for i in range(n_train)], dev=[make(n_train + i) for i in range(n_dev)])


TASKS = {"copycls": classification_task, "copymc": multiple_choice_task, "copyqa": qa_task, "copyner": tagging_task}


def synthetic(*names: str, **kw) -> dict[str, TaskData]:
    return {n: TASKS[n](**kw) for n in names}


def stage_config(model_dir, **overrides):
    """A small stage config for the synthetic tasks."""
    from xstilts.train import make_train_config

    base = {"model": str(model_dir), "tasks": [{"task": "copycls"}], "learning_rate": 2e-3, "batch_size": 16,
            "num_epochs": 3, "max_length": 32, "warmup_ratio": 0.1, "progress": False, "seed": 0, "log_every": 1}
    base.update(overrides)
    return make_train_config(base)


def _worker() -> None:
    """``python -m tests.test_train_support MODEL_DIR OUT_DIR CONFIG_JSON [SLEEP]``: run one stage.

    SLEEP seconds are added after every optimizer step (so a test can kill the run mid-way).
    """
    import json
    import sys
    import time

    import torch

    model_dir, out, cfg_json = sys.argv[1:4]
    sleep = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    if sleep:
        original = torch.optim.AdamW.step

        def slow_step(self, *a, **k):
            result = original(self, *a, **k)
            time.sleep(sleep)
            return result

        torch.optim.AdamW.step = slow_step
    overrides = json.loads(cfg_json)
    tasks = [t["task"] for t in overrides.get("tasks", [{"task": "copycls"}])]
    from xstilts.train import train_stage

    result = train_stage(stage_config(model_dir, **overrides), out, task_data=synthetic(*tasks))
    print(json.dumps({"steps": result.steps, "dev": result.dev_metrics}))
    from xstilts.distributed import release_process_group

    release_process_group()  # as xstilts' entry points do (else gloo may abort the exit)


if __name__ == "__main__":
    _worker()
