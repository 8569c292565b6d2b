"""Structural validation of a decoded YAML tree against a Struct type, collecting every problem.

msgspec stops at the first error; a user fixing a profile wants all of them at once, each with its
field path. This walks the Struct tree and converts leaf values one by one. Pure: no I/O.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

import msgspec


class Problem(msgspec.Struct, frozen=True):
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path or '<top>'}: {self.message}"


def convert_collecting(data: Any, type_: Any, path: str = "") -> tuple[Any, list[Problem]]:
    """Convert `data` to `type_`; return (value or None, every problem found)."""
    struct_type = _struct_in(type_)
    if struct_type is None:
        return _convert_leaf(data, type_, path)
    if data is None and _allows_none(type_):
        return None, []
    if isinstance(data, list) and _is_list_of_struct(type_):
        return _convert_list(data, struct_type, path)
    return _convert_struct(data, struct_type, path)


def _convert_leaf(data: Any, type_: Any, path: str) -> tuple[Any, list[Problem]]:
    try:
        return msgspec.convert(data, type_, strict=False), []
    except msgspec.ValidationError as error:
        message = str(error).replace(" - at `$`", "")
        if " - at `$" in message:
            message, _, where = message.partition(" - at `$")
            return None, [Problem(path + where.rstrip("`"), message)]
        return None, [Problem(path, f"{message} (got {data!r})")]


def _convert_list(data: list, struct_type: type, path: str) -> tuple[Any, list[Problem]]:
    values, problems = [], []
    for index, item in enumerate(data):
        value, found = _convert_struct(item, struct_type, f"{path}[{index}]")
        values.append(value)
        problems += found
    return values, problems


def _convert_struct(data: Any, struct_type: type, path: str) -> tuple[Any, list[Problem]]:
    if not isinstance(data, dict):
        kind = type(data).__name__
        return None, [Problem(path, f"expected a mapping of {struct_type.__name__} fields, got {kind}")]
    fields = {f.encode_name: f for f in msgspec.structs.fields(struct_type)}
    problems = [_unknown_key(path, key, fields) for key in data if key not in fields]
    values = {}
    for name, field in fields.items():
        sub_path = f"{path}.{name}" if path else name
        if name not in data:
            if field.required:
                problems.append(Problem(sub_path, "required field is missing"))
            continue
        value, found = convert_collecting(data[name], field.type, sub_path)
        problems += [_with_reason(problem, field.type) for problem in found]
        values[name] = value
    if problems:
        return None, problems
    return struct_type(**values), []


def _with_reason(problem: Problem, type_: Any) -> Problem:
    """Append the field's documented reason (Meta description) to a problem about that field."""
    for meta in getattr(type_, "__metadata__", ()):
        if isinstance(meta, msgspec.Meta) and meta.description:
            return Problem(problem.path, f"{problem.message}: {meta.description}")
    return problem


def _unknown_key(path: str, key: Any, fields: dict[str, Any]) -> Problem:
    close = difflib.get_close_matches(str(key), fields, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return Problem(f"{path}.{key}" if path else str(key),
                   f"unknown field; {hint}valid fields: {', '.join(fields)}")


def _struct_in(type_: Any) -> type | None:
    """The Struct type inside `type_` (itself, Optional[Struct] or list[Struct]), if any."""
    if isinstance(type_, type) and issubclass(type_, msgspec.Struct):
        return type_
    for arg in typing.get_args(type_):
        found = _struct_in(arg)
        if found is not None and _is_wrapper(type_):
            return found
    return None


def _is_wrapper(type_: Any) -> bool:
    origin = typing.get_origin(type_)
    return origin in (list, typing.Union, types.UnionType)


def _is_list_of_struct(type_: Any) -> bool:
    return typing.get_origin(type_) is list


def _allows_none(type_: Any) -> bool:
    return type(None) in typing.get_args(type_)
