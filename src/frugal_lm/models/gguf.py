"""Turn a GGUF checkpoint into a plain safetensors model folder, once, and cache it.

`transformers` can read GGUF files (it dequantizes every tensor, ~40 s for SmolLM2-135M on 2 cores), but
the model it returns stays marked as GGUF-quantized, so `save_pretrained` and training refuse it. We
therefore copy its weights into a plain model built from the same config, save that with the tokenizer
under `cache_dir()/gguf/<stem>-<hash>`, and load the folder in seconds afterwards.

The folder is built in a temporary sibling and renamed into place, so a cache folder that exists is
complete. Before the rename the saved copy is reloaded and its logits compared with the GGUF-loaded
model's on a short text; the figures are kept in `frugal_gguf.json` so tests can recheck the cache.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

from frugal_lm.errors import ModelError
from frugal_lm.io import atomic_path
from frugal_lm.models.registry import ResolvedModel, cache_dir

# Bump when the conversion changes, so that old cache folders are not reused.
CONVERSION_VERSION = 1
METADATA = "frugal_gguf.json"
VERIFY_TEXT = "The cat sat on the mat because it was warm. Language models assign probabilities to text."
# Dequantized weights are copied bit for bit, so the reloaded model should agree to float32 rounding.
MAX_LOGIT_DIFF = 1e-3
_HASH_BYTES = 4 << 20


def cache_key(gguf_path: str | Path) -> str:
    """`<stem>-<12 hex>`: a hash of the file size and its first 4 MiB (fast, and stable across reinstalls)."""
    path = Path(gguf_path)
    h = hashlib.sha256(f"v{CONVERSION_VERSION}:{path.stat().st_size}:".encode())
    with path.open("rb") as fh:
        h.update(fh.read(_HASH_BYTES))
    return f"{path.stem}-{h.hexdigest()[:12]}"


def cached_folder(resolved: ResolvedModel) -> Path:
    """Where the converted copy of a GGUF source lives (whether or not it exists yet)."""
    if not resolved.gguf_file:
        raise ModelError(f"model '{resolved.name}' is not a GGUF source")
    gguf_path = Path(resolved.path) / resolved.gguf_file
    if not gguf_path.is_file():
        raise ModelError(f"GGUF file not found: {gguf_path}")
    return cache_dir() / "gguf" / cache_key(gguf_path)


def _is_complete(folder: Path) -> bool:
    return (folder / METADATA).is_file() and (folder / "config.json").is_file()


def materialize_gguf(resolved: ResolvedModel) -> Path:
    """A plain model folder (safetensors + tokenizer) for a GGUF source, converting it on first use.

    Raises:
        ModelError: the file is missing, or `gguf` is not installed, or the conversion fails its check.
    """
    folder = cached_folder(resolved)
    if _is_complete(folder):
        return folder
    gguf_path = Path(resolved.path) / str(resolved.gguf_file)
    print(f"converting {gguf_path.name} to a plain model once (~40 s); cached at {folder}", file=sys.stderr)
    try:
        with atomic_path(folder) as tmp:
            convert_gguf(gguf_path, tmp)
            if _is_complete(folder):
                raise _Concurrent  # another process converted it meanwhile: keep its copy, it may be in use
    except _Concurrent:
        pass
    return folder


class _Concurrent(Exception):
    pass


@contextlib.contextmanager
def _quiet() -> Any:
    """Silence transformers' logging and the dequantization progress bar; replay it if something fails.

    The GGUF progress bar is a plain tqdm on stderr that ignores transformers' switches, hence the capture.
    """
    from frugal_lm.models.loading import quiet_transformers

    buf = io.StringIO()
    try:
        with quiet_transformers(), contextlib.redirect_stderr(buf):
            yield
    except BaseException:
        sys.stderr.write(buf.getvalue())
        raise


def _logits(model: Any, ids: Any) -> Any:
    import torch

    with torch.inference_mode():
        return model(input_ids=ids).logits.float()


def convert_gguf(gguf_path: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Dequantize `gguf_path` into a plain causal-LM folder `out_dir`, check it, and describe it.

    Returns the metadata written to `out_dir/frugal_gguf.json`, including `max_abs_logit_diff` between
    the GGUF-loaded model and the saved copy reloaded from disk, and reference log-probs of VERIFY_TEXT.
    """
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file; fail with a clear message)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise ModelError(f"reading GGUF files needs the 'gguf' package ({exc}); pip install gguf") from None

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    start = time.perf_counter()
    with _quiet():
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        quantized = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    quantized.eval()
    ids = torch.tensor([tok(VERIFY_TEXT, add_special_tokens=False)["input_ids"]])
    ref = _logits(quantized, ids)

    config = copy.deepcopy(quantized.config)
    # The quantization marker is what makes save_pretrained and training refuse the model.
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    if missing or unexpected:
        raise ModelError(f"{gguf_path}: converted weights do not fit the model "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    plain.generation_config = copy.deepcopy(quantized.generation_config)
    del quantized

    out_dir.mkdir(parents=True, exist_ok=True)
    with _quiet():
        plain.save_pretrained(out_dir)
        tok.save_pretrained(out_dir)
    del plain

    with _quiet():
        reloaded = AutoModelForCausalLM.from_pretrained(str(out_dir), dtype=torch.float32)
        tok2 = AutoTokenizer.from_pretrained(str(out_dir))
    reloaded.eval()
    ids2 = tok2(VERIFY_TEXT, add_special_tokens=False)["input_ids"]
    if ids2 != ids[0].tolist():
        raise ModelError(f"{gguf_path}: the saved tokenizer splits text differently from the GGUF one")
    got = _logits(reloaded, ids)
    diff = float((got - ref).abs().max())
    if not diff <= MAX_LOGIT_DIFF:
        raise ModelError(f"{gguf_path}: the converted model disagrees with the GGUF one "
                         f"(max logit difference {diff:.3g})")

    # Reference log-probs of each next token: lets a test recheck a cache folder without the GGUF load.
    logp = ref[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]
    import transformers

    meta = {
        "source": str(gguf_path),
        "source_size": gguf_path.stat().st_size,
        "cache_key": cache_key(gguf_path),
        "conversion_version": CONVERSION_VERSION,
        "transformers_version": transformers.__version__,
        "seconds": round(time.perf_counter() - start, 1),
        "max_abs_logit_diff": diff,
        "verify_text": VERIFY_TEXT,
        "verify_ids": ids[0].tolist(),
        "verify_token_logprobs": [float(x) for x in logp],
    }
    (out_dir / METADATA).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


def read_metadata(folder: str | Path) -> dict[str, Any]:
    """The metadata of a converted folder (see `convert_gguf`)."""
    return json.loads((Path(folder) / METADATA).read_text(encoding="utf-8"))
