"""Constrained IOB2 decoding (fastft.data.iob) in evaluation and in the served entities."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from tiny_ner import NER_LABELS, NER_TEXTS, save_tiny_token_model

from fastft.data.iob import decode_tags, is_iob2_labels, to_iob2, transitions

LABELS = list(NER_LABELS)


def valid(tags: list[str]) -> bool:
    prev = "O"
    for t in tags:
        if t.startswith("I-") and prev[2:] != t[2:]:
            return False
        prev = t
    return True


def test_transitions_follow_iob2():
    start, follow = transitions(LABELS)
    ix = LABELS.index
    assert not start[ix("I-PER")] and start[ix("B-PER")] and start[ix("O")]
    assert follow[ix("B-PER"), ix("I-PER")] and follow[ix("I-PER"), ix("I-PER")]
    assert not follow[ix("O"), ix("I-PER")] and not follow[ix("B-ORG"), ix("I-PER")]
    assert not follow[ix("I-LOC"), ix("I-PER")] and follow[ix("I-LOC"), ix("B-PER")]
    assert follow[:, ix("O")].all() and follow[:, ix("B-MISC")].all()


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_viterbi_is_the_best_valid_sequence_by_brute_force(n):
    rng = np.random.default_rng(n)
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    for _ in range(20):
        logits = rng.normal(size=(n, len(labels))) * 3
        lp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        got = decode_tags(lp, labels)
        best = max(
            (seq for seq in itertools.product(range(len(labels)), repeat=n) if valid([labels[i] for i in seq])),
            key=lambda seq: lp[np.arange(n), list(seq)].sum(),
        )
        assert tuple(got.tolist()) == best
        if valid([labels[i] for i in lp.argmax(1)]):  # a valid argmax is already the best
            assert got.tolist() == lp.argmax(1).tolist()


def test_labels_that_are_not_iob2_decode_by_argmax():
    lp = np.log(np.array([[0.2, 0.8], [0.7, 0.3]]))
    assert not is_iob2_labels(["POS", "NEG"]) and not is_iob2_labels(["O", "I-PER"])
    assert is_iob2_labels(LABELS) and not is_iob2_labels(["O", "B-PER"])  # no I- tag: nothing to constrain
    assert decode_tags(lp, ["POS", "NEG"]).tolist() == [1, 0]
    assert decode_tags(np.zeros((0, 2)), ["POS", "NEG"]).tolist() == []
    with pytest.raises(ValueError, match="must be"):
        decode_tags(np.zeros((3, 4)), LABELS)


def test_iob1_files_are_read_as_iob2(tmp_path):
    assert to_iob2(["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]) == [
        "B-PER", "I-PER", "O", "B-LOC", "B-LOC", "B-ORG",
    ]  # fmt: skip
    assert to_iob2(["B-PER", "I-PER", "I-PER"]) == ["B-PER", "I-PER", "I-PER"]
    from fastft.data.tokens import load_token_data

    rows = [{"tokens": ["Peter", "Smith", "in", "Paris"], "tags": ["I-PER", "I-PER", "O", "I-LOC"]}] * 5
    f = tmp_path / "iob1.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    splits = load_token_data(str(f))
    assert splits.labels == ["O", "B-LOC", "B-PER", "I-PER"]
    assert [splits.labels[t] for t in splits.train.tags[0]] == ["B-PER", "I-PER", "O", "B-LOC"]


def two_word_probs():
    """Two words ("Ann", "Lee", one piece each, between [CLS] and [SEP]) whose argmax tags are the
    invalid O I-PER; the best valid reading is B-PER I-PER (0.4 * 0.9 against 0.6 * 0.05)."""
    p = np.full((4, len(LABELS)), 0.0)
    ix = LABELS.index
    p[0, ix("O")] = p[3, ix("O")] = 1.0
    p[1, ix("O")], p[1, ix("B-PER")] = 0.6, 0.4
    p[2, ix("I-PER")], p[2, ix("O")], p[2, ix("B-PER")] = 0.9, 0.05, 0.05
    return p, [None, 0, 1, None]


def test_served_entities_are_decoded_as_valid_sequences():
    from fastft.runtime.entities import aggregate_simple, token_tags

    probs, word_ids = two_word_probs()
    text = "Ann Lee"
    offsets, pieces = [(0, 0), (0, 3), (4, 7), (0, 0)], ["[CLS]", "ann", "lee", "[SEP]"]
    args = (text, probs, [101, 1, 2, 102], offsets, [1, 0, 0, 1], pieces, LABELS, None, " ".join)
    plain = aggregate_simple(*args, token_tags(probs, word_ids, LABELS, "argmax"))
    assert [(e["entity"], e["start"], e["end"]) for e in plain] == [("PER", 4, 7)]
    assert plain == aggregate_simple(*args)  # argmax is what the pipeline does
    tags, scores = token_tags(probs, word_ids, LABELS)
    assert [LABELS[t] for t in tags[1:3]] == ["B-PER", "I-PER"] and scores[1:3].tolist() == pytest.approx([0.4, 0.9])
    best = aggregate_simple(*args, (tags, scores))
    assert [(e["entity"], e["start"], e["end"], e["word"]) for e in best] == [("PER", 0, 7, "ann lee")]
    assert best[0]["score"] == pytest.approx(0.65)
    with pytest.raises(ValueError, match="decode"):
        token_tags(probs, word_ids, LABELS, "greedy")


def test_later_word_pieces_take_their_words_tag():
    from fastft.runtime.entities import token_tags

    ix = LABELS.index
    p = np.full((5, len(LABELS)), 0.01)
    p[1, ix("B-LOC")] = p[2, ix("B-ORG")] = p[3, ix("O")] = 0.9  # piece 2 is "Paris"'s second piece
    tags, scores = token_tags(p / p.sum(1, keepdims=True), [None, 0, 0, 1, None], LABELS)
    assert [LABELS[t] for t in tags[1:4]] == ["B-LOC", "I-LOC", "O"]
    assert scores[2] == scores[1]


def test_entity_f1_uses_the_valid_sequence_and_records_argmax(tmp_path):
    from fastft.train.token_metrics import token_scores

    probs, word_ids = two_word_probs()
    true = [[LABELS.index("B-PER"), LABELS.index("I-PER")]]
    best = token_scores([np.log(probs + 1e-12)], [word_ids], true, LABELS)
    plain = token_scores([np.log(probs + 1e-12)], [word_ids], true, LABELS, decode="argmax")
    assert best["decode"] == "viterbi" and best["f1"] == 1.0 and best["f1_argmax"] == 0.0
    assert plain["f1"] == 0.0 and "f1_argmax" not in plain and plain["loss"] == best["loss"]
    with pytest.raises(ValueError, match="decode"):
        token_scores([probs], [word_ids], true, LABELS, decode="beam")


def test_a_model_predicts_valid_tag_sequences(tmp_path):
    """The tiny random model's argmax spells invalid sequences; what fastft serves never does."""
    import fastft
    from fastft.core.numerics import softmax
    from fastft.runtime.entities import token_tags

    d = save_tiny_token_model(tmp_path / "ner")
    pred = fastft.load(d, backend="torch", threads=1)
    assert pred.decode == "viterbi" and pred.info()["decode"] == "viterbi"
    enc = pred.encoder.encode(NER_TEXTS)
    invalid = 0
    for i, lg in enumerate(pred.logits(NER_TEXTS)):
        probs = softmax(lg)
        first = [enc.word_ids[i].index(w) for w in sorted({w for w in enc.word_ids[i] if w is not None})]
        best, _ = token_tags(probs, enc.word_ids[i], LABELS)
        assert valid([LABELS[t] for t in best[first]])
        invalid += not valid([LABELS[t] for t in probs.argmax(1)[first]])
    assert invalid >= 1  # the check is not vacuous
    ents = pred.predict(NER_TEXTS)
    assert ents != fastft.load(d, backend="torch", threads=1, decode="argmax").predict(NER_TEXTS)
    with pytest.raises(fastft.FastftError, match="decode"):
        fastft.load(d, backend="torch", decode="crf")


