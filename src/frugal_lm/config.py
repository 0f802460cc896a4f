"""Typed run configuration: dataclasses with a help string per field, loaded from YAML and overridden
from the command line (`--set train.lr=3e-5`), validated at load time so errors name the key.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from frugal_lm.errors import ConfigError


def _f(default: Any, help: str, choices: tuple | None = None) -> Any:
    meta = {"help": help, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


option = _f  # for tasks' Options dataclasses: option(default, help, choices)


@dataclass
class ModelConfig:
    name: str = _f("minilm", "bundled alias (see `frugal models`), local model folder, or hub id")
    max_length: int = _f(128, "longest input in tokens; longer inputs are truncated")
    trust_remote_code: bool = _f(False, "run model code shipped with a hub model; off unless you trust it")
    tokenizer: str | None = _f(None, "tokenizer folder for a from-scratch preset (bert-mini, gpt-mini, ...: "
                               "`frugal presets`); other models bring their own")


@dataclass
class DataConfig:
    train: str | None = _f(None, "training file (.csv, .tsv, .jsonl)")
    eval: str | None = _f(None, "evaluation file, same format; used for eval during training and the best model")
    format: str | None = _f(None, "file format, one the task reads (its formats are checked when the config "
                               "loads); taken from the suffix when unset")
    text_column: str = _f("text", "column holding the text")
    text_pair_column: str | None = _f(
        "text_pair", "column holding the second text of a sentence pair; ignored when the file lacks it")
    label_column: str = _f("label", "column holding the label (string or int)")


@dataclass
class TrainConfig:
    epochs: float = _f(3.0, "passes over the training data (fractions allowed)")
    max_steps: int = _f(0, "stop after this many optimizer steps (0: no limit)")
    batch_size: int = _f(32, "examples per optimizer step, per process, before accumulation")
    grad_accum: int = _f(1, "micro-batches per optimizer step; the loss is normalised over all of them")
    lr: float = _f(1e-4, "peak learning rate (AdamW)")
    weight_decay: float = _f(0.01, "AdamW weight decay (not applied to biases and LayerNorm)")
    scheduler: str = _f("linear", "learning-rate schedule after warmup", ("linear", "cosine", "constant"))
    warmup_ratio: float = _f(0.06, "fraction of steps spent warming up")
    max_grad_norm: float = _f(1.0, "gradient clipping norm (0: off)")
    seed: int = _f(0, "seed for init, shuffling and dropout")
    eval_every: int = _f(0, "evaluate every N optimizer steps (0: once per epoch); always at the end")
    save_every: int = _f(0, "checkpoint every N optimizer steps (0: at each evaluation)")
    log_every: int = _f(10, "log loss, lr and throughput every N optimizer steps")
    metric: str = _f("", "evaluation metric that picks the best model and drives early stopping "
                     "(default: the task's own, e.g. accuracy for classify, f1 for ner)")
    patience: int = _f(0, "stop after N evaluations without improvement (0: never stop early)")
    max_minutes: float = _f(0.0, "wall-time budget in minutes, the same budget as train.time_budget (0: none)")
    time_budget: str = _f("", "wall-time budget, loading and evaluation included: 90s, 15m, 2h, 1h30m (a plain "
                          "number: minutes; '' or 0: none). The learning rate decays to its end at it and the run "
                          "ends evaluated and saved within it, resumably. Sets train.max_minutes too")
    precision: str = _f("auto", "auto: bf16 on GPUs that have it, fp16 on older GPUs; on CPUs bf16 autocast where "
                        "bf16 matrix instructions (AMX) measure 2x fp32 and the model has over 5M parameters, else fp32",
                        ("auto", "fp32", "bf16", "fp16"))
    group_by_length: bool = _f(True, "batch examples of similar length together: far less padding")
    freeze_embeddings: bool = _f(False, "keep the embedding matrices fixed: fewer updates, little accuracy lost "
                                 "(a matrix tied to an output head stays trainable); default per task")
    freeze_layers: int = _f(0, "also keep the first N transformer layers fixed")
    gradient_checkpointing: bool = _f(False, "recompute activations in backward: less memory, more time")
    micro_batch: int = _f(0, "rows per forward/backward pass: each batch is split into micro-batches of this size "
                          "(the same gradients, less memory; 0: the whole batch at once). Chosen by "
                          "train.memory_budget and `frugal plan`; halved on an out-of-memory error")
    memory_budget: str = _f("", "peak memory the run may use, as 4GB, 512MB, 2GiB ('': no budget): micro-batch "
                            "size and gradient checkpointing are chosen to stay under it (see `frugal plan`)")
    batch_tokens: int = _f(0, "token-budget batches: a batch holds up to this many padded tokens (rows x longest "
                           "row) instead of train.batch_size rows; length-grouped (0: off, batches of rows)")
    cache_prefix: bool = _f(False, "with frozen embeddings and train.freeze_layers N, compute the frozen prefix's "
                            "outputs once per example (dropout off in it) and reuse them in later epochs")
    class_weights: str = _f("", "weight the loss per class (imbalanced labels): 'balanced' (inverse frequency, "
                            "as scikit-learn; 'true' too), explicit 'LABEL=W,LABEL=W' (unlisted: 1), or '' (off)")
    balanced_sampler: bool = _f(False, "batches hold every class equally often (smaller classes repeated); "
                                "classification only; length grouping is then off")
    eval_batch_size: int = _f(128, "examples per evaluation batch")
    nonfinite: str = _f("stop", "a step whose loss or gradient norm is NaN or infinite: stop at once with a "
                        "diagnosis (step, lr, the batch's texts), or skip it (counted in metrics.json, logged)",
                        ("stop", "skip"))


@dataclass
class PeftConfig:
    method: str = _f("none", "parameter-efficient fine-tuning method", ("none", "lora"))
    r: int = _f(8, "LoRA rank")
    alpha: int = _f(16, "LoRA scaling numerator (scale = alpha / r)")
    dropout: float = _f(0.05, "dropout on the LoRA input")
    target_modules: list[str] = _f([], "module names to adapt; empty: sensible defaults per architecture")
    top_layers: int = _f(0, "adapt only the last N transformer layers (0: all). Below the first adapted layer "
                         "nothing needs a gradient, so backward stops there: on a CPU the biggest saving")
    merge: bool = _f(True, "also export a merged model folder beside the adapter")


@dataclass
class RunConfig:
    task: str = _f("classify", "what to train (see `frugal train --help` for the tasks)")
    output: str = _f("runs/run", "run folder")
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    # The task's own keys (its Options dataclass), written as a section named after the task: `ner.scheme`.
    options: Any = field(default=None, metadata={"help": "", "internal": True})

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        options = out.pop("options")
        if options is not None:
            out[self.task] = options
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML or command-line value to the field's declared type, or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _coerce(value, args[0], key)
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, typing.get_args(tp)[0], key) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            number = float(value) if tp is float else value
            if tp is int:
                number = int(value) if not isinstance(value, float) or value.is_integer() else None
                if number is None:
                    raise ValueError
            return number
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected {'an integer' if tp is int else 'a number'}, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


_DURATION = re.compile(r"(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m)?(?:(?P<s>\d+(?:\.\d+)?)s)?")
_MINUTES = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?")
DURATION_FORMS = "90s, 15m, 2h or 1h30m (units h, m, s in that order; a plain number is minutes; 0: none)"


def parse_duration(value: Any, key: str = "train.time_budget") -> float:
    """Seconds in a duration: "90s", "15m", "2h", "1h30m", "1.5h", or a plain number of minutes (15, "1.5").

    "", None and 0 mean no budget (0.0).

    Raises:
        ConfigError: anything else ("15 minutes", "-3m", "abc"), naming `key` and the accepted forms.
    """
    if value is None:
        return 0.0
    if isinstance(value, bool):  # YAML's yes/no: not a duration
        raise ConfigError(f"{key}: expected a duration such as {DURATION_FORMS}, got {value!r}")
    text = str(value).strip().lower()
    if text.startswith("-"):
        raise ConfigError(f"{key}: must not be negative, got {value!r}; expected a duration such as "
                          f"{DURATION_FORMS}")
    if text == "":
        return 0.0
    if _MINUTES.fullmatch(text):
        return float(text) * 60.0
    match = _DURATION.fullmatch(text)
    if match is None or not any(match.groupdict().values()):
        raise ConfigError(f"{key}: expected a duration such as {DURATION_FORMS}, got {value!r}")
    h, m, s = (float(match[u] or 0) for u in "hms")
    return h * 3600.0 + m * 60.0 + s


def format_duration(seconds: float) -> str:
    """The shortest of parse_duration's forms for `seconds`: 900 -> "15m", 5400 -> "1h30m", 0.5 -> "0.5s"."""
    whole = round(seconds)
    if abs(seconds - whole) > 1e-6 or whole == 0:
        return f"{seconds:.3g}s"
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    return "".join(f"{n}{u}" for n, u in ((h, "h"), (m, "m"), (s, "s")) if n)


