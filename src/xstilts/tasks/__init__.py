"""Tasks: formats (code, :mod:`xstilts.tasks.formats`) and the task catalog (data, ``catalog.yaml``).

Public entry points::

    get_task(name) -> TaskSpec            list_tasks(role=None) -> list[TaskSpec]
    load_examples(task, language, split, data_dir=None, source="auto", max_examples=None, seed=0)
    local_availability(task, data_dir=None) -> {(language, split): Path}
"""

from __future__ import annotations

from xstilts.tasks.catalog import HubSource, LocalSource, TaskSpec, get_task, list_tasks
from xstilts.tasks.loading import check_local_data, load_examples, local_availability

__all__ = [
    "HubSource",
    "LocalSource",
    "TaskSpec",
    "get_task",
    "list_tasks",
    "load_examples",
    "local_availability",
    "check_local_data",
]
