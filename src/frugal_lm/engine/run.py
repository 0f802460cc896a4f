"""From a run config to a finished run folder, and back from a run folder to eval and predictions.

Run folder layout:
    config.yaml      resolved config (everything needed to rebuild the run)
    labels.json      label map (classification, NER): the task's saved state, see Task.state_file
    model/           the best model + tokenizer; `AutoModelFor...from_pretrained("model")` loads it
    adapter/         LoRA runs: the peft adapter (with the task head); model/ holds the merged model
    metrics.jsonl    one line per logging step and per evaluation
    metrics.json     final and best evaluation metrics, throughput, step counts
    loss.png, eval.png
    README.md        model card
    checkpoint/      resume state (trainable weights, optimizer, scheduler, RNG, loop position)
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from frugal_lm.config import RunConfig, load_config
from frugal_lm.engine.report import plot_curves, write_model_card, write_summary
from frugal_lm.errors import FrugalError, ModelError
from frugal_lm.io import atomic_path, write_text
from frugal_lm.models.loading import quiet_transformers


def _log(message: str) -> None:
    print(message, file=sys.stderr)


def _build(cfg: RunConfig) -> tuple[Any, Any]:
    """Task with data read and encoded, and the model with compute savers applied."""
    task, resolved = prepare_task(cfg)
    return task, build_model(cfg, task, resolved)


def prepare_task(cfg: RunConfig) -> tuple[Any, Any]:
    """The task with its data read, checked and encoded (before any model is loaded), and the resolved model."""
    from frugal_lm.models.loading import load_tokenizer
    from frugal_lm.models.registry import resolve_model
    from frugal_lm.tasks import get_task

    resolved = resolve_model(cfg.model.name, tokenizer=cfg.model.tokenizer)
    tokenizer = load_tokenizer(resolved, trust_remote_code=cfg.model.trust_remote_code)
    task = get_task(cfg.task)(cfg)
    task.prepare(tokenizer)  # reads and checks all data before the model is loaded
    return task, resolved


def task_train_config(cfg: RunConfig, task: Any) -> Any:
    """cfg.train with the task's recipe for this run over it (Task.train_overrides: a few-shot contrastive
    stage's batch, lr and steps): what the engine trains with, so what the planner must plan."""
    overrides = task.train_overrides()
    return dataclasses.replace(cfg.train, **overrides) if overrides else cfg.train


def build_model(cfg: RunConfig, task: Any, resolved: Any, model: Any = None) -> Any:
    """The task's model (loaded, or `model` as given: the planner passes copies of one) with cfg's compute
    savers applied: LoRA, frozen embeddings and layers."""
    import torch

    from frugal_lm.engine.savers import apply_lora, freeze
    from frugal_lm.models.loading import local_path

    if model is None:
        torch.manual_seed(cfg.train.seed)  # the new head's init depends on the seed only
        model = task.build_model(local_path(resolved), trust_remote_code=cfg.model.trust_remote_code)
        if resolved.adapter:  # a LoRA run exported without merging: its adapter goes onto the base model first
            from peft import PeftModel

            try:
                model = PeftModel.from_pretrained(model, resolved.adapter).merge_and_unload()
            except (RuntimeError, ValueError) as exc:
                raise ModelError(f"{cfg.model.name}: its LoRA adapter does not fit this task's model "
                                 f"({str(exc).splitlines()[0][:200]})") from None
    t = cfg.train
    if cfg.peft.method == "lora":
        p = cfg.peft
        model = apply_lora(model, p.r, p.alpha, p.dropout, p.target_modules, task.peft_task_type,
                           task.head_modules, top_layers=p.top_layers)
        if t.freeze_layers:
            freeze(model, embeddings=False, first_layers=t.freeze_layers)
    else:
        freeze(model, embeddings=t.freeze_embeddings, first_layers=t.freeze_layers, log=_log)
    return model


