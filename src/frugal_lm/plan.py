"""`frugal plan`: will this run fit, and how long will it take? Answered before training, by measuring.

For each candidate recipe (the configured one; full fine-tuning; frozen embeddings; frozen embeddings and the
first N layers; LoRA; each with and without gradient checkpointing, at micro-batches of the batch, half of it,
...) the planner builds the real model, takes the real batches of the first epoch (the engine's own sampler: the
lengths and padding the run will see) and:

- memory: counts weights, gradients (trainable parameters) and AdamW's two moments exactly, and measures the
  activations that the forward pass saves for backward (torch's saved-tensors hooks, each storage counted once)
  on the epoch's longest batch: the batch the sampler puts first, so a run that fits its first step fits;
- time: times real optimizer steps (the engine's own step, so precision, clipping and accumulation are those of
  the run) on the longest, a middling and a short batch, fits seconds = a + b x padded tokens per pass plus a
  per-step cost, and sums that over every batch of the epoch.

Peak memory = the process before the model is loaded (interpreter, libraries, data) + weights + gradients +
optimizer + activations (and, for the recommendation, measured in a fresh process: what its batch shapes and
one evaluation add), against the budget (--memory; default: the memory this machine has available).
The recommendation is the least change to the configured recipe that fits both budgets: first only the
micro-batch (the same gradients), then gradient checkpointing (the same gradients, slower), then recipes that
train fewer weights, in the order of what they usually cost in accuracy; within one, the fastest.
"""

from __future__ import annotations

import copy
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from frugal_lm.config import (
    RunConfig,
    budget_seconds,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
)
from frugal_lm.errors import FrugalError

# the memory probe's evaluation runs on at most this many rows of the eval set, spread over it (probe_peak)
EVAL_PROBE_ROWS = 2000


@dataclass
class Candidate:
    """One recipe at one micro-batch size, with what the planner predicts for it."""

    method: str  # what a user reads: "as configured", "full fine-tune", "LoRA r=8", ...
    tier: int  # order of expected accuracy cost: 0 the configured recipe, higher trains less
    changes: dict[str, Any]  # config keys this candidate sets ("train.freeze_layers": 3, ...)
    micro_batch: int
    checkpointing: bool
    max_length: int
    accumulation: int = 1  # micro-batches per optimizer step (per process)
    trainable: int = 0
    memory: dict[str, int] = field(default_factory=dict)  # base, weights, gradients, optimizer, activations, peak
    step_s: float = 0.0  # mean seconds per optimizer step over the run
    epoch_s: float = 0.0  # the first epoch
    cached_epoch_s: float = 0.0  # each later epoch with train.cache_prefix (0: no cache; they take epoch_s)
    run_s: float = 0.0  # the configured epochs (or max_steps)
    fits_memory: bool = True
    fits_time: bool = True

    @property
    def fits(self) -> bool:
        return self.fits_memory and self.fits_time

    def settings(self) -> dict[str, Any]:
        """Every config key this candidate sets, micro-batch and checkpointing included."""
        return {**self.changes, "train.micro_batch": self.micro_batch,
                "train.gradient_checkpointing": self.checkpointing}


def rss_bytes() -> int:
    """This process's resident memory now (Linux /proc; elsewhere its peak so far)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            import os

            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far: Linux's VmHWM (the high-water mark of this process image;
    getrusage's ru_maxrss is not used there, as it carries the parent's peak over fork and exec, so a child of a
    big process would read its parent's size), elsewhere ru_maxrss."""
    import resource

    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # kilobytes on Linux, bytes on macOS


def available_memory() -> int:
    """The memory a run may use here: the GPU's total on CUDA; on a CPU what the OS reports available
    (MemAvailable), plus what this process holds (it ends before the run starts), within a cgroup limit."""
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(0).total_memory)
    total = 0
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in fh}
        total = info.get("MemAvailable", info.get("MemTotal", 0)) + rss_bytes()
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as fh:
            limit = fh.read().strip()
        if limit.isdigit():
            total = min(total, int(limit)) if total else int(limit)
    except OSError:
        pass
    return total or 8 * 10**9


def first_epoch(task: Any, t: Any) -> tuple[list[int], list[list[int]]]:
    """(example lengths, the first epoch's batches) as the engine's sampler gives them for train config `t`:
    lengths, grouping and padding as the run will see them, the longest batch first."""
    from frugal_lm.engine.trainer import epoch_sampler

    return task.lengths(task.train_set), epoch_sampler(task, task.train_set, t).batches(0)


