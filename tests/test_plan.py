"""The planner (frugal plan, train --auto), memory budgets, out-of-memory back-off, micro-batches and token-budget
batches, on tiny real models."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_config, sentiment_rows, write_tsv
from frugal_lm.config import ConfigError, format_size, load_config, parse_size


@pytest.mark.parametrize("value, n", [("4GB", 4 * 10**9), ("512MB", 512 * 10**6), ("2GiB", 2 * 2**30),
                                      ("1.5G", 15 * 10**8), ("1000", 1000), ("", 0), ("0", 0), (None, 0)])
def test_sizes_parse(value, n):
    assert parse_size(value) == n


@pytest.mark.parametrize("value", ["4 gigs", "-1GB", "GB", "4XB"])
def test_bad_sizes_name_the_key_and_the_forms(value):
    with pytest.raises(ConfigError, match=r"train.memory_budget: expected a memory size such as 4GB"):
        parse_size(value)


def test_a_bad_memory_budget_fails_when_the_config_loads():
    with pytest.raises(ConfigError, match="train.memory_budget"):
        load_config(sets=["train.memory_budget=lots"])
    assert format_size(1.5e9) == "1.5 GB"


@pytest.fixture(scope="module")
def long_files(tmp_path_factory):
    """A toy set with more rows, so batches of 16 split into several micro-batches."""
    folder = tmp_path_factory.mktemp("plan_data")
    return (write_tsv(folder / "train.tsv", sentiment_rows(96, seed=3)),
            write_tsv(folder / "dev.tsv", sentiment_rows(16, seed=4)))


@pytest.fixture(scope="module")
def planned(tiny_encoder_dir, long_files, tmp_path_factory):
    from frugal_lm.plan import plan

    cfg = make_config(tiny_encoder_dir, long_files, tmp_path_factory.mktemp("p") / "run", batch_size=16,
                      epochs=2, precision="fp32")
    return cfg, plan(cfg, memory=10**12, reps=1, kernel_probe=False)


def _by(result, method, micro=0, checkpointing=False):
    return next(c for c in result["candidates"] if c["method"] == method and c["micro_batch"] == micro
                and c["checkpointing"] == checkpointing)


def test_the_plan_counts_weights_gradients_and_optimizer_exactly(planned):
    cfg, result = planned
    full, lora = _by(result, "full fine-tune"), _by(result, "LoRA r=8")
    # fp32: 4 bytes per trainable value for its gradient, 8 for AdamW's two moments
    assert full["memory"]["gradients"] == 4 * full["trainable"]
    assert full["memory"]["optimizer"] == 8 * full["trainable"]
    assert lora["trainable"] < full["trainable"] / 2
    frozen = _by(result, "as configured")  # classify freezes the embeddings by default
    assert frozen["trainable"] < full["trainable"]
    assert result["base_memory"] > 0 and all(c["memory"]["weights"] >= full["memory"]["weights"] * 0.99
                                             for c in result["candidates"] if c["method"] != "LoRA r=8")


def test_a_tight_budget_plans_a_smaller_micro_batch_that_fits(planned):
    from frugal_lm.plan import plan

    cfg, result = planned
    whole = _by(result, "as configured")
    assert whole["micro_batch"] == 0 and whole["accumulation"] == 1
    # room for under half of the whole batch's activations: micro-batches of 8 rows or fewer
    budget = whole["memory"]["peak"] - whole["memory"]["activations"] * 0.6
    tight = plan(cfg, memory=int(budget), reps=1, kernel_probe=False, only_configured=True,
                 base_memory=result["base_memory"])
    chosen = tight["candidates"][tight["recommended"]]
    assert chosen["method"] == "as configured" and 0 < chosen["micro_batch"] <= 8
    assert chosen["accumulation"] == 16 // chosen["micro_batch"]
    assert chosen["memory"]["peak"] <= budget < whole["memory"]["peak"]
    assert chosen["memory"]["activations"] == pytest.approx(
        whole["memory"]["activations"] * chosen["micro_batch"] / 16, rel=0.01)
    assert "configured recipe" in tight["why"]


def test_activations_are_measured_and_scale_with_the_rows(tiny_encoder_dir, long_files, tmp_path):
    from contextlib import nullcontext

    from frugal_lm.engine.run import build_model, prepare_task
    from frugal_lm.plan import activation_bytes

    cfg = make_config(tiny_encoder_dir, long_files, tmp_path / "run", precision="fp32")
    task, resolved = prepare_task(cfg)
    model = build_model(cfg, task, resolved)
    collate = task.collator()
    width = 12
    rows = [e for e in task.train_set if len(e["input_ids"]) <= width]
    same = [dict(e, input_ids=(e["input_ids"] + [0] * width)[:width], attention_mask=[1] * width) for e in rows]
    eight, sixteen = (activation_bytes(model, task, collate(same[:n]), nullcontext) for n in (8, 16))
    assert eight > 0 and sixteen == pytest.approx(2 * eight, rel=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # measuring trains nothing


def test_the_recommendation_fits_its_memory_budget_with_the_least_change(planned):
    from frugal_lm.plan import Candidate, _recommend

    cfg, result = planned
    cands = [Candidate(**{k: v for k, v in c.items() if k != "fits"}) for c in result["candidates"]]
    configured = next(c for c in cands if c.method == "as configured")
    # below the configured recipe: the recipe of the lowest tier that fits, within the budget
    budget = configured.memory["peak"] - 1
    for c in cands:
        c.fits_memory = c.memory["peak"] <= budget
    fitting = [c for c in cands if c.fits_memory]
    assert fitting and configured not in fitting  # freezing a layer needs less than the configured recipe
    chosen, why = _recommend(cands, budget, None)
    pick = cands[chosen]
    assert pick.memory["peak"] <= budget and pick.tier == min(c.tier for c in fitting)
    assert "the configured recipe does not fit" in why
    for c in cands:
        c.fits_memory = False
    chosen, why = _recommend(cands, 1, None)
    assert chosen is None and "nothing fits 1 B: the smallest candidate needs" in why


def test_a_time_budget_that_nothing_meets_sets_the_budget_in_the_config(planned):
    from frugal_lm.plan import Candidate, _recommend, apply_plan

    cfg, result = planned
    cands = [Candidate(**{k: v for k, v in c.items() if k != "fits"}) for c in result["candidates"]]
    for c in cands:  # none gets through one epoch in 1 s: their order kept
        c.run_s += 2.0
        c.epoch_s, c.fits_time = c.run_s / 2, False
    chosen, why = _recommend(cands, 10**12, 1.0)
    assert cands[chosen].run_s == min(c.run_s for c in cands) and "nothing finishes its epochs within 1s" in why
    out = apply_plan(cfg, {**result, "recommended": chosen, "settings": {**cands[chosen].settings(),
                                                                        "train.time_budget": "1s"}})
    assert out.train.time_budget == "1s" and out.train.max_minutes == pytest.approx(1 / 60)


def test_plan_cli_writes_a_config_that_loads(tiny_encoder_dir, sentiment_files, tmp_path):
    from typer.testing import CliRunner

    from frugal_lm.cli import _register_plugins, app

    _register_plugins()
    cfg = make_config(tiny_encoder_dir, sentiment_files, tmp_path / "run", precision="fp32")
    (tmp_path / "c.yaml").write_text(cfg.to_yaml())
    res = CliRunner().invoke(app, ["plan", str(tmp_path / "c.yaml"), "--memory", "100GB", "--reps", "1",
                                   "--write", str(tmp_path / "planned.yaml"), "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    chosen = result["candidates"][result["recommended"]]
    assert chosen["method"] == "as configured" and chosen["fits"]
    written = load_config(tmp_path / "planned.yaml")
    assert written.train.micro_batch == chosen["micro_batch"]
    assert written.train.gradient_checkpointing == chosen["checkpointing"]
    # a budget nothing fits: a clear error, exit 2
    res = CliRunner().invoke(app, ["plan", str(tmp_path / "c.yaml"), "--memory", "1MB", "--reps", "1"])
    assert res.exit_code != 0 and "nothing fits 1 MB" in str(res.exception)


def test_train_auto_records_the_plan_beside_the_measured_run(tiny_encoder_dir, sentiment_files, tmp_path):
    import subprocess
    import sys

    cfg = make_config(tiny_encoder_dir, sentiment_files, tmp_path / "run", precision="fp32", epochs=1)
    (tmp_path / "c.yaml").write_text(cfg.to_yaml())
    res = subprocess.run([sys.executable, "-m", "frugal_lm", "train", str(tmp_path / "c.yaml"), "--auto", "-q",
                          "--memory-budget", "50GB"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "recommended:" in res.stderr
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert summary["plan"]["recipe"] == "as configured"
    assert summary["plan"]["predicted_peak_memory_bytes"] > 0 and summary["peak_memory_bytes"] > 0
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["memory_budget"] == 50 * 10**9
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert saved.train.memory_budget == "50GB"


def test_a_memory_budget_chooses_a_smaller_micro_batch(tiny_encoder_dir, long_files, tmp_path):
    from contextlib import nullcontext

    from frugal_lm.engine.run import build_model, prepare_task
    from frugal_lm.plan import activation_bytes, fit_memory, rss_bytes, static_bytes

    cfg = make_config(tiny_encoder_dir, long_files, tmp_path / "run", batch_size=16, precision="fp32")
    task, resolved = prepare_task(cfg)
    model = build_model(cfg, task, resolved)
    lines = []
    cfg.train.memory_budget = "1000GB"
    assert fit_memory(cfg, task, model, nullcontext, lines.append, now=10**6, probe=False) == (0, False)
    static = static_bytes(model)
    now = rss_bytes()  # the process's memory, fixed for the test (it moves by more than a tiny model's needs)
    fixed = now + static["gradients"] + static["optimizer"]
    from frugal_lm.data.batching import EpochBatchSampler

    order = EpochBatchSampler(task.lengths(task.train_set), 16, seed=0).batches(0)
    acts = activation_bytes(model, task, task.collator()([task.train_set[i] for i in order[0]]), nullcontext)
    cfg.train.memory_budget = str(int(fixed + acts * 0.6))  # room for about half the batch's activations
    micro, checkpointing = fit_memory(cfg, task, model, nullcontext, lines.append, now=now, probe=False)
    assert 0 < micro < 16 and not checkpointing and "micro-batch" in lines[-1]
    cfg.train.memory_budget = "1MB"
    with pytest.raises(Exception, match=r"train.memory_budget: 1 MB is too little"):
        fit_memory(cfg, task, model, nullcontext, lines.append, now=now, probe=False)


def test_split_batches_keep_every_row_and_trim_padding():
    from frugal_lm.engine.trainer import split_batch

    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 0, 0], [5, 0, 0, 0]])
    batch = {"input_ids": ids, "attention_mask": (ids != 0).long(), "labels": torch.tensor([1, 0, 1])}
    pieces = split_batch(batch, 2)
    assert [p["input_ids"].shape for p in pieces] == [(2, 4), (1, 1)]
    assert torch.equal(torch.cat([p["labels"] for p in pieces]), batch["labels"])
    assert torch.equal(pieces[1]["input_ids"], torch.tensor([[5]]))
    assert split_batch(batch, 0) == [batch] and split_batch(batch, 3) == [batch]


class _OomOver:
    """Wraps a task's loss: a batch of more than `rows` rows raises CUDA's out-of-memory error, as a GPU would."""

    def __init__(self, task, rows):
        self.task, self.rows, self.raised = task, rows, 0
        self._loss = task.loss

    def __call__(self, model, batch):
        if batch["input_ids"].shape[0] > self.rows:
            self.raised += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return self._loss(model, batch)


def _train_steps(model_dir, files, out, micro, oom_rows=None, steps=6):
    from frugal_lm.engine.run import _build
    from frugal_lm.engine.trainer import Trainer

    cfg = make_config(model_dir, files, out, batch_size=8, precision="fp32", micro_batch=micro, max_steps=steps,
                      eval_every=0)
    torch.manual_seed(0)
    task, model = _build(cfg)
    trap = None
    if oom_rows is not None:
        trap = _OomOver(task, oom_rows)
        task.loss = trap
    out.mkdir(parents=True)
    trainer = Trainer(model, task, task.train_set, task.collator(), cfg.train, out)
    trainer.fit(has_eval=False, progress=False)
    return trainer, trap


def test_out_of_memory_halves_the_micro_batch_and_retries_the_same_step(tiny_encoder_nodrop_dir, long_files,
                                                                       tmp_path):
    trainer, trap = _train_steps(tiny_encoder_nodrop_dir, long_files, tmp_path / "a", micro=0, oom_rows=4)
    # batches of 8 rows fail, 4 fit: one back-off, at the first step, and micro-batches of 4 from then on
    assert trap.raised == 1 and trainer.micro_batch == 4 and trainer.state.back_offs == 1
    assert trainer.state.step == 6
    log = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in log if r["type"] == "back_off"] == [{"type": "back_off", "step": 1, "micro_batch": 4}]
    # the same examples and gradients as a run that used micro-batches of 4 from the start: the failed
    # attempt's partial gradients were dropped and no example was skipped
    reference, _ = _train_steps(tiny_encoder_nodrop_dir, long_files, tmp_path / "b", micro=4)
    got, want = trainer.model.state_dict(), reference.model.state_dict()
    assert all(torch.allclose(got[k], want[k], atol=1e-6) for k in want)
    whole, _ = _train_steps(tiny_encoder_nodrop_dir, long_files, tmp_path / "c", micro=0)
    assert all(torch.allclose(whole.model.state_dict()[k], want[k], atol=1e-5) for k in want)  # same gradients


def test_out_of_memory_at_one_row_is_a_clear_error(tiny_encoder_nodrop_dir, long_files, tmp_path):
    from frugal_lm.errors import FrugalError

    with pytest.raises(FrugalError, match=r"step 1: out of memory .*a single row does not fit: lower "
                                          r"train.batch_size"):
        _train_steps(tiny_encoder_nodrop_dir, long_files, tmp_path / "a", micro=0, oom_rows=0)


def test_token_budget_batches_hold_at_most_n_tokens_and_every_example_once():
    import random

    from frugal_lm.data.batching import EpochBatchSampler

    rng = random.Random(0)
    lengths = [rng.randint(3, 60) for _ in range(500)]
    sampler = EpochBatchSampler(lengths, batch_size=32, seed=1, max_tokens=1024)
    for epoch in (0, 1):
        batches = sampler.batches(epoch)
        assert sorted(i for b in batches for i in b) == list(range(500))
        assert all(len(b) * max(lengths[i] for i in b) <= 1024 for b in batches)
        assert sampler.batches(epoch) == batches  # a pure function of (seed, epoch): resume stays exact
    rows = [len(b) for b in sampler.batches(0)]
    assert max(rows) > 32  # rows are not capped at batch_size: short sentences fill a batch's tokens
    assert sampler.batches(0) != sampler.batches(1)


def test_batch_tokens_trains_and_rejects_a_balanced_sampler(tiny_encoder_dir, sentiment_files, tmp_path):
    from frugal_lm.engine.run import train

    cfg = make_config(tiny_encoder_dir, sentiment_files, tmp_path / "run", batch_tokens=64, precision="fp32",
                      epochs=1)
    summary = train(cfg, progress=False)
    assert summary["stopped"] == "completed" and summary["steps"] >= 48 * 5 // 64
    with pytest.raises(ConfigError, match="train.batch_tokens and train.balanced_sampler"):
        load_config(sets=["train.batch_tokens=512", "train.balanced_sampler=true"])


def test_the_plan_models_the_prefix_cache_of_frozen_layers(planned):
    """A recipe with frozen layers comes with and without train.cache_prefix, at one tier; the cached one's
    later epochs are timed with a real cache, and its memory holds the cache: hidden states (fp32, 32 wide)
    plus the keys (input ids, int64; token types too where the tokenizer gives them) of every training and
    evaluation token."""
    cfg, result = planned
    plain = _by(result, "frozen embeddings + 1 layer")
    cached = _by(result, "frozen embeddings + 1 layer + prefix cache")
    assert cached["tier"] == plain["tier"] and cached["changes"]["train.cache_prefix"] is True
    assert "prefix_cache" not in plain["memory"] and plain["cached_epoch_s"] == 0
    from frugal_lm.engine.run import prepare_task

    task, _ = prepare_task(cfg)
    tokens = sum(task.lengths(task.train_set)) + sum(task.lengths(task.eval_set))  # evaluations pass it too
    assert task.eval_set
    keys = 2 if "token_type_ids" in task.collator()([task.train_set[0]]) else 1
    assert cached["memory"]["prefix_cache"] == tokens * (32 * 4 + keys * 8)
    assert cached["memory"]["peak"] == sum(v for k, v in cached["memory"].items() if k != "peak")
    assert cached["cached_epoch_s"] > 0
    assert cached["run_s"] == pytest.approx(cached["epoch_s"] + cached["cached_epoch_s"] * (result["epochs"] - 1))
    # recipes that train the embeddings or every layer have nothing to cache
    assert all(not c["changes"].get("train.cache_prefix") for c in result["candidates"]
               if not c["changes"].get("train.freeze_layers"))


def test_a_time_budget_cuts_the_configured_recipe_before_it_freezes_layers_to_finish(planned):
    """Under a time budget the configured recipe runs to the budget when it gets through an epoch in it; when
    it does not, the cached recipe that finishes within the budget is recommended."""
    from frugal_lm.plan import Candidate, _recommend, apply_plan

    cfg, result = planned
    cands = [Candidate(**{k: v for k, v in c.items() if k != "fits"}) for c in result["candidates"]]
    cached = next(c for c in cands if c.method.endswith("prefix cache") and not c.checkpointing)
    configured = next(c for c in cands if c.method == "as configured" and not c.checkpointing)
    budget = 1.0

    def times(configured_epoch: float) -> None:
        for c in cands:  # 2 epochs; the cache's later epoch is what brings it under the budget
            c.epoch_s, c.run_s = (0.6, 0.9) if c is cached else (configured_epoch, 2 * configured_epoch)
            c.fits_time = c.run_s <= budget

    times(0.8)  # the configured recipe gets through 1.25 of its 2 epochs
    chosen, why = _recommend(cands, 10**12, budget)
    assert cands[chosen] is configured and "to the time budget" in why
    times(1.5)  # not one epoch: the recipe that finishes
    chosen, why = _recommend(cands, 10**12, budget)
    assert cands[chosen] is cached and "does not fit" in why
    out = apply_plan(cfg, {**result, "recommended": chosen, "settings": cached.settings()})
    assert out.train.cache_prefix and out.train.freeze_layers == 1 and out.train.freeze_embeddings


def test_the_cache_is_planned_within_its_share_of_the_memory_budget(tiny_encoder_dir, long_files, tmp_path):
    """The cache gets a quarter of the memory budget; past it the uncached rows take the first epoch's time."""
    from frugal_lm.plan import plan

    cfg = make_config(tiny_encoder_dir, long_files, tmp_path / "run", batch_size=16, epochs=2, precision="fp32",
                      freeze_embeddings=True, freeze_layers=1)
    memory = 40_000
    result = plan(cfg, memory=memory, seconds=3600, reps=1, kernel_probe=False, base_memory=0,
                  for_auto=True)
    cached = next(c for c in result["candidates"] if c["method"] == "as configured, prefix cache on")
    assert cached["tier"] == 0 and cached["memory"]["prefix_cache"] == memory // 4
    # train --auto: the budget started with planning, so what planning took is not left for training
    assert 3600 - result["plan_seconds"] - 1 <= result["time_left"] < 3600
    assert all(c["fits_time"] == (c["run_s"] <= result["time_left"]) for c in result["candidates"])


