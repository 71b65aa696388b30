"""The check_* functions of kpipe._validation: clean values back, one error class, Keras-style messages."""

from __future__ import annotations

import numpy as np
import pytest

from kpipe._validation import (
    check_bool,
    check_choice,
    check_class_index,
    check_int,
    check_number,
    check_positive_int,
    check_seed,
    check_weight,
    parse_json_value,
)
from kpipe.errors import ArgumentError, SamplingError, WeightError


def test_integers():
    assert check_positive_int(np.int64(4), "batch_size") == 4 and type(check_positive_int(4, "b")) is int
    assert check_int(0, "patience", minimum=0) == 0
    assert check_int(None, "patience", minimum=0, allow_none=True) is None
    for bad in (0, -1, 2.0, True, "3", None):
        with pytest.raises(ArgumentError, match=r"`batch_size` must be a positive integer\. Received: batch_size="):
            check_positive_int(bad, "batch_size")
    with pytest.raises(SamplingError, match=r"an integer in \[1, 3\]"):
        check_int(4, "k", minimum=1, maximum=3, error=SamplingError)


def test_numbers_bools_and_choices():
    assert check_number(1, "lr", minimum=0, exclusive_minimum=True) == 1.0
    for bad in (0, -1e-3, float("nan"), float("inf"), True, "0.1"):
        with pytest.raises(ArgumentError, match="`lr` must be a positive number"):
            check_number(bad, "lr", minimum=0, exclusive_minimum=True)
    assert check_bool(np.bool_(True), "x") is True
    for bad in (1, "yes", None):
        with pytest.raises(ArgumentError, match="True or False"):
            check_bool(bad, "x")
    assert check_choice("tape", "loop", ("fit", "step", "tape")) == "tape"
    with pytest.raises(ArgumentError, match=r"`loop` must be one of 'fit', 'step'\. Received: loop='Fit'"):
        check_choice("Fit", "loop", ("fit", "step"))
    with pytest.raises(ArgumentError):
        check_choice(1, "verbose", (True, False))  # 1 == True, but not the same type


def test_seeds_are_whole_non_negative_integers():
    assert check_seed(2**40) == 2**40 and check_seed(2**64 - 1) == 2**64 - 1
    for bad in (-1, 1.5, True, 2**64):
        with pytest.raises(ArgumentError, match=r"`seed` must be an integer in \[0, 18446744073709551615\]"):
            check_seed(bad)


def test_weights_json_and_class_keys():
    assert check_weight("2.5", argument="class_weight", key="a") == 2.5
    with pytest.raises(WeightError, match=r"Received: class_weight\['a'\]=-1"):
        check_weight(-1, argument="class_weight", key="a", error=WeightError)
    assert parse_json_value('{"a": 1}', "class_weight") == {"a": 1}
    with pytest.raises(ArgumentError, match="must be JSON"):
        parse_json_value("{a: 1}", "class_weight")
    assert check_class_index("b", ["a", "b"], argument="w") == 1
    assert check_class_index("1", ["a", "b"], argument="w") == 1
    with pytest.raises(ArgumentError, match="not a class: 'z'"):
        check_class_index("z", ["a", "b"], argument="w")
    assert issubclass(SamplingError, ArgumentError) and issubclass(WeightError, ArgumentError)