def _export(run_dir: Path, cfg: RunConfig, task: Any, model: Any) -> None:
    """Write model/ (and adapter/ for LoRA) atomically, with the tokenizer and label map."""
    if cfg.peft.method == "lora":
        with atomic_path(run_dir / "adapter") as tmp:
            model.save_pretrained(tmp)
            task.tokenizer.save_pretrained(tmp)
        if not cfg.peft.merge:
            shutil.rmtree(run_dir / "model", ignore_errors=True)
            task.save_extra(run_dir)
            return
        model = model.merge_and_unload()
    with atomic_path(run_dir / "model") as tmp:
        model.save_pretrained(tmp)
        task.tokenizer.save_pretrained(tmp)
    task.save_extra(run_dir)


FINISHED = ("completed", "early stopping")


def train(cfg: RunConfig, resume: bool = False, overwrite: bool = False, progress: bool = True,
          stop_at_step: int | None = None, budget_minutes: float | None = None,
          planned: dict[str, Any] | None = None, started: float | None = None) -> dict[str, Any]:
    """Train a model as `cfg` says and write the run folder.

    Args:
        cfg: the validated run config.
        resume: continue from `cfg.output`'s checkpoint. The folder's own config.yaml wins: `cfg` may differ
            from it only in the keys of config.RESUMABLE (the budget, logging).
        overwrite: replace an existing run folder, once the new run has made its first step.
        progress: progress bar on stderr.
        stop_at_step: stop (checkpointed, resumable) after this step, as an interruption would.
        budget_minutes: on resume, a time budget for this session (0: none). Without it, a run that its
            budget stopped trains on to its planned end, and any other keeps the budget it had.
        planned: the plan that chose cfg's recipe (`train --auto`, plan.py): written to plan.json, and its
            predictions beside the measured figures in metrics.json; train.memory_budget is then not re-fitted.
        started: `Trainer.clock()` when the run began (default now); `--auto` passes its planning's start, so the
            time budget counts the planning too.

    Returns:
        The summary also written to metrics.json.

    Raises:
        FrugalError: bad config or data (before training starts), existing run without resume/overwrite,
            a resume that would change the run's config, a corrupt checkpoint.
    """
    from frugal_lm.engine.mfu import mfu_report
    from frugal_lm.engine.trainer import Trainer

    # the time budget counts loading (and an --auto plan) as well: wall time as the user sees it
    started = Trainer.clock() if started is None else started
    from accelerate.utils import set_seed

    from frugal_lm.config import budget_seconds, resume_config
    from frugal_lm.engine.checkpoint import read_state, recover_checkpoint, remove_temporaries
    from frugal_lm.engine.distributed import process_state

    run_dir = Path(cfg.output)
    ps = process_state()
    saved: dict[str, Any] | None = None
    if resume:
        if not (run_dir / "config.yaml").exists():
            raise FrugalError(f"{run_dir}: not a run folder (no config.yaml) — nothing to resume")
        cfg, changed = resume_config(run_dir, cfg)
        cfg.output = str(run_dir)
        if budget_minutes is None and {"train.max_minutes", "train.time_budget"} & set(changed):
            budget_minutes = budget_seconds(cfg.train) / 60
        if ps.is_main_process:
            remove_temporaries(run_dir)  # half-written saves of a killed session
            note = recover_checkpoint(run_dir / "checkpoint")
            if note:
                _log(note)
        ps.wait_for_everyone()
        saved = read_state(run_dir / "checkpoint")
        done = _finished_summary(run_dir, saved)
        if done is not None:
            _log(f"{run_dir}: this run already ended ({saved['stopped']} at step {saved['step']}); "
                 "nothing to do: its model/ and metrics.json stay as they are")
            return done
    elif (run_dir / "config.yaml").exists() or (run_dir / "checkpoint").exists():
        if not overwrite:
            raise FrugalError(f"{run_dir}: a run already exists here; use --resume to continue it or "
                              "--overwrite to start again")
    set_seed(cfg.train.seed)
    with quiet_transformers():
        task, model = _build(cfg)  # data and model checked first: a failed start leaves an old run as it was
    task.start_from(model)  # before --resume loads a checkpoint into it
    train_cfg = task_train_config(cfg, task)
    if task.train_overrides():
        _log(f"{cfg.task}: training with " + ", ".join(f"train.{k}={v}" for k, v in task.train_overrides().items()))
    if train_cfg.memory_budget and planned is None:  # the micro-batch and checkpointing that fit the budget
        from frugal_lm.engine.savers import resolve_precision
        from frugal_lm.plan import fit_memory

        precision = resolve_precision(train_cfg.precision, sum(p.numel() for p in model.parameters()))
        micro, checkpointing = fit_memory(dataclasses.replace(cfg, train=train_cfg), task, model,
                                          _autocast(precision), _log)
        train_cfg = dataclasses.replace(train_cfg, micro_batch=micro,
                                        gradient_checkpointing=checkpointing or train_cfg.gradient_checkpointing)
    cache = _prefix_cache(cfg, model) if train_cfg.cache_prefix else None
    trainer = Trainer(model, task, task.train_set, task.collator(), train_cfg, run_dir,
                      group=(saved or {}).get("group") or None)
    if saved and saved.get("processes", 1) != trainer.accelerator.num_processes and ps.is_main_process:
        _log(f"note: this run was checkpointed by {saved.get('processes', 1)} process(es) and continues on "
             f"{trainer.accelerator.num_processes}, accumulating {trainer.accum} micro-batch(es) each per step: "
             f"the global batch stays {trainer.group} x {train_cfg.batch_size} examples")
    if ps.is_main_process:
        _log(f"precision: {trainer.precision_reason}")
    replaced = _set_up_folder(run_dir, cfg, resume, overwrite, ps)
    before = trainer.resume(budget_minutes) if resume else None

    def started_ok() -> None:  # the new run is under way: the run it replaces can go
        if replaced is not None:
            shutil.rmtree(replaced, ignore_errors=True)

    try:
        if before is not None and before.stopped in FINISHED:  # ended, but its export was cut short
            state = trainer.state
            state.stopped = before.stopped
        else:
            state = trainer.fit(has_eval=bool(task.eval_set), stop_at_step=stop_at_step, progress=progress,
                                started=started, on_started=started_ok)
    except BaseException as exc:
        if replaced is not None and replaced.exists():  # a failed start: put the old run back
            shutil.rmtree(run_dir, ignore_errors=True)
            os.replace(replaced, run_dir)
        if isinstance(exc, OSError):  # a full disk, a quota, a folder gone: say what is safe
            raise FrugalError(_write_failure(run_dir, trainer, exc)) from None
        raise
    started_ok()
    summary = {
        "task": cfg.task, "model": cfg.model.name, "stopped": state.stopped or "completed",
        "steps": state.step, "epochs": round(state.step / trainer.steps_per_epoch, 4),
        "train_examples": task.train_count, "eval_examples": len(task.eval_records),
        "train_seconds": round(state.elapsed, 3), "wall_seconds": round(state.wall, 3),
        "train_examples_per_s": state.examples / state.elapsed if state.elapsed else 0.0,
        "train_tokens_per_s": state.tokens / state.elapsed if state.elapsed else 0.0,
        "trainable_parameters": trainer.trainable, "total_parameters": trainer.total_params,
        "precision": {"no": "fp32"}.get(trainer.precision, trainer.precision),
        "precision_reason": trainer.precision_reason,
        "processes": trainer.accelerator.num_processes, "skipped_steps": state.skipped,
        "metric": cfg.train.metric, "best_step": state.best_step,
        "final": state.last_metrics, "best": state.best_metrics,
        # the budget on the axis of wall_seconds (all sessions), and how the learning rate was scheduled:
        # "budget" (decays to its end at the budget) or "steps" (over the planned steps)
        "time_budget_s": state.budget_s, "lr_schedule": state.schedule,
        # the process's peak resident memory (CPU) or the device's peak allocation (GPU): what plan predicts
        "peak_memory_bytes": peak_memory(trainer.accelerator.device),
        "micro_batch": trainer.micro_batch, "memory_back_offs": state.back_offs,
        "gradient_checkpointing": train_cfg.gradient_checkpointing,
        "budget_reserve_s": round(state.reserve_s, 3) if state.schedule == "budget" else None,
        # train.* values the task's recipe set over the config (few-shot stage, classify.large_batch)
        "train_overrides": task.train_overrides(),
    }
    if state.stopped == "interrupted":
        if ps.is_main_process:
            print(f"stopped after step {state.step}; continue with: frugal train --resume --output {run_dir}",
                  file=sys.stderr)
        return summary
    if not trainer.accelerator.is_main_process:
        return summary
    if planned is not None:  # what the plan predicted, beside what the run measured
        chosen = planned["candidates"][planned["recommended"]]
        epochs = summary["epochs"] or 1.0
        summary["plan"] = {"recipe": chosen["method"], "predicted_peak_memory_bytes": chosen["memory"]["peak"],
                           # the mean epoch (the prefix cache makes epochs after the first faster)
                           "predicted_epoch_s": round(chosen["run_s"] / (planned["epochs"] or 1.0), 3),
                           "measured_epoch_s": round(state.elapsed / epochs, 3)}
        from frugal_lm.io import write_json

        write_json(run_dir / "plan.json", planned)
    # model-FLOPs utilisation against this machine's measured matmul peak (engine/mfu.py): on the main process
    # only, which writes metrics.json; the others' probes would run at once and slow each other's readings
    summary.update(mfu_report(trainer.accelerator.unwrap_model(trainer.model), state.tokens, state.examples,
                              state.elapsed, trainer.precision, trainer.accelerator.device))
    if summary["mfu"] is not None:
        _log(f"MFU {summary['mfu']:.1%}: {summary['model_flops_per_s'] / 1e9:.1f} GFLOP/s of model work against "
             f"a measured matmul peak of {summary['peak_flops_per_s'] / 1e9:.1f} GFLOP/s ({summary['precision']})")
    if cache is not None:  # before the export: the model goes out exactly as transformers built it
        summary["prefix_cache"] = cache.stats()
        cache.remove()
        _log(f"prefix cache: {summary['prefix_cache']['hits']} hits, {summary['prefix_cache']['misses']} misses, "
             f"{summary['prefix_cache']['bytes'] / 1e6:.0f} MB")
    if not trainer.export_current:
        trainer.load_best()
    from frugal_lm.engine.inference import local_only

    with local_only():  # the other processes have returned: nothing may wait for them
        # the best evaluation's metrics are those of the weights load_best left (or kept: export_current)
        task.finish(trainer.accelerator.unwrap_model(trainer.model), run_dir, state.best_metrics or None)
    try:
        with quiet_transformers(), local_only():
            _export(run_dir, cfg, task, trainer.accelerator.unwrap_model(trainer.model))
        plot_curves(trainer.log.read(), run_dir, cfg.train.metric)
        # wall seconds with the final evaluation and the export: what the budget must hold (±5%)
        summary["finished_wall_s"] = round((before.wall if before is not None else 0.0)
                                           + Trainer.clock() - started, 3)
        # the card says what trained: the task's recipe (few-shot stage, classify.large_batch) over the config
        write_model_card(run_dir, dataclasses.replace(cfg, train=train_cfg), summary, task.card_lines(),
                         task.auto_class)
        write_summary(run_dir, summary)  # last: a run folder with metrics.json has its full export
    except OSError as exc:
        raise FrugalError(_write_failure(run_dir, trainer, exc)) from None
    if state.stopped != "time budget":  # a budget stop may be resumed; keep the best weights for it
        (run_dir / "best.safetensors").unlink(missing_ok=True)
    return summary


