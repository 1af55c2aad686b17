"""xstilts: intermediate-task training for zero-shot cross-lingual transfer (X-STILTs).

The entry points a notebook needs, imported lazily (``import xstilts`` loads no torch)::

    import xstilts
    spec = xstilts.load_spec("configs/quickstart.yaml")   # validated experiment spec
    plan = xstilts.plan(spec)                              # its stages (a Plan)
    xstilts.run(spec)                                      # train + evaluate what is not done
    df = xstilts.results(spec)                             # pandas: one row per metric value
    report = xstilts.zero_shot_eval("model_dir", "xnli", "de,fr", data_dir="data")
    examples = xstilts.load_examples("xnli", "de", "test")
    xstilts.use_catalogs(["my_tasks.yaml"])                # your own tasks (also register_task)

Also: ``get_task``, ``list_tasks``, ``load_catalog``, ``register_task``, ``rescore``.
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

# oneDNN (torch's CPU kernels for bf16 matrix products) keeps up to 1024 compiled primitives, one
# per operand shape, each holding buffers sized by that shape (~30 MB at batch 32 x 300 tokens).
# A length-sorted eval stream meets a new length every batch, so none is reused and the cache only
# grows: XQuAD at 300 questions per language in bf16 peaked at 5.4 GB instead of 2.8 GB with 16.
# 16 still holds one training step's forward and backward primitives (bf16 steps were no slower).
# oneDNN reads this on its first primitive, so it counts from here unless torch already ran bf16
# kernels in this process; export ONEDNN_PRIMITIVE_CACHE_CAPACITY to choose another size.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")

try:
    __version__ = version("xstilts")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from xstilts.evaluate import rescore, zero_shot_eval  # noqa: F401
    from xstilts.experiments import Plan, Spec, load_spec  # noqa: F401
    from xstilts.tasks.catalog import get_task, list_tasks, load_catalog, register_task, use_catalogs  # noqa: F401
    from xstilts.tasks.loading import load_examples  # noqa: F401

#: public name -> (module, attribute), imported on first use
_LAZY = {
    "load_spec": ("xstilts.experiments.validate", "load_spec"),
    "zero_shot_eval": ("xstilts.evaluate.zero_shot", "zero_shot_eval"),
    "rescore": ("xstilts.evaluate.zero_shot", "rescore"),
    "load_examples": ("xstilts.tasks.loading", "load_examples"),
    "load_catalog": ("xstilts.tasks.catalog", "load_catalog"),
    "register_task": ("xstilts.tasks.catalog", "register_task"),
    "use_catalogs": ("xstilts.tasks.catalog", "use_catalogs"),
    "get_task": ("xstilts.tasks.catalog", "get_task"),
    "list_tasks": ("xstilts.tasks.catalog", "list_tasks"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'xstilts' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


def _spec(spec: Spec | str | Path, overrides: dict[str, Any] | None = None) -> Spec:
    from xstilts.experiments import Spec
    from xstilts.experiments.validate import load_spec as load

    if isinstance(spec, Spec):
        if overrides:
            raise TypeError("overrides apply to a spec file, not to a loaded Spec")
        return spec
    return load(spec, overrides=overrides)


def plan(spec: Spec | str | Path, *, overrides: dict[str, Any] | None = None) -> Plan:
    """The plan (DAG of content-hashed stages) of a spec or spec file (``xstilts run --dry-run``)."""
    from xstilts.experiments import plan_stages

    return plan_stages(_spec(spec, overrides))


def run(spec: Spec | str | Path | Plan, *, workers: int = 1, overrides: dict[str, Any] | None = None,
        check_inputs: bool = True) -> pd.DataFrame:
    """Run a spec on this machine like ``xstilts run``: plan it, check the inputs of the stages
    not done yet (``check_inputs``), train and evaluate what is not done (finished stages are
    reused), then return :func:`results`. Stages that fail are logged and left out of the results.
    """
    import logging

    from xstilts.experiments import Plan, open_store, run_local
    from xstilts.experiments.preflight import preflight
    from xstilts.experiments.store import store_path

    the_plan = spec if isinstance(spec, Plan) else plan(spec, overrides=overrides)
    if check_inputs:
        states: dict[str, str] = {}
        if store_path(the_plan.output_dir).is_file():
            with open_store(the_plan.output_dir) as store:
                states = store.states(the_plan.stages)
        preflight(the_plan, states=states)
    final = run_local(the_plan, workers=workers, command="xstilts.run()")
    failed = sorted(sid for sid, state in final.items() if state == "failed")
    if failed:
        logging.getLogger(__name__).warning("%d stage(s) failed: %s (xstilts status SPEC shows why)",
                                            len(failed), ", ".join(failed))
    return results(the_plan)


def results(source: Spec | Plan | str | Path) -> pd.DataFrame:
    """Zero-shot results as a pandas DataFrame, one row per (model, setup, target, language,
    seed, split, metric) with ``value`` (a percentage) and ``stage_id``.

    ``source``: an output directory (every result in its ``results.sqlite``), or a spec / spec
    file / plan (the results of its current plan only).
    """
    from xstilts.errors import DataNotFoundError
    from xstilts.experiments import Plan, Spec, open_store
    from xstilts.experiments.results import export_results
    from xstilts.experiments.store import store_path

    the_plan: Plan | None = None
    if isinstance(source, Plan):
        the_plan = source
    elif isinstance(source, Spec) or Path(source).is_file():
        the_plan = plan(source)
    output_dir = Path(the_plan.output_dir if the_plan is not None else source)  # type: ignore[arg-type]
    if not store_path(output_dir).is_file():
        raise DataNotFoundError(f"{output_dir}: no results.sqlite; run the spec first (xstilts.run / xstilts run)")
    with open_store(output_dir) as store:
        return export_results(store, the_plan, "table", None)


__all__ = ["__version__", "plan", "results", "run", *_LAZY]
