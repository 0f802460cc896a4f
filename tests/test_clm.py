"""The causal-LM task on a tiny real GPT-2: packing, response-only loss masking, evaluation by `frugal
perplexity`'s code, errors that name file, line and field, and training end to end (LoRA and full)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from conftest import CORPUS
from frugal_lm.config import load_config
from frugal_lm.data.packing import join_documents, pack, packed_examples, unpack
from frugal_lm.errors import DataError
from frugal_lm.tasks.labels import IGNORE

# Every turn ends with the EOS token, so a response's end marker is a token the model must learn.
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}:{{ m['content'] }}<|endoftext|>{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")


@pytest.fixture(scope="module")
def tiny_chat_dir(tiny_gpt2_dir, tmp_path_factory) -> Path:
    """The tiny GPT-2 with a chat template in its tokenizer."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("tiny_chat") / "model"
    shutil.copytree(tiny_gpt2_dir, folder)
    tok = AutoTokenizer.from_pretrained(str(folder))
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(str(folder))
    return folder


def make_task(model_dir: Path, tmp_path: Path, train: Path | None = None, max_length: int = 16, **clm):
    """A clm task with its tokenizer, as the engine prepares it (data not read)."""
    from frugal_lm.models.loading import load_tokenizer
    from frugal_lm.tasks import get_task

    cfg = load_config(overrides={"task": "clm", "output": str(tmp_path / "run"),
                                 "model": {"name": str(model_dir), "max_length": max_length},
                                 "data": {"train": str(train) if train else None}, "clm": clm})
    task = get_task("clm")(cfg)
    task.tokenizer = load_tokenizer(str(model_dir))
    return task


# -- packing -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("block", [2, 3, 5, 16])
def test_packing_loses_no_token_and_predicts_each_once(block):
    docs = [[10, 11, 12], [20], [30, 31, 32, 33, 34, 35, 36], [40, 41]]
    stream = join_documents(docs, bos=0, eos=0)
    # one boundary token between documents (BOS == EOS): none doubled, none missing
    assert stream == [0, 10, 11, 12, 0, 20, 0, 30, 31, 32, 33, 34, 35, 36, 0, 40, 41, 0]
    blocks = pack(stream, block)
    assert unpack(blocks) == stream
    assert all(len(b) == block for b in blocks[:-1]) and 2 <= len(blocks[-1]) <= block
    assert sum(len(b) - 1 for b in blocks) == len(stream) - 1  # each token after the first is a target once


def test_packing_keeps_both_boundaries_when_they_differ():
    assert join_documents([[5, 6], [7]], bos=1, eos=2) == [1, 5, 6, 2, 1, 7, 2]
    assert join_documents([[5, 6], [7]], bos=None, eos=2) == [5, 6, 2, 7, 2]
    assert pack([1], 4) == [] and packed_examples([1, 2, 3], 4) == [{"input_ids": [1, 2, 3],
                                                                      "attention_mask": [1, 1, 1]}]
    with pytest.raises(ValueError):
        pack([1, 2, 3], 1)


def test_plain_text_is_read_as_documents_and_packed(tiny_gpt2_dir, tmp_path):
    text = "the cat sat\non the mat\n\n\n  a dog ran  \n\nthe end\n"
    path = tmp_path / "t.txt"
    path.write_text(text)
    task = make_task(tiny_gpt2_dir, tmp_path, path)
    docs = task.read(str(path))
    assert [(d.text, d.line) for d in docs] == [("the cat sat\non the mat", 1), ("  a dog ran", 5), ("the end", 7)]
    task.options.documents = "lines"
    assert [d.line for d in task.read(str(path))] == [1, 2, 5, 7]
    task.options.documents = "file"
    assert [d.text for d in task.read(str(path))] == ["the cat sat\non the mat\n\n\n  a dog ran\n\nthe end"]

    task.options.documents = "paragraphs"
    tok = task.tokenizer
    examples = task.encode(docs)
    eot = tok.eos_token_id
    want = [eot]
    for d in docs:
        want += tok(d.text, add_special_tokens=False)["input_ids"] + [eot]
    assert unpack([e["input_ids"] for e in examples]) == want
    assert all(len(e["input_ids"]) == 16 for e in examples[:-1])
    assert all(set(e["attention_mask"]) == {1} for e in examples)
    batch = task.collator()(examples)
    assert task.count(batch) == len(want) - 1  # every token but the first is predicted, padding is not