def _prefix_cache(cfg: RunConfig, model: Any) -> Any:
    """train.cache_prefix: the frozen embeddings and first train.freeze_layers layers run once per example
    (engine/prefix_cache.py), within a quarter of train.memory_budget or of the memory available."""
    from frugal_lm.config import parse_size
    from frugal_lm.engine.prefix_cache import PrefixCache, prefix_cache_supported
    from frugal_lm.plan import available_memory

    n = cfg.train.freeze_layers
    why = ("needs train.freeze_embeddings=true and train.freeze_layers N > 0" if not n else
           prefix_cache_supported(model, n))
    if why:
        raise FrugalError(f"train.cache_prefix: {why}")
    cap = (parse_size(cfg.train.memory_budget) or available_memory()) // 4
    _log(f"prefix cache: embeddings and the first {n} layers run once per example (up to {cap / 1e9:.1f} GB)")
    return PrefixCache(model, layers=n, max_bytes=cap)


def _autocast(precision: str) -> Any:
    """The autocast context of `precision` (accelerate's names) on this device, for measuring a forward pass."""
    import functools

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if precision == "no":
        from contextlib import nullcontext

        return nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return functools.partial(torch.autocast, device_type=device, dtype=dtype)


def peak_memory(device: Any) -> int:
    """Peak memory of this run: the GPU's peak allocation on CUDA, else the process's peak resident set."""
    import torch

    if str(device).startswith("cuda"):
        return int(torch.cuda.max_memory_allocated(device))
    from frugal_lm.plan import peak_rss_bytes

    return peak_rss_bytes()


