from dataclasses import dataclass
from typing import Literal

import pytest

from mmzoo.config import check_choice, check_literal_fields, check_range


def test_check_choice_names_the_key_and_the_choices():
    check_choice("model.method", "kd", ("ce", "kd"))
    with pytest.raises(ValueError, match=r"^model\.method='kdd': expected one of \['ce', 'kd'\]$"):
        check_choice("model.method", "kdd", ("ce", "kd"))


@dataclass
class _Config:
    mode: Literal["a", "b"] = "a"
    optional: Literal["x"] | None = None
    name: str = "free text"

    def __post_init__(self) -> None:
        check_literal_fields(self, "model.config")


def test_check_literal_fields_checks_each_literal_field():
    assert _Config(mode="b", name="anything").mode == "b"
    with pytest.raises(ValueError, match=r"model\.config\.mode='c': expected one of \['a', 'b'\]"):
        _Config(mode="c")
    _Config(optional="not checked")  # only plain Literal fields are checked


def test_check_range_accepts_values_within_the_bounds():
    check_range("model.tau", 0.07, gt=0)
    check_range("model.p", 1.0, ge=0, le=1)
    check_range("data.batch_size", 3, ge=1, integer=True)
    check_range("model.lr", float("inf"), gt=0)  # no upper bound given


@pytest.mark.parametrize(
    ("value", "bounds", "message"),
    [
        (0.0, {"gt": 0}, r"^model\.x=0\.0: must be a number > 0$"),
        (-1, {"ge": 0}, r"^model\.x=-1: must be a number ≥ 0$"),
        (1.5, {"ge": 0, "le": 1}, r"^model\.x=1\.5: must be a number ≥ 0 and ≤ 1$"),
        (1.0, {"lt": 1}, r"^model\.x=1\.0: must be a number < 1$"),
        (float("nan"), {"gt": 0}, r"^model\.x=nan: must be a number > 0$"),
        (None, {"gt": 0}, r"^model\.x=None: must be a number > 0$"),
        ("0.1", {}, r"^model\.x='0\.1': must be a number$"),
        (True, {}, r"^model\.x=True: must be a number$"),
        (2.0, {"ge": 1, "integer": True}, r"^model\.x=2\.0: must be an integer ≥ 1$"),
        (0, {"ge": 1, "integer": True}, r"^model\.x=0: must be an integer ≥ 1$"),
    ],
)
def test_check_range_refuses_values_outside_the_bounds_naming_the_key(value, bounds, message):
    with pytest.raises(ValueError, match=message):
        check_range("model.x", value, **bounds)