def test_cli_predict_decode_option(tmp_path, capsys):
    import fastft
    from fastft.cli import main

    d = save_tiny_token_model(tmp_path / "ner")
    for decode in ("viterbi", "argmax"):
        assert main(["predict", "--model", str(d), "--decode", decode, "--json", *NER_TEXTS[:3]]) == 0
        rows = json.loads(capsys.readouterr().out)
        want = fastft.load(d, backend="torch", threads=1, decode=decode).predict(NER_TEXTS[:3])
        got = [[(e["entity"], e["start"], e["end"]) for e in r["entities"]] for r in rows]
        assert got == [[(e["entity"], e["start"], e["end"]) for e in ents] for ents in want]


def test_a_type_with_no_inside_tag_decodes_and_its_words_stay_whole():
    """An entity type whose entities are all one word long has B-LOC and no I-LOC: decoding such a
    label set crashed every command (tuple.index) after training; a word of several pieces tagged
    B-LOC is one entity, and its span ends past a trailing combining mark."""
    from fastft.data.iob import inside_tags
    from fastft.runtime.entities import aggregate_simple, token_tags
    from fastft.train.token_metrics import token_scores

    labels = ["O", "B-LOC", "B-PER", "I-PER"]
    assert is_iob2_labels(labels) and inside_tags(labels).tolist() == [0, 1, 3, 3]
    p = np.full((5, 4), 0.01)
    p[0, 0] = p[4, 0] = p[3, 0] = 1.0
    p[1, 1] = 0.9  # "Cafe" of "Cafe\u0301", then "##fe" leaning I-PER, then "is"
    p[2, 3] = 0.9
    p /= p.sum(1, keepdims=True)
    word_ids = [None, 0, 0, 1, None]
    tags, _ = token_tags(p, word_ids, labels)
    assert [labels[t] for t in tags[1:4]] == ["B-LOC", "B-LOC", "O"]
    text = "Cafe\u0301 is"
    args = (text, p, [101, 7, 8, 9, 102], [(0, 0), (0, 2), (2, 4), (6, 8), (0, 0)], [1, 0, 0, 0, 1])
    ents = aggregate_simple(*args, ["[CLS]", "ca", "##fe", "is", "[SEP]"], labels, None, "".join, (tags, _), word_ids)
    assert [(e["entity"], e["start"], e["end"]) for e in ents] == [("LOC", 0, 5)] and text[0:5] == "Cafe\u0301"
    scores = token_scores([np.log(p)], [word_ids], [[1, 0]], labels)
    assert scores["f1"] == 1.0


