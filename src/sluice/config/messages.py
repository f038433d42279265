"""pydantic's validation errors in the user's words: the path, what was expected, the value given, and
"did you mean" for a near miss (never a class name such as ``Timeouts`` or a raw regular expression)."""

from __future__ import annotations

import difflib
import re
from typing import Any, get_args

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

MAX_SHOWN = 40
"""Characters of a bad value echoed in a message (longer values are cut with ...)."""


def shown(value: Any) -> str:
    """A value as the user wrote it, cut to `MAX_SHOWN` characters."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def did_you_mean(given: Any, choices: list[str]) -> str:
    """``; did you mean `timeouts`?`` when `given` is close to one of `choices`, else ''."""
    if not isinstance(given, str):
        return ""
    close = difflib.get_close_matches(given, choices, n=1, cutoff=0.6)
    return f"; did you mean `{close[0]}`?" if close else ""


def format_path(loc: tuple[int | str, ...]) -> str:
    """``('vips', 0, 'udp')`` -> ``vips[0].udp``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "(top level)"


def _is_internal(part: int | str) -> bool:
    """A location part pydantic adds for a validator or a union member, not a key of the file."""
    return isinstance(part, str) and (part.startswith("function-") or "[" in part)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds (through Optional, tuple and Annotated), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        if (found := _model_in(arg)) is not None:
            return found
    return None


def _keys_at(root: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The keys the model at `loc` accepts (aliases as written in the file), [] if none is known."""
    model: type[BaseModel] | None = root
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        by_key = {f.alias or name: f for name, f in model.model_fields.items()}
        field = by_key.get(part)
        model = None if field is None else _model_in(field.annotation)
    if model is None:
        return []
    return [f.alias or name for name, f in model.model_fields.items()]


_QUOTED = re.compile(r"'([^']*)'")

_TYPE_WORDS = {
    "model_type": "a mapping (key: value lines)",
    "model_attributes_type": "a mapping (key: value lines)",
    "dict_type": "a mapping (key: value lines)",
    "tuple_type": "a list",
    "list_type": "a list",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
}

_BOUNDS = {
    "greater_than_equal": ("ge", "must be at least"),
    "greater_than": ("gt", "must be more than"),
    "less_than_equal": ("le", "must be at most"),
    "less_than": ("lt", "must be less than"),
}


def _message(err: ErrorDetails, root: type[BaseModel], loc: tuple[int | str, ...]) -> str:
    kind, ctx, given = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "extra_forbidden":
        keys = _keys_at(root, loc[:-1])
        hint = did_you_mean(loc[-1], keys) if loc else ""
        if not hint and keys:
            hint = " (known keys: " + ", ".join(keys) + ")"
        return "unknown key" + hint
    if kind == "missing":
        return "required, but not given"
    if kind == "literal_error":
        choices = _QUOTED.findall(str(ctx.get("expected", ""))) or [str(ctx.get("expected"))]
        expected = ", ".join(choices[:-1]) + (" or " if len(choices) > 1 else "") + choices[-1]
        return f"expected {expected}, got {shown(given)}" + did_you_mean(given, choices)
    if kind in _TYPE_WORDS:
        return f"expected {_TYPE_WORDS[kind]}, got {shown(given)}"
    if kind in _BOUNDS:
        key, words = _BOUNDS[kind]
        return f"{words} {ctx.get(key)}, got {shown(given)}"
    if kind in ("too_short", "too_long"):
        bound = ctx.get("min_length") if kind == "too_short" else ctx.get("max_length")
        words = "needs at least" if kind == "too_short" else "takes at most"
        return f"{words} {bound} item{'s' if bound != 1 else ''}, got {ctx.get('actual_length')}"
    if kind in ("string_too_short", "string_too_long"):
        bound = ctx.get("min_length") if kind == "string_too_short" else ctx.get("max_length")
        words = "at least" if kind == "string_too_short" else "at most"
        return f"must be {words} {bound} character{'s' if bound != 1 else ''}, got {shown(given)}"
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", err["msg"])).removeprefix("Value error, ")
    return f"{err['msg']}, got {shown(given)}"


def format_errors(exc: ValidationError, root: type[BaseModel]) -> list[str]:
    """One ``path: message`` line per error of validating `root` from a parsed file."""
    lines = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not _is_internal(p))
        lines.append(f"{format_path(loc)}: {_message(err, root, loc)}")
    return list(dict.fromkeys(lines))