_SIZE = re.compile(r"(?P<n>\d+(?:\.\d+)?)\s*(?P<u>[kmgt]?i?b?)")
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "ki": 2**10, "mi": 2**20, "gi": 2**30}
SIZE_FORMS = "4GB, 512MB, 2GiB or 1.5G (a plain number: bytes; '' or 0: none)"


def parse_size(value: Any, key: str = "train.memory_budget") -> int:
    """Bytes in a memory size: "4GB" (4e9), "512MB", "2GiB" (2 x 2**30), "1.5G", a plain number of bytes.

    "", None and 0 mean no budget (0).

    Raises:
        ConfigError: anything else, naming `key` and the accepted forms.
    """
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return 0
    match = _SIZE.fullmatch(str(value).strip().lower()) if not isinstance(value, bool) else None
    if match is None or match["u"] not in _UNITS:
        raise ConfigError(f"{key}: expected a memory size such as {SIZE_FORMS}, got {value!r}")
    return int(float(match["n"]) * _UNITS[match["u"]])


def format_size(n: float) -> str:
    """Bytes as the user reads them: 1.23 GB, 456 MB (decimal units, as parse_size's GB)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def budget_seconds(train: TrainConfig) -> float:
    """The run's time budget in seconds (0: none): train.time_budget when set, else train.max_minutes.

    The two keys are one budget; loading a config keeps them in step (_set_budget), so either may be read.
    """
    return parse_duration(train.time_budget) if train.time_budget else train.max_minutes * 60.0


_BUDGET_KEYS = ("max_minutes", "time_budget")


def _set_budget(train: TrainConfig, given: dict[str, Any], prefix: str) -> None:
    """Apply train.time_budget and/or train.max_minutes from one config layer, keeping both in step: a later
    layer's --max-minutes replaces an earlier time_budget and the other way round. Both in one layer must agree
    (a config.yaml written by frugal has both; an empty time_budget there: the budget was given in minutes)."""
    if "max_minutes" in given and str(given.get("time_budget", "")).strip() == "":
        given = {"max_minutes": given["max_minutes"]}
    seconds = {}
    if "time_budget" in given:
        seconds["time_budget"] = parse_duration(given["time_budget"], f"{prefix}time_budget")
    if "max_minutes" in given:
        if given["max_minutes"] < 0:
            raise ConfigError(f"{prefix}max_minutes: must not be negative, got {given['max_minutes']}")
        seconds["max_minutes"] = given["max_minutes"] * 60.0
    if len(seconds) == 2 and not math.isclose(seconds["time_budget"], seconds["max_minutes"], rel_tol=1e-9,
                                              abs_tol=1e-9):
        raise ConfigError(f"{prefix}time_budget ({given['time_budget']!r}) and {prefix}max_minutes "
                          f"({given['max_minutes']}) are the same budget, given twice with different values: "
                          "set one of them")
    if "time_budget" in given:
        train.time_budget = given["time_budget"].strip()
        train.max_minutes = seconds["time_budget"] / 60.0
    else:
        train.max_minutes, train.time_budget = given["max_minutes"], ""


def _apply(obj: Any, data: dict[str, Any], prefix: str = "") -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name: f for f in dataclasses.fields(obj) if not f.metadata.get("internal")}
    budget: dict[str, Any] = {}  # train.time_budget / train.max_minutes of this layer, applied together below
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(obj, RunConfig) and key == "task":
            continue  # load_config settled the task (and its defaults) before any layer was applied
        if isinstance(obj, RunConfig) and key not in names:
            if key == obj.task and obj.options is not None:
                if not isinstance(value, dict):
                    raise ConfigError(f"{path}: expected a mapping of the {key} task's keys")
                _apply(obj.options, value, prefix=f"{path}.")
                continue
            from frugal_lm.tasks import task_names

            if key in task_names():
                raise ConfigError(f"'{key}' holds options of task {key}, but this run's task is {obj.task}")
        if key not in names:
            from frugal_lm.tasks import did_you_mean

            raise ConfigError(f"unknown config key '{path}'{did_you_mean(key, list(names))}; "
                              f"known keys here: {', '.join(names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: expected a mapping of {', '.join(f.name for f in dataclasses.fields(current))}")
            _apply(current, value, prefix=f"{path}.")
            continue
        value = _coerce(value, hints[key], path)
        choices = names[key].metadata.get("choices")
        if choices and value is not None and value not in choices:
            raise ConfigError(f"{path}: expected one of {', '.join(choices)}, got {value!r}")
        if isinstance(obj, TrainConfig) and key in _BUDGET_KEYS:
            budget[key] = value
            continue
        setattr(obj, key, value)
    if budget:
        _set_budget(obj, budget, prefix)


def parse_set(items: list[str]) -> dict[str, Any]:
    """Turn ["train.lr=3e-5", ...] into a nested dict; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key.sub=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else ""
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def validate(cfg: RunConfig) -> None:
    """Cross-field checks that the type system cannot express, and the task's own (metric, format)."""
    from frugal_lm.tasks import did_you_mean, get_task

    task_cls = get_task(cfg.task)
    t = cfg.train
    if t.metric not in task_cls.metrics:
        raise ConfigError(f"train.metric: '{t.metric}' is not a metric of task {cfg.task}"
                          f"{did_you_mean(t.metric, list(task_cls.metrics))}; its metrics: "
                          f"{', '.join(task_cls.metrics)}")
    if cfg.data.format is not None and cfg.data.format not in task_cls.formats:
        raise ConfigError(f"data.format: task {cfg.task} reads {', '.join(task_cls.formats)}, "
                          f"got {cfg.data.format!r}")
    positives = {"train.batch_size": t.batch_size, "train.grad_accum": t.grad_accum,
                 "train.eval_batch_size": t.eval_batch_size, "model.max_length": cfg.model.max_length,
                 "train.log_every": t.log_every}
    for key, value in positives.items():
        if value < 1:
            raise ConfigError(f"{key}: must be at least 1, got {value}")
    for key, value in {"train.epochs": t.epochs, "train.lr": t.lr, "train.max_steps": t.max_steps,
                       "train.patience": t.patience, "train.freeze_layers": t.freeze_layers,
                       "train.max_minutes": t.max_minutes, "train.eval_every": t.eval_every,
                       "train.save_every": t.save_every}.items():
        if value < 0:
            raise ConfigError(f"{key}: must not be negative, got {value}")
    if t.epochs == 0 and t.max_steps == 0:
        raise ConfigError("train.epochs and train.max_steps are both 0: nothing to train")
    if not 0 <= t.warmup_ratio < 1:
        raise ConfigError(f"train.warmup_ratio: must be in [0, 1), got {t.warmup_ratio}")
    for key, value in {"train.micro_batch": t.micro_batch, "train.batch_tokens": t.batch_tokens}.items():
        if value < 0:
            raise ConfigError(f"{key}: must not be negative, got {value}")
    parse_size(t.memory_budget)
    if t.batch_tokens and t.balanced_sampler:
        raise ConfigError("train.batch_tokens and train.balanced_sampler: a class-balanced batch holds a fixed "
                          "number of rows; use one of them")
    if cfg.peft.method == "lora" and cfg.peft.r < 1:
        raise ConfigError(f"peft.r: must be at least 1, got {cfg.peft.r}")


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                sets: list[str] | None = None) -> RunConfig:
    """Build a RunConfig from defaults, then a YAML file, then overrides (flags), then `--set` items.

    Raises:
        ConfigError: unreadable YAML, unknown key, wrong type or out-of-range value (the key is named).
    """
    layers: list[tuple[str | None, dict[str, Any]]] = []
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"{path}: config file not found")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:  # one line: where, and what the parser expected
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"{path}: not valid YAML{where} ({problem})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        layers.append((str(path), data))
    if overrides:
        layers.append((None, overrides))
    if sets:
        layers.append((None, parse_set(sets)))
    # The task is known first, so that its defaults sit under every layer the user wrote.
    task = RunConfig.task
    for where, layer in layers:
        if "task" in layer:
            task = layer["task"]
            if not isinstance(task, str):
                raise ConfigError(f"{where + ': ' if where else ''}task: expected a task name, got {task!r}")
    cfg = task_defaults(task)
    for where, layer in layers:
        try:
            _apply(cfg, layer)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}" if where else str(exc)) from None
    validate(cfg)
    return cfg