def test_words_with_no_token_are_left_out_of_the_score_and_cut_sentences_counted():
    """A zero-width character standing as a word has no piece: it was scored O, so an entity around
    it never matched (f1 0.4 with perfect logits); words past the max length are counted."""
    from fastft.train.token_metrics import token_scores

    labels = ["O", "B-PER", "I-PER"]
    logp = np.log(np.array([[0.98, 0.01, 0.01], [0.01, 0.98, 0.01], [0.01, 0.01, 0.98], [0.98, 0.01, 0.01]]))
    rows = logp[[0, 1, 2, 3, 0]]  # [CLS] Ada Lovelace spoke [SEP]; word 1 ("\u200b") has no piece
    got = token_scores([rows], [[None, 0, 2, 3, None]], [[1, 2, 2, 0]], labels, max_length=16)
    assert got["f1"] == 1.0 and got["tokenless_words"] == 1 and got["cut"]["sentences"] == 0
    # cut at 4 positions: "Ada Lovelace" and "spoke" past the cut ([CLS] Ada Love [SEP])
    cut = token_scores([logp[[0, 1, 2, 0]]], [[None, 0, 1, None]], [[1, 2, 0, 1]], labels, max_length=4)
    assert cut["cut"] == {"sentences": 1, "words": 2, "entities": 1} and cut["tokenless_words"] == 0
    assert cut["recall"] == 0.5


def test_a_label_set_whose_first_label_is_not_o_scores_its_entities():
    """Label id 0 is a tag like any other (a Hugging Face head may put B-PER first); only -1 is O,
    also for the argmax figures of words past the cut."""
    from fastft.train.token_metrics import token_scores

    labels = ["B-PER", "I-PER", "O"]
    logp = np.log(np.array([[0.98, 0.01, 0.01], [0.01, 0.01, 0.98]]))
    got = token_scores([logp[[1, 0, 1, 1]]], [[None, 0, 1, None]], [[0, 2]], labels, max_length=16)
    assert got["f1"] == 1.0 and got["f1_argmax"] == 1.0
    # cut after the first word: "B-PER O B-PER", the last entity past the cut, predicted O
    cut = token_scores([logp[[1, 0, 1]]], [[None, 0, None]], [[0, 2, 0]], labels, max_length=3)
    assert cut["cut"] == {"sentences": 1, "words": 2, "entities": 1}
    assert (cut["precision"], cut["recall"]) == (1.0, 0.5)
    assert (cut["precision_argmax"], cut["recall_argmax"]) == (1.0, 0.5)


