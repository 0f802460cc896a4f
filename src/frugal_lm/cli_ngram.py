"""``frugal ngram``: train n-gram models (interpolated modified Kneser-Ney) to ARPA files; score text."""

from __future__ import annotations

from pathlib import Path

import typer


def _parse_prune(text: str | None) -> list[int] | None:
    """``"0,0,1"`` or ``"0 0 1"`` -> ``[0, 0, 1]``."""
    if not text:
        return None
    from .errors import FrugalError

    try:
        return [int(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise FrugalError(f"--prune takes integers such as '0,0,1', got '{text}'") from None


def register(app: typer.Typer) -> None:
    """Add the ``ngram`` sub-app (``train``, ``score``) to ``app``."""
    ngram_app = typer.Typer(help="N-gram language models: interpolated modified Kneser-Ney, ARPA files.",
                            no_args_is_help=True)

    @ngram_app.command("train")
    def train_cmd(
        # -n, not KenLM's -o: everywhere in frugal -o means --output
        order: int = typer.Option(..., "--order", "-n", help="Highest n-gram order (1 or more)."),
        data: list[Path] = typer.Option(
            ..., "--data", "-d", help="Training text, one sentence per line; repeat for several files."),
        output: Path = typer.Option(..., "--output", "-o", help="ARPA file to write."),
        vocab_size: int | None = typer.Option(None, "--vocab-size",
                                              help="Keep the N most frequent words; map the rest to <unk>."),
        prune: str | None = typer.Option(
            None, "--prune",
            help="Per-order thresholds like KenLM's, e.g. '0,0,1': drop n-grams of order i whose adjusted "
                 "count is <= the i-th value (the last repeats; unigrams are never pruned)."),
        as_json: bool = typer.Option(False, "--json", help="Print a JSON summary."),
        more: list[Path] | None = typer.Argument(None, metavar="FILE",
                                                 help="More training files, so '--data a.txt b.txt' works."),
    ) -> None:
        """Train an interpolated modified Kneser-Ney model (as KenLM's lmplz) and write it as ARPA."""
        import json
        import time

        from .lm.ngram import train

        t0 = time.perf_counter()
        model = train([*data, *(more or [])], order, vocab_size=vocab_size, prune=_parse_prune(prune))
        model.save(output)
        summary = dict(model.stats, output=str(output), seconds=round(time.perf_counter() - t0, 3),
                       train_seconds=model.stats.get("seconds"))
        summary["discounts"] = [[round(d, 6) for d in ds] for ds in summary["discounts"]]
        if as_json:
            typer.echo(json.dumps(summary))
            return
        typer.echo(f"wrote {output}: order {order}, {summary['tokens']:,} tokens, "
                   f"{summary['vocab_size']:,} words, {summary['seconds']:.1f} s")
        for n, (count, ds, fb) in enumerate(zip(summary["ngrams"], summary["discounts"],
                                                summary["discount_fallback"], strict=True), 1):
            note = " (fallback: too little data for the estimate)" if fb else ""
            typer.echo(f"  {n}-grams {count:>10,}  D1={ds[0]:.4f} D2={ds[1]:.4f} D3+={ds[2]:.4f}{note}")

    @ngram_app.command("score")
    def score_cmd(
        model: Path = typer.Option(..., "--model", "-m", help="ARPA file (ours, KenLM's or SRILM's)."),
        data: list[Path] = typer.Option(..., "--data", "-d", help="Text to score, one sentence per line."),
        as_json: bool = typer.Option(False, "--json", help="Print a JSON summary."),
    ) -> None:
        """Perplexity of text under an ARPA model; </s> counts as a token, as in KenLM."""
        import json
        import time

        from .lm.ngram import NgramModel, read_lines

        t0 = time.perf_counter()
        lm = NgramModel(model)
        t1 = time.perf_counter()
        total = lm.score_corpus(read_lines(data))
        out = {"model": str(model), "order": lm.order, "perplexity": total.perplexity,
               "perplexity_excluding_oovs": total.perplexity_excluding_oovs,
               "log10_prob": total.log10_prob, "tokens": total.tokens, "oovs": total.oovs,
               "sentences": total.sentences, "load_seconds": round(t1 - t0, 3),
               "score_seconds": round(time.perf_counter() - t1, 3)}
        if as_json:
            typer.echo(json.dumps(out))
        else:
            typer.echo(f"perplexity {total.perplexity:.2f} over {total.tokens:,} tokens "
                       f"({total.sentences:,} sentences, {total.oovs:,} mapped to <unk>); "
                       f"excluding OOVs {total.perplexity_excluding_oovs:.2f}")

    app.add_typer(ngram_app, name="ngram")
