from dataclasses import dataclass
from typing import Literal

import pytest

from mmzoo.config import check_choice, check_literal_fields


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