def _write_failure(run_dir: Path, trainer: Any, exc: OSError) -> str:
    """The message for a write that failed mid-run (a full disk, a quota, a file-size limit)."""
    what = exc.strerror or str(exc)
    where = f" ({exc.filename})" if exc.filename else ""
    if trainer.saved_step is None:
        return f"{run_dir}: writing failed: {what}{where}; no checkpoint had been written yet"
    return (f"{run_dir}: writing failed: {what}{where}; the checkpoint of step {trainer.saved_step} is intact: "
            f"free some space, then continue with: frugal train --resume --output {run_dir}")


def _finished_summary(run_dir: Path, saved: dict[str, Any]) -> dict[str, Any] | None:
    """metrics.json of a run that ended (completed, early-stopped) and was fully exported; else None."""
    path = run_dir / "metrics.json"
    if saved.get("stopped") not in FINISHED or not path.exists():
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    return summary if summary.get("steps") == saved.get("step") else None


def _set_up_folder(run_dir: Path, cfg: RunConfig, resume: bool, overwrite: bool, ps: Any) -> Path | None:
    """Create the run folder (main process). An old run being overwritten is moved aside, not deleted:
    returns where, so that it can come back if the new run fails to start."""
    replaced = None
    if ps.is_main_process:
        if overwrite and not resume and run_dir.exists():
            replaced = run_dir.with_name(f".{run_dir.name}.replaced")
            shutil.rmtree(replaced, ignore_errors=True)
            os.replace(run_dir, replaced)
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            write_text(run_dir / "config.yaml", cfg.to_yaml())
    ps.wait_for_everyone()
    return replaced


