import numpy as np
import pytest

from fastft.train.metrics import classification_metrics, roc_auc


def test_metrics_against_hand_computed():
    y = [0, 0, 1, 1, 1]
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.8, 0.2], [0.1, 0.9]])
    m = classification_metrics(y, probs)
    assert m["accuracy"] == pytest.approx(3 / 5)
    # class 0: tp=1 fp=1 fn=1 -> p=r=f1=0.5; class 1: tp=2 fp=1 fn=1 -> p=r=f1=2/3
    assert m["precision_macro"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert m["f1_macro"] == pytest.approx((0.5 + 2 / 3) / 2)
    # AUC: positive scores .7,.2,.9 vs negative .1,.6 -> pairs won: (.7>.1,.7>.6,.9>.1,.9>.6,.2>.1) = 5/6
    assert m["roc_auc"] == pytest.approx(5 / 6)


def test_auc_ties_and_single_class():
    assert roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert roc_auc([1, 1], [0.2, 0.3]) is None


def test_multiclass_has_no_auc():
    m = classification_metrics([0, 1, 2], np.eye(3))
    assert m["accuracy"] == 1.0 and "roc_auc" not in m


def test_macro_averages_leave_out_classes_with_no_rows_and_no_predictions():
    """A test set of one class, all predicted right: F1 1.0, not 0.5 (as scikit-learn averages);
    a class that is predicted but absent from the labels still counts (its precision is 0)."""
    probs = np.array([[0.1, 0.9, 0.0]] * 4)
    m = classification_metrics([1, 1, 1, 1], probs)
    assert m["accuracy"] == 1.0 and m["f1_macro"] == 1.0 and m["precision_macro"] == 1.0
    wrong = classification_metrics([1, 1, 1, 1], np.array([[0.9, 0.1, 0.0]] * 2 + [[0.1, 0.9, 0.0]] * 2))
    # classes 0 (predicted, no rows: p=r=f1=0) and 1 (p=1, r=0.5, f1=2/3); class 2 left out
    assert wrong["f1_macro"] == pytest.approx((0 + 2 / 3) / 2)
    assert wrong["recall_macro"] == pytest.approx((0 + 0.5) / 2)


def test_token_logits_come_back_in_input_order():
    """Rows are run in length-sorted batches; each sentence's logits return to its own position."""
    from fastft.train.token_metrics import _batched

    ids = [[7, 7, 7], [5], [6, 6]]  # sorted by length: rows 1, 2, 0

    def run(x, m):  # logits (batch, seq, 1) holding each row's token id
        return x[:, :, None].astype(np.float32)

    out = _batched(ids, 0, 3, run)
    assert [o[:, 0].tolist() for o in out] == [[7, 7, 7], [5], [6, 6]]