# -- instruction data ----------------------------------------------------------------------------------
def _response_text(task, example) -> list[str]:
    """The labelled tokens of an example, decoded run by run."""
    runs, current = [], []
    for label in example["labels"]:
        if label == IGNORE:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(label)
    if current:
        runs.append(current)
    return [task.tokenizer.decode(r) for r in runs]


def test_chat_examples_carry_loss_on_assistant_turns_only(tiny_chat_dir, tmp_path):
    path = tmp_path / "chat.jsonl"
    rows = [{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the cat"},
                          {"role": "assistant", "content": " sat on the mat"}, {"role": "user", "content": "a dog"},
                          {"role": "assistant", "content": " ran in the park"}]},
            {"prompt": "the movie", "completion": " was great"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    task = make_task(tiny_chat_dir, tmp_path, path, max_length=128)
    examples = task.encode(task.read(str(path)))
    assert _response_text(task, examples[0]) == [" sat on the mat<|endoftext|>", " ran in the park<|endoftext|>"]
    assert _response_text(task, examples[1]) == [" was great<|endoftext|>"]
    rendered = task.tokenizer.apply_chat_template(rows[0]["messages"], tokenize=False)
    assert task.tokenizer.decode(examples[0]["input_ids"]) == rendered  # nothing added or lost

    # the loss sums cross-entropy over exactly the labelled tokens: prompt tokens carry none
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_chat_dir))
    batch = task.collator()(examples)
    with torch.no_grad():
        loss, count = task.loss(model, batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert count == sum(len(task.tokenizer(t, add_special_tokens=False)["input_ids"])
                        for e in examples for t in _response_text(task, e))
    want = 0.0
    for i, e in enumerate(examples):
        for p in range(1, len(e["labels"])):
            if e["labels"][p] != IGNORE:
                want -= float(logits[i, p - 1].log_softmax(-1)[e["labels"][p]])
    assert float(loss) == pytest.approx(want, rel=1e-5)


def test_prompt_completion_without_chat_template(tiny_gpt2_dir, tmp_path):
    path = tmp_path / "pc.jsonl"
    path.write_text(json.dumps({"prompt": "the cat", "completion": " sat on the mat"}) + "\n")
    task = make_task(tiny_gpt2_dir, tmp_path, path, max_length=128)
    (example,) = task.encode(task.read(str(path)))
    tok = task.tokenizer
    prompt = tok("the cat", add_special_tokens=False)["input_ids"]
    assert example["input_ids"][:len(prompt) + 1] == [tok.eos_token_id, *prompt]  # document start, then prompt
    assert set(example["labels"][:len(prompt) + 1]) == {IGNORE}
    assert _response_text(task, example) == [" sat on the mat<|endoftext|>"]


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "a"}', r"x.jsonl:2 \(field 'completion'\): missing field"),
    ('{"prompt": "", "completion": "b"}', r"x.jsonl:2 \(field 'prompt'\): expected a non-empty string"),
    ('{"messages": [{"role": "user"}]}', r"x.jsonl:2 \(field 'messages\[0\].content'\)"),
    ('{"messages": [{"role": "user", "content": "a"}]}', r"x.jsonl:2 \(field 'messages'\): no assistant turn"),
    ('{"prompt": "a", ', r"x.jsonl:2: malformed JSON"),
    ('[1, 2]', r"x.jsonl:2: expected a JSON object"),
])
def test_bad_instruction_data_names_file_line_and_field(tiny_gpt2_dir, tmp_path, line, message):
    path = tmp_path / "x.jsonl"
    path.write_text('{"prompt": "ok", "completion": "fine"}\n' + line + "\n")
    task = make_task(tiny_gpt2_dir, tmp_path, path)
    with pytest.raises(DataError, match=message):
        task.read(str(path))


def test_chat_messages_need_a_chat_template(tiny_gpt2_dir, tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "a"},
                                             {"role": "assistant", "content": "b"}]}) + "\n")
    task = make_task(tiny_gpt2_dir, tmp_path, path)
    with pytest.raises(DataError, match=r"m.jsonl:1 \(field 'messages'\): chat messages need a chat template"):
        task.encode(task.read(str(path)))
    with pytest.raises(DataError, match="unknown file format '.csv'"):
        task.read(str(tmp_path / "data.csv"))


