"""Named size presets for models trained from scratch, and tokenizer training.

BERT presets follow the compact BERT family of Turc et al. (2019), "Well-Read Students Learn Better":
L layers, H hidden, H/64 attention heads, 4H feed-forward. The GPT presets mirror them as GPT-2-style
causal LMs. A preset has no vocabulary of its own: it is built for a tokenizer folder (`--tokenizer DIR`,
e.g. one trained with `frugal tokenizer train`), whose size, special tokens and maximum length fix the
embedding matrix.

`materialize(name, tokenizer_dir)` writes a small folder (config.json, the tokenizer, and a marker file
but no weights) under the frugal cache, keyed by preset and tokenizer, so everything that loads models from
folders works on presets too; `models.loading.from_pretrained` builds a preset folder's model from its
config (random init, seeded by the caller).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frugal_lm.errors import ModelError

MARKER = "frugal_preset.json"  # a preset folder: config and tokenizer, no weights (build from config)


@dataclass(frozen=True)
class Preset:
    name: str
    family: str  # "bert" | "gpt2"
    layers: int
    hidden: int
    description: str

    @property
    def heads(self) -> int:
        return max(1, self.hidden // 64)

    def config(self, tokenizer: Any) -> Any:
        """A transformers config for this preset sized by `tokenizer`."""
        vocab = len(tokenizer)
        if self.family == "bert":
            from transformers import BertConfig

            return BertConfig(vocab_size=vocab, hidden_size=self.hidden, num_hidden_layers=self.layers,
                              num_attention_heads=self.heads, intermediate_size=4 * self.hidden,
                              max_position_embeddings=512, type_vocab_size=2,
                              pad_token_id=tokenizer.pad_token_id or 0)
        from transformers import GPT2Config

        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        return GPT2Config(vocab_size=vocab, n_embd=self.hidden, n_layer=self.layers, n_head=self.heads,
                          n_positions=1024, bos_token_id=bos, eos_token_id=eos,
                          pad_token_id=tokenizer.pad_token_id)


def _bert(name: str, layers: int, hidden: int) -> Preset:
    return Preset(name, "bert", layers, hidden, f"BERT L{layers}/H{hidden} (Turc et al. 2019), from scratch")


def _gpt(name: str, layers: int, hidden: int) -> Preset:
    return Preset(name, "gpt2", layers, hidden, f"GPT-2-style causal LM L{layers}/H{hidden}, from scratch")


PRESETS: dict[str, Preset] = {p.name: p for p in (
    _bert("bert-tiny", 2, 128), _bert("bert-mini", 4, 256), _bert("bert-small", 4, 512),
    _bert("bert-medium", 8, 512),
    _gpt("gpt-tiny", 2, 128), _gpt("gpt-mini", 4, 256), _gpt("gpt-small", 4, 512), _gpt("gpt-medium", 8, 512),
)}


def is_preset(name: str) -> bool:
    return name in PRESETS


def is_preset_dir(path: str | Path) -> bool:
    """A folder `materialize` wrote: build its model from config (it has no weights)."""
    return (Path(path) / MARKER).is_file()


def materialize(name: str, tokenizer_dir: str | None, cache: Path | None = None) -> Path:
    """The preset's folder (config.json + tokenizer + marker) for this tokenizer, written once.

    Raises:
        ModelError: unknown preset, no tokenizer folder given, or a folder AutoTokenizer cannot load.
    """
    from transformers import AutoTokenizer

    from frugal_lm.io import atomic_path
    from frugal_lm.models.registry import cache_dir

    preset = PRESETS.get(name)
    if preset is None:
        raise ModelError(f"unknown preset '{name}'; presets: {', '.join(PRESETS)}")
    if not tokenizer_dir:
        raise ModelError(f"model '{name}' is a from-scratch preset and has no vocabulary: give a tokenizer "
                         "folder with --tokenizer DIR (train one with `frugal tokenizer train`)")
    if not Path(tokenizer_dir).is_dir():
        raise ModelError(f"--tokenizer {tokenizer_dir}: no such folder")
    try:
        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    except (OSError, ValueError) as exc:
        raise ModelError(f"--tokenizer {tokenizer_dir}: not a tokenizer folder AutoTokenizer can load: "
                         f"{str(exc).splitlines()[0][:200]}") from None
    config = preset.config(tok)
    backend = tok.backend_tokenizer.to_str() if getattr(tok, "is_fast", False) else repr(tok.get_vocab())
    key = hashlib.sha256(json.dumps([config.to_dict(), backend], sort_keys=True, default=str).encode())
    folder = (cache or cache_dir() / "presets") / f"{name}-{key.hexdigest()[:12]}"
    if not (folder / MARKER).exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder) as tmp:
            tmp.mkdir()
            config.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            (tmp / MARKER).write_text(json.dumps({"preset": name, "tokenizer": str(tokenizer_dir)}))
    return folder


def build_from_config(cls: Any, path: str | Path, trust_remote_code: bool = False, **kwargs: Any) -> Any:
    """A freshly initialised model of a preset folder (what `from_pretrained` does for a folder without
    weights). Config keys among `kwargs` (num_labels, id2label, ...) go into the config; `dtype` into the
    model; `output_loading_info` returns every weight as missing."""
    from transformers import AutoConfig

    info = kwargs.pop("output_loading_info", False)
    kwargs.pop("ignore_mismatched_sizes", None)
    dtype = kwargs.pop("dtype", None)
    config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code, **kwargs)
    extra = {"dtype": dtype} if dtype is not None else {}
    if hasattr(cls, "from_config"):  # an Auto class
        model = cls.from_config(config, trust_remote_code=trust_remote_code, **extra)
    else:
        model = cls._from_config(config, **extra)
    if info:
        return model, {"missing_keys": [k for k, _ in model.named_parameters()], "unexpected_keys": [],
                       "mismatched_keys": []}
    return model


def list_presets() -> list[dict[str, str]]:
    return [{"preset": p.name, "family": p.family, "layers": str(p.layers), "hidden": str(p.hidden),
             "description": p.description} for p in PRESETS.values()]


# -- tokenizers ------------------------------------------------------------------------------------
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
GPT_SPECIAL = "<|endoftext|>"


def train_tokenizer(kind: str, files: Iterable[str], vocab_size: int, output: str | Path,
                    lowercase: bool = True, min_frequency: int = 2) -> Any:
    """Train a WordPiece (BERT-style: [CLS] a [SEP] b [SEP]) or byte-level BPE (GPT-2-style, <|endoftext|>
    as BOS/EOS/pad) tokenizer on text files, streamed from disk by the `tokenizers` library, and save it as
    a folder `transformers.AutoTokenizer` loads.

    Raises:
        FrugalError: unknown kind, too small a vocabulary, a missing file.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from frugal_lm.errors import DataError, FrugalError
    from frugal_lm.io import atomic_path

    files = [str(f) for f in files]
    if not files:
        raise FrugalError("tokenizer train: give at least one --data FILE")
    for f in files:
        if not Path(f).is_file():
            raise DataError(f, "file not found")
    if vocab_size < 50:
        raise FrugalError(f"--vocab-size: expected at least 50, got {vocab_size}")
    if kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        tok.train(files, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=BERT_SPECIALS,
                                                   min_frequency=min_frequency, show_progress=True))
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                       cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                       model_max_length=512)
    elif kind == "bpe":
        if vocab_size < 257:
            raise FrugalError(f"--vocab-size: byte-level BPE needs at least 257 (256 bytes and {GPT_SPECIAL}), "
                              f"got {vocab_size}")
        tok = Tokenizer(models.BPE())
        if lowercase:
            tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        tok.train(files, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[GPT_SPECIAL],
                                             min_frequency=min_frequency, show_progress=True,
                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=GPT_SPECIAL, eos_token=GPT_SPECIAL,
                                       unk_token=GPT_SPECIAL, pad_token=GPT_SPECIAL, model_max_length=1024)
    else:
        raise FrugalError(f"--kind: expected wordpiece or bpe, got {kind!r}")
    with atomic_path(Path(output)) as tmp:
        fast.save_pretrained(str(tmp))
    return fast