def test_planning_for_auto_stops_at_the_configured_recipe_when_it_is_the_answer(tiny_encoder_dir, long_files,
                                                                                 tmp_path):
    from frugal_lm.plan import plan

    cfg = make_config(tiny_encoder_dir, long_files, tmp_path / "run", batch_size=16, epochs=2, precision="fp32")
    quick = plan(cfg, memory=10**12, reps=1, kernel_probe=False, base_memory=0, for_auto=True)
    assert {c["method"] for c in quick["candidates"]} == {"as configured"}
    assert quick["candidates"][quick["recommended"]]["method"] == "as configured"
    # whole batches do not fit: a smaller micro-batch of the configured recipe does, so planning stops there
    need = quick["candidates"][0]["memory"]["peak"]
    tight = plan(cfg, memory=need - 1, reps=1, kernel_probe=False, base_memory=0, for_auto=True)
    chosen = tight["candidates"][tight["recommended"]]
    assert chosen["method"].startswith("as configured") and chosen["memory"]["peak"] <= need - 1
    assert chosen["micro_batch"] or chosen["checkpointing"]
    assert {c["method"] for c in tight["candidates"]} <= {"as configured", "as configured + checkpointing"}
    # nothing of the configured recipe fits: the other recipes are measured
    none = plan(cfg, memory=1, reps=1, kernel_probe=False, base_memory=0, for_auto=True)
    assert none["recommended"] is None
    assert {"full fine-tune", "frozen embeddings + 1 layer + prefix cache"} <= {c["method"] for c in none["candidates"]}


