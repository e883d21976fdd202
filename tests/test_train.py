"""The thin trainer on tiny random models: it learns, saves, reloads, and refuses bad input."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch

import fastft
from fastft.core.errors import FastftError
from fastft.train.trainer import param_groups


def _train(tiny_model_dir, tiny_data_file, out, **kw):
    args = dict(
        model=str(tiny_model_dir),
        data=str(tiny_data_file),
        output=str(out),
        epochs=3,
        max_length=32,
        batch_size=4,
        lr=5e-3,
        warmup_ratio=0.0,
        progress=False,
    )
    args.update(kw)
    return fastft.train(**args)


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tiny_data_file, tmp_path_factory):
    """One tiny fine-tuning run shared by the tests that only read its result."""
    out = tmp_path_factory.mktemp("trained") / "out"
    return out, _train(tiny_model_dir, tiny_data_file, out)


def test_train_saves_a_reloadable_directory(trained):
    out, meta = trained
    for f in ("config.json", "model.safetensors", "tokenizer.json", "fastft.json"):
        assert (out / f).is_file(), f
    saved = json.loads((out / "fastft.json").read_text())
    assert saved["labels"] == ["negative", "positive"]
    assert set(saved["metrics"]) == {"validation", "test"}
    for key in ("accuracy", "f1_macro", "precision_macro", "recall_macro", "roc_auc"):
        assert key in saved["metrics"]["test"]
    assert saved["training"]["lr"] == 5e-3 and saved["data"]["seed"] == 42 and "torch" in saved["versions"]
    # 60 rows, about 48 to train (copies of one text share a split) / batch 4, 3 epochs
    assert meta["training"]["steps"] == 3 * -(-saved["data"]["sizes"]["train"] // 4)
    assert saved["training"]["optimizer"] in ("AdamW (fused)", "AdamW (for-loop)")  # (:func:`loop.adamw`)
    # plain transformers reloads it, labels included
    from transformers import AutoModelForSequenceClassification

    m = AutoModelForSequenceClassification.from_pretrained(out)
    assert m.config.id2label == {0: "negative", 1: "positive"}
    # no temporary directories left beside the output
    assert [p.name for p in out.parent.iterdir()] == ["out"]


def test_training_learns_the_tiny_task(trained):
    hist = trained[1]["training"]["history"]
    assert min(h["loss"] for h in hist[1:]) < hist[0]["loss"] - 0.1
    assert trained[1]["metrics"]["validation"]["accuracy"] >= 0.8


def test_fixed_seed_is_reproducible(tiny_model_dir, tiny_data_file, tmp_path):
    a = _train(tiny_model_dir, tiny_data_file, tmp_path / "a", max_steps=4)
    b = _train(tiny_model_dir, tiny_data_file, tmp_path / "b", max_steps=4)
    assert a["metrics"]["test"] == b["metrics"]["test"]
    from safetensors.torch import load_file

    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_early_stopping_restores_best(tiny_model_dir, tiny_data_file, tmp_path):
    # a vanishing learning rate: the metric never improves after epoch 1 -> stop after `patience` epochs
    meta = _train(tiny_model_dir, tiny_data_file, tmp_path / "out", epochs=5, lr=1e-9, patience=1, batch_size=16)
    assert len(meta["training"]["history"]) == 2
    assert meta["training"]["best_epoch"] == 1


def test_lora_is_merged_on_save(tiny_model_dir, tiny_data_file, tmp_path):
    _train(tiny_model_dir, tiny_data_file, tmp_path / "out", max_steps=2, lora=True)
    from safetensors.torch import load_file

    keys = load_file(tmp_path / "out" / "model.safetensors").keys()
    assert not any("lora" in k for k in keys)
    assert any(k.endswith("attention.self.query.weight") for k in keys)


def test_no_weight_decay_on_bias_and_layernorm(tiny_model_dir):
    from fastft.models import load_classifier

    m = load_classifier(tiny_model_dir)
    decay, no_decay = param_groups(m, 0.01)
    names = {id(p): n for n, p in m.named_parameters()}
    assert all(not names[id(p)].endswith("bias") and "LayerNorm" not in names[id(p)] for p in decay["params"])
    assert any("LayerNorm" in names[id(p)] for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0


def test_adamw_is_fused_and_steps_like_the_loop(tiny_model_dir):
    """The fused AdamW the loop picks takes the same steps as torch's per-parameter loop."""
    from fastft.models import load_classifier
    from fastft.train.loop import adamw

    torch.manual_seed(0)
    a, b = load_classifier(tiny_model_dir), load_classifier(tiny_model_dir)
    b.load_state_dict(a.state_dict())
    start = {k: v.clone() for k, v in a.state_dict().items()}
    opt_a, kind = adamw(param_groups(a, 0.01), 1e-2)
    assert kind == "fused"  # this torch has the CPU kernel; the loop below is the reference
    opt_b = torch.optim.AdamW(param_groups(b, 0.01), lr=1e-2, foreach=False)
    ids = torch.randint(5, 90, (4, 12))
    for _ in range(5):
        # the same gradients for both (a's): the key bias's gradient is zero up to rounding (softmax
        # ignores a per-row shift), and Adam scales such noise up to full steps whose sign two
        # backward passes need not share (seen on an AMD Zen 5); the optimizers are what is compared
        a(input_ids=ids, labels=torch.tensor([0, 1, 1, 0])).loss.backward()
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
            pb.grad = None if pa.grad is None else pa.grad.clone()
        for opt in (opt_a, opt_b):
            opt.step()
            opt.zero_grad(set_to_none=True)
    moved = 0
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5, msg=name)
        moved += int(not torch.equal(pa, start[name]))
    assert moved > 0


