"""Tag schemes and entity metrics: detection, conversion, repair, and parity with seqeval's default mode."""

from __future__ import annotations

import random
import warnings
from collections import Counter
from pathlib import Path

import pytest
from seqeval.metrics import accuracy_score, classification_report, f1_score, precision_score, recall_score
from seqeval.metrics.sequence_labeling import get_entities

from frugal_lm.data.conll import read_conll
from frugal_lm.data.tags import (
    SCHEMES,
    check_scheme,
    detect_scheme,
    entities,
    entity_metrics,
    from_bio,
    repair_bio,
    to_bio,
)
from frugal_lm.errors import DataError

SLICE = Path(__file__).parent / "data" / "conll_train_200.txt"  # first 200 sentences of CoNLL-2003 eng.train
TYPES = ["PER", "LOC", "ORG", "MISC"]


@pytest.fixture(scope="module")
def iob1() -> list[list[str]]:
    return [s.tags for s in read_conll(SLICE)]


def seqeval_entities(tags: list[str]) -> list[tuple[str, int, int]]:
    """seqeval's chunks with the end made exclusive, for comparison with ours."""
    return [(t, s, e + 1) for t, s, e in get_entities(tags)]


def random_tags(rng: random.Random, n: int, prefixes: str, p_o: float = 0.4) -> list[str]:
    """Tags drawn freely, so every invalid sequence (I- after O, E- without B-, ...) turns up."""
    return ["O" if rng.random() < p_o else f"{rng.choice(prefixes)}-{rng.choice(TYPES)}" for _ in range(n)]


# --- detection and checking -------------------------------------------------------------------------------

@pytest.mark.parametrize("sentences, expected", [
    ([["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG"]], "bio"),
    ([["B-PER", "I-PER", "B-PER", "I-PER"]], "bio"),
    ([["I-PER", "O"]], "iob1"),                      # I- at the sentence start
    ([["B-PER", "O", "I-LOC"]], "iob1"),             # I- after O
    ([["B-PER", "I-LOC"]], "iob1"),                  # I- after another type
    ([["I-PER", "B-PER"]], "iob1"),
    ([["B-PER", "E-PER", "O"]], "bioes"),
    ([["O"], ["S-LOC"]], "bioes"),
    ([["I-PER", "S-LOC"]], "bioes"),                  # E-/S- anywhere wins
    ([["PER", "PER", "O", "LOC"]], "plain"),
    ([["O", "O"], ["O"]], "plain"),                   # nothing to tell: plain
    ([], "plain"),
    ([["GPE-LOC", "O"]], "plain"),                    # a hyphen alone is no prefix
])
def test_detect_scheme(sentences, expected):
    assert detect_scheme(sentences) == expected
    check_scheme(sentences, expected)


def test_detect_scheme_on_conll2003_slice(iob1):
    assert detect_scheme(iob1) == "iob1"
    check_scheme(iob1, "iob1")
    check_scheme(iob1, "bio")
    check_scheme(iob1, "bioes")


@pytest.mark.parametrize("sentences, line, message", [
    ([["B-LOC", "O"], ["PER", "O"]], 12,
     "tag 'PER' mixes with prefixed tags like 'B-LOC'; expected one scheme: IOB1, BIO, BIOES or plain labels"),
    ([["PER", "O"], ["O", "I-LOC"]], 13,
     "tag 'I-LOC' mixes with plain labels like 'PER'; expected one scheme: IOB1, BIO, BIOES or plain labels"),
    ([["O", "O"], ["B-", "O"]], 12, "tag 'B-' has no entity type after the prefix; expected e.g. 'B-PER'"),
    ([["O", "b-PER"]], 11, "tag 'b-PER' has an unknown prefix 'b-'"),
    ([["U-PER"]], 10, "tag 'U-PER' has an unknown prefix 'U-'"),
    ([["O", ""]], 11, "tag '' is empty or holds whitespace"),
])
def test_detect_scheme_errors_name_tag_and_line(sentences, line, message):
    lines = [[10 + j for j in range(len(s))] if i == 0 else [12 + j for j in range(len(s))]
             for i, s in enumerate(sentences)]
    with pytest.raises(DataError) as exc:
        detect_scheme(sentences, "train.conll", lines)
    assert str(exc.value).startswith(f"train.conll:{line}: {message}")
    assert exc.value.line == line


