"""Checkpoints that never unpickle: weights in safetensors, optimizer state through
`torch.load(weights_only=True)`, everything else in JSON. Written to a temporary folder and renamed,
so a crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np

from frugal_lm.io import atomic_path


def trainable_state(model: Any) -> dict[str, Any]:
    """The trainable parameters, detached and contiguous (frozen weights are rebuilt from the base model)."""
    state, seen = {}, set()
    for name, p in model.named_parameters():
        if p.requires_grad and p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            state[name] = p.detach().contiguous().cpu()
    return state


def rng_state() -> dict[str, Any]:
    import torch

    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    return {"json": state, "tensors": tensors}


def set_rng_state(state: dict[str, Any], tensors: dict[str, Any]) -> None:
    import torch

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda")]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(folder: str | Path, model: Any, optimizer: Any, scheduler: Any,
                    trainer_state: dict[str, Any]) -> None:
    """Write model (trainable part), optimizer, scheduler, RNG and loop state to `folder` atomically."""
    import torch
    from safetensors.torch import save_file

    rng = rng_state()
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        save_file({k: v.contiguous() for k, v in rng["tensors"].items()}, str(tmp / "rng.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "scheduler.json").write_text(json.dumps(scheduler.state_dict(), default=_jsonable))
        (tmp / "state.json").write_text(json.dumps({**trainer_state, "rng": rng["json"]}, indent=1))


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint")


def load_checkpoint(folder: str | Path, model: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Restore what `save_checkpoint` wrote; returns the loop state. RNG is restored too."""
    import torch
    from safetensors.torch import load_file

    folder = Path(folder)
    weights = load_file(str(folder / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [k for k in weights if k not in params]
    if missing:
        raise RuntimeError(f"{folder}: checkpoint holds parameters the model lacks: {missing[:3]}")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True, map_location="cpu"))
    scheduler.load_state_dict(json.loads((folder / "scheduler.json").read_text()))
    state = json.loads((folder / "state.json").read_text())
    set_rng_state(state.pop("rng"), load_file(str(folder / "rng.safetensors")))
    return state
