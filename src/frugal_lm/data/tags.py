"""Tag schemes for token labelling (NER) and entity-level metrics.

Schemes:
  - ``iob1``: ``I-X`` inside entities; ``B-X`` only where an entity directly follows another of the same
    type (the original CoNLL-2003 files).
  - ``bio`` (IOB2): ``B-X`` on the first token of every entity, ``I-X`` after it.
  - ``bioes``: ``B-X`` first, ``I-X`` inside, ``E-X`` last token, ``S-X`` single-token entity.
  - ``plain``: a label per token without prefix (``PER``, ``LOC``, ``O``); a maximal run of one label is one
    entity, so two adjacent entities of one type cannot be told apart.

Inside the toolkit every sentence is converted to BIO (`to_bio`) for training and scoring, and back
(`from_bio`) for writing predictions in the scheme of the input.

Chunks are read the way conlleval and seqeval's default mode read them (`entities`), so scores here equal
the scores reported by those tools.
"""

from __future__ import annotations

from collections import Counter

from frugal_lm.errors import DataError
from frugal_lm.metrics import prf

SCHEMES = ("iob1", "bio", "bioes", "plain")

# Prefixes each scheme allows; "plain" allows none.
_PREFIXES = {"iob1": "BI", "bio": "BI", "bioes": "BIES", "plain": ""}
_EXPECTED = "expected one scheme: IOB1, BIO, BIOES or plain labels"


def _parse(tag: str) -> tuple[str, str]:
    """('O', '') for O; (prefix, type) for a prefixed tag; ('', tag) for a plain label.

    A prefix is one letter followed by '-'. Prefixes other than B, I, E, S (``b-PER``, BILOU's ``L-``/``U-``)
    come back as they are, for the caller to reject.
    """
    if tag == "O":
        return "O", ""
    if len(tag) >= 2 and tag[1] == "-" and tag[0].isalpha():
        return tag[0], tag[2:]
    return "", tag


def _bad_tag(tag: str) -> str | None:
    """Why a tag fits no scheme at all, or None when it is well formed."""
    if not tag or tag.strip() != tag or any(c.isspace() for c in tag):
        return f"tag {tag!r} is empty or holds whitespace"
    prefix, type_ = _parse(tag)
    if prefix in ("O", ""):
        return None
    if prefix not in "BIES":
        return (f"tag {tag!r} has an unknown prefix '{prefix}-'; expected 'B-', 'I-', 'E-' or 'S-' "
                "(upper case) before the type, or plain labels without prefix")
    if not type_:
        return f"tag {tag!r} has no entity type after the prefix; expected e.g. '{prefix}-PER'"
    return None


def _where(lines: list[list[int]] | None, i: int, j: int) -> tuple[int | None, str]:
    """The source line of token j of sentence i, or a position in words when lines are unknown."""
    if lines is not None:
        return lines[i][j], ""
    return None, f" (sentence {i + 1}, token {j + 1})"


def detect_scheme(sentences: list[list[str]], path: str = "<data>", lines: list[list[int]] | None = None) -> str:
    """The tag scheme of labelled sentences: "bioes", "iob1", "bio" or "plain".

    Any ``E-``/``S-`` tag means BIOES; B/I/O tags mean IOB1 when some entity starts with ``I-`` (at the
    sentence start, after O, or after a tag of another type), else BIO; no prefixed tag means plain labels
    (an all-O file reads as plain). Tags that fit no scheme raise DataError naming the first one and its line
    (``lines[i][j]`` is the 1-based source line of token j of sentence i).
    """
    first_prefixed: str | None = None  # the first prefixed tag seen, to quote when a plain label follows
    first_plain: str | None = None
    has_es = False
    starts_with_i = False
    for i, sent in enumerate(sentences):
        prev_prefix, prev_type = "O", ""
        for j, tag in enumerate(sent):
            if tag == "O":
                prev_prefix, prev_type = "O", ""
                continue
            problem = _bad_tag(tag)
            if problem is None:
                prefix, type_ = _parse(tag)
                if prefix == "" and first_prefixed is not None:
                    problem = f"tag {tag!r} mixes with prefixed tags like {first_prefixed!r}; {_EXPECTED}"
                elif prefix != "" and first_plain is not None:
                    problem = f"tag {tag!r} mixes with plain labels like {first_plain!r}; {_EXPECTED}"
            if problem is not None:
                line, pos = _where(lines, i, j)
                raise DataError(path, problem + pos, line=line)
            if prefix == "":
                first_plain = first_plain or tag
            else:
                first_prefixed = first_prefixed or tag
                if prefix in "ES":
                    has_es = True
                elif prefix == "I" and (prev_prefix == "O" or prev_type != type_):
                    starts_with_i = True
            prev_prefix, prev_type = prefix, type_
    if has_es:
        return "bioes"
    if first_prefixed is not None:
        return "iob1" if starts_with_i else "bio"
    return "plain"