def static_bytes(model: Any) -> dict[str, int]:
    """Weights (parameters and buffers), gradients (one per trainable value) and AdamW's state (two moments
    per trainable value, in the parameter's dtype)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    weights += sum(b.numel() * b.element_size() for b in model.buffers())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return {"weights": weights, "gradients": trainable, "optimizer": 2 * trainable}


def activation_bytes(model: Any, task: Any, batch: dict[str, Any], autocast: Any) -> int:
    """Bytes the forward pass on `batch` saves for backward (each storage once), measured with torch's
    saved-tensors hooks; the graph is dropped without a backward pass, so no weight changes."""
    import torch

    seen: dict[int, int] = {}

    def pack(t: Any) -> Any:
        try:
            storage = t.untyped_storage()
            seen.setdefault(storage.data_ptr(), storage.nbytes())
        except (RuntimeError, NotImplementedError):  # tensors without storage (sparse, nested)
            seen.setdefault(id(t), t.numel() * t.element_size())
        return t

    model.train()
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast():
        loss, _ = task.loss(model, batch)
    del loss
    # parameters are saved too (for the input gradients) but are counted as weights already
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for ptr, n in seen.items() if ptr not in params)


def checkpointed_activations(full: int, model: Any, rows: int, width: int, bytes_per: int = 4) -> int:
    """Activations kept with gradient checkpointing: each layer's input (rows x width x hidden) and, while
    one layer is recomputed in backward, that layer's own activations (about full / layers)."""
    from frugal_lm.engine.mfu import model_dims

    layers, hidden = model_dims(model)
    layers = max(1, layers)
    return int(full / layers + layers * rows * width * hidden * bytes_per)


