"""`frugal score` and `frugal perplexity`: sentence log-probabilities and corpus perplexity from any LM.

Only typer is imported at module level so that `frugal --help` stays fast.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

Opt = typer.Option
ModelArg = Annotated[str, typer.Argument(
    help="an .arpa file, a bundled alias (smollm2, minilm), a model folder or a frugal run folder")]
DataOpt = Annotated[str, Opt("--data", help="plain text, one sentence per line (blank lines skipped)")]
BatchOpt = Annotated[int | None, Opt("--batch-size", help="rows per forward pass (default 8 / 32 masked)")]
MaxLenOpt = Annotated[int | None, Opt("--max-length", help="window length (default: model's, <= 1024)")]
StrideOpt = Annotated[int | None, Opt("--stride", help="window step in tokens (default max-length/2)")]
EosOpt = Annotated[bool, Opt("--eos/--no-eos", help="score an end-of-sentence token (n-gram </s>, EOS)")]
BosOpt = Annotated[str | None, Opt("--bos-token", help="start token instead of the tokenizer's BOS")]
EosTokOpt = Annotated[str | None, Opt("--eos-token", help="end token instead of the tokenizer's EOS")]
DeviceOpt = Annotated[str | None, Opt("--device", help="cpu, cuda, ... (default: cuda when available)")]


def _texts_and_scorer(model: str, data: str, device: str | None, **options: Any) -> tuple[list[str], Any]:
    """Read the sentences first (bad input fails before a model loads), then load the scorer."""
    from frugal_lm.data.readers import read_lines

    texts = read_lines(data)
    return texts, _load(model, device, **options)


def _load(model: str, device: str | None, **options: Any) -> Any:
    """Load a scorer with transformers kept quiet; our own warnings go to stderr as one line each."""
    import warnings

    from frugal_lm.lm.scorers import load_scorer

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        scorer = load_scorer(model, device=device, **options)
    for w in caught:
        if issubclass(w.category, UserWarning):
            typer.echo(f"warning: {w.message}", err=True)
    scorer.progress = sys.stderr.isatty()  # a bar helps on a terminal, and would litter a log file
    return scorer


def register(app: typer.Typer) -> None:
    """Add the `score` and `perplexity` commands to `app`."""

    @app.command("score")
    def score(
        model: ModelArg,
        data: DataOpt,
        output: Annotated[str | None, Opt("--output", "-o", help="write the JSON lines here")] = None,
        batch_size: BatchOpt = None,
        max_length: MaxLenOpt = None,
        stride: StrideOpt = None,
        eos: EosOpt = True,
        bos_token: BosOpt = None,
        eos_token: EosTokOpt = None,
        device: DeviceOpt = None,
    ) -> None:
        """Score each sentence; JSON lines: text, log10_prob, tokens, words, ppl (per token), ppl_word."""
        texts, scorer = _texts_and_scorer(model, data, device, batch_size=batch_size, max_length=max_length,
                                          stride=stride, eos=eos, bos_token=bos_token, eos_token=eos_token)
        lines = "".join(json.dumps(row) + "\n" for row in scorer.score_sentences(texts))
        if output:
            from frugal_lm.io import write_text

            write_text(output, lines)
        else:
            sys.stdout.write(lines)

    @app.command("perplexity")
    def perplexity(
        model: ModelArg,
        data: DataOpt,
        as_json: Annotated[bool, Opt("--json", help="print a JSON object")] = False,
        batch_size: BatchOpt = None,
        max_length: MaxLenOpt = None,
        stride: StrideOpt = None,
        eos: EosOpt = True,
        bos_token: BosOpt = None,
        eos_token: EosTokOpt = None,
        device: DeviceOpt = None,
    ) -> None:
        """Corpus perplexity per token and per word (words: whitespace words, +1 per sentence with EOS)."""
        texts, scorer = _texts_and_scorer(model, data, device, batch_size=batch_size, max_length=max_length,
                                          stride=stride, eos=eos, bos_token=bos_token, eos_token=eos_token)
        result = scorer.perplexity(texts)
        if as_json:
            typer.echo(json.dumps(result))
            return
        typer.echo(f"model        {result['model']} ({result['kind']})")
        typer.echo(f"sentences    {result['sentences']}")
        typer.echo(f"tokens       {result['tokens']}")
        typer.echo(f"words        {result['words']}")
        typer.echo(f"log10 prob   {result['log10_prob']:.4f}")
        typer.echo(f"ppl/token    {_fmt(result['ppl_token'])}")
        typer.echo(f"ppl/word     {_fmt(result['ppl_word'])}")
        if "oovs" in result:  # n-gram models: KenLM's "perplexity excluding OOVs" beside the figures above
            typer.echo(f"OOVs         {result['oovs']} (mapped to <unk>, a literal <unk> included)")
            typer.echo(f"ppl/token excluding OOVs  {_fmt(result['ppl_token_excl_oov'])}")
            typer.echo(f"ppl/word excluding OOVs   {_fmt(result['ppl_word_excl_oov'])}")


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"