def check_scheme(sentences: list[list[str]], scheme: str, path: str = "<data>",
                 lines: list[list[int]] | None = None) -> None:
    """Raise DataError at the first tag that does not fit `scheme` (checked tag by tag, not as sequences:
    an ``I-X`` after O in a BIO file is read the conlleval way, see `repair_bio`)."""
    allowed = _scheme_prefixes(scheme)
    for i, sent in enumerate(sentences):
        for j, tag in enumerate(sent):
            if tag == "O":
                continue
            problem = _bad_tag(tag)
            if problem is None:
                prefix, _ = _parse(tag)
                if scheme == "plain" and prefix:
                    problem = (f"tag {tag!r} has a prefix, but the tag scheme is plain; expected labels "
                               "without prefix such as 'PER' or 'O' (or choose the scheme iob1, bio or bioes)")
                elif scheme != "plain" and not prefix:
                    problem = (f"tag {tag!r} has no prefix, but the tag scheme is {scheme}; expected 'O' or "
                               f"{_prefix_list(allowed)} followed by the type (or choose the scheme plain)")
                elif prefix not in allowed:
                    problem = (f"tag {tag!r} does not fit the tag scheme {scheme}; expected 'O' or "
                               f"{_prefix_list(allowed)} followed by the type (or choose the scheme bioes)")
            if problem is not None:
                line, pos = _where(lines, i, j)
                raise DataError(path, problem + pos, line=line)


def _scheme_prefixes(scheme: str) -> str:
    try:
        return _PREFIXES[scheme]
    except KeyError:
        raise ValueError(f"unknown tag scheme {scheme!r}; expected one of {', '.join(SCHEMES)}") from None


def _prefix_list(allowed: str) -> str:
    return ", ".join(f"'{p}-'" for p in allowed)


def entities(tags: list[str]) -> list[tuple[str, int, int]]:
    """Entities as (type, start, end-exclusive), read as conlleval and seqeval's default mode read chunks.

    Works on BIO, IOB1 and BIOES tags, valid or not. A token continues the entity before it only when it is
    ``I-X`` or ``E-X`` and the previous token is ``B-X`` or ``I-X`` of the same type; every other non-O tag
    starts a new entity (so an ``I-X`` after O or after another type starts one, and ``E-X``/``S-X`` end
    one). Raises ValueError for tags that are neither O nor B-/I-/E-/S- with a type.
    """
    found: list[tuple[str, int, int]] = []
    start = -1  # start of the open entity, -1 when none
    prev_prefix, prev_type = "O", ""
    for i, tag in enumerate(tags):
        if tag == "O":
            if start >= 0:
                found.append((prev_type, start, i))
                start = -1
            prev_prefix, prev_type = "O", ""
            continue
        if len(tag) < 3 or tag[1] != "-" or tag[0] not in "BIES":
            raise ValueError(f"tag {tag!r} is not O or B-/I-/E-/S- followed by a type")
        prefix, type_ = tag[0], tag[2:]
        if not (prefix in "IE" and prev_prefix in "BI" and type_ == prev_type):
            if start >= 0:
                found.append((prev_type, start, i))
            start = i
        prev_prefix, prev_type = prefix, type_
    if start >= 0:
        found.append((prev_type, start, len(tags)))
    return found


def _plain_entities(tags: list[str]) -> list[tuple[str, int, int]]:
    """Maximal runs of one non-O label."""
    found: list[tuple[str, int, int]] = []
    start = -1
    for i, tag in enumerate(tags):
        if start >= 0 and tag != tags[start]:
            found.append((tags[start], start, i))
            start = -1
        if start < 0 and tag != "O":
            start = i
    if start >= 0:
        found.append((tags[start], start, len(tags)))
    return found


def _render_bio(n: int, ents: list[tuple[str, int, int]]) -> list[str]:
    out = ["O"] * n
    for type_, start, end in ents:
        out[start] = "B-" + type_
        for k in range(start + 1, end):
            out[k] = "I-" + type_
    return out


def _check_prefixes(tags: list[str], scheme: str) -> None:
    allowed = _scheme_prefixes(scheme)
    for tag in tags:
        if tag != "O" and (len(tag) < 3 or tag[1] != "-" or tag[0] not in allowed):
            raise ValueError(f"tag {tag!r} does not fit the tag scheme {scheme}")