def test_detect_scheme_error_without_lines_gives_position():
    with pytest.raises(DataError) as exc:
        detect_scheme([["O"], ["O", "B-LOC", "LOC"]])
    assert str(exc.value).startswith("<data>: tag 'LOC' mixes with prefixed tags like 'B-LOC'")
    assert "(sentence 2, token 3)" in str(exc.value)
    assert exc.value.line is None


@pytest.mark.parametrize("tags, scheme, line, message", [
    (["B-PER", "E-PER"], "bio", 4, "tag 'E-PER' does not fit the tag scheme bio; expected 'O' or 'B-', 'I-'"),
    (["S-PER"], "iob1", 3, "tag 'S-PER' does not fit the tag scheme iob1"),
    (["PER", "B-PER"], "plain", 4, "tag 'B-PER' has a prefix, but the tag scheme is plain"),
    (["B-PER", "LOC"], "bioes", 4, "tag 'LOC' has no prefix, but the tag scheme is bioes"),
    (["x-PER"], "bioes", 3, "tag 'x-PER' has an unknown prefix 'x-'"),
])
def test_check_scheme_errors(tags, scheme, line, message):
    with pytest.raises(DataError) as exc:
        check_scheme([["O"], tags], scheme, "d.txt", [[1], [3, 4]])
    assert str(exc.value).startswith(f"d.txt:{line}: {message}")


def test_unknown_scheme():
    with pytest.raises(ValueError, match="unknown tag scheme 'bilou'"):
        check_scheme([["O"]], "bilou")
    with pytest.raises(ValueError, match="unknown tag scheme"):
        to_bio(["O"], "bilou")
    with pytest.raises(ValueError, match="unknown tag scheme"):
        from_bio(["O"], "bilou")


# --- conversion ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tags, scheme, bio", [
    (["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-ORG"], "iob1",
     ["B-PER", "I-PER", "B-PER", "O", "B-LOC", "B-ORG"]),
    (["B-PER", "E-PER", "S-PER", "O", "B-LOC", "I-LOC", "E-LOC"], "bioes",
     ["B-PER", "I-PER", "B-PER", "O", "B-LOC", "I-LOC", "I-LOC"]),
    (["PER", "PER", "LOC", "O", "O", "PER"], "plain", ["B-PER", "I-PER", "B-LOC", "O", "O", "B-PER"]),
    (["I-PER", "B-PER", "I-PER", "O"], "bio", ["B-PER", "B-PER", "I-PER", "O"]),  # repaired
    ([], "bio", []),
])
def test_to_bio(tags, scheme, bio):
    assert to_bio(tags, scheme) == bio


@pytest.mark.parametrize("bio, scheme, out", [
    (["B-PER", "I-PER", "B-PER", "O", "B-LOC", "B-ORG"], "iob1",
     ["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-ORG"]),
    (["B-PER", "I-PER", "B-PER", "O", "B-LOC", "I-LOC", "I-LOC"], "bioes",
     ["B-PER", "E-PER", "S-PER", "O", "B-LOC", "I-LOC", "E-LOC"]),
    (["B-PER", "I-PER", "B-PER", "O", "B-LOC"], "plain", ["PER", "PER", "PER", "O", "LOC"]),
    (["I-PER", "O", "B-LOC", "I-ORG"], "bio", ["B-PER", "O", "B-LOC", "B-ORG"]),  # unrepaired input
    (["I-PER", "I-LOC", "I-LOC"], "bioes", ["S-PER", "B-LOC", "E-LOC"]),
])
def test_from_bio(bio, scheme, out):
    assert from_bio(bio, scheme) == out


