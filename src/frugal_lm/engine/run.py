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

import shutil
import sys
from pathlib import Path
from typing import Any

from frugal_lm.config import RunConfig, load_config
from frugal_lm.errors import FrugalError
from frugal_lm.io import atomic_path, write_text
from frugal_lm.models.loading import quiet_transformers


def _log(message: str) -> None:
    print(message, file=sys.stderr)


def _build(cfg: RunConfig) -> tuple[Any, Any]:
    """Task with data read and encoded, and the model with compute savers applied."""
    import torch

    from frugal_lm.engine.savers import apply_lora, freeze
    from frugal_lm.models.loading import load_tokenizer, local_path
    from frugal_lm.models.registry import resolve_model
    from frugal_lm.tasks import get_task

    resolved = resolve_model(cfg.model.name)
    tokenizer = load_tokenizer(resolved, trust_remote_code=cfg.model.trust_remote_code)
    task = get_task(cfg.task)(cfg)
    task.prepare(tokenizer)  # reads and checks all data before the model is loaded
    torch.manual_seed(cfg.train.seed)  # the new head's init depends on the seed only
    model = task.build_model(local_path(resolved), trust_remote_code=cfg.model.trust_remote_code)
    t = cfg.train
    if cfg.peft.method == "lora":
        p = cfg.peft
        model = apply_lora(model, p.r, p.alpha, p.dropout, p.target_modules, task.peft_task_type,
                           task.head_modules)
        if t.freeze_layers:
            freeze(model, embeddings=False, first_layers=t.freeze_layers)
    else:
        freeze(model, embeddings=t.freeze_embeddings, first_layers=t.freeze_layers, log=_log)
    return task, model


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


def train(cfg: RunConfig, resume: bool = False, overwrite: bool = False, progress: bool = True,
          stop_at_step: int | None = None) -> dict[str, Any]:
    """Train a model as `cfg` says and write the run folder.

    Args:
        cfg: the validated run config.
        resume: continue from `cfg.output`'s checkpoint (the folder's own config.yaml wins).
        overwrite: replace an existing run folder.
        progress: progress bar on stderr.
        stop_at_step: stop (checkpointed, resumable) after this step, as an interruption would.

    Returns:
        The summary also written to metrics.json.

    Raises:
        FrugalError: bad config or data (before training starts), existing run without resume/overwrite.
    """
    from accelerate.utils import set_seed

    from frugal_lm.engine.report import plot_curves, write_model_card, write_summary
    from frugal_lm.engine.trainer import Trainer

    run_dir = Path(cfg.output)
    if resume:
        if not (run_dir / "config.yaml").exists():
            raise FrugalError(f"{run_dir}: not a run folder (no config.yaml) — nothing to resume")
    elif (run_dir / "config.yaml").exists() or (run_dir / "checkpoint").exists():
        if not overwrite:
            raise FrugalError(f"{run_dir}: a run already exists here; use --resume to continue it or "
                              "--overwrite to start again")
    set_seed(cfg.train.seed)
    with quiet_transformers():
        task, model = _build(cfg)  # data and model checked first: a failed start leaves an old run as it was
    if overwrite and not resume and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        write_text(run_dir / "config.yaml", cfg.to_yaml())
    trainer = Trainer(model, task, task.train_set, task.collator(), cfg.train, run_dir)
    if resume:
        trainer.resume()
    state = trainer.fit(has_eval=bool(task.eval_set), stop_at_step=stop_at_step, progress=progress)
    summary = {
        "task": cfg.task, "model": cfg.model.name, "stopped": state.stopped or "completed",
        "steps": state.step, "epochs": round(state.step / trainer.steps_per_epoch, 4),
        "train_examples": task.train_count, "eval_examples": len(task.eval_records),
        "train_seconds": round(state.elapsed, 3),
        "train_examples_per_s": state.examples / state.elapsed if state.elapsed else 0.0,
        "train_tokens_per_s": state.tokens / state.elapsed if state.elapsed else 0.0,
        "trainable_parameters": trainer.trainable, "total_parameters": trainer.total_params,
        "precision": {"no": "fp32"}.get(trainer.precision, trainer.precision),
        "metric": cfg.train.metric, "best_step": state.best_step,
        "final": state.last_metrics, "best": state.best_metrics,
    }
    if state.stopped == "interrupted":
        print(f"stopped after step {state.step}; continue with: frugal train --resume --output {run_dir}",
              file=sys.stderr)
        return summary
    if not trainer.accelerator.is_main_process:
        return summary
    trainer.load_best()
    with quiet_transformers():
        _export(run_dir, cfg, task, trainer.accelerator.unwrap_model(trainer.model))
    write_summary(run_dir, summary)
    plot_curves(trainer.log.read(), run_dir, cfg.train.metric)
    write_model_card(run_dir, cfg, summary, task.card_lines(), task.auto_class)
    if state.stopped != "time budget":  # a budget stop may be resumed; keep the best weights for it
        (run_dir / "best.safetensors").unlink(missing_ok=True)
    return summary


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
    auto = getattr(transformers, task_cls.auto_class)
    if model_dir.name == "adapter":  # LoRA run exported without merging: base model + adapter
        from peft import PeftModel

        from frugal_lm.models.loading import local_path
        from frugal_lm.models.registry import resolve_model

        base = task.build_model(local_path(resolve_model(cfg.model.name)), cfg.model.trust_remote_code)
        model = PeftModel.from_pretrained(base, str(model_dir))
    else:
        model = from_pretrained(auto, str(model_dir), trust_remote_code=cfg.model.trust_remote_code)
    model.eval()
    return cfg, task, model
