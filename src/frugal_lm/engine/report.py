"""What a run folder tells a reader: metrics.jsonl as it goes, then metrics.json, plots and a model card."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from frugal_lm.io import write_json, write_text


class MetricsLog:
    """Append-only JSON lines; on resume the lines written after the checkpoint are cut away, so a resumed
    run's log reads exactly like an uninterrupted one."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def lines(self) -> int:
        if not self.path.exists():
            return 0
        with self.path.open(encoding="utf-8") as fh:
            return sum(1 for _ in fh)

    def truncate(self, n_lines: int) -> None:
        if not self.path.exists():
            return
        kept = self.path.read_text(encoding="utf-8").splitlines(keepends=True)[:n_lines]
        write_text(self.path, "".join(kept))

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(ln) for ln in self.path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def _save(fig: Any, ax: Any, ylabel: str, path: Path) -> str:
    import matplotlib.pyplot as plt

    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def plot_curves(records: list[dict[str, Any]], folder: str | Path, metric: str) -> list[str]:
    """Write loss.png (training loss per step) and eval.png (eval metric and loss per step)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    written = []
    train = [r for r in records if r.get("type") == "train"]
    evals = [r for r in records if r.get("type") == "eval"]
    if train:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
        if evals and all("loss" in r for r in evals):
            ax.plot([r["step"] for r in evals], [r["loss"] for r in evals], "o-", label="eval loss")
        written.append(_save(fig, ax, "loss", folder / "loss.png"))
    if evals and any(metric in r for r in evals):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        points = [(r["step"], r[metric]) for r in evals if metric in r]
        ax.plot(*zip(*points, strict=True), "o-", label=metric)
        written.append(_save(fig, ax, metric, folder / "eval.png"))
    return written


def plot_confusion(matrix: list[list[int]], labels: list[str], path: str | Path) -> str:
    """A confusion-matrix heat map (rows: gold label, columns: predicted), counts written in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(labels)
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * k, 1.0 + 0.55 * k))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(k), labels, rotation=45, ha="right")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    top = max(max(row) for row in matrix) if matrix else 0
    for i, row in enumerate(matrix):
        for j, n in enumerate(row):
            ax.text(j, i, str(n), ha="center", va="center", color="white" if n > top / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path).name


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    return str(value)


def write_model_card(folder: str | Path, cfg: Any, summary: dict[str, Any], data_lines: list[str],
                     auto_class: str) -> None:
    """A short README.md: what was trained, on what, with which settings, and how well it did."""
    t, d = cfg.train, cfg.data
    final, best = summary.get("final", {}), summary.get("best", {})
    rows = "\n".join(f"| {k} | {_fmt(best.get(k, ''))} | {_fmt(v)} |" for k, v in final.items()
                     if not isinstance(v, (dict, list)))
    lines = [
        f"# frugal run: {cfg.task} on {cfg.model.name}",
        "",
        f"Fine-tuned with frugal. Base model: `{cfg.model.name}`. Task: `{cfg.task}`.",
        "",
        "## Data",
        f"- train: `{d.train}` ({summary.get('train_examples', '?')} examples)",
        f"- eval: `{d.eval}` ({summary.get('eval_examples', '?')} examples)",
    ]
    lines += data_lines
    lines += [
        "",
        "## Settings",
        f"- epochs {t.epochs}, batch size {t.batch_size} x accumulation {t.grad_accum}, lr {t.lr} "
        f"({t.scheduler}, warmup {t.warmup_ratio}), weight decay {t.weight_decay}, seed {t.seed}",
        f"- max length {cfg.model.max_length}, length-grouped batches {t.group_by_length}, "
        f"frozen embeddings {t.freeze_embeddings}, frozen layers {t.freeze_layers}, "
        f"precision {summary.get('precision', t.precision)}, PEFT {cfg.peft.method}",
        f"- trainable parameters {summary.get('trainable_parameters', '?'):,} of "
        f"{summary.get('total_parameters', '?'):,}",
        f"- {summary.get('steps', '?')} optimizer steps in {summary.get('train_seconds', 0):.0f} s "
        f"({summary.get('train_examples_per_s', 0):.1f} examples/s)",
        "",
        "## Results (eval set)",
        f"Best model chosen by `{t.metric}` at step {summary.get('best_step', '?')}.",
        "",
        "| metric | best | final |",
        "|---|---|---|",
        rows,
        "",
        "## Use",
        "```python",
        f"from transformers import {auto_class}, AutoTokenizer",
        f"model = {auto_class}.from_pretrained('model')",
        "tokenizer = AutoTokenizer.from_pretrained('model')",
        "```",
        "or `frugal predict RUN_DIR --text \"...\"`.",
        "",
    ]
    write_text(Path(folder) / "README.md", "\n".join(lines))


def write_summary(folder: str | Path, summary: dict[str, Any]) -> None:
    write_json(Path(folder) / "metrics.json", summary)
