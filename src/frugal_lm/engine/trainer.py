"""The one training loop, shared by every task. Explicit and readable top to bottom.

A task (see tasks/base.py) supplies `loss(model, batch) -> (summed loss, count)`, `count(batch)`,
`evaluate(model, device=...) -> metrics` and the direction of its metrics. The engine does the rest: AdamW with warmup and a schedule,
gradient accumulation normalised over the whole accumulation group, clipping, evaluation, early
stopping, best-model tracking, atomic checkpoints, exact resume, time budget, progress and logs.
Devices, precision and multi-process runs come from Hugging Face Accelerate.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from frugal_lm.config import TrainConfig, budget_seconds, format_duration
from frugal_lm.data.batching import Collator, EpochBatchSampler
from frugal_lm.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, trainable_state, writing
from frugal_lm.engine.distributed import destroy_at_exit
from frugal_lm.engine.report import MetricsLog
from frugal_lm.engine.savers import count_parameters, precision_reason, resolve_precision
from frugal_lm.errors import FrugalError
from frugal_lm.tasks.base import Task


@dataclass
class LoopState:
    """Everything besides tensors that a resumed run needs to continue exactly."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of `epoch` already consumed, all processes together
    best: float | None = None
    best_step: int | None = None
    best_metrics: dict[str, Any] = field(default_factory=dict)
    last_metrics: dict[str, Any] = field(default_factory=dict)
    last_eval_step: int = -1
    bad_evals: int = 0
    elapsed: float = 0.0  # training seconds, evaluation excluded (throughput)
    wall: float = 0.0  # wall seconds of every session of the run, loading and evaluation included
    budget_s: float | None = None  # the time budget, on the axis of `wall`: the run ends by then (None: none)
    # The learning-rate schedule's position, in steps (fractional): where the LR of the next step sits on the
    # curve. "steps": the step count (today's schedule); "budget": driven by wall time too, to end at budget_s.
    schedule: str = "steps"
    progress: float = 0.0
    plan_budget: float | None = None  # the budget_s the "budget" plan was made for (a new budget: a new plan)
    plan_wall: float = 0.0  # wall seconds when the plan began (loading done)
    plan_progress: float = 0.0  # position when the plan began; the plan runs from there to the end
    plan_step: int = 0  # step when the plan began
    reserve_s: float = 0.0  # seconds kept at the end of the budget for the final evaluation, checkpoint, export
    eval_s: float | None = None  # the last evaluation's seconds (measured, for the reserve)
    save_s: float | None = None  # the last checkpoint's seconds
    group: int = 0  # micro-batches per optimizer step, all processes together (processes x accumulation)
    processes: int = 1
    skipped: int = 0  # steps skipped for a non-finite loss (train.nonfinite=skip)
    back_offs: int = 0  # out-of-memory errors survived by halving the micro-batch
    examples: int = 0
    tokens: int = 0
    log_lines: int = 0
    stopped: str | None = None


def is_out_of_memory(exc: BaseException) -> bool:
    """An allocation failure that a smaller batch may avoid: CUDA's OutOfMemoryError, or the CPU allocator's
    "can't allocate memory" (a CPU run past the machine's memory is usually killed by the kernel instead)."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def split_batch(batch: dict[str, Any], rows: int) -> list[dict[str, Any]]:
    """A padded batch cut into pieces of at most `rows` rows (0: not cut), each trimmed of the padding columns
    that none of its rows needs (batches are padded on the right). The pieces hold the batch's rows in order,
    so their summed loss is the batch's."""
    n = int(batch["input_ids"].shape[0])
    if not rows or rows >= n:
        return [batch]
    width = batch["input_ids"].shape[1]
    pieces = []
    for start in range(0, n, rows):
        piece = {k: v[start:start + rows] for k, v in batch.items()}
        mask = piece["attention_mask"]
        used = int(mask.any(dim=0).nonzero().max()) + 1 if bool(mask.any()) else width
        if used < width and not bool(mask[:, 0].eq(0).any()):  # right-padded: trim the unused columns
            piece = {k: v[:, :used] if v.dim() >= 2 and v.shape[1] == width else v for k, v in piece.items()}
        pieces.append(piece)
    return pieces


