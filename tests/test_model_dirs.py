"""Model directories in states that would serve wrong answers silently: refused in one line
wherever they are loaded (fastft.load on both backends, export, eval's torch path).

Each case is a copy of the tiny classifier with one thing changed, as an outside audit found
them: a head whose labels disagree between fastft.json and config.json, labels named twice,
id2label keys that skip, a regression or multi-label head, weights missing from the file
(transformers filled them at random: answers changed from load to load).
"""

from __future__ import annotations

import json
import shutil

import pytest

import fastft
from fastft.core.errors import ModelError
from fastft.data import collate


def _edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _variant(tiny_model_dir, tmp_path, config=None, meta=None):
    d = tmp_path / "m"
    shutil.copytree(tiny_model_dir, d)
    if config:
        _edit_json(d / "config.json", **config)
    if meta:
        _edit_json(d / "fastft.json", **meta)
    return d


CASES = [
    (  # label i is logit i: an id2label in the other order than fastft.json once scored 0.12 on torch, 0.88 on ORT
        "swapped",
        {"id2label": {"0": "positive", "1": "negative"}, "label2id": {"positive": 0, "negative": 1}},
        None,
        "must agree, order included",
    ),
    ("twice", {"id2label": {"0": "good", "1": "good"}}, {"labels": ["good", "good"]}, "'good' appears twice"),
    ("skips", {"id2label": {"0": "negative", "5": "positive"}}, {"labels": None}, "id2label keys must be 0..1"),
    ("regression", {"problem_type": "regression"}, None, "regression model"),
    (  # transformers' default names say nothing of order, but the count must match the head's
        "count",
        {"id2label": {"0": "LABEL_0", "1": "LABEL_1"}},
        {"labels": ["a", "b", "c"]},
        "names 3 labels .* but the head in config.json has 2 outputs",
    ),
    ("multi-label", {"problem_type": "multi_label_classification"}, None, "several labels per text"),
]


