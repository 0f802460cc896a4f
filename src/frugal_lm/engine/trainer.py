"""The one training loop, shared by every task. Explicit and readable top to bottom.

A task (see tasks/base.py) supplies `loss(model, batch) -> (summed loss, count)`, `count(batch)`,
`evaluate(model, device=...) -> metrics` and the direction of its metrics. The engine does the rest: AdamW with warmup and a schedule,
gradient accumulation normalised over the whole accumulation group, clipping, evaluation, early
stopping, best-model tracking, atomic checkpoints, exact resume, time budget, progress and logs.
Devices, precision and multi-process runs come from Hugging Face Accelerate.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frugal_lm.config import TrainConfig
from frugal_lm.data.batching import Collator, EpochBatchSampler
from frugal_lm.engine.checkpoint import load_checkpoint, save_checkpoint, trainable_state
from frugal_lm.engine.report import MetricsLog
from frugal_lm.engine.savers import count_parameters, resolve_precision
from frugal_lm.errors import FrugalError
from frugal_lm.tasks.base import Task


@dataclass
class LoopState:
    """Everything besides tensors that a resumed run needs to continue exactly."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of `epoch` already consumed
    best: float | None = None
    best_step: int | None = None
    best_metrics: dict[str, Any] = field(default_factory=dict)
    last_metrics: dict[str, Any] = field(default_factory=dict)
    last_eval_step: int = -1
    bad_evals: int = 0
    elapsed: float = 0.0  # training seconds, evaluation excluded
    examples: int = 0
    tokens: int = 0
    log_lines: int = 0
    stopped: str | None = None


class _Interrupt:
    """First Ctrl-C: finish the current step, checkpoint, exit. Second Ctrl-C: stop at once."""

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None

    def __enter__(self) -> _Interrupt:
        try:
            self._old = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread
            self._old = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ninterrupt: finishing this step and saving a checkpoint (Ctrl-C again to abort)",
              file=sys.stderr)

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def _param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _scheduler(optimizer: Any, name: str, warmup: int, total: int) -> Any:
    from torch.optim.lr_scheduler import LambdaLR

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        if name == "linear":
            return max(0.0, 1.0 - progress)
        if name == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return LambdaLR(optimizer, factor)


