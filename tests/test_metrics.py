"""--metrics: the Keras metrics kpipe logs equal scikit-learn's, in the form the label mode needs (issue 12).

Also the figures for imbalanced data: macro-F1, balanced accuracy and the worst class, from a confusion matrix
one can check by hand, and an oracle model that never predicts the small class.
"""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from kpipe.errors import ArgumentError  # noqa: E402
from kpipe.training import TrainConfig  # noqa: E402
from kpipe.training.evaluate import class_balance, evaluate_on  # noqa: E402
from kpipe.training.metrics import ClassAUC, ClassCounts, build_metrics, scores  # noqa: E402


def _data(n=300, num_classes=4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, n)
    logits = rng.normal(size=(n, num_classes)) + 1.5 * np.eye(num_classes)[y]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, logits.astype("float32"), probs.astype("float32")


def _keras_value(metric, y_true, y_pred, batches=3):
    for part in np.array_split(np.arange(len(y_true)), batches):  # accumulated over batches, as in an epoch
        metric.update_state(y_true[part], y_pred[part])
    return float(metric.result())


@pytest.mark.parametrize("label_mode", ["int", "categorical"])
@pytest.mark.parametrize("name", ["precision", "recall", "f1", "balanced_accuracy", "auc", "pr_auc"])
def test_multiclass_metrics_equal_scikit_learn(name, label_mode):
    y, logits, probs = _data()
    labels = y if label_mode == "int" else np.eye(4, dtype="float32")[y]
    [factory] = build_metrics([name], num_classes=4, label_mode=label_mode)
    expected = scores([name], y, probs.astype("float64"), binary=False)[name]
    tolerance = 5e-3 if "auc" in name else 1e-6  # Keras' AUC sums over 200 thresholds
    assert _keras_value(factory(), labels, probs) == pytest.approx(expected, abs=tolerance)
    [from_logits] = build_metrics([name], num_classes=4, label_mode=label_mode, logits=True)
    assert _keras_value(from_logits(), labels, logits) == pytest.approx(expected, abs=tolerance)


@pytest.mark.parametrize("name", ["precision", "recall", "f1", "auc"])
def test_binary_metrics_are_those_of_class_1(name):
    from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    p = np.clip(0.35 * y + rng.uniform(0, 0.65, 200), 0, 1).astype("float32")
    expected = {"precision": precision_score, "recall": recall_score, "f1": f1_score}.get(name)
    expected = roc_auc_score(y, p) if name == "auc" else expected(y, (p > 0.5).astype(int))
    [factory] = build_metrics([name], num_classes=2, label_mode="binary")
    got = _keras_value(factory(), y.astype("float32")[:, None], p[:, None])
    assert got == pytest.approx(expected, abs=5e-3 if name == "auc" else 1e-6)
    assert scores([name], y, np.stack([1 - p, p], axis=1), binary=True)[name] == pytest.approx(expected)


def test_confusion_metric_by_hand():
    m = ClassCounts("f1", num_classes=3, label_mode="int")
    m.update_state(np.array([0, 1, 2, 2]), np.array([[.9, .1, 0], [.2, .7, .1], [.1, .8, .1], [0, .1, .9]]))
    assert float(m.result()) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)  # per class F1: 1, 2/3, 2/3
    m.reset_state()
    assert float(m.result()) == 0.0
    auc = ClassAUC(3, "int")
    assert auc.get_config()["num_labels"] == 3 and type(auc).from_config(auc.get_config()).num_classes == 3


def test_class_balance_from_a_confusion_matrix():
    # 90 samples of a (all right), 10 of b (2 right, 8 called a), c absent from the labels
    matrix = [[90, 0, 0], [8, 2, 0], [0, 0, 0]]
    got = class_balance(matrix, ["a", "b", "c"])
    f1_a, f1_b = 2 * 90 / (90 + 98), 2 * 2 / (10 + 2)
    assert got["macro_f1"] == pytest.approx((f1_a + f1_b + 0) / 3)
    assert got["balanced_accuracy"] == pytest.approx((1.0 + 0.2) / 2)  # the classes present only
    assert got["worst_class"] == {"name": "b", "index": 1, "recall": 0.2}


class NeverSmall(keras.Model):
    """Predicts class 0 for everything: accuracy 0.9 on 90/10 data, recall 0 on the small class."""

    def call(self, x):
        n = keras.ops.shape(x)[0]
        return keras.ops.one_hot(keras.ops.zeros((n,), dtype="int32"), 2)


class Fixed(keras.utils.PyDataset):
    def __init__(self, x, y):
        super().__init__()
        self.x, self.y = x, y

    def __len__(self):
        return 2

    def __getitem__(self, i):
        return self.x[i * 50:(i + 1) * 50], self.y[i * 50:(i + 1) * 50]


def test_accuracy_alone_hides_a_small_class_that_is_never_right():
    model = NeverSmall()
    model.compile(loss="sparse_categorical_crossentropy")
    y = np.array([0] * 90 + [1] * 10)
    data = Fixed(np.zeros((100, 3), "float32"), y)
    metrics = evaluate_on(model, data, ["big", "small"], warn=False, metrics=("recall", "balanced_accuracy"))
    assert metrics["accuracy"] == pytest.approx(0.9)
    assert metrics["balanced_accuracy"] == pytest.approx(0.5) == metrics["metrics"]["balanced_accuracy"]
    assert metrics["worst_class"] == {"name": "small", "index": 1, "recall": 0.0}
    assert metrics["macro_f1"] == pytest.approx((2 * 90 / 190) / 2)
    assert metrics["metrics"]["recall"] == pytest.approx(0.5)
    from kpipe.training.report import evaluation_sentence

    assert evaluation_sentence(metrics | {"partition": "test"}).endswith("worst class 'small': recall 0.0000")


def test_metrics_option_and_monitor():
    assert TrainConfig(metrics="auc, f1,auc").metrics == ("auc", "f1")
    assert TrainConfig(metrics=["accuracy", "pr_auc"]).metrics == ("pr_auc",)  # accuracy is always logged
    assert TrainConfig(monitor="val_balanced_accuracy").metrics == ("balanced_accuracy",)  # monitored: logged
    with pytest.raises(ArgumentError, match="`metrics` takes names from: accuracy, auc"):
        TrainConfig(metrics="auc,roc")
    from kpipe.training.callbacks import monitor_mode
    from kpipe.training.preflight import check_monitor, logged_names

    config = TrainConfig(metrics="f1", monitor="val_f1")
    assert "val_f1" in logged_names(config, has_validation=True) and monitor_mode("val_f1") == "max"
    check_monitor(config, has_validation=True)
    with pytest.raises(ArgumentError, match="must be a value the run logs"):
        check_monitor(TrainConfig(monitor="val_recall_at_k"), has_validation=True)