def _methods(cfg: RunConfig, n_layers: int, cacheable: bool = False) -> list[tuple[str, int, dict[str, Any]]]:
    """The recipes to compare: (name, tier, config changes). The configured one first; then in order of what
    they usually cost in accuracy (docs/plan.md): full, frozen embeddings, LoRA, frozen layers. With
    `cacheable` (a BERT-family encoder, engine/prefix_cache.py), each recipe with frozen layers comes with and
    without train.cache_prefix, at the same tier: the cache changes the time, not what is trained."""
    t, p = cfg.train, cfg.peft
    plain = {"peft.method": "none", "train.freeze_embeddings": False, "train.freeze_layers": 0,
             "train.cache_prefix": False}
    out = [("as configured", 0, {})]
    configured = {"peft.method": p.method, "train.freeze_embeddings": t.freeze_embeddings,
                  "train.freeze_layers": t.freeze_layers, "train.cache_prefix": t.cache_prefix}
    if cacheable and t.freeze_embeddings and t.freeze_layers and p.method == "none":
        out.append((f"as configured, prefix cache {'off' if t.cache_prefix else 'on'}", 0,
                    {"train.cache_prefix": not t.cache_prefix}))
    options = [("full fine-tune", plain), ("frozen embeddings", {**plain, "train.freeze_embeddings": True})]
    if p.method != "lora" or p.r != 8:
        options.append(("LoRA r=8", {**plain, "peft.method": "lora", "peft.r": 8, "peft.alpha": 16}))
    for n in sorted({max(1, n_layers // 3), max(1, n_layers // 2)}):
        if 0 < n < n_layers:
            frozen = {**plain, "train.freeze_embeddings": True, "train.freeze_layers": n}
            name = f"frozen embeddings + {n} layer{'s' if n > 1 else ''}"
            options.append((name, frozen))
            if cacheable:
                options.append((name + " + prefix cache", {**frozen, "train.cache_prefix": True}))
    if p.method == "lora":
        configured["peft.r"] = p.r
    tier = 0
    for name, changes in options:
        if all(changes.get(k, v) == v for k, v in configured.items() if k != "train.cache_prefix"):
            continue  # the configured recipe again (with and without the cache: tier 0 above)
        if not changes.get("train.cache_prefix"):
            tier += 1  # a cached recipe follows its uncached one, at its tier
        out.append((name, tier, changes))
    return out


def _apply(cfg: RunConfig, changes: dict[str, Any]) -> RunConfig:
    out = copy.deepcopy(cfg)
    for key, value in changes.items():
        section, leaf = key.split(".")
        setattr(getattr(out, section), leaf, value)
    return out


def _micro_batches(batch_size: int) -> list[int]:
    sizes, m = [], batch_size
    while m >= 1:
        sizes.append(m)
        if m == 1:
            break
        m = (m + 1) // 2
    return sizes


class _Timing:
    """Seconds of a step at one micro-batch size: `per_step + per_token x padded tokens` (over its passes)."""

    def __init__(self, per_step: float, per_token: float):
        self.per_step, self.per_token = per_step, per_token

    def step(self, passes: list[int]) -> float:
        return self.per_step + self.per_token * sum(passes)


def _padded(rows: list[int], lengths: list[int], micro: int) -> list[int]:
    """Padded tokens of each pass when a batch of `rows` is split into micro-batches of `micro` rows."""
    out = []
    for start in range(0, len(rows), micro or len(rows)):
        piece = [lengths[i] for i in rows[start:start + (micro or len(rows))]]
        out.append(len(piece) * max(piece))
    return out


def _measure(trainer: Any, order: list[list[int]], lengths: list[int], micro: int, reps: int) -> _Timing:
    """Time real steps of `trainer` (its own _step) at micro-batches of `micro` rows (0: whole batches) on the
    epoch's longest, a middling and a short batch, and fit seconds = per step + per token x padded tokens.

    Each micro-batch size is timed, not extrapolated: a pass costs a fixed overhead (Python, kernel launches) that
    least squares over a few batches cannot tell from the step's, and at 8 passes per batch it was measured to
    be most of the step. The fastest of `reps` repetitions counts: a shared machine's noise only adds time."""
    import numpy as np
    from scipy.optimize import nnls

    tokens = [len(b) * max(lengths[i] for i in b) for b in order]
    by_size = sorted(range(len(order)), key=lambda k: tokens[k])
    picks = sorted({0, by_size[len(by_size) // 2], by_size[max(0, len(by_size) // 10)]})
    batches = {k: trainer._collate(order[k], 0, k) for k in picks}
    trainer.micro_batch = micro
    for k in picks:  # warm-up: the largest allocations, kernels' first calls, a prefix cache's misses
        trainer._step([batches[k]])
    best: dict[int, float] = {}
    for _ in range(reps):
        for k in picks:
            began = time.perf_counter()
            trainer._step([batches[k]])
            best[k] = min(best.get(k, float("inf")), time.perf_counter() - began)
    trainer.micro_batch = 0
    xs = np.array([[1.0, float(sum(_padded(order[k], lengths, micro)))] for k in best])
    ys = np.array(list(best.values()))
    (per_step, per_token), _ = nnls(xs, ys)  # non-negative: noise must not make a cost negative
    if per_token <= 0:
        per_step, per_token = 0.0, float(ys.sum() / xs[:, 1].sum())
    return _Timing(float(per_step), float(per_token))


def _epoch_seconds(timing: _Timing, order: list[list[int]], lengths: list[int], micro: int,
                   steps_per_epoch: int) -> float:
    """An epoch's seconds: every batch's step time; the per-step cost once per optimizer step (a group of
    grad_accum batches)."""
    step_times = [timing.step(_padded(b, lengths, micro)) for b in order]
    return sum(step_times) - timing.per_step * (len(order) - steps_per_epoch)


def _cached_epoch(trainer: Any, order: list[list[int]], lengths: list[int], micro: int, rows: int, reps: int,
                  layers: int, cap: int, tokens_total: int, first_s: float, steps_per_epoch: int) -> tuple[float, int]:
    """(seconds of an epoch after the first, bytes of the cache) with train.cache_prefix: the measured batches
    are run once to fill a real PrefixCache, then timed again served from it. Its bytes per token (hidden states
    and keys) scale to the training and evaluation sets' tokens, up to `cap`; past the cap the uncached rows take the first
    epoch's time, in proportion."""
    from frugal_lm.engine.prefix_cache import PrefixCache

    cache = PrefixCache(trainer.model, layers=layers, max_bytes=cap)
    try:
        timing = _measure(trainer, order, lengths, 0 if micro >= rows else micro, reps)  # its warm-up fills it
        stored = sum(row.shape[0] for row in cache.store.values())
        per_token = cache.bytes / max(1, stored)
    finally:
        cache.remove()
    need = per_token * tokens_total
    served = min(1.0, cap / need) if need else 1.0
    cached_s = _epoch_seconds(timing, order, lengths, micro, steps_per_epoch)
    return served * cached_s + (1 - served) * first_s, int(min(need, cap))


def _shape_cache(model: Any, task: Any, order: list[list[int]], lengths: list[int], autocast: Any,
                 limit: int = 64, micro: int = 0) -> tuple[float, int]:
    """What the epoch's batch shapes add to the process's memory beyond its activations: (bytes, shapes).

    A CPU run's memory grows with every new (rows, width) its matrix products meet: oneDNN keeps a primitive,
    with its scratch memory, for each shape (up to its cache of 1,024 primitives), and the allocator keeps what
    differently sized activations leave behind. Measured on SST-2 with MiniLM in bf16: +550 MB over an epoch of
    ~60 widths; with oneDNN's cache capped at 8 primitives most of it goes and the steps run 15% slower, so frugal
    keeps the cache and counts it. Measured here: a forward and backward pass (gradients dropped, no update) on one
    batch of each of up to `limit` shapes of the epoch, the process's growth over them (scaled up when the epoch
    has more shapes). 0 on a GPU (its caching allocator is measured by the peak it reports)."""
    import torch

    widths: dict[tuple[int, int], int] = {}
    for k, b in enumerate(order):
        widths.setdefault((min(len(b), micro or len(b)), max(lengths[i] for i in b[:micro or len(b)])), k)
    if torch.cuda.is_available() or len(widths) <= 1:
        return 0.0, len(widths)
    picks = list(widths.values())
    picks = picks[:: max(1, -(-len(picks) // limit))]
    collate = task.collator()
    model.train()

    def run(batch: dict[str, Any]) -> None:
        with autocast():
            loss, _ = task.loss(model, batch)
        loss.backward()
        model.zero_grad(set_to_none=True)  # nothing is trained

    run(collate([task.train_set[i] for i in order[0][:micro or len(order[0])]]))  # the activations' own peak
    before = rss_bytes()
    for k in picks:
        run(collate([task.train_set[i] for i in order[k][:micro or len(order[k])]]))
    return max(0.0, (rss_bytes() - before) * len(widths) / len(picks)), len(widths)


def plan(cfg: RunConfig, memory: int | None = None, seconds: float | None = None, reps: int = 2,
         log: Any = None, prepared: tuple[Any, Any] | None = None, only_configured: bool = False,
         kernel_probe: bool = True, base_memory: int | None = None,
         for_auto: bool = False) -> dict[str, Any]:
    """Measure the candidates for `cfg` and recommend one.

    Args:
        cfg: the run config as the user wrote it.
        memory: the memory budget in bytes (default: train.memory_budget, else this machine's available memory).
        seconds: the time budget for training (default: train.time_budget; None: no limit).
        reps: timed repetitions of each measured batch.
        log: a print-like callable for progress lines.
        prepared: (task, resolved model) already prepared for cfg.
        only_configured: compare micro-batches and checkpointing of the configured recipe only (quicker).
        kernel_probe: measure what loading the weights and the epoch's batch shapes add to the process (see
            _shape_cache); off, the weights count their tensors' bytes and the shapes 0 (tests of the arithmetic, on
            models whose needs are smaller than the process's noise).
        base_memory: the process's memory before the model is loaded (default: this process's, measured).
        for_auto: planning for `train --auto`, whose time budget started with planning: candidates are judged
            against what is left of it; the other recipes are not measured when the configured one is the
            recommendation (the table is for `frugal plan`); and the fresh-process memory probe runs only when
            the predicted peak comes within half of the memory budget (below that it cannot change the choice).

    Returns:
        {"candidates": [Candidate as dicts], "recommended": index or None, "why": text, "memory_budget",
        "time_budget", "base_memory", "settings": the recommended config keys}
    """
    import warnings

    import torch

    from frugal_lm.engine.run import build_model, prepare_task, task_train_config
    from frugal_lm.engine.trainer import Trainer
    from frugal_lm.models.loading import local_path, quiet_transformers

    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # peft's, not the user's
    log = log or (lambda line: print(line, file=sys.stderr))
    memory = memory or parse_size(cfg.train.memory_budget) or available_memory()
    seconds = seconds if seconds is not None else (budget_seconds(cfg.train) or None)
    began = time.perf_counter()
    with quiet_transformers():
        task, resolved = prepared or prepare_task(cfg)
        cfg = replace(cfg, train=task_train_config(cfg, task))  # what the run will train with
        # the process a run starts as: libraries, tokenizer, the encoded data
        before = rss_bytes()
        base = before if base_memory is None else base_memory
        torch.manual_seed(cfg.train.seed)
        pristine = task.build_model(local_path(resolved), trust_remote_code=cfg.model.trust_remote_code)
        # the weights as loading leaves them (mapped files, copies), measured
        loaded = rss_bytes() - before if kernel_probe else 0
    t = cfg.train
    lengths, order = first_epoch(task, t)
    steps_per_epoch = math.ceil(len(order) / t.grad_accum)
    epochs = t.epochs if not t.max_steps else min(t.epochs or math.inf, t.max_steps / steps_per_epoch)
    longest = order[0]
    width = max(lengths[i] for i in longest)
    rows = max(len(b) for b in order)
    from frugal_lm.engine.mfu import model_dims
    from frugal_lm.engine.prefix_cache import model_supported

    n_layers = model_dims(pristine)[0]
    cacheable = model_supported(pristine) is None
    cache_cap = memory // 4  # what a run gives the cache (engine/run.py's _prefix_cache)
    # the cache keeps what the run's evaluations pass through it too (they run with it installed)
    tokens_total = sum(lengths) + (sum(task.lengths(task.eval_set)) if getattr(task, "eval_set", None) else 0)
    candidates: list[Candidate] = []
    kernels: dict[int, float] = {}  # micro-batch -> bytes the epoch's shapes add, measured once (all recipes)
    with tempfile.TemporaryDirectory(prefix="frugal-plan-") as tmp:
        for name, tier, changes in _methods(cfg, n_layers, cacheable)[:1 if only_configured else None]:
            if for_auto and tier > 0 and candidates:  # the configured recipe measured: is it the answer?
                chosen, _ = _recommend(candidates, memory, _judge_time(candidates, seconds, began))
                if chosen is not None and candidates[chosen].tier < 1:
                    break
            variant = _apply(cfg, changes)
            for checkpointing in (False, True):
                if checkpointing and any(c.method == name and c.fits_memory and not c.micro_batch
                                         for c in candidates):
                    continue  # whole batches fit without it: checkpointing would only cost time
                variant.train.gradient_checkpointing = checkpointing
                variant.train.micro_batch = 0
                with quiet_transformers():
                    model = build_model(variant, task, resolved, model=copy.deepcopy(pristine))
                task.start_from(model)  # as the run does: what the task copies of the start, it keeps
                trainer = Trainer(model, task, task.train_set, task.collator(), variant.train, tmp)
                model = trainer.model
                static = static_bytes(model)
                if task.kept_bytes():
                    static["task_state"] = task.kept_bytes()
                static["weights"] = max(static["weights"], loaded)
                saved = activation_bytes(model, task, trainer._collate(longest, 0, 0), trainer.accelerator.autocast)
                trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
                label = name + (" + checkpointing" if checkpointing else "")
                memory_of = {}
                for micro in _micro_batches(rows):
                    # saved activations scale with the rows of a pass (its width is the longest batch's)
                    acts = int(saved * micro / len(longest))
                    if checkpointing:  # the hooks do not see the layer inputs that checkpointing keeps
                        acts += checkpointed_activations(0, model, micro, width)
                    memory_of[micro] = {"base": base, **static, "activations": acts}
                # time whole batches, and the largest micro-batch that fits memory when whole ones do not
                timed = [rows]
                for micro in _micro_batches(rows):
                    if micro not in kernels:  # the process's growth over the epoch's shapes at this micro-batch
                        kernels[micro] = _shape_cache(model, task, order, lengths, trainer.accelerator.autocast,
                                                      micro=micro)[0] if kernel_probe else 0.0
                    memory_of[micro]["kernels"] = int(kernels[micro])
                    if sum(memory_of[micro].values()) <= memory:
                        if micro != rows:
                            timed.append(micro)
                        break
                for micro in timed:
                    timing = _measure(trainer, order, lengths, 0 if micro >= rows else micro, reps)
                    mem = dict(memory_of[micro])
                    epoch_s = _epoch_seconds(timing, order, lengths, micro, steps_per_epoch)
                    run_s, later_s = epoch_s * epochs, 0.0
                    if variant.train.cache_prefix:  # later epochs: the frozen prefix served from the cache
                        later_s, mem["prefix_cache"] = _cached_epoch(trainer, order, lengths, micro, rows, reps,
                                                                     variant.train.freeze_layers, cache_cap,
                                                                     tokens_total, epoch_s, steps_per_epoch)
                        run_s = epoch_s * min(1.0, epochs) + later_s * max(0.0, epochs - 1)
                    mem["peak"] = sum(mem.values())
                    c = Candidate(method=label, tier=tier + (0.5 if checkpointing else 0), changes=changes,
                                  micro_batch=0 if micro >= rows else micro, checkpointing=checkpointing,
                                  max_length=cfg.model.max_length, trainable=trainable, memory=mem,
                                  accumulation=t.grad_accum * math.ceil(rows / micro),
                                  step_s=run_s / (steps_per_epoch * epochs), epoch_s=epoch_s,
                                  cached_epoch_s=later_s, run_s=run_s)
                    c.fits_memory = mem["peak"] <= memory
                    c.fits_time = seconds is None or c.run_s <= seconds
                    candidates.append(c)
                    log(f"plan: {label}, micro-batch {micro}: {trainable / 1e6:.2f}M trainable, peak "
                        f"{format_size(mem['peak'])}, {c.step_s:.2f}s per step ({time.perf_counter() - began:.0f}s "
                        "so far)")
                del trainer, model
    left = seconds
    if for_auto and seconds:
        left = _judge_time(candidates, seconds, began)
        log(f"plan: {format_duration(round(left))} of the {format_duration(seconds)} budget left after planning")
    chosen, why = _recommend(candidates, memory, left)
    probed: set[int] = set()
    while (kernel_probe and chosen is not None and chosen not in probed and len(probed) < 3
           and not (for_auto and candidates[chosen].memory["peak"] <= memory / 2)):
        # the recommendation's peak measured in a fresh process: this one's allocator hides what a run grows by
        c = candidates[chosen]
        probed.add(chosen)
        measured = probe_in_child(_apply(cfg, c.settings()))
        log(f"plan: {c.method}, micro-batch {c.micro_batch or rows}: a fresh process over the epoch's "
            f"{measured['shapes']} batch shapes peaks at {format_size(measured['peak'])} "
            f"(components: {format_size(c.memory['peak'])})")
        c.memory = with_probe(c.memory, measured)
        c.fits_memory = c.memory["peak"] <= memory
        chosen, why = _recommend(candidates, memory, left)
    settings = {}
    if chosen is not None:
        c = candidates[chosen]
        settings = c.settings()
        if not c.fits_time and seconds:
            settings["train.time_budget"] = format_duration(seconds)
    return {"candidates": [{**asdict(c), "fits": c.fits} for c in candidates], "recommended": chosen, "why": why,
            "memory_budget": memory, "time_budget": seconds, "time_left": left, "base_memory": base,
            "settings": settings,
            "epochs": epochs, "steps_per_epoch": steps_per_epoch, "plan_seconds": round(time.perf_counter() - began, 1)}


def _judge_time(candidates: list[Candidate], seconds: float | None, began: float) -> float | None:
    """What is left of a time budget that started at `began` (train --auto: planning counts), with each
    candidate's fits_time set against it; None without a budget."""
    left = max(1.0, seconds - (time.perf_counter() - began)) if seconds else None
    for c in candidates:
        c.fits_time = left is None or c.run_s <= left
    return left


def _fastest(candidates: list[Any], indices: list[int]) -> int:
    """The fastest of `indices`; within 5% of it, the one with the fewest passes (the largest micro-batch):
    such a difference is within the timing's noise, and fewer passes use the hardware better."""
    run = [candidates[i].run_s if isinstance(candidates[i], Candidate) else candidates[i]["run_s"] for i in indices]
    fastest = min(run)
    close = [i for i, r in zip(indices, run, strict=True) if r <= 1.05 * fastest]

    def micro(i: int) -> int:
        c = candidates[i]
        return (c.micro_batch if isinstance(c, Candidate) else c["micro_batch"]) or 10**9

    return max(close, key=micro)


def _recommend(candidates: list[Candidate], memory: int, seconds: float | None) -> tuple[int | None, str]:
    """The least change that fits: the lowest tier with a candidate fitting both budgets, its fastest.

    A time budget is met by the schedule as well as by the recipe: a run that does not finish its epochs ends at
    the budget with its learning rate decayed to the end there (engine/trainer.py). Measured on SST-2 and CoNLL
    entity types (BENCHMARKS.md), the configured recipe cut to 1.4 of its 3 epochs that way was as accurate or
    better (+1.4 and +0.2 points) than half the encoder frozen and cached for all 3 epochs in the same time. So
    a recipe of a lower tier that fits memory and gets through at least one epoch within the budget is
    preferred to a higher tier that finishes; with nothing getting through an epoch, the fastest that fits."""
    fitting = [i for i, c in enumerate(candidates) if c.fits]
    in_memory = [i for i, c in enumerate(candidates) if c.fits_memory]
    reach = [i for i in in_memory if seconds is not None and candidates[i].epoch_s <= seconds]
    if reach and (not fitting or min(candidates[i].tier for i in reach) < min(candidates[i].tier for i in fitting)):
        tier = min(candidates[i].tier for i in reach)
        best = _fastest(candidates, [i for i in reach if candidates[i].tier == tier])
        c = candidates[best]
        what = "the configured recipe" if tier == 0 else f"{c.method} (the configured recipe does not fit)"
        return best, (f"{what}, to the time budget: it does not finish its epochs within "
                      f"{format_duration(seconds or 0)}, so train.time_budget ends it there with its learning rate "
                      "decayed (measured as accurate as training fewer weights to the end: BENCHMARKS.md)")
    if fitting:
        tier = min(candidates[i].tier for i in fitting)
        best = _fastest(candidates, [i for i in fitting if candidates[i].tier == tier])
        c = candidates[best]
        what = "the configured recipe" if tier == 0 else f"{c.method} (the configured recipe does not fit)"
        return best, f"{what}, fastest micro-batch that fits: {c.micro_batch or 'whole batches'}"
    if in_memory:
        best = min(in_memory, key=lambda i: candidates[i].run_s)
        return best, (f"nothing finishes its epochs within {format_duration(seconds or 0)}: the fastest that fits "
                      "memory, with train.time_budget set so the run ends at the budget")
    smallest = min(c.memory["peak"] for c in candidates)
    return None, (f"nothing fits {format_size(memory)}: the smallest candidate needs {format_size(smallest)}; "
                  "lower model.max_length or train.batch_size, or use a smaller model")


def table(result: dict[str, Any]) -> str:
    """The plan as text: per recipe, its fastest micro-batch that fits (or its smallest, when none fits)."""
    rows, shown, cands = [], {}, result["candidates"]
    for method in dict.fromkeys(c["method"] for c in cands):
        mine = [i for i, c in enumerate(cands) if c["method"] == method]
        fit = [i for i in mine if cands[i]["fits"]]
        shown[method] = _fastest(cands, fit) if fit else min(mine, key=lambda i: cands[i]["memory"]["peak"])
    if result["recommended"] is not None:
        shown[result["candidates"][result["recommended"]]["method"]] = result["recommended"]
    head = f"{'':2}{'recipe':<44}{'micro x acc':>12}{'trainable':>11}{'peak mem':>12}{'step':>8}{'epoch':>11}{'run':>9}  fits"
    rows.append(head)
    for i in shown.values():
        c = result["candidates"][i]
        micro = f"{c['micro_batch'] or 'all'} x {c['accumulation']}"
        mark = "*" if i == result["recommended"] else " "
        fits = "yes" if c["fits"] else ("time" if c["fits_memory"] else "memory")
        fits = fits if c["fits"] else f"no ({fits})"
        peak = format_size(c["memory"]["peak"]) + ("+" if "probe" in c["memory"] else " ")
        rows.append(f"{mark} {c['method']:<44}{micro:>12}{c['trainable'] / 1e6:>10.2f}M"
                    f"{peak:>12}{c['step_s']:>7.2f}s{_epochs(c):>11}"
                    f"{format_duration(round(c['run_s'])):>9}  {fits}")
    budget = f"memory budget {format_size(result['memory_budget'])}"
    if result["time_budget"]:
        budget += f", time budget {format_duration(result['time_budget'])}"
        if result.get("time_left") and result["time_left"] != result["time_budget"]:
            budget += f" ({format_duration(round(result['time_left']))} left after planning)"
    rows.append("peak mem: the sum of measured parts (docs/plan.md); + measured whole in a fresh probe process; "
                "epoch: the first / each later one where the prefix cache serves them")
    rows.append(f"{budget}; base process {format_size(result['base_memory'])}; "
                f"{result['epochs']:g} epoch(s) of {result['steps_per_epoch']} steps; planned in {result['plan_seconds']}s")
    rows.append(f"recommended: {result['why']}" if result["recommended"] is not None else f"no fit: {result['why']}")
    return "\n".join(rows)


def _epochs(c: dict[str, Any]) -> str:
    first = format_duration(round(c["epoch_s"]))
    return f"{first}/{format_duration(round(c['cached_epoch_s']))}" if c.get("cached_epoch_s") else first


def apply_plan(cfg: RunConfig, result: dict[str, Any]) -> RunConfig:
    """`cfg` with the recommended settings applied (validated again)."""
    from frugal_lm.config import validate

    if result["recommended"] is None:
        raise FrugalError(f"frugal plan: {result['why']}")
    out = copy.deepcopy(cfg)
    for key, value in result["settings"].items():
        section, leaf = key.split(".")
        setattr(getattr(out, section), leaf, value)
        if key == "train.time_budget":  # the two keys are one budget (config._set_budget)
            out.train.max_minutes = parse_duration(value) / 60
    validate(out)
    return out


def fit_memory(cfg: RunConfig, task: Any, model: Any, precision_autocast: Any, log: Any,
               now: int | None = None, probe: bool = True) -> tuple[int, bool]:
    """train.memory_budget without `--auto`: the largest micro-batch (then with gradient checkpointing) whose
    predicted peak fits, for the configured recipe. The activations of one forward pass on the first (longest)
    batch are measured (nothing is trained); a candidate whose parts fit is then measured whole in a probe process
    (probe_in_child: what the epoch's shapes add shows only there), up to 3 of them. `now`: the process's memory
    with the model loaded (default: measured); `probe` False: the parts only (tests on tiny models).
    Returns (micro_batch, gradient_checkpointing)."""
    budget = parse_size(cfg.train.memory_budget)
    t = cfg.train
    lengths, order = first_epoch(task, t)
    longest = order[0]
    rows = max(len(b) for b in order)
    width = max(lengths[i] for i in longest)
    batch = task.collator()([task.train_set[i] for i in longest])
    full = activation_bytes(model, task, batch, precision_autocast)
    static = static_bytes(model)
    now = rss_bytes() if now is None else now  # weights are loaded already: counted in the process's memory
    fixed = now + static["gradients"] + static["optimizer"]
    probes = 0
    for checkpointing in (t.gradient_checkpointing, True) if not t.gradient_checkpointing else (True,):
        for micro in _micro_batches(rows):
            acts = full * micro / len(longest)
            if checkpointing and not t.gradient_checkpointing:
                acts = checkpointed_activations(int(acts), model, micro, width)
            peak = fixed + acts
            if peak > budget:
                continue
            if probe and probes < 3:
                probes += 1
                trial = copy.deepcopy(cfg)
                trial.train.micro_batch, trial.train.memory_budget = (0 if micro >= rows else micro), ""
                trial.train.gradient_checkpointing = checkpointing
                measured = probe_in_child(trial)["peak"]
                log(f"memory budget {format_size(budget)}: micro-batch {micro} rows"
                    f"{', gradient checkpointing' if checkpointing else ''}: a probe process peaks at "
                    f"{format_size(measured)}")
                if measured > budget:
                    continue
                peak = measured
            log(f"memory budget {format_size(budget)}: micro-batch {micro} rows"
                f"{', gradient checkpointing' if checkpointing else ''}: predicted peak {format_size(peak)}")
            return (0 if micro >= rows else micro), checkpointing
    raise FrugalError(f"train.memory_budget: {format_size(budget)} is too little for this run: with one row per "
                      f"pass and gradient checkpointing it needs about "
                      f"{format_size(fixed + checkpointed_activations(int(full / len(longest)), model, 1, width))}; "
                      "lower model.max_length, use LoRA or freeze layers, or a smaller model")


def probe_peak(cfg: RunConfig, limit: int = 64) -> dict[str, Any]:
    """Peak memory of a run of `cfg` in this (fresh) process: real optimizer steps (the engine's), one on each of
    up to `limit` batch shapes of the epoch, the longest first; the growth over them is scaled up when the epoch
    has more shapes. What a CPU run grows by with every new shape (oneDNN's per-shape primitives, the allocator's
    leftovers) shows only in a process that has not met those shapes before."""
    from frugal_lm.engine.run import build_model, prepare_task, task_train_config
    from frugal_lm.engine.trainer import Trainer
    from frugal_lm.models.loading import quiet_transformers

    with quiet_transformers():
        task, resolved = prepare_task(cfg)
        model = build_model(cfg, task, resolved)
    task.start_from(model)
    t = task_train_config(cfg, task)
    lengths, order = first_epoch(task, t)
    shapes: dict[tuple[int, int], int] = {}
    for k, b in enumerate(order):
        shapes.setdefault((len(b), max(lengths[i] for i in b)), k)
    picks = list(shapes.values())
    picks = [picks[0], *picks[1:][:: max(1, -(-(len(picks) - 1) // max(1, limit - 1)))]]
    cache = None
    if t.cache_prefix:  # its first epoch runs the frozen prefix in inference mode: kernels of its own
        from frugal_lm.engine.prefix_cache import PrefixCache

        cache = PrefixCache(model, layers=t.freeze_layers)
    with tempfile.TemporaryDirectory(prefix="frugal-probe-") as tmp:
        trainer = Trainer(model, task, task.train_set, task.collator(), t, tmp)
        trainer._step([trainer._collate(order[picks[0]], 0, 0)])
        first = peak_rss_bytes()
        stored = cache.bytes if cache is not None else 0
        for k in picks[1:]:
            trainer._step([trainer._collate(order[k], 0, k)])
        peak = peak_rss_bytes()
        evaluation = 0
        if task.eval_records:
            # a run evaluates at least once, after training: its inference batches (shapes of their own, the
            # outputs it keeps; a few-shot head fitted on the embedded training rows) come on top of the
            # training peak. Measured on up to EVAL_PROBE_ROWS rows spread over the set.
            rows = task.eval_records[:: -(-len(task.eval_records) // EVAL_PROBE_ROWS)]
            task.evaluate(trainer.accelerator.unwrap_model(trainer.model), records=rows,
                          device=trainer.accelerator.device)
            evaluation = max(0, peak_rss_bytes() - peak)
    scale = (len(shapes) - 1) / max(1, len(picks) - 1)
    # without the rows the probe's steps stored in the cache: the planner counts the whole cache itself
    grown = peak - first - ((cache.bytes - stored) if cache is not None else 0)
    return {"peak": int(first - stored + max(0, grown) * max(1.0, scale)), "evaluation": int(evaluation),
            "shapes": len(shapes), "probed": len(picks)}


def with_probe(memory: dict[str, int], measured: dict[str, Any]) -> dict[str, int]:
    """A candidate's memory parts once its probe has measured it: the probe's training peak replaces the sum of
    the parts it covers (the difference shows as `kernels`), and what its evaluation added, and the whole prefix
    cache (the probe leaves out the rows its few steps stored), come on top."""
    out = {k: v for k, v in memory.items() if k not in ("kernels", "peak", "probe", "evaluation")}
    known = sum(v for k, v in out.items() if k != "prefix_cache")
    out["kernels"] = max(0, measured["peak"] - known)
    out["evaluation"] = int(measured.get("evaluation", 0))
    out["peak"] = known + out["kernels"] + out["evaluation"] + out.get("prefix_cache", 0)
    out["probe"] = measured["peak"]
    return out


def probe_in_child(cfg: RunConfig) -> dict[str, Any]:
    """probe_peak(cfg) in a child process (`python -m frugal_lm.plan --probe CONFIG`)."""
    import json
    import subprocess

    with tempfile.TemporaryDirectory(prefix="frugal-plan-") as tmp:
        path = f"{tmp}/config.yaml"
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(cfg.to_yaml())
        out = subprocess.run([sys.executable, "-m", "frugal_lm.plan", "--probe", path], capture_output=True,
                             text=True)
    if out.returncode or not out.stdout.strip():
        raise FrugalError(f"frugal plan: the memory probe failed (exit {out.returncode}): {out.stderr[-1500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def plan_for_auto(cfg: RunConfig, show: Any = None) -> tuple[RunConfig, dict[str, Any], float]:
    """`train --auto`'s planning: (cfg with the recommendation applied, the plan, the clock when planning
    began: the run's time budget counts from there). `show` gets the table first, also when nothing fits."""
    from frugal_lm.engine.trainer import Trainer

    began = Trainer.clock()
    planned = plan_in_child(cfg)
    if show is not None:
        show(table(planned))
    return apply_plan(cfg, planned), planned, began


def plan_in_child(cfg: RunConfig) -> dict[str, Any]:
    """`plan(cfg)` in a child process (`frugal plan --json`): the planner's models, copies and kernel caches then
    leave the training process as it would be without them, so its measured peak is the one predicted."""
    import json
    import subprocess

    with tempfile.TemporaryDirectory(prefix="frugal-plan-") as tmp:
        path = f"{tmp}/config.yaml"
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(cfg.to_yaml())
        out = subprocess.run([sys.executable, "-m", "frugal_lm", "plan", path, "--json", "--for-auto"],
                             stdout=subprocess.PIPE,
                             stderr=None, text=True)
    if out.returncode not in (0, 2) or not out.stdout.strip():
        raise FrugalError(f"train --auto: planning failed (exit {out.returncode}; its messages are above)")
    return json.loads(out.stdout)


if __name__ == "__main__":  # the memory probe's child process (probe_in_child)
    import json as _json

    from frugal_lm.config import load_config

    if len(sys.argv) != 3 or sys.argv[1] != "--probe":
        raise SystemExit("usage: python -m frugal_lm.plan --probe CONFIG.yaml")
    print(_json.dumps(probe_peak(load_config(sys.argv[2]))))
