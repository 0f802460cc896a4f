"""Load tokenizers and models for a resolved name, with errors a user can act on."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from frugal_lm.errors import ModelError
from frugal_lm.models.registry import ResolvedModel, resolve_model


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide transformers' load reports and 'Loading weights' bars meanwhile (we report what matters);
    the caller's logging settings come back afterwards."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def local_path(resolved: ResolvedModel) -> str:
    """A folder `from_pretrained` reads: GGUF sources are converted once and cached (see models.gguf)."""
    if resolved.gguf_file:
        from frugal_lm.models.gguf import materialize_gguf

        return str(materialize_gguf(resolved))
    return resolved.path


def _hub_failure(resolved: ResolvedModel, exc: Exception) -> ModelError:
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    why = "HF_HUB_OFFLINE is set, so the hub is not contacted" if offline else "the hub could not be reached"
    return ModelError(
        f"model '{resolved.name}' is not a bundled alias or a local folder, so it was looked up on the "
        f"Hugging Face Hub, and that failed ({why}): {type(exc).__name__}: {str(exc).splitlines()[0][:200]}. "
        "Use a bundled alias (see `frugal models`) or a local model folder."
    )


def from_pretrained(cls: Any, name_or_resolved: str | ResolvedModel, trust_remote_code: bool = False,
                    **kwargs: Any) -> Any:
    """Call `cls.from_pretrained` on a resolved model, turning loader failures into ModelError.

    Args:
        cls: a transformers Auto class (AutoTokenizer, AutoModelForSequenceClassification, ...).
        name_or_resolved: a model name or the result of `resolve_model`.
        trust_remote_code: passed through; off unless the user turns it on.
    """
    from frugal_lm.models.presets import build_from_config, is_preset_dir

    resolved = resolve_model(name_or_resolved) if isinstance(name_or_resolved, str) else name_or_resolved
    path = local_path(resolved)
    if is_preset_dir(path) and not cls.__name__.endswith(("Tokenizer", "TokenizerFast", "Config")):
        return build_from_config(cls, path, trust_remote_code=trust_remote_code, **kwargs)  # no weights yet
    try:
        return cls.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError) as exc:
        if resolved.is_hub:
            raise _hub_failure(resolved, exc) from None
        raise ModelError(f"could not load model '{resolved.name}' from {path}: {exc}") from None
    except Exception as exc:
        if type(exc).__name__ != "SafetensorError":  # safetensors' own error type: a damaged weights file
            raise
        raise ModelError(f"could not load model '{resolved.name}' from {path}: its .safetensors weights are "
                         f"corrupt or truncated ({str(exc).splitlines()[0][:200]})") from None


def load_tokenizer(name_or_resolved: str | ResolvedModel, trust_remote_code: bool = False) -> Any:
    """The tokenizer of a model (a fast tokenizer where one exists)."""
    from pathlib import Path

    from transformers import AutoTokenizer

    folder = Path(name_or_resolved) if isinstance(name_or_resolved, str) else None
    if folder is not None and (folder / "tokenizer_config.json").is_file() and not (folder / "config.json").exists():
        # a tokenizer on its own, e.g. the one a LoRA run saves beside its adapter: not a model to resolve
        try:
            return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as exc:
            raise ModelError(f"could not load the tokenizer in {folder}: {exc}") from None
    return from_pretrained(AutoTokenizer, name_or_resolved, trust_remote_code=trust_remote_code)
