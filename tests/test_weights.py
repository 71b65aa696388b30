"""Weights: exact values on hand-computable labels, validation, per-sample weights from prepare."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from kpipe.errors import InputError
from kpipe.weights import (
    WeightError,
    balanced_class_weight,
    check_class_weight,
    check_condition_weights,
    check_fit_class_weight,
    class_indices,
    compute_sample_weights,
    read_weights_file,
)

Y = np.array([0] * 50 + [1] * 100 + [2] * 25)
CLASSES = ["cat", "dog", "bird"]


def test_balanced_class_weight_exact():
    # n_samples / (n_classes * bincount(y)) = 175 / (3 * [50, 100, 25])
    expected = np.array([175 / 150, 175 / 300, 175 / 75])
    np.testing.assert_allclose(balanced_class_weight(Y, CLASSES), expected)
    np.testing.assert_allclose(expected, [1.1667, 0.5833, 2.3333], atol=5e-5)
    np.testing.assert_allclose(check_class_weight("balanced", CLASSES, Y), expected)
    # every class then carries the same total weight: n / k
    w, _ = compute_sample_weights(Y, CLASSES, class_weight="balanced")
    np.testing.assert_allclose(np.bincount(Y, weights=w), [175 / 3] * 3, rtol=1e-6)


def test_one_hot_labels_give_the_same_weights():
    one_hot = np.eye(3, dtype=np.float32)[Y]
    np.testing.assert_array_equal(class_indices(one_hot), Y)
    a, _ = compute_sample_weights(Y, CLASSES, class_weight="balanced")
    b, _ = compute_sample_weights(one_hot, CLASSES, class_weight="balanced")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(class_indices(np.array([[0.0], [1.0]])), [0, 1])


def test_dict_by_name_or_index_and_condition_weights_multiply():
    by_name = check_class_weight({"cat": 2, "bird": 4, "*": 1}, CLASSES, Y)
    by_index = check_class_weight({0: 2, "2": 4, "*": 1.0}, CLASSES, Y)
    from_json = check_class_weight('{"cat": 2, "bird": 4, "*": 1}', CLASSES, Y)
    by_list = check_class_weight([2, 1, 4], CLASSES, Y)
    by_array = check_class_weight(np.array([2.0, 1.0, 4.0]), CLASSES, Y)  # was numpy's "truth value ... ambiguous"
    for w in (by_name, by_index, from_json, by_list, by_array):
        np.testing.assert_array_equal(w, [2.0, 1.0, 4.0])
    with pytest.warns(UserWarning, match=r"names 2 of 3 classes; class 'dog' \(index 1\) weighs 1.0"):
        np.testing.assert_array_equal(check_class_weight({"cat": 2, "bird": 4}, CLASSES, Y), [2.0, 1.0, 4.0])
    np.testing.assert_array_equal(check_class_weight({"cat": 2, "*": 0.5}, CLASSES, Y), [2.0, 0.5, 0.5])
    np.testing.assert_array_equal(check_condition_weights({"dog": 3}, CLASSES), [1.0, 3.0, 1.0])
    per_sample = np.full(len(Y), 0.5)
    w, details = compute_sample_weights(Y, CLASSES, class_weight={"cat": 2, "bird": 4, "dog": 1},
                                        condition_weights='{"dog": 3, "bird": 0.5}', per_sample=per_sample)
    assert w.dtype == np.float32 and w.shape == (175,)
    np.testing.assert_array_equal(w[[0, 50, 150]], [2 * 0.5, 3 * 0.5, 4 * 0.5 * 0.5])
    assert details["class_weight"] == {"cat": 2.0, "dog": 1.0, "bird": 4.0}
    assert details["condition_weights"] == {"cat": 1.0, "dog": 3.0, "bird": 0.5}
    assert compute_sample_weights(Y, CLASSES) == (None, {"per_sample": False})


@pytest.mark.parametrize(
    "value, match",
    [
        ({"zebra": 1.0}, r"`class_weight` has a key that is not a class: 'zebra'.*Received"),
        ({7: 1.0}, r"not a class: 7"),
        ({"cat": -1}, r"finite numbers >= 0. Received: class_weight\['cat'\]=-1"),
        ({"cat": float("nan")}, r"finite numbers >= 0"),
        ({"cat": float("inf")}, r"finite numbers >= 0"),
        ("balance", r"`class_weight` must be 'balanced', a dict"),
        ("{oops", r"`class_weight` must be JSON"),
        ([1.0, 2.0], r"one weight per class \(3\)"),
        (np.ones((3, 1)), r"one weight per class \(3\)"),
        ({"cat": 2, 0: 5}, r"gives class 'cat' \(index 0\) twice, as 'cat' and as 0"),
        ({"1": 2, "dog": 5}, r"gives class 'dog' \(index 1\) twice"),
        ({"cat": True}, r"finite numbers >= 0"),
    ],
)
def test_class_weight_errors(value, match):
    with pytest.raises(WeightError, match=match):
        check_class_weight(value, CLASSES, Y)


def test_balanced_names_a_class_without_samples_and_other_errors():
    with pytest.raises(WeightError, match=r"Class 'bird' \(index 2\) has no sample in partition 'train'"):
        check_class_weight("balanced", CLASSES, np.array([0, 1, 1]), partition="train")
    with pytest.raises(WeightError, match=r"gives class 'dog' \(index 1\) twice"):
        check_condition_weights({"dog": 2, 1: 3}, CLASSES)
    with pytest.raises(WeightError, match=r"condition_weights.*not a class: 'wolf'"):
        check_condition_weights({"wolf": 2}, CLASSES)
    with pytest.raises(WeightError, match=r"must map class names to factors"):
        check_condition_weights("[1, 2, 3]", CLASSES)
    with pytest.raises(WeightError, match=r"per_sample\[1\]=-1.0"):
        compute_sample_weights(np.array([0, 1]), CLASSES, per_sample=np.array([1.0, -1.0]))


def test_check_fit_class_weight():
    class Weighted:
        yields_weights = True

    check_fit_class_weight(Weighted(), None)
    with pytest.raises(WeightError, match=r"already yields sample weights"):
        check_fit_class_weight(Weighted(), {0: 1.0})


def test_read_weights_file(tmp_path: Path):
    f = tmp_path / "w.csv"
    f.write_text("id,weight\na,1.5\nb,0\n")
    assert read_weights_file(f) == {"a": 1.5, "b": 0.0}
    f.write_text("a,2\n")  # no header
    assert read_weights_file(f) == {"a": 2.0}
    j = tmp_path / "w.json"
    j.write_text(json.dumps({"a": 3}))
    assert read_weights_file(j) == {"a": 3.0}
    for bad, match in [("a,-1\n", r"w.csv:1: weights must be finite"), ("a,nan\n", "finite"),
                       ("a,1\na,2\n", "second weight"), ("a\n", "expected `ID,weight`")]:
        f.write_text(bad)
        with pytest.raises(InputError, match=match):
            read_weights_file(f)


def _csv(path: Path, weights) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["f1", "f2", "weight", "label"])
        for i, wt in enumerate(weights):
            w.writerow([i, 2 * i, wt, "ab"[i % 2]])
    return path


def test_prepare_weight_column_and_weights_file(tmp_path: Path):
    from kpipe.prepare import prepare

    raw = _csv(tmp_path / "d.csv", [1 + i % 3 for i in range(20)])
    m = prepare(raw, tmp_path / "p", weight_column="weight", split="0.6,0.2,0.2", n_jobs=1).manifest
    assert m.sample_shape == (2,)  # the weight column is not a feature
    assert m.prepare["feature_columns"] == ["f1", "f2"] and m.prepare["weight_column"] == "weight"
    assert m.sample_weights["row000001"] == 1.0 and m.sample_weights["row000002"] == 2.0
    from kpipe.manifest import Manifest

    assert Manifest.load(m.path).sample_weights == m.sample_weights

    wfile = tmp_path / "w.csv"
    wfile.write_text("id,weight\n" + "".join(f"row{i:06d},{i / 10}\n" for i in range(1, 21)))
    m2 = prepare(raw, tmp_path / "p2", weights=wfile, split="0.6,0.2,0.2", n_jobs=1).manifest
    assert m2.sample_weights["row000010"] == 1.0
    wfile.write_text("id,weight\nrow000001,1\n")
    with pytest.raises(InputError, match=r"no weight for 19 sample"):
        prepare(raw, tmp_path / "p3", weights=wfile, n_jobs=1)
    wfile.write_text("id,weight\nnope,1\n")
    with pytest.raises(InputError, match=r"not in the input, e.g. 'nope'"):
        prepare(raw, tmp_path / "p3", weights=wfile, n_jobs=1)
    with pytest.raises(InputError, match=r"not a finite number >= 0"):
        prepare(_csv(tmp_path / "bad.csv", [1, -2, 1, 1]), tmp_path / "p4", weight_column="weight", n_jobs=1)


def test_cli_prepare_weights(tmp_path: Path):
    from click.testing import CliRunner

    from kpipe.cli import main

    raw = _csv(tmp_path / "d.csv", [2] * 20)
    result = CliRunner().invoke(main, ["prepare", str(raw), "--out", str(tmp_path / "p"), "--weight-column",
                                       "weight", "--n-jobs", "1"])
    assert result.exit_code == 0, result.output
    m = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert set(m["sample_weights"].values()) == {2.0}
    bad = CliRunner().invoke(main, ["prepare", str(raw), "--out", str(tmp_path / "q"), "--weight-column", "w"])
    assert bad.exit_code == 1 and "no weight column 'w'" in bad.output


def test_all_zero_weights_are_an_error():
    import pytest

    from kpipe.errors import WeightError
    from kpipe.weights import compute_sample_weights

    with pytest.raises(WeightError, match="Every one of the 3 sample weights is 0"):
        compute_sample_weights(np.array([0, 1, 1]), ["a", "b"], per_sample=np.zeros(3))


@pytest.mark.parametrize(
    "labels, match",
    [
        (np.array([[1, 1, 0], [0, 1, 0]]), r"`labels` row 0 is not one-hot \(k-hot or not 0/1\): \[1, 1, 0\]"),
        (np.array([[0, 1, 0], [0, 0, 0]]), r"`labels` row 1 is all zero"),
        (np.array([0, -1, 2]), r"row 1 holds class index -1, outside 0..2"),
        (np.array([0, 3]), r"row 1 holds class index 3, outside 0..2"),
        (np.array([0.0, 1.5]), r"whole class indices; row 1 holds 1.5"),
        (np.array([[0, 1], [1, 0]]), r"needs 3 columns"),
    ],
)
def test_compute_sample_weights_refuses_labels_that_name_no_single_class(labels, match):
    """k-hot rows were argmaxed, all-zero rows became class 0, -1 wrapped to the last class, 3 gave an IndexError."""
    from kpipe.errors import ArgumentError

    with pytest.raises(ArgumentError, match=match):
        compute_sample_weights(labels, CLASSES, class_weight={"cat": 1, "dog": 2, "bird": 3})
    with pytest.raises(ArgumentError, match=r"of partition 'test'"):
        class_indices(np.array([7]), num_classes=3, partition="test")


def test_sample_weights_object_groups_the_options():
    from kpipe.weights import SampleWeights

    sw = SampleWeights(class_weight="balanced", condition_weights={"bird": 2})
    assert sw.configured and sw.balances_classes and not SampleWeights().configured
    w, _ = sw.compute(Y, CLASSES, partition="train")
    np.testing.assert_allclose(w[[0, 50, 150]], [175 / 150, 175 / 300, 2 * 175 / 75], rtol=1e-6)
    with pytest.raises(WeightError, match=r"`use_sample_weights` must be True or False"):
        SampleWeights(use_sample_weights=1)
    with pytest.raises(WeightError, match=r"`condition_weights` must be JSON"):
        SampleWeights(condition_weights="{nope")


def test_a_weight_float32_cannot_hold_is_refused():
    from kpipe.errors import WeightError

    labels = np.array([0, 0, 1])
    with pytest.raises(WeightError, match=r"position 2 \(class 'b'\) is 1e\+300 .* more than float32 holds"):
        compute_sample_weights(labels, ["a", "b"], class_weight={"a": 1, "b": 1e300})
    with pytest.raises(WeightError, match="more than float32 holds"):  # each factor finite, the product not
        compute_sample_weights(labels, ["a", "b"], class_weight={"a": 1e30, "b": 1}, condition_weights={"a": 1e10})