class _Interrupt:
    """First Ctrl-C or SIGTERM (a scheduler's or `kill`'s polite stop): finish the current step, checkpoint,
    exit. A second one: stop at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Interrupt:
        for sig in self.SIGNALS:
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ninterrupt: finishing this step and saving a checkpoint (Ctrl-C again to abort)",
              file=sys.stderr)

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _clips_in_kernel(optimizer: Any, distributed_type: str, precision: str) -> bool:
    """Whether `_clip_by_grad_scale` may clip for this run: torch's fused AdamW (the only kind that divides its
    gradients by a `grad_scale`), whole gradients on every process (one process or DDP, not sharded), and no
    fp16 grad scaler (which sets `grad_scale` itself)."""
    return (bool(optimizer.defaults.get("fused")) and precision != "fp16"
            and distributed_type in ("NO", "MULTI_CPU", "MULTI_GPU"))


def _clip_by_grad_scale(optimizer: Any, max_norm: float) -> Any:
    """Clip the gradients to `max_norm` inside the fused AdamW kernel; returns their total norm.

    `clip_grad_norm_` multiplies every gradient by min(1, max_norm / norm) in a pass of its own, even by 1;
    the fused kernel reads each gradient anyway and divides it by `optimizer.grad_scale` when one is set (the
    hook torch's AMP grad scaler uses), so the clip costs no extra pass. The divisor (norm + 1e-6) / max_norm is
    clip_grad_norm_'s factor inverted, set only when the norm is over the limit. Measured on MiniLM's trainable
    10.8M values (2 cores): clip_grad_norm_ 7.8 ms, the norm alone 3.3 ms, the fused step 12.6 -> 14.1 ms with
    a divisor. The caller resets `grad_scale` to None after the step."""
    import torch

    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    norm = torch.nn.utils.get_total_norm(grads, 2.0, foreach=True)
    if float(norm) > max_norm:
        optimizer.grad_scale = ((norm.float() + 1e-6) / max_norm).to(grads[0].device)
    return norm


def _adamw_kernel(groups: list[dict[str, Any]]) -> dict[str, bool]:
    """AdamW's fused kernel where every parameter allows it (floating point, on a CPU or a CUDA device).

    On a CPU torch's default is the loop over tensors, several passes over each parameter per step: the
    fused kernel makes one. Measured on MiniLM's default classification step (22M trainable values, bf16
    autocast, 2 cores): the optimizer step 24 -> 7 ms and the whole step 0.110 -> 0.093 s, same update (BENCHMARKS.md).
    Sharded runs, where the wrapper may own the optimizer, are refused before this is reached (sharded_mode).
    """
    params = [p for g in groups for p in g["params"]]
    ok = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return {"fused": True} if ok else {}


def _scheduler(optimizer: Any, name: str, warmup: int, total: int, position: Any = None) -> Any:
    """Warmup, then `name`'s decay to its end at step `total`.

    Args:
        position: maps the scheduler's step count to the position on the curve (a fractional step); default the
            count itself. The budget-aware schedule moves the position with wall time (Trainer._position).
    """
    from torch.optim.lr_scheduler import LambdaLR

    def factor(count: int) -> float:
        step = position(count) if position is not None else count
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        if name == "linear":
            return max(0.0, 1.0 - progress)
        if name == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return LambdaLR(optimizer, factor)


def _class_labels(train_set: list[dict[str, Any]]) -> list[int]:
    """The class of each example, for train.balanced_sampler (one integer label per example)."""
    labels = [e.get("labels") for e in train_set]
    if not all(isinstance(x, int) for x in labels):
        raise FrugalError("train.balanced_sampler: needs one class label per example (classification); "
                          "this task's examples have none or several")
    return labels


def epoch_sampler(task: Task, train_set: list[dict[str, Any]], cfg: TrainConfig) -> EpochBatchSampler:
    """The training batches of every epoch, as train config `cfg` orders them (the planner times the same)."""
    return EpochBatchSampler(task.lengths(train_set), cfg.batch_size, shuffle=True,
                             group_by_length=cfg.group_by_length, seed=cfg.seed,
                             labels=_class_labels(train_set) if cfg.balanced_sampler else None,
                             max_tokens=cfg.batch_tokens)


def sharded_mode(distributed_type: str) -> str | None:
    """"FSDP" or "DEEPSPEED" when this run was asked to shard the model, else None.

    On CPUs Accelerate (1.16) never enters those modes: `Accelerator(cpu=True)` ignores the FSDP/DeepSpeed
    settings that `accelerate launch --config_file fsdp.yaml` passes in the environment and runs plain
    DDP, so the environment is read too: a run asked to shard must not silently run unsharded.
    """
    if distributed_type in ("FSDP", "DEEPSPEED"):
        return distributed_type
    for mode, flag in (("FSDP", "ACCELERATE_USE_FSDP"), ("DEEPSPEED", "ACCELERATE_USE_DEEPSPEED")):
        if os.environ.get(flag, "false").lower() in ("1", "true", "yes"):
            return mode
    return None


def sharded_refusal(mode: str, gpus: bool) -> str:
    """Why frugal refuses FSDP/DeepSpeed, what to use instead (docs/distributed.md has the details)."""
    why = ("frugal's checkpoints, best-weights tracking, evaluation and export read whole parameters from one "
           "process; with sharded parameters they need a gathering step (accelerator.get_state_dict) that is "
           "not implemented, because it could not be tested here")
    if not gpus:
        why = (f"{mode} needs GPUs: on CPUs Accelerate ignores the {mode} settings and would silently run "
               "unsharded DDP (FSDP), or start processes that disagree on the world size (DeepSpeed); also, "
               + why)
    return (f"{mode}: sharded training is not supported: {why}. Use DDP instead (frugal train --processes N, "
            "or accelerate launch --config_file examples/accelerate/ddp_multi_gpu.yaml), with LoRA, bf16 "
            "and train.gradient_checkpointing to fit the model in one GPU's memory")


def _fresh_accelerator_state(precision: str) -> None:
    """Let this process's next Accelerator take `precision` (accelerate's "no", "bf16", "fp16").

    Accelerate keeps one AcceleratorState per process and refuses a second Accelerator with another
    mixed_precision; since "auto" chooses by model size, one process can train a tiny fp32 model and then a
    bf16 one (cross-validation, learning curves, a notebook). The per-run part of the state is reset; the
    process group (PartialState) is kept.
    """
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision", precision) != precision:
        AcceleratorState._reset_state(reset_partial_state=False)


class Trainer:
    """Train `model` on encoded examples for `task`, writing checkpoints and logs into `run_dir`.

    With a time budget (train.time_budget), the learning-rate schedule is budget-aware (Li et al., ICLR 2020,
    "Budgeted training"): its position is max(steps done / planned steps, time spent / usable time), so the LR
    reaches its end when the budget is spent, not when the steps run out (see _plan and _next_position).

    Args:
        model: a transformers model (optionally wrapped by peft) with requires_grad set as wanted.
        task: a Task (tasks/base.py): loss, count, evaluate and the direction of its metrics.
        train_set: encoded examples (dicts of lists / ints) as the task's collator expects.
        collator: pads a list of examples into a batch.
        cfg: the train section of the run config.
        run_dir: where checkpoint/, metrics.jsonl and best weights go.
        group: micro-batches per optimizer step over all processes; default processes x train.grad_accum.
            A resumed run passes its checkpoint's, so the global batch (and with it the data order, the
            schedule and the result) stays the same on another number of processes.

    With several processes, every step takes the next `group` batches of one global order (the same for
    any number of processes) and deals them out: the step is the one a single process would take with
    `group` accumulated micro-batches, only computed in parallel.
    """

    # Every time reading of the loop and of the budget goes through this seam: tests set a fake clock.
    clock = staticmethod(time.perf_counter)

    def __init__(self, model: Any, task: Task, train_set: list[dict[str, Any]], collator: Collator,
                 cfg: TrainConfig, run_dir: str | Path, group: int | None = None):
        import torch
        from accelerate import Accelerator

        self.cfg = cfg
        self.task = task
        self.run_dir = Path(run_dir)
        self.collator = collator
        self.train_set = train_set
        n_params = sum(p.numel() for p in model.parameters())
        self.precision = resolve_precision(cfg.precision, n_params)
        self.precision_reason = precision_reason(cfg.precision, n_params)
        # checked before Accelerator() too, which fails with an ImportError on DeepSpeed settings when
        # deepspeed is not installed
        sharded = sharded_mode("")
        if sharded:
            raise FrugalError(sharded_refusal(sharded, torch.cuda.is_available()))
        # without cpu=True, accelerate does not see a CPU-only torchrun launch as distributed (gloo)
        _fresh_accelerator_state(self.precision)
        self.accelerator = Accelerator(mixed_precision=self.precision, cpu=not torch.cuda.is_available())
        destroy_at_exit()
        acc = self.accelerator
        if acc.device.type == "cpu":
            from frugal_lm.engine.dropout import use_word_dropout  # imports torch: not at module load

            # the same Bernoulli masks from a fraction of the random draws: 6% of a MiniLM step (engine/dropout.py)
            use_word_dropout(model)
        sharded = sharded_mode(acc.distributed_type.name)
        if sharded:
            raise FrugalError(sharded_refusal(sharded, torch.cuda.is_available()))
        world = acc.num_processes
        self.group = group or cfg.grad_accum * world
        if self.group % world:
            raise FrugalError(f"this run takes {self.group} micro-batches per optimizer step (its processes x "
                              f"train.grad_accum), which {world} processes cannot share evenly: use a "
                              f"number of processes that divides {self.group}")
        self.accum = self.group // world
        # one global batch order for every number of processes; each step deals its batches out
        self.sampler = epoch_sampler(task, train_set, cfg)
        # rows per forward/backward pass (0: whole batches); halved on an out-of-memory error (_step)
        self.micro_batch = cfg.micro_batch
        if len(self.sampler) == 0:
            raise FrugalError(f"too few training examples ({len(train_set)}) for one batch")
        self.steps_per_epoch = math.ceil(len(self.sampler) / self.group)
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

        groups = _param_groups(model, cfg.weight_decay)
        optimizer = AdamW(groups, lr=cfg.lr, **_adamw_kernel(groups))
        warmup = int(cfg.warmup_ratio * self.total_steps)
        self.scheduler = _scheduler(optimizer, cfg.scheduler, warmup, self.total_steps, position=self._position)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        # gradient clipping by the fused kernel's divisor where it can (_clip_by_grad_scale), else accelerate's
        self._clip_in_kernel = bool(cfg.max_grad_norm) and _clips_in_kernel(optimizer, acc.distributed_type.name,
                                                                             self.precision)
        self.log = MetricsLog(self.run_dir / "metrics.jsonl")
        self.state = LoopState(group=self.group, processes=world, budget_s=budget_seconds(cfg) or None)
        self._shown = ""  # the progress bar's last loss / throughput text
        # this session's clock reading and run wall time at its start, and the loop's evaluation and save
        # cadence: set by fit, read by the budget-aware schedule
        self._clock0, self._wall0, self._step_began = 0.0, 0.0, 0.0
        self._has_eval, self._eval_every, self._save_every = False, 1, 1
        self.export_current = False  # export the weights as they are, not best.safetensors (see _evaluate)
        self.saved_step: int | None = None  # the step of the last checkpoint written (or resumed from)

    # -- checkpoints -------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoint"

    def save(self) -> None:
        """Checkpoint (main process only), with every process's RNG state."""
        from accelerate.utils import gather_object

        acc = self.accelerator
        began = self.clock()
        self.state.log_lines = self.log.lines()
        self.state.group, self.state.processes = self.group, acc.num_processes
        rngs = gather_object([rng_state()]) if acc.num_processes > 1 else [rng_state()]
        if acc.is_main_process:
            save_checkpoint(self.checkpoint_dir, acc.unwrap_model(self.model), self.optimizer,
                            self.scheduler, vars(self.state), rngs)
        self.saved_step = self.state.step
        acc.wait_for_everyone()
        self.state.save_s = self.clock() - began  # recorded in the next checkpoint
        self._update_reserve()

    def resume(self, budget_minutes: float | None = None) -> LoopState:
        """Restore model, optimizer, scheduler, RNG, data position and logs from the last checkpoint.

        Args:
            budget_minutes: a new time budget for this session, counted from now (0: none). Without one,
                a run that its budget stopped trains on to its planned end; any other keeps its budget.

        Returns:
            The state as saved (its `stopped` says how the last session ended); training state is reset
            to continue.
        """
        acc = self.accelerator
        saved = load_checkpoint(self.checkpoint_dir, acc.unwrap_model(self.model), self.optimizer,
                                self.scheduler, rank=acc.process_index)
        known = {f.name for f in fields(LoopState)}
        self.state = LoopState(**{k: v for k, v in saved.items() if k in known})
        before = LoopState(**vars(self.state))
        s = self.state
        self.saved_step = s.step
        if budget_minutes is not None:
            s.budget_s = s.wall + budget_minutes * 60 if budget_minutes else None
        elif s.stopped == "time budget":
            s.budget_s = None
        s.stopped = None
        if acc.is_main_process:
            self.log.truncate(s.log_lines)
        acc.wait_for_everyone()
        return before

    def save_best(self) -> None:
        from safetensors.torch import save_file

        from frugal_lm.io import atomic_path

        if self.accelerator.is_main_process:
            with writing(self.run_dir / "best.safetensors"), atomic_path(self.run_dir / "best.safetensors") as tmp:
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

    # -- the schedule ------------------------------------------------------------------------
    def _position(self, count: int) -> float:
        """The schedule's position for the scheduler's step `count`: the count itself (exactly the schedule of a
        run without a budget) unless a budget's plan moves it; then what _next_position recorded."""
        s = getattr(self, "state", None)  # None while the scheduler is built (its first factor)
        if s is None or (s.schedule == "steps" and s.plan_progress <= s.plan_step):
            return count
        return s.progress

    def _next_position(self, n: int) -> float:
        """Where on the curve the learning rate of the next step sits, `n` steps being done.

        "budget" (Li et al.'s budget-aware schedule): max(steps done, the time fraction of the budget's usable
        window) on the way from the plan's start to the end. The time is where the clock will be when that next
        step ends (this step's duration again, plus an evaluation or checkpoint due before it), so the last step
        that fits the window trains at the end of the curve and the next would not fit (fit then stops).
        The position never goes back, and with several processes rank 0's clock decides, or the processes'
        learning rates would differ.
        """
        s, total = self.state, self.total_steps
        if s.schedule == "budget":
            now = self.clock()
            ahead = now - self._step_began
            if self._has_eval and n % self._eval_every == 0:
                ahead += s.eval_s or 0.0
            if n % self._save_every == 0:
                ahead += s.save_s or 0.0
            wall = self._wall0 + now - self._clock0 + ahead
            window = s.budget_s - s.reserve_s - s.plan_wall
            done = min(1.0, max(0.0, (wall - s.plan_wall) / window)) if window > 0 else 1.0
            pos = s.plan_progress + (total - s.plan_progress) * done
            if self.accelerator.num_processes > 1:
                pos = self._sum([pos if self.accelerator.is_main_process else 0.0])[0]
            return min(float(total), max(float(n), pos, s.progress))
        if s.plan_progress > s.plan_step:  # a budget's plan resumed without its budget: the rest over the steps left
            left = total - s.plan_step
            return (s.plan_progress + (total - s.plan_progress) * min(1.0, (n - s.plan_step) / left)
                    if left > 0 else float(total))
        return float(n)

    def _update_reserve(self) -> None:
        """The seconds kept at the end of the budget for what follows the last step: a checkpoint, the final
        evaluation, the export (which writes the weights again) and the task's finish (which evaluates once
        more only where the task says so: a few-shot head refitted). So: the last evaluation's measured time
        (twice with such a finish) plus twice the last checkpoint's, plus 1 s for the plots and the model card
        (about 0.6 s measured here, most of it the first matplotlib figure), and at least 1% of the budget's
        window. Until both are measured, at least 3% of the window."""
        s = self.state
        if s.schedule != "budget":
            return
        window = s.budget_s - s.plan_wall
        known = (s.eval_s is not None or not self._has_eval) and s.save_s is not None
        evals = 1 + self.task.finish_evaluates()
        measured = evals * (s.eval_s or 0.0 if self._has_eval else 0.0) + 2 * (s.save_s or 0.0) + 1.0
        s.reserve_s = max(measured, (0.01 if known else 0.03) * window)

    def _plan(self, wall_now: float) -> str | None:
        """Set this session's schedule at the start of the loop (`wall_now`: the run's wall seconds, this
        session's loading included). Returns the line to log, or None.

        A budget, new or given anew on resume, plans the rest of the curve over the budget's usable window: what
        loading left of it, less the reserve (_update_reserve). The same budget (an interrupted run resumed)
        keeps its plan, so the curve continues. A run resumed without its budget runs the rest of the curve over
        the steps left."""
        s, total, name = self.state, self.total_steps, self.cfg.scheduler
        at = max(s.progress, float(s.step))
        ended = (f"; note: the learning-rate schedule already reached its end, so the steps left train at its "
                 f"end rate ({self.scheduler.get_last_lr()[0]:.3g}); to train further, start a new run from this "
                 "run's model/" if at >= total and s.step < total and name != "constant" else "")
        if s.budget_s is None:
            if s.schedule == "budget":
                s.schedule, s.plan_budget, s.plan_progress, s.plan_step, s.reserve_s = "steps", None, at, s.step, 0.0
                return (f"no time budget this session: the learning rate follows the rest of its curve over the "
                        f"{total - s.step} steps left{ended}")
            return None
        text = f"time budget {format_duration(s.budget_s - self._wall0)}"
        if s.schedule == "budget" and s.plan_budget == s.budget_s:
            return f"{text}: the learning rate continues its budget-aware decay{ended}"
        loading = wall_now - self._wall0
        if s.budget_s <= wall_now:
            s.schedule, s.plan_budget, s.plan_progress, s.plan_step, s.reserve_s = "steps", None, at, s.step, 0.0
            return f"{text}: already spent before training began (loading took {loading:.1f}s): one step, then stop"
        s.schedule, s.plan_budget, s.plan_wall, s.plan_progress, s.plan_step = "budget", s.budget_s, wall_now, at, s.step
        self._update_reserve()
        if name == "constant":
            return f"{text}: training stops at the budget (constant learning rate)"
        return (f"{text}: learning rate decays to its end at the budget ({name} schedule; loading took "
                f"{loading:.1f}s, {s.reserve_s:.1f}s kept for the final evaluation and save){ended}")

    # -- the loop ----------------------------------------------------------------------------
    def _sum(self, values: list[float]) -> list[float]:
        """`values` summed over all processes (one small all-reduce; nothing with one process)."""
        if self.accelerator.num_processes == 1:
            return values
        import torch

        tensor = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        return self.accelerator.reduce(tensor, "sum").tolist()

    def _step(self, batches: list[dict[str, Any]], weight: float = 1.0) -> float:
        """One optimizer step over this process's share of a group; the loss is normalised over the items
        of the whole group, on all processes. `weight` 0: this process has no batch of its own in the group
        (an epoch's last, short group) and runs one with zero weight, to take part in the gradient
        all-reduce. Returns the mean loss per counted item over the group."""
        import warnings

        acc, model, s = self.accelerator, self.model, self.state
        n_local = sum(self.task.count(b) for b in batches) if weight else 0
        n_total = int(self._sum([n_local])[0])
        # DDP averages gradients over processes, so scale by their number to get sum / n_total overall.
        scale = acc.num_processes / max(1, n_total) * weight
        model.train()
        while True:
            try:
                loss_sum, tokens, rows = self._passes(batches, scale, weight)
                break
            except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are handled, the rest re-raised
                if not is_out_of_memory(exc):
                    raise
                self._back_off(batches, exc)
        loss_sum, tokens, rows = self._sum([loss_sum, tokens, rows])
        inner, in_kernel = self.optimizer.optimizer, self._clip_in_kernel
        norm = None
        if in_kernel:
            norm = _clip_by_grad_scale(inner, self.cfg.max_grad_norm)
        elif self.cfg.max_grad_norm:
            norm = acc.clip_grad_norm_(model.parameters(), self.cfg.max_grad_norm)
        # fp16's grad scaler handles overflowing gradients itself (it skips those steps and rescales)
        bad_norm = norm is not None and self.precision != "fp16" and not math.isfinite(float(norm))
        try:
            if math.isfinite(loss_sum) and not bad_norm:
                self.optimizer.step()
            else:
                self._nonfinite(batches, f"loss {loss_sum}" if not math.isfinite(loss_sum)
                                else f"gradient norm {float(norm)}")
        finally:
            if in_kernel:
                inner.grad_scale = None  # this step's clipping only
        s.progress = self._next_position(s.step + 1)  # read by the scheduler's factor, through _position
        with warnings.catch_warnings():  # a skipped first step: the schedule still moves on, on purpose
            warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*")
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        s.step += 1
        s.tokens += int(tokens)
        s.examples += int(rows)
        return loss_sum / max(1, n_total)

    def _passes(self, batches: list[dict[str, Any]], scale: float, weight: float) -> tuple[float, int, int]:
        """Forward and backward over the group's batches, each split into micro-batches of self.micro_batch
        rows: the gradients of the whole group accumulate, scaled by `scale`. Returns the summed loss, real
        tokens and rows of this process."""
        acc, model = self.accelerator, self.model
        passes = [p for b in batches for p in split_batch(b, self.micro_batch)]
        loss_sum, tokens, rows = 0.0, 0, 0
        for i, batch in enumerate(passes):
            batch = {k: v.to(acc.device) for k, v in batch.items()}
            with nullcontext() if i == len(passes) - 1 else acc.no_sync(model):
                with acc.autocast():
                    loss, _ = self.task.loss(model, batch)
                acc.backward(loss * scale)
            if weight:
                loss_sum += float(loss.detach())
                tokens += int(batch["attention_mask"].sum())
                # examples are batch rows (sentences, windows), whatever the loss counts (tokens for NER)
                rows += int(batch["input_ids"].shape[0])
        return loss_sum, tokens, rows

    def _back_off(self, batches: list[dict[str, Any]], exc: BaseException) -> None:
        """An out-of-memory error in a step: drop its partial gradients, halve the micro-batch (the same rows per
        step, twice the passes: accumulation doubles) and let _step try the step again. Refused with several
        processes (the others would wait in the gradient all-reduce) and at one row per pass."""
        import torch

        rows = max(int(b["input_ids"].shape[0]) for b in batches)
        current = min(self.micro_batch or rows, rows)
        if self.accelerator.num_processes > 1 or current <= 1:
            why = ("with several processes the others cannot follow a back-off" if current > 1
                   else "a single row does not fit")
            raise FrugalError(f"step {self.state.step + 1}: out of memory ({str(exc).splitlines()[0][:160]}); "
                              f"{why}: lower train.batch_size or model.max_length, set train.memory_budget, or "
                              "turn train.gradient_checkpointing on") from None
        self.optimizer.zero_grad(set_to_none=True)
        del exc
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.micro_batch = (current + 1) // 2
        self.state.back_offs += 1
        line = (f"out of memory at step {self.state.step + 1}: micro-batch halved to {self.micro_batch} rows "
                f"(accumulation doubled, the same {rows} rows per batch); retrying the step")
        if self.accelerator.is_main_process:
            print(line, file=sys.stderr)
            self.log.write({"type": "back_off", "step": self.state.step + 1, "micro_batch": self.micro_batch})

    def _nonfinite(self, batches: list[dict[str, Any]], what: str) -> None:
        """A NaN or infinite loss or gradient norm: skip the step (train.nonfinite=skip) or stop, saying where."""
        s, lr = self.state, self.scheduler.get_last_lr()[0]
        if self.cfg.nonfinite == "skip":
            s.skipped += 1
            if self.accelerator.is_main_process:
                self.log.write({"type": "skip", "step": s.step + 1, "reason": f"non-finite {what}", "lr": lr})
            return
        texts = []
        tok = getattr(self.task, "tokenizer", None)
        if tok is not None and batches:
            for ids, mask in zip(batches[0]["input_ids"][:3], batches[0]["attention_mask"][:3], strict=True):
                texts.append(tok.decode(ids[mask.bool()].tolist(), skip_special_tokens=True)[:100])
        raise FrugalError(
            f"step {s.step + 1}: non-finite {what} at learning rate {lr:.3g}; the batch's first texts: "
            f"{texts}. Lower train.lr or use train.precision=fp32; or skip such steps: "
            "--resume --set train.nonfinite=skip (the last checkpoint is intact)")

    def _evaluate(self, track: bool = True) -> dict[str, Any]:
        """Evaluate, log, and track the best model. `track` False (the evaluation at a budget stop, after the
        checkpoint): better weights are marked for export (`export_current`) but best.safetensors and the
        checkpoint keep what an uninterrupted run would have, so a resumed run continues exactly as one."""
        # every process evaluates its share of the batches; map_batches gathers the results (tasks/*.py)
        began = self.clock()
        with self.accelerator.autocast() if self.task.eval_autocast() else nullcontext():
            metrics = self.task.evaluate(self.accelerator.unwrap_model(self.model), device=self.accelerator.device)
        s, metric = self.state, self.cfg.metric
        s.eval_s = self.clock() - began  # for the budget's reserve
        self._update_reserve()
        if metric not in metrics:
            raise FrugalError(f"train.metric: '{metric}' is not among the evaluation metrics "
                              f"({', '.join(k for k in metrics if not isinstance(metrics[k], (dict, list)))})")
        value = metrics[metric]
        better = s.best is None or (value > s.best if self.task.higher_is_better(metric) else value < s.best)
        if better:
            s.best, s.best_step, s.best_metrics, s.bad_evals = value, s.step, metrics, 0
            if track:
                self.save_best()
            self.export_current = not track
        else:
            s.bad_evals += 1
        s.last_metrics, s.last_eval_step = metrics, s.step
        if self.accelerator.is_main_process:
            self.log.write({"type": "eval", "step": s.step, "epoch": s.epoch, **metrics})
        return metrics

    def _order(self, epoch: int) -> list[list[int]]:
        """The global batch order of `epoch` (computed once per epoch)."""
        if getattr(self, "_order_epoch", None) != epoch:
            self._order_cache, self._order_epoch = self.sampler.batches(epoch), epoch
        return self._order_cache

    def fit(self, has_eval: bool, stop_at_step: int | None = None, progress: bool = True,
            started: float | None = None, on_started: Any = None) -> LoopState:
        """Run until the step budget, early stopping, the time budget or an interrupt.

        Args:
            has_eval: whether the task has evaluation data.
            stop_at_step: simulate an interruption after this step (tests of resume); the run checkpoints
                and returns with `state.stopped = "interrupted"`.
            progress: show a progress bar on stderr.
            started: `Trainer.clock()` when this session began (the budget counts loading too).
            on_started: called once after the first optimizer step succeeded.
        """
        from tqdm.auto import tqdm

        cfg, s, acc = self.cfg, self.state, self.accelerator
        rank, world = acc.process_index, acc.num_processes
        eval_every = cfg.eval_every or self.steps_per_epoch
        save_every = cfg.save_every or eval_every
        clock, wall = started if started is not None else self.clock(), s.wall
        self._clock0, self._wall0 = clock, wall
        self._has_eval, self._eval_every, self._save_every = has_eval, eval_every, save_every
        line = self._plan(wall + self.clock() - clock)
        if line and acc.is_main_process:
            print(line, file=sys.stderr)
        bar = tqdm(total=self.total_steps, initial=s.step, disable=not (progress and acc.is_main_process),
                   desc="train", unit="step", dynamic_ncols=True, file=sys.stderr)
        window = {"loss": 0.0, "steps": 0, "examples": s.examples, "time": s.elapsed}
        with _Interrupt() as interrupt:
            while s.step < self.total_steps and s.stopped is None:
                t0 = self._step_began = self.clock()  # batching counts as training time
                order = self._order(s.epoch)
                ids = order[s.batch_in_epoch:s.batch_in_epoch + self.group]
                mine = ids[rank::world]
                picked = list(range(len(ids)))[rank::world] or [0]  # positions of `mine or ids[:1]` in ids
                batches = [self._collate(ids[k], s.epoch, s.batch_in_epoch + k) for k in picked]
                loss = self._step(batches, weight=1.0 if mine else 0.0)
                s.elapsed += self.clock() - t0
                s.batch_in_epoch += len(ids)
                if s.batch_in_epoch >= len(order):
                    s.epoch, s.batch_in_epoch = s.epoch + 1, 0
                if on_started is not None:
                    on_started()
                    on_started = None
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
                s.wall = wall + self.clock() - clock
                # a budget-aware schedule at its end: the next step would not fit the budget's window
                ended = s.schedule == "budget" and s.step < self.total_steps and s.progress >= self.total_steps
                # every process must take the same decision, or the others wait forever in the next step
                over, asked = self._sum([float(s.budget_s is not None and (s.wall >= s.budget_s or ended)),
                                         float(interrupt.requested or (stop_at_step is not None
                                                                       and s.step >= stop_at_step))])
                if over and not s.stopped:
                    s.stopped = "time budget"
                if asked and not s.stopped:
                    s.stopped = "interrupted"
                if s.step % save_every == 0 or s.stopped:
                    self.save()
        bar.close()
        if s.stopped == "interrupted":
            return s
        if s.stopped == "time budget":  # checkpointed above; the export reports on the weights as they are
            if has_eval and s.last_eval_step != s.step:
                self._evaluate(track=False)
            return s
        if has_eval and s.last_eval_step != s.step:
            self._evaluate()
        s.stopped = s.stopped or "completed"
        s.wall = wall + self.clock() - clock
        self.save()
        return s

    def _collate(self, indices: list[int], epoch: int, batch: int) -> dict[str, Any]:
        """One micro-batch. A collator with `set_position` (pretraining's per-step masks) first learns
        where in the run it is (batch: the index among all processes' batches of the epoch), so its random
        draws depend on the seed and that position only, and a resumed run repeats them exactly."""
        if hasattr(self.collator, "set_position"):
            self.collator.set_position(epoch, batch, 0)
        return self.collator([self.train_set[i] for i in indices])

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