def test_to_bio_rejects_tags_of_another_scheme():
    with pytest.raises(ValueError, match="'E-PER' does not fit the tag scheme iob1"):
        to_bio(["B-PER", "E-PER"], "iob1")
    with pytest.raises(ValueError, match="'B-PER' does not fit the tag scheme plain"):
        to_bio(["B-PER"], "plain")


def adjacent_same_type(bio: list[str]) -> bool:
    """Whether an entity directly follows one of the same type (B-X right after B-X or I-X)."""
    return any(t.startswith("B-") and p[2:] == t[2:] for p, t in zip(bio[:-1], bio[1:], strict=True) if p != "O")


def test_round_trips_on_conll2003_slice(iob1):
    bio = [to_bio(s, "iob1") for s in iob1]
    for scheme in ("iob1", "bio", "bioes"):
        assert [to_bio(from_bio(s, scheme), scheme) for s in bio] == bio, scheme
    # The slice is canonical IOB1, so it also survives IOB1 -> BIO -> IOB1.
    assert [from_bio(s, "iob1") for s in bio] == iob1
    # Plain labels cannot separate adjacent entities of one type: exactly those sentences change.
    changed = [i for i, s in enumerate(bio) if to_bio(from_bio(s, "plain"), "plain") != s]
    merged = [i for i, s in enumerate(bio) if adjacent_same_type(s)]
    assert changed == merged and len(merged) >= 1


def test_round_trips_on_random_valid_sequences():
    rng = random.Random(1)
    for _ in range(2000):
        bio = repair_bio(random_tags(rng, rng.randint(0, 12), "BI"))
        for scheme in SCHEMES:
            back = to_bio(from_bio(bio, scheme), scheme)
            assert back == bio or (scheme == "plain" and adjacent_same_type(bio)), (scheme, bio)
            assert detect_scheme([from_bio(bio, scheme)]) in (scheme, "bio", "plain")


def test_iob1_to_bio_keeps_seqevals_entities(iob1):
    for tags in iob1:
        assert entities(to_bio(tags, "iob1")) == seqeval_entities(tags)


def count_iob1_entities(sentences: list[list[str]]) -> Counter:
    """Count IOB1 entities from their definition: a tagged token starts one when it is B-, or when the
    token before it is O, absent, or of another type."""
    counts: Counter = Counter()
    for tags in sentences:
        for j, tag in enumerate(tags):
            if tag == "O":
                continue
            prev = tags[j - 1] if j else "O"
            if tag.startswith("B-") or prev == "O" or prev[2:] != tag[2:]:
                counts[tag[2:]] += 1
    return counts


def test_entity_counts_on_conll2003_slice(iob1):
    expected = count_iob1_entities(iob1)
    ours = Counter(t for s in iob1 for t, _, _ in entities(to_bio(s, "iob1")))
    theirs = Counter(t for t, _, _ in get_entities(iob1))
    assert ours == expected == theirs
    assert set(expected) == set(TYPES)


# --- repair and chunking ------------------------------------------------------------------------------------

@pytest.mark.parametrize("tags, repaired", [
    (["I-PER", "I-PER"], ["B-PER", "I-PER"]),                       # at the start
    (["O", "I-PER", "O"], ["O", "B-PER", "O"]),                     # after O
    (["B-LOC", "I-PER", "I-PER"], ["B-LOC", "B-PER", "I-PER"]),     # after another type
    (["B-PER", "I-PER", "B-PER"], ["B-PER", "I-PER", "B-PER"]),     # valid: unchanged
    (["O", "O"], ["O", "O"]),
    ([], []),
])
def test_repair_bio(tags, repaired):
    assert repair_bio(tags) == repaired
    assert repair_bio(repaired) == repaired
    # Repair never changes what a conlleval-style scorer reads.
    assert entities(repaired) == entities(tags) == seqeval_entities(tags)


def test_repair_bio_rejects_other_schemes():
    with pytest.raises(ValueError, match="'E-PER' is not a BIO tag"):
        repair_bio(["B-PER", "E-PER"])


