"""Checking a plan's fields against their type hints, so a hand-edited or damaged ``plan.json`` is refused with
the field's name when it is loaded, not with a traceback from deep inside training or prediction.

Only what JSON can hold is checked (numbers, strings, booleans, lists, objects, ``Literal`` choices, optional
values and nested dataclasses); it is a few lines, so it is written here rather than taken from a validation
library that medseg would otherwise not need.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from medseg.errors import MedsegError

_SCALARS: dict[Any, Any] = {
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v),
    str: lambda v: isinstance(v, str),
    type(None): lambda v: v is None,
}


def conforms(value: Any, hint: Any) -> bool:
    """Whether ``value`` (as loaded from JSON) fits the type ``hint``."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return True
    if hint in _SCALARS:
        return _SCALARS[hint](value)
    if origin is Literal:
        return value in args
    if origin in (Union, types.UnionType):
        return any(conforms(value, arg) for arg in args)
    if origin in (list, tuple, dict):
        return _container_conforms(value, origin, args)
    if dataclasses.is_dataclass(hint):
        return isinstance(value, hint)
    return True  # a type JSON cannot express: left to the code that uses it


def _container_conforms(value: Any, origin: Any, args: tuple[Any, ...]) -> bool:
    if origin is dict:
        return isinstance(value, dict) and all(conforms(k, args[0]) and conforms(v, args[1]) for k, v in value.items())
    if not isinstance(value, list | tuple):
        return False
    if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        return len(value) == len(args) and all(conforms(v, a) for v, a in zip(value, args))
    return all(conforms(v, args[0]) for v in value)


def check_fields(obj: Any, what: str = "plan") -> None:
    """Raise a :class:`MedsegError` naming the first field of the dataclass ``obj`` whose value has the wrong type."""
    hints = typing.get_type_hints(type(obj))
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if not conforms(value, hints[field.name]):
            shown = repr(value) if len(repr(value)) < 80 else repr(value)[:77] + "..."
            raise MedsegError(f"{what} field {field.name!r} has the wrong type or value ({shown})",
                              fix=f"it must be {_describe(hints[field.name])}; re-create the plan with `medseg plan`")


def _describe(hint: Any) -> str:
    return str(hint).replace("typing.", "")
