"""Checks of string options where configs are built.

The packages branch on string options (method names, modes, reader settings) with ``if``/``else``, so an unknown
value would quietly run the ``else`` variant. LightningCLI checks ``Literal`` hints when it parses a YAML file, but
configs, modules, data modules and readers built in Python (tests, ``repro.py`` scripts, helper commands) are not
parsed: these functions check them where they are built, naming the key as a config file writes it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal, get_args, get_origin, get_type_hints

__all__ = ["check_choice", "check_literal_fields"]


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
