"""Command-line flags derived from config dataclasses: each setting is declared once.

A config dataclass declares its fields with :func:`setting` (default, help, and how the command
line spells it); :func:`add_arguments` turns every field into a flag of an ``argparse`` parser
and :func:`from_args` builds the dataclass back from the parsed namespace. The library raises
errors that name the *setting* (``lr``, ``input_size``); the CLI's flag is the same name with
dashes (``--lr``, ``--input-size``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from collections.abc import Callable
from typing import Any

_MISSING = dataclasses.MISSING


def parse_hw(text: str) -> tuple[int, int]:
    """``"352x480"`` -> (352, 480)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected HEIGHTxWIDTH such as 352x480, got '{text}'"
        ) from None
    if h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got '{text}'")
    return h, w


def parse_json_object(text: str) -> dict[str, Any]:
    """``'{"width_mult": 0.75}'`` -> a dict (keyword arguments on the command line)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got '{text}' ({e})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got '{text}'")
    return value


def setting(
    default: Any = _MISSING,
    help: str = "",
    *,
    factory: Callable[[], Any] | None = None,
    default_text: str | None = None,
    choices: tuple[Any, ...] | None = None,
    metavar: str | tuple[str, ...] | None = None,
    group: str | None = None,
    parse: Callable[[str], Any] | None = None,
    positional: bool = False,
) -> Any:
    """A dataclass field with what the command line needs to offer it.

    ``factory``: default computed at construction (``default_text`` says what it is in
    ``--help``). ``group``: fields sharing a group are mutually exclusive, and one of them is
    required. ``parse``: the argparse ``type`` (inferred from the annotation otherwise).
    ``positional``: an argument without a flag (a list field takes one or more; with a default,
    it may be left out).
    """
    meta = {"help": help, "default_text": default_text, "choices": choices, "metavar": metavar}
    meta.update(group=group, parse=parse, positional=positional)
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _kwargs(f: dataclasses.Field, hint: Any) -> dict[str, Any]:
    meta = f.metadata
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if type(None) in args:  # X | None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    kw: dict[str, Any] = {"help": meta.get("help", "")}
    if hint is bool:
        kw["action"] = argparse.BooleanOptionalAction if f.default is True else "store_true"
    elif origin is list:  # a repeatable flag
        kw.update(type=meta.get("parse") or args[0], action="append", metavar=meta.get("metavar"))
    elif origin is tuple and args == (int, int):
        kw.update(type=meta.get("parse") or parse_hw, metavar=meta.get("metavar") or "HxW")
    elif origin is tuple:
        kw.update(type=args[0], nargs=len(args), metavar=meta.get("metavar"))
    elif origin is dict or hint is dict:
        kw.update(
            type=meta.get("parse") or parse_json_object, metavar=meta.get("metavar") or "JSON"
        )
    else:
        kw.update(type=meta.get("parse") or hint, metavar=meta.get("metavar"))
    if meta.get("choices"):
        kw["choices"] = meta["choices"]
    return {k: v for k, v in kw.items() if v is not None}


def _default_text(f: dataclasses.Field) -> str | None:
    if f.metadata.get("default_text"):
        return f.metadata["default_text"]
    if f.default is _MISSING or f.default is None or isinstance(f.default, bool):
        return None  # also list fields (default_factory): nothing to show
    value = f.default
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return f"{value[0]}x{value[1]}"
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)


def add_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One flag per field of the dataclass ``cls`` (``--batch-size`` for ``batch_size``).

    Fields without a default are required flags; defaults are left to the dataclass (the
    namespace only holds what was typed), and shown in the help.
    """
    hints = typing.get_type_hints(cls)
    groups: dict[str, argparse._MutuallyExclusiveGroup] = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kw = _kwargs(f, hints[f.name])
        text = _default_text(f)
        if text is not None:
            kw["help"] = f"{kw['help']} (default: {text})".lstrip()
        kw["help"] = kw["help"].replace("%", "%%")
        required = f.default is _MISSING and f.default_factory is _MISSING
        if f.metadata.get("positional"):
            _add_positional(parser, f, kw, required)
            continue
        target: Any = parser
        if f.metadata.get("group"):
            name = f.metadata["group"]
            if name not in groups:
                groups[name] = parser.add_mutually_exclusive_group(required=True)
            target = groups[name]
        elif required:
            kw["required"] = True
        target.add_argument(
            f"--{f.name.replace('_', '-')}", dest=f.name, default=argparse.SUPPRESS, **kw
        )


def _add_positional(parser, f: dataclasses.Field, kw: dict[str, Any], required: bool) -> None:
    kw.pop("metavar", None)
    if kw.get("action") == "append":  # a list: one or more values (none when it has a default)
        kw.pop("action")
        kw["nargs"] = "+" if required else "*"
    elif not required:
        kw["nargs"] = "?"
    if not required:
        kw["default"] = argparse.SUPPRESS
    parser.add_argument(f.name, **kw)


def from_args(cls: type, ns: argparse.Namespace, **overrides: Any) -> Any:
    """The dataclass ``cls`` from the flags that were given (the rest keep their defaults)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(ns).items() if k in names}
    for k, v in values.items():  # nargs gives lists; tuple fields want tuples
        if isinstance(v, list) and "tuple" in str(hints[k]):
            values[k] = tuple(v)
    return cls(**{**values, **overrides})
