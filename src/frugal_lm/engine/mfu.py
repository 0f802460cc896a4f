"""Model-FLOPs utilisation (MFU): the training step's useful arithmetic against what this machine's matrix
multiply can do, measured on this machine rather than read from a spec sheet (a 2-vCPU VM shares its cores,
and a CPU's peak depends on the instruction sets the VM exposes).

Model FLOPs follow the usual convention (Kaplan et al. 2020; PaLM, Chowdhery et al. 2022): 6 x N x T for a
training step over T real (unpadded) tokens, N the non-embedding parameters (the embedding lookup is a
gather, not a matmul), plus the attention products 12 x layers x hidden x sequence per token. Freezing
layers or LoRA does less work than that (no weight gradients where nothing trains), and padding does more:
MFU counts the model's work on real tokens, so both the recipe's savings and its waste show in it, which
is what makes it comparable with another tool's run of the same model.
"""

from __future__ import annotations

from typing import Any

_peaks: dict[tuple[str, str, int], float] = {}


def peak_flops(precision: str = "no", device: str = "cpu") -> float:
    """This machine's measured dense matmul rate in FLOP/s, for the step's precision ("no" = fp32, "bf16",
    "fp16"): a 2048 x 1024 x 1024 product (4.3 GFLOP), the median of 15 after a warm-up, on the threads
    torch uses. Measured once per process and precision (~0.3-1 s on a CPU)."""
    import time

    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    if device == "cpu" and dtype == torch.float16:
        dtype = torch.float32  # CPU fp16 autocast computes most products in fp32
    key = (str(dtype), device, torch.get_num_threads())
    if key not in _peaks:
        gen = torch.Generator().manual_seed(0)  # its own generator: measuring must not move the run's RNG
        a = torch.randn(2048, 1024, generator=gen).to(device=device, dtype=dtype)
        b = torch.randn(1024, 1024, generator=gen).to(device=device, dtype=dtype)
        # The median of 15 products after 3 warm-up ones: on a shared VM single products range over 2-3x
        # (bf16 here: 350 to 1,500 GFLOP/s, most near 600), so the best of a few reads an outlier, not the
        # rate the run's matmuls can sustain.
        times = []
        for rep in range(18):
            if device != "cpu":
                torch.cuda.synchronize()
            start = time.perf_counter()
            torch.mm(a, b)
            if device != "cpu":
                torch.cuda.synchronize()
            if rep >= 3:
                times.append(time.perf_counter() - start)
        _peaks[key] = 2 * 2048 * 1024 * 1024 / sorted(times)[len(times) // 2]
    return _peaks[key]


def non_embedding_parameters(model: Any) -> int:
    """Parameters that take part in matrix products: all but the embedding tables (token, position, token
    type: lookups, not products), except that a tied output head multiplies by the token table (causal LMs),
    so that table counts once."""
    import torch

    base = getattr(model, "get_base_model", lambda: model)()
    tables = {id(m.weight) for m in base.modules() if isinstance(m, torch.nn.Embedding)}
    get_out = getattr(base, "get_output_embeddings", None)
    out = get_out() if get_out else None
    if out is not None:
        tables.discard(id(out.weight))  # tied: a product after all (untied heads were never in `tables`)
    return sum(p.numel() for p in base.parameters() if id(p) not in tables)  # parameters() yields each once


def model_dims(model: Any) -> tuple[int, int]:
    """(transformer layers, hidden size) from the model's config (a peft wrapper looks through); 0 when unknown."""
    cfg = getattr(getattr(model, "get_base_model", lambda: model)(), "config", None)
    layers = getattr(cfg, "num_hidden_layers", 0) or getattr(cfg, "n_layer", 0) or 0
    hidden = getattr(cfg, "hidden_size", 0) or getattr(cfg, "n_embd", 0) or 0
    return layers, hidden


def training_flops(model: Any, tokens: int, rows: int) -> float:
    """Model FLOPs of training on `tokens` real tokens in `rows` sequences (see the module docstring)."""
    layers, hidden = model_dims(model)
    seq = tokens / rows if rows else 0.0
    return 6.0 * non_embedding_parameters(model) * tokens + 12.0 * layers * hidden * seq * tokens


def mfu_report(model: Any, tokens: int, rows: int, seconds: float, precision: str, device: str) -> dict[str, Any]:
    """{"model_flops_per_s", "peak_flops_per_s", "mfu"} of a run that trained `tokens` in `seconds`."""
    if seconds <= 0 or tokens <= 0:
        return {"model_flops_per_s": 0.0, "peak_flops_per_s": None, "mfu": None}
    achieved = training_flops(model, tokens, rows) / seconds
    peak = peak_flops(precision, "cuda" if str(device).startswith("cuda") else "cpu")
    return {"model_flops_per_s": round(achieved, 1), "peak_flops_per_s": round(peak, 1),
            "mfu": round(achieved / peak, 4)}