def test_weight_average_is_what_epochs_see_and_the_loop_returns():
    """With ``ema``, end_epoch sees the moving average of the weights after each step (decay
    min(ema, (1+t)/(10+t))), the next epoch trains on from the raw weights, and the net ends
    holding the average."""
    from fastft.train.loop import run_loop

    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2)
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    raw, seen_by_epoch = [], []  # weights as each step starts (the raw weights of the step before)

    def step_loss(rows):
        raw.append(net.weight.detach().clone())
        return torch.nn.functional.cross_entropy(net(x[rows]), y[rows]), len(rows), None

    def end_epoch(stats):
        seen_by_epoch.append(net.weight.detach().clone())
        return False

    run_loop(
        net,
        lambda epoch: [list(range(i, i + 8)) for i in range(0, 32, 8)],
        step_loss,
        steps_per_epoch=4,
        total_steps=8,
        lr=0.1,
        weight_decay=0.0,
        warmup_ratio=0.0,
        end_epoch=end_epoch,
        progress=False,
        fast_dropout=False,
        ema=0.5,
    )
    # raw[k]: the raw weights after step k (raw[0] the start); the average after step k is
    # d_k * average + (1 - d_k) * raw[k]
    average = raw[0].clone()
    for k in range(1, 5):
        d = min(0.5, (1 + k) / (10 + k))
        average = d * average + (1 - d) * raw[k]
    torch.testing.assert_close(seen_by_epoch[0], average)
    assert not torch.allclose(raw[4], average)  # so epoch 2 went on from the raw weights, not the average
    assert torch.equal(net.weight.detach(), seen_by_epoch[1])  # the net ends holding the average
    assert not torch.allclose(seen_by_epoch[1], raw[-1])