@pytest.mark.parametrize("config, meta, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_head_that_would_be_served_wrong_is_refused(tiny_model_dir, tmp_path, config, meta, message):
    d = _variant(tiny_model_dir, tmp_path, config, meta)
    for call in (
        lambda: fastft.load(d, backend="torch", warm_up=False),
        lambda: fastft.export(d, tmp_path / "out", progress=False),
        lambda: fastft.evaluate(str(d), backend="torch", progress=False),
    ):
        with pytest.raises(ModelError, match=message) as exc:
            call()
        assert "\n" not in str(exc.value)
    assert not (tmp_path / "out").exists()


def test_missing_weights_are_refused_not_made_up(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    d = _variant(tiny_model_dir, tmp_path)
    state = load_file(str(d / "model.safetensors"))
    head = [k for k in state if k.startswith("classifier.")]
    save_file({k: v for k, v in state.items() if k not in head}, str(d / "model.safetensors"))
    with pytest.raises(ModelError, match=r"its weights lack 2 tensor\(s\) the model needs \(classifier.bias"):
        fastft.load(d, backend="torch", warm_up=False)
    # training from a base encoder makes a new head: that is no missing weight
    from fastft.models import load_classifier

    assert load_classifier(d, labels=["negative", "positive"]).classifier.weight.shape[0] == 2


def test_token_tags_must_be_iob2_with_an_o():
    from fastft.models.task import head_labels

    meta = {"task": "token-classification"}
    assert head_labels("m", meta, {"id2label": {"0": "O", "1": "B-PER", "2": "I-PER"}}) == ["O", "B-PER", "I-PER"]
    for tags in (["o", "b-per", "i-per"], ["B-PER", "I-PER", "B-LOC"], ["O", "S-PER"]):
        with pytest.raises(ModelError, match="not IOB2 with an O"):
            head_labels("m", meta, {"id2label": dict(enumerate(tags))})


def test_roberta_positions_follow_its_pad_token_id():
    """RoBERTa numbers positions from pad_token_id + 1: with pad 5 and 130 positions, 124 tokens
    fit (the export once assumed pad 1, and a 128-token text indexed past the table)."""
    import transformers as tf

    from fastft.data.collate import model_max_positions

    assert model_max_positions(tf.RobertaConfig(max_position_embeddings=130, pad_token_id=5)) == 124
    assert model_max_positions(tf.RobertaConfig(max_position_embeddings=514)) == 512  # pad 1
    assert model_max_positions(tf.BertConfig(max_position_embeddings=512, pad_token_id=5)) == 512


# families that number positions from 0 (fastft's table leaves their max_position_embeddings whole)
_FROM_ZERO = ("bert", "electra", "distilbert", "albert", "deberta-v2", "modernbert", "megatron-bert", "convbert")
_ROTARY = ("modernbert",)  # no position table: max_position_embeddings is where it was trained to


@pytest.mark.parametrize("pad", [1, 3])
@pytest.mark.parametrize("kind", [*collate.PADDING_OFFSET_TYPES, *collate.FIXED_OFFSET_TYPES, *_FROM_ZERO])
def test_the_position_table_is_what_transformers_builds(kind, pad):
    """Probed on a tiny model of each family the installed transformers builds: the longest input
    it runs is what model_max_positions says (MPNet, data2vec-text and roberta-prelayernorm were
    missing from the table: the export's parity check ran at 514 tokens and died with an IndexError)."""
    import warnings

    import torch
    import transformers as tf

    small = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, vocab_size=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            extra = {"default_language": "en_XX"} if kind == "xmod" else {}  # (X-MOD runs one language's adapters)
            config = tf.AutoConfig.for_model(kind, max_position_embeddings=24, pad_token_id=pad, **small, **extra)
        except ValueError:
            pytest.skip(f"this transformers has no {kind}")
        net = tf.AutoModel.from_config(config).eval()

    def runs(n: int) -> bool:
        try:
            with torch.no_grad():
                net(input_ids=torch.full((1, n), 7), attention_mask=torch.ones(1, n, dtype=torch.long))
        except (IndexError, RuntimeError):
            return False
        return True

    n = collate.model_max_positions(config)
    assert runs(n) and (kind in _ROTARY or not runs(n + 1)), (kind, n)


def test_fastft_labels_beside_default_id2label_names_serve_and_compress(tiny_model_dir, tmp_path):
    """fastft.json's names win over transformers' LABEL_i defaults (which name no order), and a
    model whose own labels are LABEL_0 / LABEL_1 is a teacher like any other."""
    from fastft.compress.context import check_teacher_dir

    d = _variant(tiny_model_dir, tmp_path, {"id2label": {"0": "LABEL_0", "1": "LABEL_1"}})
    assert fastft.load(d, backend="torch", warm_up=False).labels == ["negative", "positive"]
    _edit_json(d / "fastft.json", labels=["LABEL_0", "LABEL_1"])
    assert check_teacher_dir(d)[1] == ["LABEL_0", "LABEL_1"]


def test_a_boolean_size_in_config_json_is_refused():
    """``"hidden_size": true`` is not a size (a bool is an int in Python): a ModelError naming the key."""
    from fastft.models.resolve import _check_sizes

    _check_sizes("d", {"hidden_size": 32, "vocab_size": None}.get)
    with pytest.raises(ModelError, match=r"d: config.json hidden_size must be a positive integer \(got True\)"):
        _check_sizes("d", {"hidden_size": True}.get)


def test_a_tokenizer_one_entry_past_the_vocabulary_is_refused():
    """A tokenizer with even one id past config.json's vocab_size is refused; as many entries as the vocabulary pass."""
    from fastft.models.resolve import check_vocab

    check_vocab("d", [0] * 64, 64)
    with pytest.raises(ModelError, match="the tokenizer has 65 entries, more than the model's vocabulary of 64"):
        check_vocab("d", [0] * 65, 64)


def test_a_token_classifier_head_is_read_for_token_classification():
    """The label names of a ``*ForTokenClassification`` head are found for the token task, not for the sequence one."""
    import types

    from fastft.models.resolve import _head_labels

    config = types.SimpleNamespace(architectures=["BertForTokenClassification"], id2label={0: "O", 1: "B-PER"})
    assert _head_labels(config, "token-classification") == ["O", "B-PER"]
    assert _head_labels(config) is None


def test_load_classifier_refuses_the_heads_labels_in_another_order(tiny_model_dir):
    """The head's labels in another order are another head: logit i means the head's label i, so
    relabelling it in the data's order would swap the answers silently (callers put the data in
    the head's order first)."""
    from transformers import AutoConfig

    from fastft.core.errors import ModelError
    from fastft.models.resolve import _head_labels, load_classifier

    head = _head_labels(AutoConfig.from_pretrained(tiny_model_dir))
    assert head is not None and len(head) > 1
    assert load_classifier(tiny_model_dir, labels=head).config.id2label == dict(enumerate(head))
    with pytest.raises(ModelError, match="already has a classification head"):
        load_classifier(tiny_model_dir, labels=head[::-1])


def test_a_head_wider_than_config_json_names_both_counts(tiny_model_dir, tmp_path):
    """Weights whose head has more rows than config.json names labels: the error says both counts
    (the check was pinned only for a narrower head; a mutant comparing with < survived)."""
    import torch
    from safetensors.torch import load_file, save_file

    d = _variant(tiny_model_dir, tmp_path)
    state = load_file(str(d / "model.safetensors"))
    w, b = state["classifier.weight"], state["classifier.bias"]
    state["classifier.weight"] = torch.cat([w, w[:1]])
    state["classifier.bias"] = torch.cat([b, b[:1]])
    save_file(state, str(d / "model.safetensors"))
    n = w.shape[0]
    with pytest.raises(ModelError, match=rf"has {n + 1} labels, but config.json names {n} labels"):
        fastft.load(d, backend="torch", warm_up=False)


def test_a_vocabulary_just_under_the_minimum_is_a_stub(tiny_model_dir, tmp_path):
    """A vocabulary of 999 entries is refused as a stub, 1,000 is a tokenizer (the hostile case's
    5-entry stub left the bound itself free: a mutant dividing it by 10 survived)."""
    from fastft.models import load_tokenizer
    from fastft.models.resolve import MIN_VOCAB

    d = _variant(tiny_model_dir, tmp_path)
    for f in d.iterdir():  # every tokenizer file (transformers 4.x also writes vocab.txt)
        if f.name.startswith(("tokenizer", "vocab", "special_tokens")) or f.name.endswith(".model"):
            f.unlink()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    for size in (MIN_VOCAB - 1, MIN_VOCAB):
        words = [f"w{i}" for i in range(size - len(special))]
        (d / "vocab.txt").write_text("\n".join(special + words) + "\n")
        if size < MIN_VOCAB:
            with pytest.raises(ModelError, match=rf"has only {size} entries \(fewer than {MIN_VOCAB}\)"):
                load_tokenizer(d)
        else:
            assert len(load_tokenizer(d)) == size
