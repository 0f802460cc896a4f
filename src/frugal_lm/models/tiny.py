"""Tiny random models and tokenizers: for tests, and as from-scratch presets on small configs.

They build in milliseconds and are real `transformers` models, so everything that works on them
works on the full-size ones.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SPECIALS_BERT = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _words(texts: Iterable[str]) -> Counter:
    counts: Counter = Counter()
    for text in texts:
        counts.update(re.findall(r"\w+|[^\w\s]", text.lower()))
    return counts


def build_wordpiece_tokenizer(texts: Iterable[str], vocab_size: int = 500, lowercase: bool = True) -> Any:
    """A BERT-style WordPiece tokenizer for `texts` (a `BertTokenizerFast`), the same in every process.

    The vocabulary is built here rather than by `tokenizers`' WordPieceTrainer, whose ids (and even token
    set) vary from one process to the next, which made tests on tiny BERTs flaky: the special tokens, every
    character seen (alone and as a `##` continuation, so any word of the texts can be spelled), then whole
    words by falling count (ties alphabetical) up to `vocab_size`.
    """
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    pre = pre_tokenizers.BertPreTokenizer()
    words: Counter[str] = Counter()
    for text in texts:
        words.update(w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for w in words for c in w})
    vocab: dict[str, int] = {}
    for token in [*SPECIALS_BERT, *chars, *(f"##{c}" for c in chars)]:
        vocab.setdefault(token, len(vocab))
    for word, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(vocab) >= vocab_size:
            break
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece()
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", model_max_length=512,
    )


def build_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 500) -> Any:
    """A GPT-2-style byte-level BPE tokenizer with `<|endoftext|>` as BOS/EOS/pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
        unk_token="<|endoftext|>", pad_token="<|endoftext|>", model_max_length=1024,
    )


def tiny_bert_config(vocab_size: int, **overrides: Any) -> Any:
    """A 2-layer, hidden-32 BERT config."""
    from transformers import BertConfig

    kw = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
              intermediate_size=64, max_position_embeddings=128, type_vocab_size=2)
    kw.update(overrides)
    return BertConfig(**kw)


def tiny_gpt2_config(vocab_size: int, bos_id: int, eos_id: int, **overrides: Any) -> Any:
    """A 2-layer, hidden-32 GPT-2 config."""
    from transformers import GPT2Config

    kw = dict(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=128,
              bos_token_id=bos_id, eos_token_id=eos_id)
    kw.update(overrides)
    return GPT2Config(**kw)


def save_tiny_bert(folder: str | Path, texts: Iterable[str], head: str = "masked", seed: int = 0,
                   **config: Any) -> Path:
    """Write a tiny random BERT (`head`: "masked", "classify" or "base") with its tokenizer to `folder`."""
    import torch
    from transformers import BertForMaskedLM, BertForSequenceClassification, BertModel

    texts = list(texts)
    tok = build_wordpiece_tokenizer(texts)
    cfg = tiny_bert_config(len(tok), pad_token_id=tok.pad_token_id, **config)
    torch.manual_seed(seed)
    cls = {"masked": BertForMaskedLM, "classify": BertForSequenceClassification, "base": BertModel}[head]
    model = cls(cfg)
    folder = Path(folder)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def save_tiny_gpt2(folder: str | Path, texts: Iterable[str], seed: int = 0, **config: Any) -> Path:
    """Write a tiny random GPT-2 causal LM with its byte-level BPE tokenizer to `folder`."""
    import torch
    from transformers import GPT2LMHeadModel

    tok = build_bpe_tokenizer(list(texts))
    cfg = tiny_gpt2_config(len(tok), tok.bos_token_id, tok.eos_token_id, **config)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(cfg)
    folder = Path(folder)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