def test_adamw_falls_back_to_the_loop_where_fused_is_refused(monkeypatch):
    from fastft.train import loop

    real = torch.optim.AdamW

    def no_fused(params, lr, fused=None, **kw):
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
        return real(params, lr=lr, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", no_fused)
    opt, kind = loop.adamw([{"params": [torch.nn.Parameter(torch.ones(3))]}], 1e-3)
    assert kind == "for-loop" and isinstance(opt, real)


def test_existing_output_is_refused_and_untouched(tiny_model_dir, tiny_data_file, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FastftError, match="already exists.*--overwrite"):
        _train(tiny_model_dir, tiny_data_file, out)
    assert (out / "keep.txt").read_text() == "mine"


def test_failure_leaves_nothing_half_written(tiny_model_dir, tiny_data_file, tmp_path, monkeypatch):
    from fastft.core import schema as meta_mod

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr("fastft.train.trainer.write_meta", boom, raising=False)
    monkeypatch.setattr(meta_mod, "write_meta", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        _train(tiny_model_dir, tiny_data_file, tmp_path / "out", max_steps=1)
    assert list(tmp_path.iterdir()) == []


def test_max_length_is_clamped_with_a_warning(tiny_model_dir, tiny_data_file, tmp_path):
    with pytest.warns(UserWarning, match="max length 4096 is beyond the model's 128 positions; using 128"):
        meta = _train(tiny_model_dir, tiny_data_file, tmp_path / "out", max_steps=1, max_length=4096)
    assert meta["max_length"] == 128


def test_bad_arguments(tiny_model_dir, tiny_data_file, tmp_path):
    with pytest.raises(FastftError, match="--epochs"):
        _train(tiny_model_dir, tiny_data_file, tmp_path / "o", epochs=0)
    with pytest.raises(FastftError, match="unknown metric \\(--metric\\)"):
        _train(tiny_model_dir, tiny_data_file, tmp_path / "o", metric="bleu")
    with pytest.raises(FastftError, match="no config.json"):
        _train(tmp_path, tiny_data_file, tmp_path / "o")
    with pytest.raises(FastftError, match="does not exist"):
        _train(tmp_path / "missing", tiny_data_file, tmp_path / "o")


def test_a_run_that_ends_diverged_or_cannot_choose_an_epoch_is_refused(tiny_model_dir, tiny_data_file, tmp_path):
    """A last step that diverges left a model of NaN answers, saved and exit 0 (every step's own loss
    was finite); roc_auc on a one-class validation split never chose an epoch. Both refused, and
    fastft.json and --json outputs are standard JSON (no NaN token) in any case."""
    import json

    from fastft.core.io import dumps

    with pytest.raises(FastftError, match="training diverged: the validation loss is not a number after epoch 1"):
        _train(tiny_model_dir, tiny_data_file, tmp_path / "nan", max_steps=1, lr=1e10)
    assert not (tmp_path / "nan").exists()
    rows = [json.loads(line) for line in tiny_data_file.read_text().splitlines()]
    one = tmp_path / "one.jsonl"  # validation rows of one class
    parts = [("train", r) for r in rows[:40]] + [("validation", r) for r in rows[40:] if r["label"] == "positive"]
    one.write_text("".join(json.dumps({**r, "split": s}) + "\n" for s, r in parts + [("test", rows[41])]))
    with pytest.raises(FastftError, match="roc_auc is undefined on the validation split"):
        _train(tiny_model_dir, one, tmp_path / "auc", metric="roc_auc")
    assert dumps({"loss": float("nan"), "auc": [float("inf")]}).split() == [
        "{",
        '"loss":',
        "null,",
        '"auc":',
        "[",
        "null",
        "]",
        "}",
    ]


def test_a_diverged_epoch_after_a_good_one_keeps_the_good_one(tiny_model_dir, tiny_data_file, tmp_path, monkeypatch):
    """One epoch whose weights give NaN stops the run; the best finite epoch before it is saved
    (refusing the whole run would throw it away)."""
    import fastft.train.evaluate as ev

    real, calls = ev.run_eval, []

    def second_is_nan(*a, **k):
        out = real(*a, **k)
        calls.append(1)
        return {**out, "loss": float("nan")} if len(calls) == 2 else out

    monkeypatch.setattr(ev, "run_eval", second_is_nan)
    meta = _train(tiny_model_dir, tiny_data_file, tmp_path / "o", epochs=3)
    assert meta["training"]["best_epoch"] == 1 and len(meta["training"]["history"]) == 1
    assert (tmp_path / "o" / "model.safetensors").is_file()


def test_corrupt_model_directory(tiny_model_dir, tiny_data_file, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_model_dir, bad)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(FastftError, match="corrupt"):
        _train(bad, tiny_data_file, tmp_path / "o")
    shutil.copy(tiny_model_dir / "config.json", bad / "config.json")
    (bad / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(FastftError, match="cannot load weights"):
        _train(bad, tiny_data_file, tmp_path / "o")


def test_head_for_other_labels_is_refused(tiny_model_dir, tmp_path):
    from conftest import write_jsonl

    data = write_jsonl(
        tmp_path / "spam.jsonl", [{"text": f"t{i}", "label": "spam" if i % 2 else "ham"} for i in range(20)]
    )
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(tiny_model_dir)
    assert cfg.architectures == ["BertForSequenceClassification"]
    with pytest.raises(FastftError, match="already has a classification head"):
        fastft.train(model=str(tiny_model_dir), data=str(data), output=str(tmp_path / "o"), max_steps=1, progress=False)


def test_a_head_that_knows_every_label_trains_on_with_its_own_order(tiny_data_file, tmp_path):
    """A model whose head has the data's labels in another order (HF checkpoints list O, B-PER, ...;
    fastft sorts), or one more, was refused as "a head for other labels": training goes on with the
    head, each row's label matched by name (the kept model's label i is still logit i)."""
    from conftest import save_tiny_model

    from fastft.models.model_dir import model_labels
    from fastft.models.resolve import load_classifier

    for labels in (("positive", "negative"), ("positive", "neutral", "negative")):
        model = save_tiny_model(tmp_path / "-".join(labels), tiny_data_file, labels=labels)
        out = tmp_path / f"o{len(labels)}"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            meta = _train(model, tiny_data_file, out, epochs=6)  # the third label is unlearned first
        lacking = [str(w.message) for w in caught if "does not teach them" in str(w.message)]
        assert meta["labels"] == list(labels) and model_labels(load_classifier(out)) == list(labels)
        assert len(lacking) == (len(labels) == 3) and (not lacking or "'neutral'" in lacking[0])
        assert meta["metrics"]["test"]["accuracy"] >= 0.8  # the labels were matched by name, not by position
    # the head's three labels are what roc_auc sees (it ran, computed nothing and kept the last epoch)
    with pytest.raises(FastftError, match="roc_auc needs two classes and this run has 3"):
        with pytest.warns(UserWarning, match="does not teach them"):
            _train(model, tiny_data_file, tmp_path / "roc", metric="roc_auc")


def test_evaluate_and_predict(trained):
    out = trained[0]
    res = fastft.evaluate(str(out), split="test", progress=False)
    n_test = trained[1]["data"]["sizes"]["test"]
    assert res["accuracy"] == trained[1]["metrics"]["test"]["accuracy"] >= 0.8 and res["n"] == n_test >= 5
    preds = fastft.predict(str(out), ["a wonderful, moving film", "a dull, lifeless mess"])
    assert [p["label"] for p in preds] == ["positive", "negative"]
    assert all(0.5 < p["score"] <= 1 for p in preds)


def test_evaluation_labels_unseen_in_training(tiny_model_dir, tmp_path):
    from conftest import write_jsonl

    data = write_jsonl(
        tmp_path / "d.jsonl", [{"text": f"t{i}", "label": ["positive", "neutral"][i % 2]} for i in range(20)]
    )
    with pytest.raises(FastftError, match="'neutral' were not seen in training"):
        fastft.evaluate(str(tiny_model_dir), data=str(data), split="test", progress=False)


def _lopsided_data(path):
    """Two positive rows to each negative one (so an answer's accuracy and its opposite's differ)."""
    from conftest import make_rows, write_jsonl

    return write_jsonl(path, [r for i, r in enumerate(make_rows(90)) if r["label"] == "positive" or i % 4 == 1])


def _share_of(splits, split: str, label: str) -> float:
    """The share of ``split``'s rows labelled ``label`` (by name)."""
    ids = splits.split(split).labels
    return sum(splits.labels[y] == label for y in ids) / len(ids)


def test_evaluation_matches_labels_by_name_whatever_the_heads_order(tmp_path):
    """A head listing the labels in another order than the data's (sorted) scores as the same head
    in the data's order: a model that answers "positive" to every text is right on exactly the
    test split's positive rows, whichever id "positive" has."""
    from conftest import save_tiny_model

    from fastft.export.checks import data_for
    from fastft.models import read_meta

    data = _lopsided_data(tmp_path / "d.jsonl")
    for labels in (("negative", "positive"), ("positive", "negative")):
        model = save_tiny_model(tmp_path / "-".join(labels), data, labels=labels, answer="positive")
        splits, _ = data_for(read_meta(model), None)
        assert splits.labels == ["negative", "positive"]
        expected = _share_of(splits, "test", "positive")
        assert expected > 0.5 and [p["label"] for p in fastft.predict(str(model), ["a", "b c"])] == ["positive"] * 2
        res = fastft.evaluate(str(model), split="test", progress=False)
        assert res["n"] == len(splits.test) and res["accuracy"] == pytest.approx(expected), labels


def test_length_buckets_cover_every_row_once_with_less_padding():
    """Each row lands in exactly one batch, batches stay within the size, and padding drops
    against random batches of the same size (the point of bucketing)."""
    from fastft.data.collate import length_buckets

    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 120, (1000,), generator=gen).tolist()
    batches = length_buckets(lengths, 16, torch.Generator().manual_seed(1))
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1000))
    assert all(1 <= len(b) <= 16 for b in batches)

    def padded(bs):
        return sum(len(b) * max(lengths[i] for i in b) for b in bs)

    perm = torch.randperm(1000, generator=torch.Generator().manual_seed(1)).tolist()
    random_batches = [perm[s : s + 16] for s in range(0, 1000, 16)]
    assert padded(batches) < 0.7 * padded(random_batches)
    again = length_buckets(lengths, 16, torch.Generator().manual_seed(1))
    other = length_buckets(lengths, 16, torch.Generator().manual_seed(2))
    assert again == batches and other != batches  # seeded, and reshuffled per seed