def test_token_loss_is_the_mean_over_words_not_sentences():
    """``loss`` is the cross-entropy averaged over every scored word, however the words fall into sentences."""
    from fastft.train.token_metrics import token_scores

    labels = ["O", "B-PER", "I-PER"]
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6], [0.5, 0.25, 0.25]])
    rows = [np.log(p[[0, 0, 0]]), np.log(p[[0, 1, 2, 3, 0]])]  # [CLS] w [SEP]; [CLS] w w w [SEP]
    got = token_scores(rows, [[None, 0, None], [None, 0, 1, 2, None]], [[0], [1, 2, 0]], labels)
    assert got["loss"] == pytest.approx(-np.log([0.7, 0.6, 0.6, 0.5]).mean())


def test_an_entity_opening_with_i_past_the_cut_counts_as_cut():
    """An entity spelt O I-PER I-PER (conlleval reads it as one) that runs past the cut is a cut entity."""
    from fastft.train.token_metrics import token_scores

    labels = ["O", "B-PER", "I-PER"]
    logp = np.log(np.array([[0.98, 0.01, 0.01], [0.01, 0.98, 0.01], [0.01, 0.01, 0.98]]))
    rows = logp[[0, 1, 0, 2, 0]]  # [CLS] Ada said Grace [SEP], "Hopper" past the cut
    got = token_scores([rows], [[None, 0, 1, 2, None]], [[1, 0, 2, 2]], labels, max_length=5)
    assert got["cut"] == {"sentences": 1, "words": 1, "entities": 1}


def test_a_prefix_without_a_type_is_not_an_iob_tag():
    """``B-`` and ``I-`` alone name no entity type: not IOB tags; ``O``, ``B-X``, ``I-X`` are."""
    from fastft.data.iob import is_iob_tag

    assert is_iob_tag("O") and is_iob_tag("B-X") and is_iob_tag("I-PER")
    assert not is_iob_tag("B-") and not is_iob_tag("I-") and not is_iob_tag("X-PER") and not is_iob_tag("PER")


def test_entity_spans_scores_and_words_are_exact():
    """aggregate_simple: a group spans its first token's start to its last's end (past a combining
    mark the tokenizer dropped), scores the mean of its tokens, and an unknown token is its text."""
    from fastft.runtime.entities import aggregate_simple

    text = "Ann Lee met Cafe\u0301 \u2603"
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    tokens = ["[CLS]", "ann", "lee", "met", "cafe", "[UNK]", "[SEP]"]
    offsets = [(0, 0), (0, 3), (4, 7), (8, 11), (12, 16), (18, 19), (0, 0)]
    special = [1, 0, 0, 0, 0, 0, 1]
    tags, scores = [0, 1, 2, 0, 3, 3, 0], [0.9, 0.9, 0.7, 0.9, 0.8, 0.6, 0.9]
    probs = np.full((7, 5), 0.01, dtype=np.float32)
    probs[np.arange(7), tags] = scores
    ids = [101, 5, 6, 7, 8, 100, 102]
    ents = aggregate_simple(text, probs, ids, offsets, special, tokens, labels, 100, " ".join)
    assert [(e["entity"], e["start"], e["end"], e["word"]) for e in ents] == [
        ("PER", 0, 7, "ann lee"),
        ("LOC", 12, 17, "cafe"),
        ("LOC", 18, 19, "\u2603"),
    ]
    assert [e["score"] for e in ents] == pytest.approx([0.8, 0.8, 0.6])
    plain = ["O", "PER"]  # labels without B-/I-: a run of one type is one entity
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3]], dtype=np.float32)
    ents = aggregate_simple(
        "Ann Lee", probs, [101, 5, 6, 102], offsets[:3] + [(0, 0)], [1, 0, 0, 1], tokens, plain, 100, " ".join
    )
    assert [(e["entity"], e["start"], e["end"], e["word"]) for e in ents] == [("PER", 0, 7, "ann lee")]
    assert ents[0]["score"] == pytest.approx(0.7)