def load_run(run_dir: str | Path) -> tuple[RunConfig, Any, Any]:
    """The config, a task (labels restored, tokenizer loaded) and the exported model of a run folder."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise FrugalError(f"{run_dir}: not a frugal run folder (no config.yaml)")
    model_dir = run_dir / "model" if (run_dir / "model").is_dir() else run_dir / "adapter"
    if not model_dir.is_dir():
        raise FrugalError(f"{run_dir}: has no exported model/ or adapter/ folder (did training finish? try --resume)")
    with quiet_transformers():
        return _load_run(run_dir, model_dir)


def _load_run(run_dir: Path, model_dir: Path) -> tuple[RunConfig, Any, Any]:
    from frugal_lm.models.loading import from_pretrained
    from frugal_lm.tasks import get_task

    cfg = load_config(run_dir / "config.yaml")
    task_cls = get_task(cfg.task)
    task = task_cls(cfg, saved=task_cls.load_extra(run_dir))
    import transformers

    task.tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    auto = getattr(transformers, task.auto_class)  # the instance's: pretraining's depends on its objective
    if model_dir.name == "adapter":  # LoRA run exported without merging: base model + adapter
        from peft import PeftModel

        from frugal_lm.models.loading import local_path
        from frugal_lm.models.registry import resolve_model

        base = task.build_model(local_path(resolve_model(cfg.model.name, cfg.model.tokenizer)),
                                cfg.model.trust_remote_code)
        model = PeftModel.from_pretrained(base, str(model_dir))
    else:
        model = from_pretrained(auto, str(model_dir), trust_remote_code=cfg.model.trust_remote_code)
    model.eval()
    return cfg, task, model