# -- evaluation ----------------------------------------------------------------------------------------
def test_evaluation_is_frugal_perplexity(tiny_gpt2_dir, tmp_path):
    """The task's eval perplexity equals what `frugal perplexity` reports for the same file."""
    from frugal_lm.lm.scorers import load_scorer

    path = tmp_path / "dev.txt"
    path.write_text("\n".join(CORPUS) + "\n")
    task = make_task(tiny_gpt2_dir, tmp_path, path, documents="lines")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_gpt2_dir))
    metrics = task.evaluate(model, task.read(str(path)))
    ref = load_scorer(str(tiny_gpt2_dir), device="cpu").perplexity(CORPUS)
    assert metrics["perplexity"] == pytest.approx(ref["ppl_token"], rel=1e-9)
    assert metrics["ppl_word"] == pytest.approx(ref["ppl_word"], rel=1e-9)
    assert math.exp(metrics["loss"]) == pytest.approx(metrics["perplexity"], rel=1e-9)


# -- training ------------------------------------------------------------------------------------------
def test_config_defaults_and_keys():
    cfg = load_config(sets=["task=clm"])
    assert (cfg.train.metric, cfg.peft.method, cfg.options.documents) == ("perplexity", "lora", "paragraphs")
    cfg = load_config(sets=["task=clm", "peft.method=none", "clm.documents=lines"])
    assert (cfg.peft.method, cfg.options.documents) == ("none", "lines")
    with pytest.raises(Exception, match="clm.documents: expected one of paragraphs, lines, file"):
        load_config(sets=["task=clm", "clm.documents=pages"])


def test_full_fine_tuning_lowers_perplexity(tiny_chat_dir, tmp_path):
    """Instruction data, full fine-tuning: eval perplexity falls, the exported model reloads, and the
    tied head is trained (GPT-2 ties lm_head to the input embeddings)."""
    from frugal_lm.engine.run import load_run, train

    rows = [{"prompt": p, "completion": " " + c} for p, c in zip(CORPUS, CORPUS[1:] + CORPUS[:1], strict=True)]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows * 4) + "\n")
    (tmp_path / "dev.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = load_config(overrides={
        "task": "clm", "output": str(tmp_path / "run"), "model": {"name": str(tiny_chat_dir), "max_length": 48},
        "data": {"train": str(tmp_path / "train.jsonl"), "eval": str(tmp_path / "dev.jsonl")},
        "train": {"max_steps": 12, "lr": 1e-2, "batch_size": 8, "eval_every": 12, "log_every": 4},
        "peft": {"method": "none"}})
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_chat_dir))
    summary = train(cfg, progress=False)
    _, task, model = load_run(tmp_path / "run")
    before = task.evaluate(base, task.read(str(tmp_path / "dev.jsonl")))["perplexity"]
    assert summary["best"]["perplexity"] < 0.5 * before
    assert not torch.equal(model.lm_head.weight, base.lm_head.weight)
    assert {p.name for p in (tmp_path / "run" / "model").iterdir()} >= {"model.safetensors", "tokenizer.json"}


def test_a_tokenizer_without_pad_token_trains(tiny_gpt2_dir, tmp_path):
    """GPT-2's tokenizer has no pad token: padding uses EOS (masked out), and the run folder keeps it."""
    from transformers import AutoTokenizer

    from frugal_lm.engine.run import load_run, train

    folder = tmp_path / "nopad"
    shutil.copytree(tiny_gpt2_dir, folder)
    tok = AutoTokenizer.from_pretrained(str(folder))
    tok.pad_token = None
    tok.save_pretrained(str(folder))
    assert AutoTokenizer.from_pretrained(str(folder)).pad_token_id is None
    rows = [{"prompt": p, "completion": " " + p} for p in CORPUS]  # lengths differ: batches need padding
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = load_config(overrides={"task": "clm", "output": str(tmp_path / "run"),
                                 "model": {"name": str(folder), "max_length": 64},
                                 "data": {"train": str(tmp_path / "train.jsonl"), "eval": str(tmp_path / "train.jsonl")},
                                 "train": {"max_steps": 2, "batch_size": 4}})
    summary = train(cfg, progress=False)
    assert summary["steps"] == 2 and math.isfinite(summary["final"]["perplexity"])
    _, task, model = load_run(tmp_path / "run")
    assert task.tokenizer.pad_token_id == task.tokenizer.eos_token_id == model.config.pad_token_id
