"""``frugal cv`` and ``frugal learning-curve``: honest small-data evaluation.

With dozens of labelled examples one accuracy number is noise, so both commands train many times:
    cv              stratified k-fold x repeated seeds; mean ± std of every metric, a spread plot
    learning-curve  n examples per class (8, 16, ..., all) x seeds; the metric against n, mean and band

Held-out data is never used to pick a checkpoint: each run trains without an eval file and is scored once
at the end, so the numbers are not optimistic. Every run is an ordinary run folder (under OUTPUT/runs/);
their model weights are deleted after scoring unless --keep-models.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import typer

from frugal_lm.errors import ConfigError, FrugalError


# -- sampling (pure functions, no torch) ------------------------------------------------------
def by_label(labels: list[Any]) -> dict[Any, list[int]]:
    """Indices of each label, in first-seen label order."""
    groups: dict[Any, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        groups[label].append(i)
    return dict(groups)


def stratified_folds(labels: list[Any], k: int, seed: int) -> list[list[int]]:
    """Split indices into k disjoint folds, each holding every label in proportion (as scikit-learn's
    StratifiedKFold with shuffling): each label's shuffled indices are dealt round-robin, continuing
    where the previous label stopped so fold sizes differ by at most one.

    Raises:
        FrugalError: k < 2, or a label with fewer than k examples (a fold would lack it).
    """
    if k < 2:
        raise FrugalError(f"--folds: need at least 2 folds, got {k}")
    folds: list[list[int]] = [[] for _ in range(k)]
    rng = random.Random(seed)
    offset = 0
    for label, idx in sorted(by_label(labels).items(), key=lambda kv: str(kv[0])):
        if len(idx) < k:
            raise FrugalError(f"label {label!r} has {len(idx)} examples, fewer than --folds {k}: "
                              "every fold needs every label; use fewer folds")
        idx = idx[:]
        rng.shuffle(idx)
        for j, i in enumerate(idx):
            folds[(offset + j) % k].append(i)
        offset += len(idx)
    return [sorted(f) for f in folds]


def sample_per_class(labels: list[Any], n: int | None, seed: int) -> list[int]:
    """`n` random indices of every label (all of a label that has fewer; all when n is None), sorted.

    The sample of seed s at size n is a prefix of the sample at any larger size, so a learning curve adds
    examples to the same runs rather than drawing new ones.
    """
    rng = random.Random(seed)
    chosen: list[int] = []
    for _, idx in sorted(by_label(labels).items(), key=lambda kv: str(kv[0])):
        idx = idx[:]
        rng.shuffle(idx)
        chosen.extend(idx if n is None else idx[:n])
    return sorted(chosen)


def parse_sizes(text: str) -> list[int | None]:
    """``"8,16,all"`` -> ``[8, 16, None]`` (None: every example), increasing, no repeats."""
    sizes: list[int | None] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part.lower() == "all":
            sizes.append(None)
            continue
        try:
            value = int(part)
        except ValueError:
            raise FrugalError(f"--sizes: expected integers or 'all' such as 8,16,all; got {part!r}") from None
        if value < 1:
            raise FrugalError(f"--sizes: sizes must be at least 1, got {value}")
        sizes.append(value)
    if not sizes:
        raise FrugalError("--sizes: give at least one size, e.g. 8,16,32,all")
    numbers = [s for s in sizes if s is not None]
    if numbers != sorted(set(numbers)) or sizes.count(None) > 1 or (None in sizes and sizes[-1] is not None):
        raise FrugalError(f"--sizes: sizes must increase without repeats ('all' last), got {text!r}")
    return sizes


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean, std (sample, ddof=1), min, max and n of every numeric metric over runs; nested dicts
    (per-class scores) are flattened to dotted keys."""
    values: dict[str, list[float]] = defaultdict(list)

    def walk(d: dict[str, Any], prefix: str) -> None:
        for key, value in d.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                values[f"{prefix}{key}"].append(float(value))

    for row in rows:
        walk(row, "")
    out = {}
    for key, xs in values.items():
        mean = sum(xs) / len(xs)
        std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
        out[key] = {"mean": mean, "std": std, "min": min(xs), "max": max(xs), "n": len(xs)}
    return out


# -- running many trainings --------------------------------------------------------------------
def _records_jsonl(path: Path, records: list[Any]) -> Path:
    lines = []
    for r in records:
        row = {"text": r.text, "label": r.label}
        if r.text_pair is not None:
            row["text_pair"] = r.text_pair
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    from frugal_lm.io import write_text

    write_text(path, "".join(lines))
    return path


def _read_train(cfg: Any, need_eval: bool = False) -> tuple[Any, list[Any], list[Any]]:
    """The task, its training records and (when wanted) eval records, checked as `frugal train` would."""
    from frugal_lm.tasks import get_task

    task = get_task(cfg.task)(cfg)
    if need_eval and not cfg.data.eval:
        raise ConfigError("learning-curve: the config needs data.eval (the fixed set every size is scored on)")
    train, evaluation = task.read_data()
    if not all(getattr(r, "label", None) is not None for r in train):
        raise FrugalError(f"{cfg.data.train}: cv and learning-curve need one label per example (task classify)")
    return task, train, evaluation


