"""``frugal plan``: measure candidate recipes on the real data and say which fits the machine (plan.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

Opt = typer.Option


def register(app: typer.Typer) -> None:
    """Add ``plan`` to ``app``."""

    @app.command("plan")
    def plan_cmd(
        config: Annotated[Path | None, typer.Argument(help="YAML run config, as for train")] = None,
        task: Annotated[str | None, Opt(help="task, when no config gives it")] = None,
        model: Annotated[str | None, Opt(help="alias, local folder or hub id")] = None,
        train_file: Annotated[str | None, Opt("--train", help="training file")] = None,
        memory: Annotated[str | None, Opt("--memory", help="memory budget: 8GB, 512MB, 2GiB (default: "
                                          "train.memory_budget, else what this machine has available)")] = None,
        time_: Annotated[str | None, Opt("--time", help="time budget for training: 90s, 20m, 2h (default: "
                                         "train.time_budget; none: no limit)")] = None,
        write: Annotated[Path | None, Opt("--write", help="write the config with the recommendation applied "
                                          "here (YAML)")] = None,
        as_json: Annotated[bool, Opt("--json", help="print the whole plan as JSON")] = False,
        only_configured: Annotated[bool, Opt("--only-configured", help="compare micro-batches and checkpointing "
                                             "of the configured recipe only (quicker)")] = False,
        reps: Annotated[int, Opt("--reps", min=1, help="timed repetitions of each measured batch (the fastest counts)")] = 2,
        set_: Annotated[list[str] | None, Opt("--set", help="override any config key: --set train.lr=3e-5")] = None,
        for_auto: Annotated[bool, Opt("--for-auto", hidden=True)] = False,  # train --auto's (plan.plan)
    ) -> None:
        """Predict peak memory and training time of candidate recipes (full fine-tuning, frozen embeddings or
        layers, LoRA, gradient checkpointing, micro-batch sizes) by timing real steps on the real data; say
        which fit the budgets and recommend one. `frugal train --auto` plans and trains with it."""
        from frugal_lm.config import load_config, parse_duration, parse_size
        from frugal_lm.errors import FrugalError
        from frugal_lm.io import write_text
        from frugal_lm.plan import apply_plan, plan, table

        overrides: dict = {}
        if task:
            overrides["task"] = task
        if model:
            overrides.setdefault("model", {})["name"] = model
        if train_file:
            overrides.setdefault("data", {})["train"] = train_file
        cfg = load_config(config, overrides, set_ or [])
        result = plan(cfg, memory=parse_size(memory, "--memory") if memory else None,
                      seconds=parse_duration(time_, "--time") if time_ else None, reps=reps,
                      only_configured=only_configured, for_auto=for_auto)
        typer.echo(json.dumps(result, indent=2) if as_json else table(result))
        if write is not None:
            write_text(write, apply_plan(cfg, result).to_yaml())
            typer.echo(f"wrote {write}: " + ", ".join(f"{k}={v}" for k, v in result["settings"].items()), err=True)
        if result["recommended"] is None:
            raise FrugalError(f"frugal plan: {result['why']}")
