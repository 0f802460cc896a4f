"""``frugal tokenizer train`` (WordPiece or byte-level BPE for from-scratch presets), ``frugal fill-mask``
and ``frugal presets``. Pretraining itself is ``frugal train --task pretrain``."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add ``tokenizer train``, ``fill-mask`` and ``presets`` to ``app``."""
    tok_app = typer.Typer(help="Tokenizers for models trained from scratch.", no_args_is_help=True)

    @tok_app.command("train")
    def tokenizer_train(
        data: list[Path] = typer.Option(..., "--data", "-d", help="Text files to learn from (repeatable)."),
        output: Path = typer.Option(..., "--output", "-o", help="Tokenizer folder to write."),
        kind: str = typer.Option("wordpiece", "--kind",
                                 help="wordpiece (BERT: [CLS] [SEP] [MASK]) or bpe (GPT-2: byte-level, "
                                      "<|endoftext|>)."),
        vocab_size: int = typer.Option(8000, "--vocab-size", help="Vocabulary size, special tokens included."),
        lowercase: bool = typer.Option(True, "--lowercase/--cased", help="Lowercase text first."),
        min_frequency: int = typer.Option(2, "--min-frequency", help="Ignore pieces seen fewer times."),
        more: list[Path] | None = typer.Argument(None, metavar="FILE",
                                                 help="More files, so '--data a.txt b.txt' works."),
    ) -> None:
        """Train a tokenizer with the `tokenizers` library; transformers' AutoTokenizer loads the folder."""
        from frugal_lm.models.presets import train_tokenizer

        tok = train_tokenizer(kind, [*data, *(more or [])], vocab_size, output, lowercase=lowercase,
                              min_frequency=min_frequency)
        typer.echo(json.dumps({"output": str(output), "kind": kind, "vocab_size": len(tok)}))

    app.add_typer(tok_app, name="tokenizer")

    @app.command("fill-mask")
    def fill_mask_cmd(
        model: str = typer.Argument(..., help="run folder, model folder or alias (a masked LM)"),
        texts: list[str] = typer.Argument(..., help="text(s) with [MASK] (or the model's own mask token)"),
        top_k: int = typer.Option(5, "--top-k", help="Candidates shown per mask."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON lines instead of a table."),
    ) -> None:
        """Print a masked LM's top predictions, with probabilities, for each mask in the text."""
        import warnings

        from frugal_lm.lm.fill_mask import fill_mask, load_masked_lm

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tokenizer, lm = load_masked_lm(model)
        for w in caught:
            typer.echo(f"warning: {w.message}", err=True)
        results = fill_mask(lm, tokenizer, list(texts), top_k=top_k)
        for text, result in zip(texts, results, strict=True):
            per_mask = result if result and isinstance(result[0], list) else [result]
            if as_json:
                typer.echo(json.dumps({"text": text, "masks": per_mask}))
                continue
            typer.echo(text)
            for m, candidates in enumerate(per_mask, 1):
                if len(per_mask) > 1:
                    typer.echo(f"  mask {m}:")
                for c in candidates:
                    typer.echo(f"  {c['score']:8.4f}  {c['token']:<16} {c['sequence']}")

    @app.command("presets")
    def presets_cmd() -> None:
        """List the from-scratch size presets (use with --model NAME --tokenizer DIR)."""
        from frugal_lm.models.presets import list_presets

        for row in list_presets():
            typer.echo(f"{row['preset']:<12} {row['family']:<5} L{row['layers']:<2} H{row['hidden']:<4} "
                       f"{row['description']}")