def _train_and_score(cfg: Any, train: list[Any], heldout: list[Any], folder: Path, seed: int,
                     keep: bool) -> dict[str, Any]:
    """Train on `train` (no eval data: nothing is selected on the held-out set), then score `heldout`."""
    import copy

    from frugal_lm.engine.run import load_run
    from frugal_lm.engine.run import train as run_train
    from frugal_lm.io import write_json

    folder.mkdir(parents=True, exist_ok=True)
    run_cfg = copy.deepcopy(cfg)
    run_cfg.output = str(folder / "run")
    d = run_cfg.data
    d.train, d.eval, d.format = str(_records_jsonl(folder / "train.jsonl", train)), None, "jsonl"
    d.text_column, d.text_pair_column, d.label_column = "text", "text_pair", "label"
    run_cfg.train.seed = seed
    run_train(run_cfg, overwrite=True, progress=False)
    _, task, model = load_run(run_cfg.output)
    metrics = task.evaluate(model, heldout)
    summary = json.loads((folder / "run" / "metrics.json").read_text(encoding="utf-8"))
    metrics["train_seconds"] = summary.get("train_seconds", 0.0)
    write_json(folder / "heldout.json", metrics)
    if not keep:  # weights are the bulk of a run folder; the scores and logs stay
        for name in ("model", "adapter", "checkpoint"):
            shutil.rmtree(folder / "run" / name, ignore_errors=True)
    return metrics


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics without the confusion matrix (a list, not a score)."""
    return {k: v for k, v in metrics.items() if not isinstance(v, list)}


def run_cv(cfg: Any, folds: int, seeds: int, output: Path, keep: bool = False) -> dict[str, Any]:
    """Stratified k-fold cross-validation repeated over seeds (each seed: new folds and a new training seed).

    Returns:
        {"runs": [{"seed", "fold", "metrics"}], "summary": {metric: {mean, std, min, max, n}}, ...},
        also written to OUTPUT/cv.json with the spread plot OUTPUT/cv.png.
    """
    from frugal_lm.io import write_json

    _, records, _ = _read_train(cfg)
    labels = [r.label for r in records]
    runs = []
    for seed in range(seeds):
        parts = stratified_folds(labels, folds, seed=cfg.train.seed + seed)
        for k, heldout_idx in enumerate(parts):
            held = set(heldout_idx)
            train = [r for i, r in enumerate(records) if i not in held]
            heldout = [records[i] for i in heldout_idx]
            metrics = _train_and_score(cfg, train, heldout, output / "runs" / f"seed{seed}_fold{k}",
                                       cfg.train.seed + seed, keep)
            runs.append({"seed": seed, "fold": k, "train": len(train), "heldout": len(heldout),
                         "metrics": _scalars(metrics)})
            _progress(f"cv seed {seed} fold {k + 1}/{folds}", cfg.train.metric, metrics)
    result = {"config": cfg.to_dict(), "folds": folds, "seeds": seeds, "examples": len(records),
              "metric": cfg.train.metric, "runs": runs, "summary": summarize([r["metrics"] for r in runs])}
    write_json(output / "cv.json", result)
    plot_spread(runs, cfg.train.metric, output / "cv.png")
    return result


def run_learning_curve(cfg: Any, sizes: list[int | None], seeds: int, output: Path,
                       keep: bool = False) -> dict[str, Any]:
    """Train on n examples per class for each size and seed; score each on the config's eval set.

    Returns:
        {"points": [{"size", "per_class", "runs", "mean", "std"}], ...}, also written to
        OUTPUT/learning_curve.json with OUTPUT/learning_curve.png.
    """
    from frugal_lm.io import write_json

    _, records, evaluation = _read_train(cfg, need_eval=True)
    labels = [r.label for r in records]
    metric = cfg.train.metric
    points = []
    for size in sizes:
        runs = []
        for seed in range(seeds):
            chosen = sample_per_class(labels, size, seed=cfg.train.seed + seed)
            train = [records[i] for i in chosen]
            name = f"n{size if size is not None else 'all'}_seed{seed}"
            metrics = _train_and_score(cfg, train, evaluation, output / "runs" / name, cfg.train.seed + seed,
                                       keep)
            runs.append({"seed": seed, "train": len(train), "metrics": _scalars(metrics)})
            _progress(f"learning-curve n={size or 'all'} seed {seed}", metric, metrics)
        values = [r["metrics"][metric] for r in runs]
        stats = summarize([{metric: v} for v in values])[metric]
        per_class = sum(r["train"] for r in runs) / len(runs) / max(1, len(set(labels)))
        points.append({"size": size if size is not None else "all", "per_class": per_class,
                       "runs": runs, "mean": stats["mean"], "std": stats["std"]})
    result = {"config": cfg.to_dict(), "metric": metric, "seeds": seeds, "eval_examples": len(evaluation),
              "points": points}
    write_json(output / "learning_curve.json", result)
    plot_learning_curve(points, metric, output / "learning_curve.png")
    return result


def _progress(what: str, metric: str, metrics: dict[str, Any]) -> None:
    print(f"{what}: {metric} {metrics.get(metric, float('nan')):.4f} "
          f"({metrics.get('train_seconds', 0.0):.0f} s training)", file=sys.stderr)


# -- plots ---------------------------------------------------------------------------------------
def plot_spread(runs: list[dict[str, Any]], metric: str, path: Path) -> None:
    """One panel per top-level score (the selection metric first): every run as a dot, mean ± std as a bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k, v in runs[0]["metrics"].items() if isinstance(v, (int, float)) and k != "train_seconds"]
    names.sort(key=lambda k: (k != metric, k))
    fig, axes = plt.subplots(1, len(names), figsize=(2.2 * len(names) + 0.5, 3.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        values = [r["metrics"][name] for r in runs]
        stats = summarize([{name: v} for v in values])[name]
        jitter = [0.08 * ((i % 5) - 2) for i in range(len(values))]
        ax.scatter(jitter, values, alpha=0.6, s=18)
        ax.errorbar([0.35], [stats["mean"]], yerr=[stats["std"]], fmt="o", color="black", capsize=4)
        ax.set_xlim(-0.5, 0.7)
        ax.set_xticks([])
        ax.set_title(f"{name}\n{stats['mean']:.3f} ± {stats['std']:.3f}", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_learning_curve(points: list[dict[str, Any]], metric: str, path: Path) -> None:
    """The metric against examples per class (log scale): mean line, ± std band, each seed as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [p["per_class"] for p in points]
    means = [p["mean"] for p in points]
    stds = [p["std"] for p in points]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.fill_between(xs, [m - s for m, s in zip(means, stds, strict=True)],
                    [m + s for m, s in zip(means, stds, strict=True)], alpha=0.25, label="± std")
    ax.plot(xs, means, "o-", label=f"mean {metric}")
    for p in points:
        ax.scatter([p["per_class"]] * len(p["runs"]), [r["metrics"][metric] for r in p["runs"]], s=10,
                   color="gray", alpha=0.6)
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(p["size"]) for p in points])
    ax.set_xlabel("training examples per class")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- commands ------------------------------------------------------------------------------------
def register(app: typer.Typer) -> None:
    """Add `cv` and `learning-curve` to `app`."""

    @app.command("cv")
    def cv_cmd(
        config: Path = typer.Argument(..., help="YAML run config (its data.train is split into folds)"),
        folds: int = typer.Option(5, "--folds", help="stratified folds"),
        seeds: int = typer.Option(3, "--seeds", help="repetitions, each with new folds and a new seed"),
        output: Path | None = typer.Option(None, "--output", "-o", help="folder (default: the config's output + '-cv')"),
        keep_models: bool = typer.Option(False, "--keep-models", help="keep every run's model weights"),
        set_: list[str] | None = typer.Option(None, "--set", help="override config keys, as for train"),
    ) -> None:
        """Stratified k-fold cross-validation x seeds: mean ± std of every metric, cv.json and cv.png."""
        from frugal_lm.config import load_config

        cfg = load_config(config, sets=set_ or [])
        out = output or Path(f"{cfg.output}-cv")
        result = run_cv(cfg, folds, seeds, out, keep_models)
        for name, s in result["summary"].items():
            if "." not in name:
                typer.echo(f"{name:<16} {s['mean']:.4f} ± {s['std']:.4f}  (min {s['min']:.4f}, max {s['max']:.4f}, n {s['n']})")
        typer.echo(f"wrote {out / 'cv.json'} and {out / 'cv.png'}")

    @app.command("learning-curve")
    def learning_curve_cmd(
        config: Path = typer.Argument(..., help="YAML run config with data.train and data.eval"),
        sizes: str = typer.Option("8,16,32,64,all", "--sizes", help="examples per class, increasing; 'all' last"),
        seeds: int = typer.Option(5, "--seeds", help="samples (and training seeds) per size"),
        output: Path | None = typer.Option(None, "--output", "-o", help="folder (default: the config's output + '-curve')"),
        keep_models: bool = typer.Option(False, "--keep-models", help="keep every run's model weights"),
        set_: list[str] | None = typer.Option(None, "--set", help="override config keys, as for train"),
    ) -> None:
        """Train at growing examples per class: the metric's mean and spread per size, JSON and PNG."""
        from frugal_lm.config import load_config

        cfg = load_config(config, sets=set_ or [])
        out = output or Path(f"{cfg.output}-curve")
        result = run_learning_curve(cfg, parse_sizes(sizes), seeds, out, keep_models)
        for p in result["points"]:
            typer.echo(f"n={p['size']!s:<6} {result['metric']} {p['mean']:.4f} ± {p['std']:.4f}")
        typer.echo(f"wrote {out / 'learning_curve.json'} and {out / 'learning_curve.png'}")