# What a resumed run may change: nothing that moves the data position or the result.
# train.micro_batch and train.memory_budget only split each batch into smaller passes: the same examples per
# step and the same gradients.
RESUMABLE = ("output", "train.max_minutes", "train.time_budget", "train.log_every", "train.nonfinite",
             "train.micro_batch", "train.memory_budget")


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resume_config(run_dir: str | Path, requested: RunConfig) -> tuple[RunConfig, list[str]]:
    """The config a resumed run continues with: the run folder's own config.yaml, with only the keys of
    RESUMABLE taken from `requested` (the budget, logging). Returns it and the keys that changed.

    Raises:
        ConfigError: `requested` differs from the saved config in a key a resume cannot change (batch size,
            accumulation, seed, data files, ...): it would misalign the data position or the schedule.
    """
    path = Path(run_dir) / "config.yaml"
    saved = load_config(path)
    old, new = _flat(saved.to_dict()), _flat(requested.to_dict())
    changed = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key):
            continue
        if key not in RESUMABLE:
            raise ConfigError(
                f"--resume: {key} is {old.get(key)!r} in {path} but {new.get(key)!r} was asked; a resumed run "
                f"keeps its config (only {', '.join(RESUMABLE[1:])} may change). Start a new run to change it "
                "(another --output, or --overwrite)")
        changed.append(key)
    for key in changed:
        section, _, leaf = key.rpartition(".")
        target = getattr(saved, section) if section else saved
        setattr(target, leaf, getattr(getattr(requested, section) if section else requested, leaf))
    return saved, changed


def task_defaults(task: str) -> RunConfig:
    """A RunConfig holding the defaults of `task`: the generic ones, then the task's own."""
    from frugal_lm.tasks import get_task

    task_cls = get_task(task)
    cfg = RunConfig(task=task)
    cfg.options = task_cls.Options() if task_cls.Options is not None else None
    nested: dict[str, Any] = {}
    for key, value in task_cls.defaults.items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    _apply(cfg, nested)
    return cfg


def describe(task: str = "classify") -> list[tuple[str, str, Any, str]]:
    """Every config key with its type, default (as `task` sets it) and help: for `frugal config` and the docs.

    The task's own keys come last, under its name (`ner.scheme`).
    """
    rows = []

    def walk(obj: Any, prefix: str) -> None:
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            if f.metadata.get("internal"):
                continue
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                rows.append((f"{prefix}{f.name}", getattr(hints[f.name], "__name__", str(hints[f.name])),
                             value, f.metadata.get("help", "")))

    cfg = task_defaults(task)
    walk(cfg, "")
    if cfg.options is not None:
        walk(cfg.options, f"{task}.")
    return rows
