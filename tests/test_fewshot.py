"""Few-shot classification: balanced pairs and batches, the head on frozen features, class weights, the
auto choice of method, and a few-shot run folder that eval / predict use like any other."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from conftest import make_config
from frugal_lm.data.batching import EpochBatchSampler
from frugal_lm.errors import ConfigError
from frugal_lm.tasks import fewshot
from frugal_lm.tasks.labels import class_weight_vector


def test_balanced_sampler_gives_every_class_equally_in_every_batch():
    labels = [0] * 6 + [1] * 2 + [2] * 4  # imbalanced: 6 / 2 / 4
    sampler = EpochBatchSampler([5] * len(labels), batch_size=6, seed=3, labels=labels)
    for epoch in range(3):
        batches = sampler.batches(epoch)
        assert len(batches) == 3  # 3 classes x 6 (the largest class) / 6
        for batch in batches:
            assert Counter(labels[i] for i in batch) == {0: 2, 1: 2, 2: 2}
        seen = [i for b in batches for i in b]
        assert set(seen) == set(range(12))  # every example, minority ones repeated
        assert sorted(Counter(seen[i] for i in range(len(seen)) if labels[seen[i]] == 0).values()) == [1] * 6
    assert sampler.batches(1) != sampler.batches(2)  # a new order each epoch, ...
    assert sampler.batches(1) == EpochBatchSampler([5] * 12, 6, seed=3, labels=labels).batches(1)  # ... fixed by seed


def test_pair_weights_balance_positive_and_negative_pairs():
    labels = torch.tensor([0, 0, 0, 1, 2])  # 3 positive pairs, 7 negative ones
    target, weight = fewshot.pair_weights(labels)
    upper = torch.triu(torch.ones(5, 5), diagonal=1).bool()
    assert float(weight[~upper].abs().sum()) == 0.0  # each unordered pair once, no self-pairs
    pos = (target == 1) & upper
    neg = (target == 0) & upper
    assert int(pos.sum()) == 3 and int(neg.sum()) == 7
    assert float(weight[pos].sum()) == pytest.approx(0.5) and float(weight[neg].sum()) == pytest.approx(0.5)
    assert torch.allclose(weight[pos], torch.full((3,), 1 / 6)) and torch.allclose(weight[neg], torch.full((7,), 1 / 14))
    _, only_neg = fewshot.pair_weights(torch.tensor([0, 1, 2]))
    assert float(only_neg.sum()) == pytest.approx(1.0)  # one pair class: it carries the whole weight


def test_pair_loss_is_the_weighted_cosine_error(tiny_encoder_nodrop_dir):
    """pair_loss equals sum_w (cos(u, v) - same)^2, computed here by hand from the embeddings."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_encoder_nodrop_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_encoder_nodrop_dir, num_labels=2).eval()
    batch = dict(tok(["good movie", "great film", "bad plot", "dull story"], padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor([1, 1, 0, 0])
    with torch.no_grad():
        emb = fewshot.embed(model, batch)
        loss = float(fewshot.pair_loss(model, batch))
    assert torch.allclose(emb.norm(dim=-1), torch.ones(4), atol=1e-5)
    cos = (emb @ emb.T).numpy()
    pos = [(0, 1), (2, 3)]
    neg = [(0, 2), (0, 3), (1, 2), (1, 3)]
    expected = 0.5 * np.mean([(cos[i, j] - 1) ** 2 for i, j in pos]) + 0.5 * np.mean([cos[i, j] ** 2 for i, j in neg])
    assert loss == pytest.approx(expected, rel=1e-5)


def test_supcon_loss_is_khoslas_l_out_and_skips_anchors_without_positives(tiny_encoder_nodrop_dir):
    """supcon: per anchor, minus the mean over its positives of log softmax(cos / t) over the other rows,
    computed here with explicit loops; an anchor whose class is alone in the batch is left out."""
    import math

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_encoder_nodrop_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_encoder_nodrop_dir, num_labels=3).eval()
    batch = dict(tok(["good movie", "great film", "bad plot", "dull story", "a film"], padding=True,
                     return_tensors="pt"))
    labels = [1, 1, 0, 0, 2]  # row 4 has no positive
    batch["labels"] = torch.tensor(labels)
    t = 0.1
    with torch.no_grad():
        cos = (fewshot.embed(model, batch) @ fewshot.embed(model, batch).T).double().numpy()
        loss = float(fewshot.pair_loss(model, batch, "supcon", t))
    per_anchor = []
    for i in range(5):
        others = [a for a in range(5) if a != i]
        positives = [p for p in others if labels[p] == labels[i]]
        if not positives:
            continue
        log_den = math.log(sum(math.exp(cos[i, a] / t) for a in others))
        per_anchor.append(-sum(cos[i, p] / t - log_den for p in positives) / len(positives))
    assert len(per_anchor) == 4
    assert loss == pytest.approx(sum(per_anchor) / 4, rel=1e-4)
    with torch.no_grad():  # a lower temperature sharpens the softmax: the loss moves, it is not a constant
        assert float(fewshot.pair_loss(model, batch, "supcon", 0.05)) != pytest.approx(loss, rel=1e-3)


def test_length_chunks_cover_every_row_once_and_split_only_where_padding_costs_more():
    lengths = [40, 3, 38, 4, 3, 39, 5, 4]
    chunks = fewshot.length_chunks(lengths, overhead=32, rows=1, align=1)
    assert sorted(i for c in chunks for i in c) == list(range(8))
    assert [sorted(c) for c in chunks] == [[0, 2, 5], [1, 3, 4, 6, 7]]  # the long rows apart from the short ones
    assert fewshot.length_chunks([10, 12, 11, 9], overhead=32) == [[1, 2, 0, 3]]  # little padding: one pass
    assert len(fewshot.length_chunks(lengths, overhead=0, rows=1, align=1)) == 6  # one chunk per distinct length
    # aligned (the default): chunks of 4 rows, the long 4 (40, 39, 38, and 5) apart from the short 4
    assert [sorted(c) for c in fewshot.length_chunks(lengths, overhead=32)] == [[0, 2, 5, 6], [1, 3, 4, 7]]
    thirty = fewshot.length_chunks(list(range(1, 11)) * 3, overhead=0)  # widths 8 and 16 once aligned
    assert [len(c) % 4 for c in thirty[:-1]] == [0] * (len(thirty) - 1) and sum(map(len, thirty)) == 30
    assert len(thirty) == 2  # 8 rows at width 16 (the 9s and 10s, two 8s), 22 at 8


def test_pack_rows_cover_every_row_once_within_the_width():
    lengths = [40, 3, 38, 4, 3, 39, 5, 4, 70]
    bins = fewshot.pack_rows(lengths, width=64)
    assert sorted(i for b in bins for i in b) == list(range(9))
    assert bins[0] == [8]  # longer than the width: a row of its own
    # first fit, longest first, the cap raised to the longest row (70): the short ones fill in after the 40
    assert bins == [[8], [0, 6, 3, 7, 1, 4], [5], [2]]
    assert len(fewshot.pack_rows([10] * 12, width=64)) == 2  # 6 rows of 10 to a packed row of 64
    assert fewshot.pack_rows([], width=64) == []


@pytest.mark.parametrize("how", ["packed", "chunks"])
def test_split_encoding_gives_the_same_embeddings_and_gradients(tiny_encoder_nodrop_dir, how):
    """pair_loss encodes the batch without its padding (embed(split=True): packed on this BERT, in length
    chunks on other bodies): the same embeddings, loss and gradients as one padded pass."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_encoder_nodrop_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_encoder_nodrop_dir, num_labels=2).train()
    assert fewshot.packable(model)
    long = " ".join(["good movie great film"] * 10)
    texts = ["bad plot", long, "dull story", "great film", " ".join(["dull story bad plot"] * 9), "good"]
    batch = dict(tok(texts, padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor([0, 1, 0, 1, 0, 1])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    lengths = batch["attention_mask"].sum(1).tolist()
    assert len(fewshot.length_chunks(lengths)) == 2
    assert max(map(len, fewshot.pack_rows(lengths, width=16))) >= 2  # short sentences share a packed row
    pool = {"packed": lambda: fewshot.packed_pool(model, inputs, width=16),
            "chunks": lambda: fewshot.chunked_pool(model, inputs)}[how]
    grads = []
    for split in (False, True):
        model.zero_grad()
        emb = torch.nn.functional.normalize(pool(), dim=-1) if split else fewshot.embed(model, batch)
        target, weight = fewshot.pair_weights(batch["labels"])
        (weight * (emb @ emb.T - target) ** 2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        if not split:
            whole = emb.detach()
    torch.testing.assert_close(emb.detach(), whole, atol=1e-5, rtol=1e-5)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4)
    if how == "packed":
        model.zero_grad()
        fewshot.pair_loss(model, batch).backward()  # the loss the stage trains with packs (at PACK_WIDTH)
        for name, p in model.named_parameters():
            if p.grad is not None:
                torch.testing.assert_close(p.grad, grads[0][name], atol=1e-5, rtol=1e-4)


def _tiny_body(model_type: str):
    """A random 2-layer sequence classifier of `model_type`, hidden 32, no dropout, padding id 0, under SDPA."""
    import transformers as T

    common = {"vocab_size": 100, "max_position_embeddings": 64, "pad_token_id": 0}
    bert_like = {**common, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                 "intermediate_size": 64, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    config = {"roberta": lambda: T.RobertaConfig(**bert_like),
              "xlm-roberta": lambda: T.XLMRobertaConfig(**bert_like),
              "camembert": lambda: T.CamembertConfig(**bert_like),
              "electra": lambda: T.ElectraConfig(embedding_size=32, **bert_like),
              "distilbert": lambda: T.DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, dropout=0.0,
                                                       attention_dropout=0.0, **common)}[model_type]()
    torch.manual_seed(0)
    return T.AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa").train()


@pytest.mark.parametrize("model_type", ["roberta", "xlm-roberta", "camembert", "electra", "distilbert"])
def test_packing_other_bodies_gives_their_padded_pass(model_type):
    """RoBERTa-style bodies number positions from padding_idx + 1, the others from 0: packed with the wrong
    start, a RoBERTa's embeddings are off by ~0.6. Embeddings and gradients match one padded pass."""
    model = _tiny_body(model_type)
    assert fewshot.packable(model)
    assert fewshot.first_position(model) == (0 if model_type in ("electra", "distilbert") else 1)
    lengths = [5, 12, 3, 9, 2, 7]
    ids, mask = torch.zeros(6, 12, dtype=torch.long), torch.zeros(6, 12, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(3, 100, (n,))
        mask[i, :n] = 1
    inputs = {"input_ids": ids, "attention_mask": mask}
    assert max(map(len, fewshot.pack_rows(lengths, width=16))) >= 2
    results = []
    for pool in (lambda: fewshot._mean_pool(model, inputs), lambda: fewshot.packed_pool(model, inputs, width=16)):
        model.zero_grad()
        emb = pool()
        (emb ** 2).sum().backward()
        results.append((emb.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (whole, grads), (packed, packed_grads) = results
    torch.testing.assert_close(packed, whole, atol=1e-5, rtol=1e-5)
    assert packed_grads.keys() == grads.keys()
    for name in grads:
        torch.testing.assert_close(packed_grads[name], grads[name], atol=1e-5, rtol=1e-4)


def test_packing_only_where_positions_and_mask_are_known(tiny_encoder_nodrop_dir):
    """Packing sets position_ids and a 4-D mask: a body under eager attention is chunked instead."""
    from transformers import AutoModelForSequenceClassification

    eager = AutoModelForSequenceClassification.from_pretrained(tiny_encoder_nodrop_dir, num_labels=2,
                                                               attn_implementation="eager")
    assert not fewshot.packable(eager)


def test_head_fits_frozen_features_as_scikit_learn_does():
    sklearn = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 8))
    y = np.repeat(np.arange(3), 10)
    x = centers[y] + 0.8 * rng.normal(size=(30, 8))
    w, b = fewshot.fit_head(x, y, 3, c=1.0)
    ref = sklearn.LogisticRegression(C=1.0, max_iter=2000, tol=1e-10).fit(x, y)
    ours = x @ w.T + b
    theirs = ref.decision_function(x)
    # the multinomial logits are identical up to a constant per row (softmax is shift-invariant)
    np.testing.assert_allclose(ours - ours.mean(1, keepdims=True), theirs - theirs.mean(1, keepdims=True), atol=1e-3)
    assert (ours.argmax(1) == ref.predict(x)).all()


def test_head_on_frozen_features_leaves_the_body_alone(tiny_encoder_dir, sentiment_files, tmp_path):
    from frugal_lm.engine.run import _build

    cfg = make_config(tiny_encoder_dir, sentiment_files, tmp_path / "run")
    task, model = _build(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("classifier")}
    fewshot.fit_model_head(model, task.train_set, task.collator(), len(task.labels), c=10.0)
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    task.method = "fewshot"
    feats = fewshot.embeddings(model, task.train_set, task.collator(), 16)
    w = model.classifier.weight.detach().numpy()
    b = model.classifier.bias.detach().numpy()
    logits = task._logits(model, task.train_set)
    np.testing.assert_allclose(logits, feats @ w.T + b, atol=1e-5)  # predictions read the fitted head


def test_class_weights_balanced_explicit_and_their_effect_on_the_loss(tiny_encoder_nodrop_dir, tmp_path):
    labels = ["neg", "pos"]
    ids = [0, 0, 0, 1]
    np.testing.assert_allclose(class_weight_vector("balanced", labels, ids), [4 / 6, 4 / 2])
    np.testing.assert_allclose(class_weight_vector("true", labels, ids), [4 / 6, 2.0])  # old boolean form
    np.testing.assert_allclose(class_weight_vector("pos=3", labels, ids), [1.0, 3.0])
    assert class_weight_vector("", labels, ids) is None and class_weight_vector("false", labels, ids) is None
    with pytest.raises(ConfigError, match="unknown label 'positive'; the labels are neg, pos"):
        class_weight_vector("positive=2", labels, ids)
    with pytest.raises(ConfigError, match="must be a positive number"):
        class_weight_vector("pos=-1", labels, ids)

    from conftest import write_tsv
    from frugal_lm.engine.run import _build

    files = (write_tsv(tmp_path / "t.tsv", [("good film", "pos"), ("bad film", "neg"), ("dull plot", "neg"),
                                            ("awful story", "neg")]), None)
    losses = {}
    for spec in ("", "balanced"):
        cfg = make_config(tiny_encoder_nodrop_dir, (files[0], files[0]), tmp_path / "r", class_weights=spec)
        task, model = _build(cfg)
        batch = task.collator()(task.train_set)
        model.eval()
        with torch.no_grad():
            per_item = torch.nn.functional.cross_entropy(task.logits(model, batch), batch["labels"], reduction="none")
            total, n = task.loss(model, batch)
        losses[spec] = (float(total), n, per_item)
    plain, n, per_item = losses[""]
    weighted, _, _ = losses["balanced"]
    assert n == 4 and plain == pytest.approx(float(per_item.sum()), rel=1e-6)
    w = torch.tensor([4 / 6 if y == 0 else 2.0 for y in [1, 0, 0, 0]])  # labels sorted: neg=0, pos=1
    assert weighted == pytest.approx(float((w * per_item).sum()), rel=1e-6)  # the one pos row counts 3x a neg row


def test_auto_method_picks_fewshot_below_the_threshold_and_says_so(capsys):
    assert fewshot.resolve_method("auto", 16, 2, 100) == "fewshot"
    assert "8.0 examples per class (< 100) -> fewshot" in capsys.readouterr().err
    assert fewshot.resolve_method("auto", 400, 2, 100) == "finetune"
    assert "200.0 examples per class (>= 100) -> finetune" in capsys.readouterr().err
    assert fewshot.resolve_method("finetune", 4, 2, 100) == "finetune"
    assert capsys.readouterr().err == ""  # an explicit choice needs no explanation


def test_fewshot_stage_settings():
    opts = fewshot.ClassifyOptions()
    from frugal_lm.config import TrainConfig

    s = fewshot.stage_settings(opts, n_examples=24, n_labels=3, largest_class=8, train=TrainConfig())
    assert s["batch_size"] == 24  # 32 rounded to a multiple of 3, capped at one balanced epoch
    assert s["balanced_sampler"] and s["max_steps"] == 32 and s["save_every"] == 32  # 32 passes of one batch
    # imbalanced: 10 examples, batches of 16 (8 per class): 32 passes are 20 steps -> at least 32
    assert fewshot.stage_settings(opts, 10, 2, 8, TrainConfig())["max_steps"] == 32
    # batches of 33 (32 rounded to a multiple of 3): 32 passes over 660 examples -> 640, capped at 400;
    # over 165 -> 160
    assert fewshot.stage_settings(opts, 660, 3, 220, TrainConfig())["max_steps"] == 400
    assert fewshot.stage_settings(opts, 165, 3, 55, TrainConfig())["max_steps"] == 160
    s = fewshot.stage_settings(opts, 24, 3, 8, TrainConfig(max_steps=7, eval_every=2))
    assert s["max_steps"] == 7 and s["eval_every"] == 2  # the user's own values win


def test_fewshot_run_folder_works_with_eval_and_predict(tiny_encoder_dir, sentiment_files, tmp_path, capsys):
    from frugal_lm.engine.run import load_run, train

    out = tmp_path / "run"
    cfg = make_config(tiny_encoder_dir, sentiment_files, out, lr=5e-3, seed=0)
    cfg.options.method = "auto"  # 24 examples per class -> fewshot
    cfg.options.fewshot_lr, cfg.options.fewshot_steps = 5e-3, 12
    summary = train(cfg, progress=False)
    assert "-> fewshot" in capsys.readouterr().err
    saved = json.loads((out / "labels.json").read_text())
    assert saved["method"] == "fewshot" and saved["pooling"] == "mean-normalized"
    assert {"model", "labels.json", "metrics.json", "README.md", "confusion.png", "config.yaml"} <= \
        {p.name for p in out.iterdir()}
    logs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in logs if r["type"] == "train"]
    assert train_losses[-1] < train_losses[0]  # the pair loss falls
    assert summary["steps"] == 12
    _, task, model = load_run(out)
    assert task.method == "fewshot" and not task.head_pending
    records = task.read(str(sentiment_files[1]))
    metrics = task.evaluate(model, records)
    assert metrics["accuracy"] == pytest.approx(summary["best"]["accuracy"])  # the best body, its head refitted
    assert np.array(metrics["confusion"]).sum() == len(records)
    rows = task.predict(model, records[:3])
    assert [set(r["probabilities"]) for r in rows] == [{"neg", "pos"}] * 3
    # model/ is an ordinary transformers folder whose classifier layer is the fitted head
    from transformers import AutoModelForSequenceClassification

    plain = AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert plain.config.id2label == {0: "neg", 1: "pos"}
    assert torch.equal(plain.classifier.weight, model.classifier.weight)


def test_extrapolation_moves_the_trained_body_and_survives_resume(tiny_encoder_nodrop_dir, sentiment_files,
                                                                  tmp_path):
    """classify.fewshot_extrapolate=s exports start + s x (trained - start); evaluations see that body (and
    leave training's weights alone), and a resumed run starts from the pretrained weights, not the checkpoint."""
    from transformers import AutoModelForSequenceClassification

    from frugal_lm.engine.run import _build, train

    def cfg(out, scale):
        c = make_config(tiny_encoder_nodrop_dir, sentiment_files, tmp_path / out, seed=0)
        c.options.method = "fewshot"
        c.options.fewshot_lr, c.options.fewshot_steps, c.options.fewshot_extrapolate = 5e-3, 8, scale
        return c

    def body_weights(out):
        model = AutoModelForSequenceClassification.from_pretrained(tmp_path / out / "model")
        return dict(fewshot.body(model).named_parameters())

    _, built = _build(cfg("start", 2.0))
    start = fewshot.trainable_start(built)
    assert start and not any(k.startswith("embeddings.") for k in start)  # frozen embeddings stay out
    train(cfg("one", 1.0), progress=False)
    summary = train(cfg("two", 2.0), progress=False)  # evaluated at steps 3, 6 and 8
    one, two = body_weights("one"), body_weights("two")
    moved = 0.0
    for name, p0 in start.items():
        torch.testing.assert_close(two[name], p0 + 2.0 * (one[name] - p0), atol=1e-5, rtol=1e-4, msg=name)
        moved = max(moved, float((one[name] - p0).abs().max().detach()))
    assert moved > 1e-3  # the stage did move the body
    torch.testing.assert_close(two["embeddings.word_embeddings.weight"],
                               built.base_model.embeddings.word_embeddings.weight)
    # the evaluation that chose the exported (best) weights scored the body and head exported
    from frugal_lm.engine.run import load_run

    _, task, model = load_run(tmp_path / "two")
    final = task.evaluate(model, task.read(str(sentiment_files[1])))
    assert final["loss"] == pytest.approx(summary["best"]["loss"], abs=1e-5)
    # stopped after step 4 (checkpointed there), resumed: the same body as the uninterrupted run
    train(cfg("resumed", 2.0), progress=False, stop_at_step=4)
    train(cfg("resumed", 2.0), progress=False, resume=True)
    resumed = body_weights("resumed")
    for name in start:
        torch.testing.assert_close(resumed[name], two[name], atol=1e-5, rtol=1e-4, msg=name)
    with pytest.raises(ConfigError, match="classify.fewshot_extrapolate: must be above 0"):
        _build(cfg("bad", 0.0))
    bad_temperature = cfg("bad", 1.0)
    bad_temperature.options.fewshot_temperature = 0.0
    with pytest.raises(ConfigError, match="classify.fewshot_temperature: must be above 0"):
        _build(bad_temperature)
