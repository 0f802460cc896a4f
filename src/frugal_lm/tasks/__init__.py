"""The task registry: adding a task is one module in tasks/ and one line here.

Config validation, `frugal train --task` choices, `frugal config` and the help text all come from here.
Task modules are imported on first use only (they keep torch imports inside methods).
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from frugal_lm.errors import ConfigError

TASKS: dict[str, str] = {
    "classify": "frugal_lm.tasks.classify:ClassifyTask",
    "ner": "frugal_lm.tasks.ner:NerTask",
    "clm": "frugal_lm.tasks.clm:CausalLMTask",
    "pretrain": "frugal_lm.tasks.pretrain:PretrainTask",
}


def did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def get_task(name: str) -> Any:
    """The Task subclass registered under `name`.

    Raises:
        ConfigError: an unknown task, with the known ones and a did-you-mean.
    """
    if name not in TASKS:
        raise ConfigError(f"task: unknown task '{name}'{did_you_mean(name, list(TASKS))}; "
                          f"known tasks: {', '.join(TASKS)}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def task_names() -> list[str]:
    return list(TASKS)
