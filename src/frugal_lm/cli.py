"""The command table. Each command is a thin function over the Python API; heavy imports stay inside
the functions so `frugal --help` answers at once."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from frugal_lm.errors import FrugalError
from frugal_lm.tasks import task_names

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="frugal: train, evaluate, score and use language models on limited compute.")

Opt = typer.Option


@app.command()
def train(
    config: Annotated[Path | None, typer.Argument(help="YAML run config (optional: flags alone work)")] = None,
    task: Annotated[str | None, Opt(help=f"what to train: {' | '.join(task_names())} (default classify)")] = None,
    model: Annotated[str | None, Opt(help="alias, local folder or hub id")] = None,
    train_file: Annotated[str | None, Opt("--train", help="training file, in a format of the task")] = None,
    eval_file: Annotated[str | None, Opt("--eval", help="evaluation file")] = None,
    output: Annotated[str | None, Opt("--output", "-o", help="run folder")] = None,
    epochs: Annotated[float | None, Opt(help="passes over the training data")] = None,
    batch_size: Annotated[int | None, Opt(help="examples per micro-batch")] = None,
    lr: Annotated[float | None, Opt(help="peak learning rate")] = None,
    max_length: Annotated[int | None, Opt(help="truncate inputs to this many tokens")] = None,
    max_steps: Annotated[int | None, Opt(help="stop after N optimizer steps")] = None,
    max_minutes: Annotated[float | None, Opt(help="wall-time budget in minutes (as --time-budget)")] = None,
    time_budget: Annotated[str | None, Opt("--time-budget", help="wall-time budget, loading and evaluation "
                                           "included: 90s, 15m, 2h, 1h30m (a plain number: minutes); the "
                                           "learning rate decays to its end at it")] = None,
    seed: Annotated[int | None, Opt(help="random seed")] = None,
    text_column: Annotated[str | None, Opt(help="column with the text")] = None,
    label_column: Annotated[str | None, Opt(help="column with the label")] = None,
    lora: Annotated[bool, Opt("--lora", help="train LoRA adapters instead of the full model")] = False,
    method: Annotated[str | None, Opt(help="classify: auto | finetune | fewshot (contrastive pairs + a head; "
                                      "auto picks it below ~100 examples per class)")] = None,
    objective: Annotated[str | None, Opt(help="pretrain: mlm | mlm+nsp | clm (the text: one sentence per "
                                         "line, a blank line between documents)")] = None,
    tokenizer: Annotated[str | None, Opt(help="tokenizer folder for a from-scratch preset such as "
                                         "bert-mini or gpt-mini (`frugal presets`)")] = None,
    set_: Annotated[list[str] | None, Opt("--set", help="override any config key: --set train.lr=3e-5")] = None,
    resume: Annotated[bool, Opt("--resume", help="continue the run in --output from its last checkpoint")] = False,
    overwrite: Annotated[bool, Opt("--overwrite", help="replace an existing run folder")] = False,
    quiet: Annotated[bool, Opt("--quiet", "-q", help="no progress bar")] = False,
    auto: Annotated[bool, Opt("--auto", help="plan first (`frugal plan`: real steps on the real data) and train "
                              "with the recommended recipe, within --memory-budget and --time-budget")] = False,
    memory_budget: Annotated[str | None, Opt("--memory-budget", help="peak memory the run may use: 4GB, 512MB; "
                                             "micro-batch and checkpointing are chosen to fit")] = None,
    processes: Annotated[int, Opt("--processes", min=1, help="data-parallel processes on this machine (CPU "
                                  "cores or GPUs), through torch.distributed.run; global batch = processes x "
                                  "batch size x accumulation")] = 1,
) -> None:
    """Fine-tune a model; writes a self-describing run folder.

    Tasks: classify (text classification; CSV, TSV, JSONL), ner (named entities; CoNLL columns or JSONL tokens/tags), clm (causal LM fine-tuning; plain text or instruction JSONL), pretrain (MLM, MLM+NSP or CLM on raw text, from a preset or a model). `frugal config --task NAME` lists every key with that task's defaults.
    """
    from frugal_lm.config import load_config

    overrides: dict[str, Any] = {}

    def put(section: str | None, key: str, value: Any) -> None:
        if value is not None:
            (overrides.setdefault(section, {}) if section else overrides)[key] = value

    put(None, "task", task)
    put(None, "output", output)
    put("model", "name", model)
    put("model", "max_length", max_length)
    put("data", "train", train_file)
    put("data", "eval", eval_file)
    put("data", "text_column", text_column)
    put("data", "label_column", label_column)
    for key, value in {"epochs": epochs, "batch_size": batch_size, "lr": lr, "max_steps": max_steps,
                       "max_minutes": max_minutes, "seed": seed}.items():
        put("train", key, value)
    if time_budget is not None and max_minutes is not None:
        raise FrugalError("--time-budget and --max-minutes are the same budget: give one of them")
    put("train", "time_budget", time_budget)
    put("train", "memory_budget", memory_budget)
    if lora:
        put("peft", "method", "lora")
    put("model", "tokenizer", tokenizer)
    put("pretrain", "objective", objective)
    put("classify", "method", method)
    if resume and config is None and output and (Path(output) / "config.yaml").exists():
        config = Path(output) / "config.yaml"  # the run folder remembers its own config
    cfg = load_config(config, overrides, set_ or [])
    if resume and not output and not (Path(cfg.output) / "config.yaml").exists():
        raise FrugalError(f"--resume: {cfg.output} is not a run folder; pass --output RUN_DIR")
    from frugal_lm.engine.distributed import in_launch, is_main, launch, without_option

    if auto and (processes > 1 or in_launch()):
        raise FrugalError("--auto plans for one process; plan first (frugal plan --write FILE), then train FILE "
                          "with --processes")
    if processes > 1 and not in_launch():  # the config checked once here, then the same command N times
        raise typer.Exit(launch(without_option(sys.argv[1:], "--processes"), processes))
    from frugal_lm.config import budget_seconds
    from frugal_lm.engine.run import train as run_train

    # on resume, --time-budget (--max-minutes) is a new budget for this session; without it a budget-stopped
    # run trains on
    given = resume and (time_budget is not None or max_minutes is not None)
    planned, began = None, None
    if auto:
        if resume:
            raise FrugalError("--auto and --resume: a resumed run keeps the recipe it was planned with")
        from frugal_lm.plan import plan_for_auto

        cfg, planned, began = plan_for_auto(cfg, show=lambda text: typer.echo(text, err=True))
    summary = run_train(cfg, resume=resume, overwrite=overwrite, progress=not quiet,
                        budget_minutes=budget_seconds(cfg.train) / 60 if given else None,
                        planned=planned, started=began)
    if not is_main():
        return
    best = summary.get("best") or {}
    shown = {k: round(v, 4) for k, v in best.items() if isinstance(v, float)}
    typer.echo(json.dumps({"run": cfg.output, "stopped": summary["stopped"], "steps": summary["steps"],
                           "best": shown, "train_examples_per_s": round(summary["train_examples_per_s"], 1)}))


@app.command("eval")
def eval_(
    run_dir: Annotated[Path, typer.Argument(help="a frugal run folder")],
    data: Annotated[str, Opt("--data", help="labelled file in the training format")],
) -> None:
    """Evaluate a trained run on a labelled file; prints the metrics as JSON."""
    from frugal_lm.engine.run import load_run

    _, task, model = load_run(run_dir)
    records = task.read(data)
    task.check(records, data)
    typer.echo(json.dumps(task.evaluate(model, records), indent=2))


@app.command()
def predict(
    run_dir: Annotated[Path, typer.Argument(help="a frugal run folder")],
    data: Annotated[str | None, Opt("--data", help="file in the task's format, or .txt with one text per line")] = None,
    text: Annotated[list[str] | None, Opt("--text", help="raw text (repeatable)")] = None,
    output: Annotated[Path | None, Opt("--output", "-o", help="write JSON lines here instead of stdout")] = None,
    precision: Annotated[str, Opt("--precision", help="auto (bf16 where training would autocast to it: a GPU, "
                                  "or a CPU with bf16 matrix instructions and a model over 5M parameters), "
                                  "fp32, bf16 or fp16; classify and ner only")] = "auto",
) -> None:
    """Predict; writes JSON lines: for classify the label and probabilities, for ner the entity spans."""
    if not data and not text:
        raise FrugalError("predict: give --data FILE or --text \"...\"")
    from frugal_lm.engine.run import load_run

    cfg, task, model = load_run(run_dir)
    if cfg.task in ("classify", "ner"):  # labels and spans; language models keep fp32 log-probabilities
        from frugal_lm.engine.savers import cast_for_inference

        typer.echo(f"precision: {cast_for_inference(model, precision, '--precision')}", err=True)
    records = task.inputs(data, text)
    lines = "".join(json.dumps(row) + "\n" for row in task.predict(model, records))
    if output:
        from frugal_lm.io import write_text

        write_text(output, lines)
    else:
        sys.stdout.write(lines)


@app.command()
def models() -> None:
    """List the bundled model aliases and where they load from."""
    from frugal_lm.models.registry import list_aliases

    for row in list_aliases():
        typer.echo(f"{row['alias']:<8} {row['kind']:<8} {row['status']:<9} {row['location']}")
        typer.echo(f"{'':<8} {row['description']}")


@app.command("config")
def config_(
    path: Annotated[Path | None, typer.Argument(help="show this YAML resolved; without it, every key")] = None,
    task: Annotated[str | None, Opt(help=f"show this task's defaults and keys: {' | '.join(task_names())}")] = None,
    set_: Annotated[list[str] | None, Opt("--set", help="overrides, as for train")] = None,
) -> None:
    """Show every config key with its default and help, or a config resolved and validated."""
    from frugal_lm.config import describe, load_config

    if path is None and not set_:
        for key, tp, default, help_ in describe(task or "classify"):
            typer.echo(f"{key:<30} {tp:<10} {default!s:<12} {help_}")
        return
    typer.echo(load_config(path, {"task": task} if task else None, sets=set_ or []).to_yaml(), nl=False)


# Command groups that live in their own modules; each has `register(app)`.
PLUGINS = ("frugal_lm.cli_ngram", "frugal_lm.cli_cv", "frugal_lm.cli_score", "frugal_lm.cli_generate", "frugal_lm.cli_serve",
           "frugal_lm.cli_pretrain", "frugal_lm.cli_plan")


def _register_plugins() -> None:
    import importlib

    for name in PLUGINS:
        importlib.import_module(name).register(app)


def main() -> None:
    """Entry point: user-fixable errors print one line and exit 2."""
    _register_plugins()
    try:
        app(standalone_mode=False)
    except FrugalError as exc:
        from frugal_lm.engine.distributed import is_main

        if is_main():  # every process of a multi-process run meets the same error; one line says it
            typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
