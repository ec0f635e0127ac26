"""Checks of options where configs are built: string choices and numeric ranges.

The packages branch on string options (method names, modes, reader settings) with ``if``/``else``, so an unknown
value would quietly run the ``else`` variant. LightningCLI checks ``Literal`` hints when it parses a YAML file, but
configs, modules, data modules and readers built in Python (tests, ``repro.py`` scripts, helper commands) are not
parsed: these functions check them where they are built, naming the key as a config file writes it. Numbers
outside their range (a zero temperature, a negative count, a probability above 1) would otherwise fail deep inside
a forward pass, or not fail at all: :func:`check_range` refuses them the same way.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from typing import Literal, get_args, get_origin, get_type_hints

__all__ = ["check_choice", "check_literal_fields", "check_range"]


def check_choice(key: str, value: object, choices: Sequence[object]) -> None:
    """Raise ``ValueError("<key>=<value>: expected one of [...]")`` when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{key}={value!r}: expected one of {list(choices)}")


def check_literal_fields(config: object, prefix: str) -> None:
    """:func:`check_choice` on every field of the dataclass instance ``config`` typed ``Literal[...]`` (key
    ``<prefix>.<field>``); call it from ``__post_init__``. Fields of other types (``Literal[...] | None`` included)
    are left alone."""
    hints = get_type_hints(type(config))
    for field in dataclasses.fields(config):
        hint = hints[field.name]
        if get_origin(hint) is Literal:
            check_choice(f"{prefix}.{field.name}", getattr(config, field.name), get_args(hint))


def check_range(
    key: str,
    value: object,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    integer: bool = False,
) -> None:
    """Raise ``ValueError("<key>=<value>: must be ...")`` unless ``value`` is a real number (an ``int`` when
    ``integer``; never a ``bool``, never NaN) within the bounds given: ``gt`` / ``ge`` below, ``lt`` / ``le`` above.
    ``None`` is refused too, so call it only for keys that have no ``None`` meaning."""
    if integer:
        kind_ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        kind = "an integer"
    else:
        kind_ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value)
        kind = "a number"
    limits = (("> ", gt), ("≥ ", ge), ("< ", lt), ("≤ ", le))
    need = " ".join([kind, " and ".join(f"{op}{bound:g}" for op, bound in limits if bound is not None)]).strip()
    if not kind_ok:
        raise ValueError(f"{key}={value!r}: must be {need}")
    if (
        (gt is not None and not value > gt)
        or (ge is not None and not value >= ge)
        or (lt is not None and not value < lt)
        or (le is not None and not value <= le)
    ):
        raise ValueError(f"{key}={value!r}: must be {need}")