def test_a_few_shot_config_is_planned_as_its_contrastive_stage_trains(tiny_encoder_dir, long_files, tmp_path):
    """The task's recipe (Task.train_overrides) is what the run trains with, so it is what gets planned: the
    stage's steps and class-balanced batches of 32, not the configured 2 epochs of 16; and the copy of the
    starting weights the stage keeps is in the predicted peak."""
    from collections import Counter

    from frugal_lm.engine.run import prepare_task, task_train_config
    from frugal_lm.plan import first_epoch, plan

    cfg = make_config(tiny_encoder_dir, long_files, tmp_path / "run", batch_size=16, epochs=2, precision="fp32")
    cfg.options.method, cfg.options.fewshot_steps = "fewshot", 10
    result = plan(cfg, memory=10**12, reps=1, kernel_probe=False, only_configured=True)
    assert result["steps_per_epoch"] == 3  # 96 rows in batches of 32
    assert result["epochs"] * result["steps_per_epoch"] == pytest.approx(10)
    task, _ = prepare_task(cfg)
    _, order = first_epoch(task, task_train_config(cfg, task))
    labels = [e["labels"] for e in task.train_set]
    assert [sorted(Counter(labels[i] for i in b).values()) for b in order] == [[16, 16]] * 3
    # the copy of the start that the extrapolation keeps (classify.fewshot_extrapolate, 1.3 by default) is in
    # the predicted peak: 4 bytes per trainable body weight (the head is not the body's)
    from frugal_lm.engine.run import _build
    from frugal_lm.tasks import fewshot

    _, model = _build(cfg)
    body = sum(p.numel() for p in fewshot.body(model).parameters() if p.requires_grad)
    mem = result["candidates"][0]["memory"]
    assert mem["task_state"] == 4 * body
    assert mem["peak"] == sum(v for k, v in mem.items() if k != "peak")
    cfg.options.fewshot_extrapolate = 1.0  # nothing kept: nothing counted
    plain = plan(cfg, memory=10**12, reps=1, kernel_probe=False, only_configured=True)
    assert "task_state" not in plain["candidates"][0]["memory"]


