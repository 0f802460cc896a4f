"""The task contract: everything the engine, the run folder, `eval`, `predict`, `score` and the model card
need from a task, declared in one place so none of them ever asks "which task is this?".

A task is one module in `tasks/` with one subclass of `Task`, and one line in `tasks/__init__.py`.
It declares:
    what it is         name, help, auto_class (the transformers Auto class of its model), peft_task_type
    its data           formats it reads; read() / check() / learn() / from_texts(); encode(); collator()
    its model          build_model(); head_modules (trained fully and saved with a LoRA adapter)
    its loss           loss(model, batch) -> (summed loss, count); count(batch)
    its metrics        metrics: {name: "max" | "min"} for every scalar evaluate() returns; evaluate();
                       eval_autocast() (training-time evaluation in the training precision)
    its predictions    predict(model, records) -> JSON-able rows
    its run-folder     state() written to state_file beside the model; load_state() on the way back
    its config         defaults: {"train.metric": ..., ...} applied under the user's YAML and flags;
                       Options: a dataclass of its own keys, set as `<task name>.<key>` (`--set ner.scheme=bio`)

Task modules import torch and transformers inside methods only, so the CLI and config validation stay fast.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from frugal_lm.data.batching import Collator
from frugal_lm.errors import FrugalError


class Task(ABC):
    """Base class of every task. Subclasses set the class attributes and implement the abstract methods.

    Args:
        cfg: the validated run config (`cfg.options` holds the task's own Options, when it has any).
        saved: what `load_state` read from a run folder (label maps, ...); None when training anew.
    """

    name: ClassVar[str]
    help: ClassVar[str]
    auto_class: ClassVar[str]
    peft_task_type: ClassVar[str]
    formats: ClassVar[tuple[str, ...]]
    metrics: ClassVar[dict[str, str]]
    defaults: ClassVar[dict[str, Any]] = {}
    Options: ClassVar[type | None] = None
    head_modules: ClassVar[tuple[str, ...]] = ()
    state_file: ClassVar[str | None] = None

    def __init__(self, cfg: Any, saved: dict[str, Any] | None = None):
        self.cfg = cfg
        self.options = getattr(cfg, "options", None)
        self.tokenizer: Any = None
        self.train_set: list[dict[str, Any]] = []
        self.eval_set: list[dict[str, Any]] = []
        self.eval_records: list[Any] = []
        self.train_count = 0
        if saved is not None:
            self.load_state(saved)

    # -- metrics -----------------------------------------------------------------------------
    @classmethod
    def higher_is_better(cls, metric: str) -> bool:
        """Direction of a metric this task reports (validated in config, so it is always known)."""
        return cls.metrics.get(metric, "max") == "max"

    def eval_autocast(self) -> bool:
        """Whether the engine evaluates during training under the run's autocast (bf16 on a GPU or an AMX CPU),
        as the exported model predicts (`cast_for_inference`). False here: language models keep fp32
        log-probabilities, so a run's perplexities compare with `frugal score` and across runs."""
        return False

    # -- data --------------------------------------------------------------------------------
    @abstractmethod
    def read(self, path: str, labelled: bool = True) -> list[Any]:
        """Read and check one file; every error names file, line and field (DataError)."""

    def learn(self, train: list[Any]) -> None:
        """Derive what the training data fixes (the label set, ...). Called once, before `check`."""
        return None  # optional: tasks with nothing to learn from the data keep this

    def check(self, records: list[Any], path: str) -> None:
        """Check evaluation data against what training learned; raise DataError or warn."""
        return None  # optional

    def from_texts(self, texts: list[str]) -> list[Any]:
        """Unlabelled records from raw texts (`predict --text`, one-per-line .txt files)."""
        raise FrugalError(f"task {self.name}: raw text input is not supported; give a data file")

    def read_data(self) -> tuple[list[Any], list[Any]]:
        """Read and check the configured train and eval files, before anything heavy happens."""
        d = self.cfg.data
        if not d.train:
            raise FrugalError("data.train: no training file given (--train FILE)")
        train = self.read(d.train)
        self.learn(train)
        evaluation = self.read(d.eval) if d.eval else []
        if evaluation:
            self.check(evaluation, d.eval)
        return train, evaluation

    def prepare(self, tokenizer: Any) -> None:
        """Read, check and encode the configured data (the engine calls this before loading the model)."""
        self.tokenizer = tokenizer
        train, evaluation = self.read_data()
        self.train_count = len(train)
        self.train_set = self.encode(train)
        self.eval_records = evaluation
        self.eval_set = self.encode(evaluation) if evaluation else []

    @abstractmethod
    def encode(self, records: list[Any]) -> list[dict[str, Any]]:
        """Tokenize records into examples (lists of ids, no padding) that `collator()` batches."""

    def collator(self) -> Collator:
        tok = self.tokenizer
        return Collator(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)

    def lengths(self, examples: list[dict[str, Any]]) -> list[int]:
        """Token length of each example, for length-grouped batches."""
        return [len(e["input_ids"]) for e in examples]

    # -- model -------------------------------------------------------------------------------
    @abstractmethod
    def build_model(self, path: str, trust_remote_code: bool = False) -> Any:
        """The model for this task from a local folder, its head sized by what `learn` found."""

    # -- training ----------------------------------------------------------------------------
    @abstractmethod
    def count(self, batch: dict[str, Any]) -> int:
        """How many items the loss of `batch` sums over (examples, labelled tokens, ...)."""

    @abstractmethod
    def loss(self, model: Any, batch: dict[str, Any]) -> tuple[Any, int]:
        """The loss summed over the batch's items, and their count (the engine normalises per group)."""

    def train_overrides(self) -> dict[str, Any]:
        """train.* values that this run's recipe sets over the config (a few-shot stage's lr, a balanced
        sampler, ...); the engine trains with them and the run logs them. Called after `prepare`."""
        return {}

    def start_from(self, model: Any) -> None:
        """The model as this run's training starts from it (built, compute savers applied), before a
        checkpoint is loaded into it on --resume: for a recipe that refers back to the starting weights."""
        return None  # optional

    def kept_bytes(self) -> int:
        """Bytes this task keeps beside the model while it trains (what `start_from` copied): the planner counts
        them in a run's peak memory."""
        return 0

    def finish(self, model: Any, run_dir: Path, metrics: dict[str, Any] | None = None) -> None:
        """A step after the training loop, on the best weights, before the model is exported (fit a head on
        frozen features, write plots into the run folder, ...). `metrics`: the loop's evaluation of these
        weights on the eval set, when it made one (so a plot of it need not evaluate again)."""
        return None  # optional

    def finish_evaluates(self) -> bool:
        """Whether `finish` evaluates the eval set itself (a time budget keeps the time for it)."""
        return False

    # -- evaluation and use ------------------------------------------------------------------
    @abstractmethod
    def evaluate(self, model: Any, records: list[Any] | None = None, device: Any = None) -> dict[str, Any]:
        """Metrics on `records` (default: the prepared eval data): every key of `metrics`, and more."""

    @abstractmethod
    def predict(self, model: Any, records: list[Any]) -> list[dict[str, Any]]:
        """One JSON-able row per record."""

    def inputs(self, path: str | None = None, texts: list[str] | None = None) -> list[Any]:
        """Prediction input from raw texts, a one-per-line .txt file, or a data file of the task's format."""
        from frugal_lm.data.readers import read_lines

        if texts:
            return self.from_texts(texts)
        if path is None:
            raise FrugalError("predict: give --data FILE or --text \"...\"")
        if Path(path).suffix.lower() == ".txt" and "txt" not in self.formats:
            return self.from_texts(read_lines(path))
        return self.read(path, labelled=False)

    # -- run folder --------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """JSON-able state saved beside the model (label maps, schemes)."""
        return {}

    def load_state(self, saved: dict[str, Any]) -> None:
        """Restore what `state` returned."""
        return None  # optional, as `state`

    def save_extra(self, folder: Path) -> None:
        from frugal_lm.io import write_json

        if self.state_file:
            write_json(Path(folder) / self.state_file, self.state())

    @classmethod
    def load_extra(cls, folder: Path) -> dict[str, Any] | None:
        import json

        path = Path(folder) / cls.state_file if cls.state_file else None
        if path is None or not path.exists():
            return None
        return json.loads(path.read_text(encoding="utf-8"))

    def card_lines(self) -> list[str]:
        """Extra lines for the model card's data section."""
        return []
