"""Task registry: a task is one module; add it here and to config's task choices."""

from __future__ import annotations

import importlib
from typing import Any

TASKS = {"classify": "frugal_lm.tasks.classify:ClassifyTask"}


def get_task(name: str) -> Any:
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)