def test_the_probe_evaluates_as_the_run_does(tiny_encoder_dir, long_files, tmp_path, monkeypatch):
    """A run evaluates at least once after training; the probe does too, on rows spread over the eval set."""
    from frugal_lm import plan as planner
    from frugal_lm.tasks.classify import ClassifyTask

    seen: list[list[str]] = []
    evaluate = ClassifyTask.evaluate

    def spy(self, model, records=None, device=None):
        seen.append([r.text for r in records])
        return evaluate(self, model, records=records, device=device)

    monkeypatch.setattr(ClassifyTask, "evaluate", spy)
    monkeypatch.setattr(planner, "EVAL_PROBE_ROWS", 5)
    cfg = make_config(tiny_encoder_dir, long_files, tmp_path / "run", batch_size=16, epochs=1, precision="fp32")
    measured = planner.probe_peak(cfg)
    dev = [line.split("\t")[0] for line in long_files[1].read_text().splitlines()[1:]]
    assert seen == [dev[::4]]  # 16 rows, at most 5: every 4th
    assert measured["evaluation"] >= 0 and measured["peak"] > 0
    cfg.data.eval = None
    seen.clear()
    assert planner.probe_peak(cfg)["evaluation"] == 0 and seen == []


def test_a_probed_peak_adds_what_the_evaluation_and_the_whole_cache_take():
    from frugal_lm.plan import with_probe

    parts = {"base": 100, "weights": 40, "gradients": 30, "optimizer": 60, "activations": 20, "kernels": 5,
             "prefix_cache": 50, "peak": 305}
    out = with_probe(parts, {"peak": 300, "evaluation": 25})
    assert out["kernels"] == 300 - 250  # the probe's training peak over the parts it covers
    assert out["peak"] == 300 + 25 + 50 and out["probe"] == 300 and out["evaluation"] == 25
    assert out["peak"] == sum(v for k, v in out.items() if k not in ("peak", "probe"))
    again = with_probe(out, {"peak": 280})  # probed twice: nothing counted twice
    assert again["peak"] == 280 + 0 + 50