def test_token_lengths_match_the_tokenizer(tiny_model_dir):
    from fastft.data.collate import token_lengths
    from fastft.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    texts = ["a good film", "", "bad " * 50, "fine"]
    got = token_lengths(tok, texts, 16, chunk=3)
    assert got == [len(tok(t, truncation=True, max_length=16)["input_ids"]) for t in texts]
    assert got[2] == 16


def test_a_run_puts_torchs_thread_count_back(tiny_model_dir, tiny_data_file, tmp_path):
    """train (and compress) set torch's intra-op threads for their work and left them so: a
    library call changed the caller's process."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        _train(tiny_model_dir, tiny_data_file, tmp_path / "o", max_steps=1, threads=2)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_the_api_refuses_what_it_cannot_use_before_any_work(tiny_model_dir, tiny_data_file, tmp_path, monkeypatch):
    """A count past any plan ran for ever (max_steps 1e20, epochs ignored); a wrong type for model
    or data failed in pathlib (TypeError) or was looked up on the hub; an unknown keyword was a
    TypeError; a TrainConfig could not be passed; TrainConfig.extra was accepted and never read."""
    from fastft.train.trainer import TrainConfig

    out = str(tmp_path / "o")
    for call, message in (
        (lambda: fastft.train(str(tiny_model_dir), str(tiny_data_file), out, max_steps=10**20), "--max-steps"),
        (lambda: fastft.train(None, str(tiny_data_file), out), "model must be a model directory or a name"),
        (lambda: fastft.train(["x"], str(tiny_data_file), out), "model must be"),
        (
            lambda: fastft.train(str(tiny_model_dir), str(tiny_data_file), out, foo=1),
            "train\\(\\) has no argument 'foo'",
        ),
        (lambda: fastft.train(str(tiny_model_dir), str(tiny_data_file), out, extra={}), "no argument 'extra'"),
        (lambda: fastft.train(str(tiny_model_dir), str(tiny_data_file), "o\x00b"), "output holds a NUL byte"),
        (lambda: fastft.evaluate(None), "model must be"),
        (lambda: fastft.evaluate(str(tiny_model_dir), data={"a": 1}), "data must be a dataset name or a data file"),
    ):
        with pytest.raises(FastftError, match=message):
            call()
    cfg = TrainConfig(model=str(tiny_model_dir), data=str(tiny_data_file), max_steps=1, max_length=16, progress=False)
    meta = fastft.train(cfg, output=out)
    assert meta["training"]["steps"] == 1 and (tmp_path / "o" / "fastft.json").is_file()
    # a keyword given equal to its default still replaces the config's field; one left out does not
    from fastft.train import trainer

    seen = []
    monkeypatch.setattr(trainer, "run_training", seen.append)
    fastft.train(cfg, data="movie-snippets")
    fastft.train(cfg, output="elsewhere")
    assert [(c.data, c.output) for c in seen] == [("movie-snippets", None), (str(tiny_data_file), "elsewhere")]
    fastft.train(str(tiny_model_dir), output="x")
    assert seen[-1].data == "movie-snippets" and type(seen[-1].data) is str


def test_predict_and_resolve_model_name_their_own_arguments_before_loading(tiny_model_dir, monkeypatch):
    """fastft.predict(None, ...) named a 'path', bad texts were refused only after the weights loaded,
    and resolve_model(None) looked the name 'None' up on the hub."""
    import fastft.runtime
    from fastft.runtime import InputError

    for bad in (None, b"runs/x", 5):
        with pytest.raises(FastftError, match="model must be"):
            fastft.resolve_model(bad)
    with pytest.raises(FastftError, match="model must be a model directory"):
        fastft.predict(None, ["a"])

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the texts were checked")

    monkeypatch.setattr(fastft.runtime, "load", no_load)
    for texts in ("a fine film", [], ["ok", 3]):
        with pytest.raises(InputError):
            fastft.predict(str(tiny_model_dir), texts)


def test_early_stopping_counts_from_the_last_improvement_and_saves_the_best_epoch(
    tiny_model_dir, tiny_data_file, tmp_path, monkeypatch
):
    """An improving epoch resets patience (validation accuracy 0.5, 0.4, 0.9, 0.8, 0.7 with
    patience 2 runs all 5 epochs), and the saved weights are the best epoch's (3), not the last's."""
    import fastft.train.evaluate as ev

    real, states = ev.run_eval, []
    scripted = [0.5, 0.4, 0.9, 0.8, 0.7]

    def scripted_eval(net, *a, **k):
        out = real(net, *a, **k)
        if len(states) < len(scripted):
            states.append({n: v.detach().clone() for n, v in net.state_dict().items()})
            out = {**out, "accuracy": scripted[len(states) - 1]}
        return out

    monkeypatch.setattr(ev, "run_eval", scripted_eval)
    meta = _train(tiny_model_dir, tiny_data_file, tmp_path / "o", epochs=5, patience=2, batch_size=16)
    assert len(meta["training"]["history"]) == 5 and meta["training"]["best_epoch"] == 3
    from safetensors.torch import load_file

    saved, best, last = load_file(tmp_path / "o" / "model.safetensors"), states[2], states[4]
    assert any(not torch.equal(best[k], last[k]) for k in saved)  # the epochs' weights differ
    assert all(torch.equal(saved[k], best[k]) for k in saved)


def test_linear_schedule_warms_up_then_decays_to_zero_step_by_step():
    """LR factors with 2 warm-up steps of 6: (step + 1) / 2 while warming up, then
    (total - step) / (total - warm-up) down to 0."""
    from fastft.train.loop import linear_schedule

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = linear_schedule(opt, 2, 6)
    seen = []
    for _ in range(7):
        seen.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0])


def test_warmup_is_a_share_of_all_steps_not_of_one_epoch(monkeypatch):
    """run_loop warms up over warmup_ratio * total_steps (10 steps, 0.5 -> 5), not per epoch."""
    from fastft.train import loop

    seen = []
    real = loop.linear_schedule

    def spy(opt, warmup, total):
        seen.append((warmup, total))
        return real(opt, warmup, total)

    monkeypatch.setattr(loop, "linear_schedule", spy)
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    x = torch.randn(2, 3)
    loop.run_loop(
        net,
        lambda epoch: [x, x],
        lambda b: (net(b).pow(2).mean(), len(b), None),
        steps_per_epoch=2,
        total_steps=10,
        lr=1e-3,
        weight_decay=0.0,
        warmup_ratio=0.5,
        progress=False,
        fast_dropout=False,
    )
    assert seen == [(5, 10)]


def test_no_weight_decay_on_any_one_dimensional_parameter():
    """Every parameter with ndim < 2 (a gate or scale vector, whatever its name) is left undecayed."""

    class Gated(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 4, bias=False)
            self.gate = torch.nn.Parameter(torch.ones(4))

    m = Gated()
    decay, no_decay = param_groups(m, 0.01)
    assert [id(p) for p in decay["params"]] == [id(m.proj.weight)]
    assert [id(p) for p in no_decay["params"]] == [id(m.gate)]
