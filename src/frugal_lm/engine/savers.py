"""Compute savers: freezing, LoRA (through peft), gradient checkpointing, precision by hardware."""

from __future__ import annotations

import re
from typing import Any

from frugal_lm.errors import ConfigError

# LoRA targets per model family: the attention projections, which carry most of what fine-tuning changes.
LORA_TARGETS = {
    "bert": ["query", "key", "value", "dense"],
    "roberta": ["query", "key", "value", "dense"],
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin"],
    "gpt2": ["c_attn", "c_proj"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
}

# CPU bf16 autocast pays only where the processor multiplies bf16 matrices in hardware (AMX or AVX512-BF16)
# and the model is big enough for matmuls to dominate: measured on a Xeon with AMX, a MiniLM training step
# took 0.65x and a SmolLM2-135M LoRA step 0.55x the fp32 time, while tiny models gain nothing (the step is
# Python and element-wise work) and processors without these instructions run bf16 slower than fp32.
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
CPU_BF16_MIN_PARAMS = 5_000_000
CPU_BF16_MIN_SPEEDUP = 2.0  # bf16 matmul over fp32: ~5x by the probe below with AMX (1 thread)
_cpu_bf16: dict[str, Any] = {}


def cpu_bf16_flags() -> list[str]:
    """The bf16 matrix instruction sets this CPU reports (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [f for f in CPU_BF16_FLAGS if f in flags]
    except OSError:
        pass
    return []


def cpu_bf16_speedup() -> float:
    """How many times faster this CPU multiplies bf16 matrices than fp32 ones (0.0 without bf16 instructions).

    Measured once per process on a 256 x 768 x 768 product (~30 ms): the flags say what the processor has,
    not whether the kernel and the virtual machine let torch's oneDNN use it. One thread, the two precisions
    interleaved and the fastest of 8 tries each, so a busy machine (whose other work stalls multi-threaded
    kernels at their barriers) cannot make the ratio look like 1: measured under a concurrent test job, the
    2-thread, 5-try version of this probe once read 1.0x where the quiet machine reads 5-9x.
    """
    if "speedup" in _cpu_bf16:
        return _cpu_bf16["speedup"]
    speedup = 0.0
    if cpu_bf16_flags():
        import time

        import torch

        gen = torch.Generator().manual_seed(0)  # its own generator: the probe must not move the run's RNG
        pairs = {dt: (torch.randn(256, 768, generator=gen).to(dt), torch.randn(768, 768, generator=gen).to(dt))
                 for dt in (torch.float32, torch.bfloat16)}
        best = dict.fromkeys(pairs, float("inf"))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for rep in range(9):
                for dt, (a, b) in pairs.items():
                    start = time.perf_counter()
                    torch.mm(a, b)
                    if rep:  # the first round warms oneDNN up
                        best[dt] = min(best[dt], time.perf_counter() - start)
        finally:
            torch.set_num_threads(threads)
        speedup = best[torch.float32] / max(best[torch.bfloat16], 1e-9)
    _cpu_bf16["speedup"] = speedup
    return speedup


def resolve_precision(precision: str, n_params: int | None = None) -> str:
    """Map the config's precision to accelerate's mixed_precision ("no", "bf16", "fp16").

    "auto" picks bf16 on GPUs that support it and fp16 on older GPUs. On a CPU it picks bf16 autocast
    when the processor has bf16 matrix instructions that measure at least CPU_BF16_MIN_SPEEDUP times
    faster than fp32 and the model has at least CPU_BF16_MIN_PARAMS parameters (`n_params`; unknown: fp32);
    otherwise fp32, which is faster on processors without them. `precision_reason` says which and why.
    """
    import torch

    if precision == "fp32":
        return "no"
    if precision in ("bf16", "fp16"):
        return precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if n_params is not None and n_params >= CPU_BF16_MIN_PARAMS and cpu_bf16_speedup() >= CPU_BF16_MIN_SPEEDUP:
        return "bf16"
    return "no"


def precision_reason(precision: str, n_params: int | None = None, setting: str = "train.precision") -> str:
    """One line on why `resolve_precision` chose what it did, for the log and the run summary."""
    import torch

    chosen = resolve_precision(precision, n_params)
    name = {"no": "fp32"}.get(chosen, chosen)
    if precision != "auto":
        return f"{name} ({setting}={precision})"
    if torch.cuda.is_available():
        return f"{name} (auto: GPU)"
    flags = cpu_bf16_flags()
    if not flags:
        return f"{name} (auto: this CPU has no bf16 matrix instructions)"
    speed = f"bf16 matmul {cpu_bf16_speedup():.1f}x fp32 here ({', '.join(flags)})"
    if n_params is None or n_params < CPU_BF16_MIN_PARAMS:
        return f"{name} (auto: {speed}, but a model under {CPU_BF16_MIN_PARAMS / 1e6:g}M parameters gains nothing)"
    return f"{name} (auto: {speed})"


def cast_for_inference(model: Any, precision: str = "auto", setting: str = "--precision") -> str:
    """Cast a classifier's or tagger's weights for prediction; returns the line saying which and why.

    Casting the weights, not autocast: there is no backward pass to keep in fp32, and bf16 weights halve
    the memory read per product. "auto" follows `resolve_precision`, so a model is predicted in bf16 where
    training would autocast to it; on this 2-core AMX CPU that predicts SST-2 dev with MiniLM faster
    (2.5x, BENCHMARKS.md: prediction throughput) and agreed with fp32 on 399 of 400 labels in the serving
    benchmark. Tasks cast their logits back to fp32 before softmax. Language models stay fp32: their
    log-probabilities are compared across runs, so callers do not use this for them.
    """
    import torch

    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"{setting}: expected auto, fp32, bf16 or fp16, got '{precision}'")
    n_params = sum(p.numel() for p in model.parameters())
    chosen = resolve_precision(precision, n_params)
    if chosen != "no":
        model.to({"bf16": torch.bfloat16, "fp16": torch.float16}[chosen])
    return precision_reason(precision, n_params, setting)


def _layer_index(name: str) -> int | None:
    match = re.search(r"\.(?:layer|layers|h|block|blocks)\.(\d+)\.", name)
    return int(match.group(1)) if match else None


def output_head_parameters(model: Any) -> set[int]:
    """Storage pointers of the output head's weights (BERT's MLM decoder, GPT-2's lm_head), when it has one.

    With tied embeddings these are the input embedding matrix itself, so freezing "the embeddings" would
    silently freeze the head; `freeze` uses this set to keep them trainable.
    """
    get = getattr(model, "get_output_embeddings", None)
    head = get() if get is not None else None
    if head is None:
        return set()
    return {p.data_ptr() for p in head.parameters()}


def freeze(model: Any, embeddings: bool, first_layers: int, log: Any = None) -> list[str]:
    """Stop gradients for the embedding matrices and/or the first `first_layers` transformer layers.

    A weight shared with the output head (tied embeddings) is never frozen: the head must learn. Returns
    the names of tied weights kept trainable (and reports them through `log`, a print-like callable).
    """
    base = getattr(model, "base_model", model)
    head = output_head_parameters(model)
    kept: list[str] = []

    def stop(name: str, p: Any) -> None:
        if p.data_ptr() in head:
            if name not in kept:
                kept.append(name)
            return
        p.requires_grad_(False)

    if embeddings:
        names = {id(p): n for n, p in model.named_parameters()}
        for p in base.get_input_embeddings().parameters():
            stop(names.get(id(p), "input embeddings"), p)
        for name, p in model.named_parameters():
            # position and token-type embeddings and the embedding LayerNorm sit beside the word matrix
            if re.search(r"(^|\.)(embeddings|wpe|wte)\.", name + "."):
                stop(name, p)
        if kept and log is not None:
            log(f"note: {', '.join(kept)} is tied to the output head, so it stays trainable "
                "(train.freeze_embeddings freezes the other embedding weights)")
    if first_layers:
        n_layers = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", 0)
        if first_layers > n_layers:
            raise ConfigError(f"train.freeze_layers: the model has {n_layers} layers, got {first_layers}")
        for name, p in model.named_parameters():
            index = _layer_index(name)
            if index is not None and index < first_layers:
                p.requires_grad_(False)
    return kept


def apply_lora(model: Any, r: int, alpha: int, dropout: float, targets: list[str], task_type: str,
               head_modules: tuple[str, ...] | list[str] = (), top_layers: int = 0) -> Any:
    """Wrap `model` with LoRA adapters; the task head (those of `head_modules` the model has) stays fully
    trainable and is saved with the adapter. `top_layers` > 0 adapts only the last N transformer layers:
    autograd then records nothing below them (the embeddings are frozen), so backward stops there."""
    from peft import LoraConfig, get_peft_model

    if not targets:
        model_type = getattr(model.config, "model_type", "")
        if model_type not in LORA_TARGETS:
            raise ConfigError(f"peft.target_modules: no default for model type '{model_type}'; "
                              "set the module names to adapt")
        targets = LORA_TARGETS[model_type]
    heads = [h for h in head_modules if any(n.split(".")[0] == h for n, _ in model.named_children())]
    # GPT-2 stores its projections as Conv1D (weights transposed); peft must be told, or it warns and fixes it
    fan_in_fan_out = getattr(model.config, "model_type", "") == "gpt2"
    layers = None
    if top_layers:
        n_layers = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", 0)
        if top_layers > n_layers:
            raise ConfigError(f"peft.top_layers: the model has {n_layers} layers, got {top_layers}")
        layers = list(range(n_layers - top_layers, n_layers))
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        fan_in_fan_out=fan_in_fan_out, layers_to_transform=layers,
                        task_type=task_type, modules_to_save=heads or None)
    return get_peft_model(model, config)


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