@pytest.mark.filterwarnings("ignore")
def test_entities_match_seqeval_on_any_prefix_mix():
    rng = random.Random(2)
    for _ in range(3000):
        tags = random_tags(rng, rng.randint(0, 10), "BIES", p_o=0.3)
        assert entities(tags) == seqeval_entities(tags), tags


def test_entities_rejects_malformed_tags():
    for bad in ("PER", "B-", "b-PER", "L-PER"):
        with pytest.raises(ValueError, match="is not O or B-/I-/E-/S-"):
            entities(["O", bad])


# --- metrics ------------------------------------------------------------------------------------------------

def test_entity_metrics_small_example():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["I-ORG", "O"]]  # I-ORG at the start counts as B-ORG
    m = entity_metrics(gold, pred)
    assert (m["entities_gold"], m["entities_pred"], m["entities_correct"]) == (3, 3, 2)
    assert m["precision"] == m["recall"] == pytest.approx(2 / 3)
    assert m["token_accuracy"] == pytest.approx(4 / 6)
    assert list(m["per_type"]) == ["LOC", "ORG", "PER"]
    assert m["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["per_type"]["ORG"]["precision"] == pytest.approx(0.5)
    assert m["per_type"]["ORG"]["support"] == 1


def test_entity_metrics_type_only_in_predictions():
    m = entity_metrics([["O", "O"]], [["B-MISC", "O"]])
    assert m["per_type"] == {"MISC": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}}
    assert (m["precision"], m["recall"], m["f1"]) == (0.0, 0.0, 0.0)


def test_entity_metrics_empty():
    m = entity_metrics([], [])
    assert (m["precision"], m["recall"], m["f1"], m["token_accuracy"]) == (0.0, 0.0, 0.0, 0.0)
    assert m["per_type"] == {}


def test_entity_metrics_length_mismatch():
    with pytest.raises(ValueError, match="gold has 2 sentences, predictions have 1"):
        entity_metrics([["O"], ["O"]], [["O"]])
    with pytest.raises(ValueError, match="sentence 2: gold has 2 tags, prediction has 1"):
        entity_metrics([["O"], ["O", "O"]], [["O"], ["O"]])


def noisy_copy(rng: random.Random, gold: list[str]) -> list[str]:
    """A prediction: mostly the gold tag, sometimes any tag, so partial and invalid chunks are common."""
    return [t if rng.random() < 0.8 else rng.choice(["O", *(f"{p}-{x}" for p in "BI" for x in TYPES)])
            for t in gold]


@pytest.mark.parametrize("seed", [0, 1])
def test_entity_metrics_equal_seqeval_default_mode(seed):
    rng = random.Random(seed)
    gold = [random_tags(rng, rng.randint(1, 20), "BI") for _ in range(2500)]
    if seed == 0:
        gold = [repair_bio(s) for s in gold]  # valid gold, as from a file; seed 1: invalid gold as well
    pred = [noisy_copy(rng, s) for s in gold]
    ours = entity_metrics(gold, pred)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = classification_report(gold, pred, output_dict=True)
        assert ours["precision"] == pytest.approx(precision_score(gold, pred), abs=1e-12, rel=0)
        assert ours["recall"] == pytest.approx(recall_score(gold, pred), abs=1e-12, rel=0)
        assert ours["f1"] == pytest.approx(f1_score(gold, pred), abs=1e-12, rel=0)
        assert ours["token_accuracy"] == pytest.approx(accuracy_score(gold, pred), abs=1e-12, rel=0)
    assert 0.3 < ours["f1"] < 0.95  # the noise leaves a score that can be wrong in either direction
    micro = report["micro avg"]
    assert ours["entities_gold"] == micro["support"]
    assert set(ours["per_type"]) == set(report) - {"micro avg", "macro avg", "weighted avg"} == set(TYPES)
    for type_, ours_t in ours["per_type"].items():
        for key in ("precision", "recall", "f1-score", "support"):
            assert ours_t[key.replace("-score", "")] == pytest.approx(report[type_][key], abs=1e-12, rel=0), (
                type_, key)