class Trainer:
    """Train `model` on encoded examples for `task`, writing checkpoints and logs into `run_dir`.

    Args:
        model: a transformers model (optionally wrapped by peft) with requires_grad set as wanted.
        task: a Task (tasks/base.py): loss, count, evaluate and the direction of its metrics.
        train_set: encoded examples (dicts of lists / ints) as the task's collator expects.
        collator: pads a list of examples into a batch.
        cfg: the train section of the run config.
        run_dir: where checkpoint/, metrics.jsonl and best weights go.
    """

    def __init__(self, model: Any, task: Task, train_set: list[dict[str, Any]], collator: Collator,
                 cfg: TrainConfig, run_dir: str | Path):
        from accelerate import Accelerator

        self.cfg = cfg
        self.task = task
        self.run_dir = Path(run_dir)
        self.collator = collator
        self.train_set = train_set
        self.precision = resolve_precision(cfg.precision)
        self.accelerator = Accelerator(mixed_precision=self.precision)
        acc = self.accelerator
        self.sampler = EpochBatchSampler(
            task.lengths(train_set), cfg.batch_size, shuffle=True,
            group_by_length=cfg.group_by_length, seed=cfg.seed,
            rank=acc.process_index, world=acc.num_processes)
        if len(self.sampler) == 0:
            raise FrugalError(f"too few training examples ({len(train_set)}) for {acc.num_processes} processes")
        self.steps_per_epoch = math.ceil(len(self.sampler) / cfg.grad_accum)
        self.total_steps = cfg.max_steps or math.ceil(cfg.epochs * self.steps_per_epoch)
        if cfg.max_steps and cfg.epochs:
            self.total_steps = min(cfg.max_steps, math.ceil(cfg.epochs * self.steps_per_epoch))
        if cfg.gradient_checkpointing:
            base = getattr(model, "get_base_model", lambda: model)()
            # transformers 5 renamed it; older releases only have the old name
            if hasattr(base, "activation_checkpointing_enable"):
                base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.trainable, self.total_params = count_parameters(model)
        if self.trainable == 0:
            raise FrugalError("no trainable parameters left: check train.freeze_layers and peft settings")
        from torch.optim import AdamW

        optimizer = AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
        warmup = int(cfg.warmup_ratio * self.total_steps)
        self.scheduler = _scheduler(optimizer, cfg.scheduler, warmup, self.total_steps)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.log = MetricsLog(self.run_dir / "metrics.jsonl")
        self.state = LoopState()
        self._shown = ""  # the progress bar's last loss / throughput text

    # -- checkpoints -------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoint"

    def save(self) -> None:
        self.state.log_lines = self.log.lines()
        if self.accelerator.is_main_process:
            save_checkpoint(self.checkpoint_dir, self.accelerator.unwrap_model(self.model), self.optimizer,
                            self.scheduler, vars(self.state))
        self.accelerator.wait_for_everyone()

    def resume(self) -> None:
        """Restore model, optimizer, scheduler, RNG, data position and logs from the last checkpoint."""
        if not (self.checkpoint_dir / "state.json").exists():
            raise FrugalError(f"{self.run_dir}: no checkpoint to resume from")
        saved = load_checkpoint(self.checkpoint_dir, self.accelerator.unwrap_model(self.model),
                                self.optimizer, self.scheduler)
        self.state = LoopState(**saved)
        self.state.stopped = None
        self.log.truncate(self.state.log_lines)

    def save_best(self) -> None:
        from safetensors.torch import save_file

        from frugal_lm.io import atomic_path

        if self.accelerator.is_main_process:
            with atomic_path(self.run_dir / "best.safetensors") as tmp:
                save_file(trainable_state(self.accelerator.unwrap_model(self.model)), str(tmp))

    def load_best(self) -> None:
        """Put the best evaluation's weights back into the model (when there was an evaluation)."""
        import torch
        from safetensors.torch import load_file

        path = self.run_dir / "best.safetensors"
        if not path.exists():
            return
        params = dict(self.accelerator.unwrap_model(self.model).named_parameters())
        with torch.no_grad():
            for name, value in load_file(str(path)).items():
                params[name].copy_(value)

    # -- the loop ----------------------------------------------------------------------------
    def _step(self, group: list[dict[str, Any]]) -> float:
        """One optimizer step over an accumulation group. Returns the mean loss per counted item."""
        import torch

        acc, model = self.accelerator, self.model
        n_local = sum(self.task.count(b) for b in group)
        n_total = n_local
        if acc.num_processes > 1:
            n_total = int(acc.reduce(torch.tensor(n_local, device=acc.device), "sum").item())
        # DDP averages gradients over processes, so scale by their number to get sum / n_total overall.
        scale = acc.num_processes / max(1, n_total)
        model.train()
        loss_sum = 0.0
        for i, batch in enumerate(group):
            batch = {k: v.to(acc.device) for k, v in batch.items()}
            sync = i == len(group) - 1
            with (nullcontext() if sync else acc.no_sync(model)), acc.autocast():
                loss, _ = self.task.loss(model, batch)
                acc.backward(loss * scale)
            loss_sum += float(loss.detach())
            self.state.tokens += int(batch["attention_mask"].sum())
        if self.cfg.max_grad_norm:
            acc.clip_grad_norm_(model.parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        # examples are batch rows (sentences, windows), whatever the loss counts (tokens for NER)
        self.state.examples += sum(int(b["input_ids"].shape[0]) for b in group)
        return loss_sum / max(1, n_local)

    def _evaluate(self) -> dict[str, Any]:
        metrics = self.task.evaluate(self.accelerator.unwrap_model(self.model), device=self.accelerator.device)
        s, metric = self.state, self.cfg.metric
        if metric not in metrics:
            raise FrugalError(f"train.metric: '{metric}' is not among the evaluation metrics "
                              f"({', '.join(k for k in metrics if not isinstance(metrics[k], (dict, list)))})")
        value = metrics[metric]
        better = s.best is None or (value > s.best if self.task.higher_is_better(metric) else value < s.best)
        if better:
            s.best, s.best_step, s.best_metrics, s.bad_evals = value, s.step, metrics, 0
            self.save_best()
        else:
            s.bad_evals += 1
        s.last_metrics, s.last_eval_step = metrics, s.step
        if self.accelerator.is_main_process:
            self.log.write({"type": "eval", "step": s.step, "epoch": s.epoch, **metrics})
        return metrics

    def fit(self, has_eval: bool, stop_at_step: int | None = None, progress: bool = True) -> LoopState:
        """Run until the step budget, early stopping, the time budget or an interrupt.

        Args:
            has_eval: whether the task has evaluation data.
            stop_at_step: simulate an interruption after this step (tests of resume); the run checkpoints
                and returns with `state.stopped = "interrupted"`.
            progress: show a progress bar on stderr.
        """
        from tqdm.auto import tqdm

        cfg, s, acc = self.cfg, self.state, self.accelerator
        eval_every = cfg.eval_every or self.steps_per_epoch
        save_every = cfg.save_every or eval_every
        bar = tqdm(total=self.total_steps, initial=s.step, disable=not (progress and acc.is_main_process),
                   desc="train", unit="step", dynamic_ncols=True, file=sys.stderr)
        window = {"loss": 0.0, "steps": 0, "examples": s.examples, "time": s.elapsed}
        deadline = cfg.max_minutes * 60 if cfg.max_minutes else None
        with _Interrupt() as interrupt:
            while s.step < self.total_steps and s.stopped is None:
                self.sampler.set_epoch(s.epoch, skip=s.batch_in_epoch)
                remaining = len(self.sampler) - s.batch_in_epoch
                batches = iter(self.sampler)
                while remaining > 0 and s.step < self.total_steps and s.stopped is None:
                    take = min(cfg.grad_accum, remaining)
                    t0 = time.perf_counter()  # batching counts as training time
                    group = [self.collator([self.train_set[i] for i in next(batches)]) for _ in range(take)]
                    loss = self._step(group)
                    s.elapsed += time.perf_counter() - t0
                    s.batch_in_epoch += take
                    remaining -= take
                    if remaining == 0:
                        s.epoch, s.batch_in_epoch = s.epoch + 1, 0
                    window["loss"] += loss
                    window["steps"] += 1
                    bar.update(1)
                    if s.step % cfg.log_every == 0 or s.step == self.total_steps:
                        self._log_train(window, bar)
                    if has_eval and s.step % eval_every == 0:
                        metrics = self._evaluate()
                        bar.set_postfix_str(f"{self._shown} {cfg.metric}={metrics[cfg.metric]:.4f}")
                        if cfg.patience and s.bad_evals >= cfg.patience:
                            s.stopped = "early stopping"
                    if deadline and s.elapsed >= deadline:
                        s.stopped = "time budget"
                    if interrupt.requested or (stop_at_step is not None and s.step >= stop_at_step):
                        s.stopped = "interrupted"
                    if s.step % save_every == 0 or s.stopped:
                        self.save()
        bar.close()
        if s.stopped == "interrupted":
            return s
        if has_eval and s.last_eval_step != s.step:
            self._evaluate()
        self.save()
        return s

    def _postfix(self, window: dict[str, Any]) -> str:
        seconds = self.state.elapsed - window["time"]
        rate = (self.state.examples - window["examples"]) / seconds if seconds > 0 else 0.0
        return f"loss={window['loss'] / max(1, window['steps']):.4f} ex/s={rate:.1f}"

    def _log_train(self, window: dict[str, Any], bar: Any) -> None:
        s = self.state
        seconds = s.elapsed - window["time"]
        record = {
            "type": "train", "step": s.step, "epoch": round(s.epoch + s.batch_in_epoch / len(self.sampler), 4),
            "loss": window["loss"] / max(1, window["steps"]), "lr": self.scheduler.get_last_lr()[0],
            "examples_per_s": (s.examples - window["examples"]) / seconds if seconds > 0 else 0.0,
            "elapsed_s": round(s.elapsed, 3),
        }
        self._shown = self._postfix(window)
        bar.set_postfix_str(self._shown)
        if self.accelerator.is_main_process:
            self.log.write(record)
        window.update(loss=0.0, steps=0, examples=s.examples, time=s.elapsed)