def to_bio(tags: list[str], scheme: str) -> list[str]:
    """One sentence's tags in `scheme` converted to BIO (IOB2). Invalid sequences are read as `entities`
    reads them (conlleval), so ``to_bio(x, "bio")`` is `repair_bio` (x)."""
    if scheme == "plain":
        for tag in tags:
            if _parse(tag)[0] not in ("O", "") or not tag:
                raise ValueError(f"tag {tag!r} does not fit the tag scheme plain")
        return _render_bio(len(tags), _plain_entities(tags))
    _check_prefixes(tags, scheme)
    return _render_bio(len(tags), entities(tags))


def from_bio(tags: list[str], scheme: str) -> list[str]:
    """One sentence's BIO tags converted to `scheme`, after `repair_bio` (predictions may be invalid).

    "plain" drops the prefixes (adjacent entities of one type merge); "iob1" writes ``B-X`` only where an
    entity directly follows one of the same type; "bioes" marks single tokens ``S-X`` and last tokens ``E-X``.
    """
    _scheme_prefixes(scheme)
    ents = entities(repair_bio(tags))
    if scheme == "bio":
        return _render_bio(len(tags), ents)
    out = ["O"] * len(tags)
    prev_type, prev_end = "", -1
    for type_, start, end in ents:
        if scheme == "plain":
            out[start:end] = [type_] * (end - start)
        elif scheme == "iob1":
            out[start:end] = ["I-" + type_] * (end - start)
            if prev_end == start and prev_type == type_:
                out[start] = "B-" + type_
        else:  # bioes
            if end - start == 1:
                out[start] = "S-" + type_
            else:
                out[start:end] = ["B-" + type_] + ["I-" + type_] * (end - start - 2) + ["E-" + type_]
        prev_type, prev_end = type_, end
    return out


def repair_bio(tags: list[str]) -> list[str]:
    """Make BIO tags valid: an ``I-X`` at the sentence start, after O, or after a tag of another type
    becomes ``B-X``; every other tag is kept.

    This is the conlleval reading (also seqeval's default mode, which counts such an ``I-X`` as the start of
    a chunk), so repairing never changes the entities a scorer sees. Raises ValueError for tags other than
    O, ``B-X`` and ``I-X``.
    """
    out = list(tags)
    prev_type = ""  # "" after O and at the start
    for i, tag in enumerate(tags):
        if tag == "O":
            prev_type = ""
            continue
        if len(tag) < 3 or tag[1] != "-" or tag[0] not in "BI":
            raise ValueError(f"tag {tag!r} is not a BIO tag (O, B-X or I-X)")
        type_ = tag[2:]
        if tag[0] == "I" and type_ != prev_type:
            out[i] = "B-" + type_
        prev_type = type_
    return out


def entity_metrics(gold: list[list[str]], pred: list[list[str]]) -> dict:
    """Entity-level micro precision / recall / F1 (exact type and span), per type, and token accuracy.

    `gold` and `pred` are sentences of BIO tags (IOB1/BIOES and invalid sequences are read as `entities`
    reads them), with the same number of sentences and tokens. Equal to seqeval's default mode.
    """
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} sentences, predictions have {len(pred)}")
    n_gold: Counter[str] = Counter()
    n_pred: Counter[str] = Counter()
    n_correct: Counter[str] = Counter()
    tokens = same = 0
    for k, (g, p) in enumerate(zip(gold, pred, strict=True)):
        if len(g) != len(p):
            raise ValueError(f"sentence {k + 1}: gold has {len(g)} tags, prediction has {len(p)}")
        tokens += len(g)
        same += sum(a == b for a, b in zip(g, p, strict=True))
        g_ents, p_ents = entities(g), entities(p)
        n_gold.update(e[0] for e in g_ents)
        n_pred.update(e[0] for e in p_ents)
        n_correct.update(e[0] for e in set(g_ents) & set(p_ents))
    tp, n_g, n_p = sum(n_correct.values()), sum(n_gold.values()), sum(n_pred.values())
    overall = prf(tp, n_p - tp, n_g - tp)
    per_type = {}
    for type_ in sorted(n_gold.keys() | n_pred.keys()):
        t = n_correct[type_]
        per_type[type_] = prf(t, n_pred[type_] - t, n_gold[type_] - t)
    return {
        "precision": overall["precision"],
        "recall": overall["recall"],
        "f1": overall["f1"],
        "token_accuracy": same / tokens if tokens else 0.0,
        "per_type": per_type,
        "entities_gold": n_g,
        "entities_pred": n_p,
        "entities_correct": tp,
    }
