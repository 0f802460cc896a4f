"""Checkpoints that never unpickle: weights in safetensors, optimizer state through
`torch.load(weights_only=True)`, everything else in JSON. Written to a temporary folder and renamed,
so a crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from frugal_lm.errors import FrugalError
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
                    trainer_state: dict[str, Any], rngs: list[dict[str, Any]] | None = None) -> None:
    """Write model (trainable part), optimizer, scheduler, RNG and loop state to `folder` atomically.

    Args:
        rngs: the RNG states of every process (`rng_state()` of each, rank order); default this process's.
    """
    import torch
    from safetensors.torch import save_file

    rngs = rngs or [rng_state()]
    # rank 0's tensors keep their plain names (older checkpoints), other ranks' get an "@rank" suffix
    tensors = {(k if r == 0 else f"{k}@{r}"): v.contiguous() for r, rng in enumerate(rngs)
               for k, v in rng["tensors"].items()}
    with writing(folder), atomic_path(folder) as tmp:
        tmp.mkdir()
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        save_file(tensors, str(tmp / "rng.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "scheduler.json").write_text(json.dumps(scheduler.state_dict(), default=_jsonable))
        # state.json last: a folder that has it is complete
        (tmp / "state.json").write_text(json.dumps({**trainer_state, "rng": rngs[0]["json"],
                                                    "rng_ranks": [r["json"] for r in rngs[1:]]}, indent=1))


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Report a failed write as OSError naming `path`, whatever the writer raised: safetensors raises its own
    error type and torch.save a RuntimeError when the disk is full or a file-size limit is hit."""
    try:
        yield
    except OSError:
        raise
    except Exception as exc:
        if type(exc).__name__ == "SafetensorError" or (isinstance(exc, RuntimeError) and "inline_container" in str(exc)):
            raise OSError(f"{str(exc).splitlines()[0][:200]} (writing {path})") from None
        raise


def recover_checkpoint(folder: str | Path) -> str | None:
    """Finish a checkpoint swap that a crash interrupted; returns what was done (None: nothing to do).

    `atomic_path` renames `checkpoint/` to `.checkpoint.old`, then the new one into place. Killed between
    the two renames, only `.checkpoint.old` is left: it is the previous complete checkpoint, so it goes back.
    """
    import shutil

    folder = Path(folder)
    old = folder.with_name(f".{folder.name}.old")
    if not old.is_dir():
        return None
    if folder.is_dir():  # killed after the second rename: the old one is merely left over
        shutil.rmtree(old, ignore_errors=True)
        return None
    os.replace(old, folder)
    return f"{folder}: recovered the previous checkpoint from {old.name} (a save was interrupted)"


def remove_temporaries(run_dir: str | Path) -> list[str]:
    """Delete what writes killed midway left in a run folder: `atomic_path`'s temporary folders (`.NAME.xxxx`),
    never a complete file or folder. Returns their names. Call before the run writes anything itself."""
    import shutil

    gone = []
    for entry in Path(run_dir).iterdir():
        if entry.name.startswith(".") and entry.is_dir() and not entry.name.endswith(".old"):
            shutil.rmtree(entry, ignore_errors=True)
            gone.append(entry.name)
    return gone


def read_state(folder: str | Path) -> dict[str, Any]:
    """The loop state of a checkpoint, checked to be readable JSON.

    Raises:
        FrugalError: no checkpoint, or a corrupt or truncated state.json.
    """
    path = Path(folder) / "state.json"
    if not path.exists():
        raise FrugalError(f"{Path(folder).parent}: no checkpoint to resume from ({path} is missing)")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FrugalError(f"{path}: corrupt or truncated checkpoint state ({exc})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise FrugalError(f"{path}: not a frugal checkpoint state (expected a mapping with an integer 'step')")
    return state


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint")


def _load_tensors(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    if not path.exists():
        raise FrugalError(f"{path}: missing from the checkpoint")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for bad headers and short files
        raise FrugalError(f"{path}: corrupt or truncated safetensors file ({str(exc).splitlines()[0][:200]})") from None


def load_checkpoint(folder: str | Path, model: Any, optimizer: Any, scheduler: Any,
                    rank: int = 0) -> dict[str, Any]:
    """Restore what `save_checkpoint` wrote; returns the loop state. RNG is restored too (this process's
    own when the checkpoint has it, else rank 0's: a run resumed with more processes than it had).

    Raises:
        FrugalError: a missing, corrupt or truncated file, or weights that do not fit the model (a trainable
            parameter missing, an unknown one, a shape mismatch): never a silent partial load.
    """
    import torch

    folder = Path(folder)
    state = read_state(folder)
    weights = _load_tensors(folder / "trainable.safetensors")
    params = dict(model.named_parameters())
    unknown = [k for k in weights if k not in params]
    if unknown:
        raise FrugalError(f"{folder}: checkpoint holds parameters the model lacks: {', '.join(unknown[:3])}")
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights
               and not any(p.data_ptr() == params[k].data_ptr() for k in weights)]  # tied: saved once
    if missing:
        raise FrugalError(f"{folder}: checkpoint lacks {len(missing)} trainable parameter(s) of the model "
                          f"({', '.join(missing[:3])}): it belongs to another run or model")
    for name, value in weights.items():
        if tuple(value.shape) != tuple(params[name].shape):
            raise FrugalError(f"{folder}: parameter {name} has shape {tuple(value.shape)} in the checkpoint, "
                              f"{tuple(params[name].shape)} in the model")
    rng_tensors = _load_tensors(folder / "rng.safetensors")
    try:
        optim = torch.load(folder / "optimizer.pt", weights_only=True, map_location="cpu")
        sched = json.loads((folder / "scheduler.json").read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise FrugalError(f"{exc.filename}: missing from the checkpoint") from None
    except Exception as exc:  # a truncated zip or JSON file
        raise FrugalError(f"{folder}: corrupt or truncated optimizer.pt or scheduler.json "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    optimizer.load_state_dict(optim)
    scheduler.load_state_dict(sched)
    ranks = [state.pop("rng"), *state.pop("rng_ranks", [])]
    mine = rank if rank < len(ranks) else 0
    suffix = f"@{mine}" if mine else ""
    tensors = {k.removesuffix(suffix): v for k, v in rng_tensors.items()
               if (k.endswith(suffix) if suffix else "@" not in k)}
    set_rng_state(ranks[mine], tensors)
    return state
