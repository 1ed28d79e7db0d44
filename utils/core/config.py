"""Frozen config dataclasses and the command-line flags generated from them.

Each stage describes its settings once, as the fields of a frozen dataclass: name, type,
default, help text and argument group. :func:`add_config_arguments` turns the fields into
argparse flags (``--<field>``, plus declared aliases); :func:`config_from_args` builds the
config back from the parsed flags. Library code takes the config, never the ``Namespace``;
validation returns a new config (``dataclasses.replace``) instead of mutating it.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

C = TypeVar("C")

_SPEC = "trackverse.flag"


@dataclasses.dataclass(frozen=True)
class FlagSpec:
    help: str | None = None
    group: str | None = None
    aliases: tuple[str, ...] = ()
    choices: Sequence[Any] | None = None
    parse: Callable[[str], Any] | None = None  # argparse ``type=`` when the annotation is not enough
    required: bool = False
    hidden: bool = False


def option(default: Any = dataclasses.MISSING, *, help: str | None = None, group: str | None = None,
           aliases: Sequence[str] = (), choices: Sequence[Any] | None = None,
           parse: Callable[[str], Any] | None = None, hidden: bool = False,
           default_factory: Any = dataclasses.MISSING) -> Any:
    """A config field that is also a flag. Without a default the flag is required."""
    spec = FlagSpec(help=help, group=group, aliases=tuple(aliases), choices=choices, parse=parse,
                    required=default is dataclasses.MISSING and default_factory is dataclasses.MISSING,
                    hidden=hidden)
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={_SPEC: spec})
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata={_SPEC: spec})
    return dataclasses.field(default=default, metadata={_SPEC: spec})


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _argparse_kwargs(field: dataclasses.Field, tp: Any, spec: FlagSpec) -> dict[str, Any]:
    base, _ = _unwrap_optional(tp)
    kwargs: dict[str, Any] = {"dest": field.name}
    if field.default is not dataclasses.MISSING:
        kwargs["default"] = field.default
    elif field.default_factory is not dataclasses.MISSING:
        kwargs["default"] = field.default_factory()
    else:
        kwargs["required"] = True
    if base is bool:
        kwargs["action"] = "store_true"
        kwargs.pop("required", None)
    else:
        origin = typing.get_origin(base)
        if origin in (list, tuple):
            kwargs["nargs"] = "+"
            base = typing.get_args(base)[0]
            if isinstance(kwargs.get("default"), tuple):
                kwargs["default"] = list(kwargs["default"])
        parse = spec.parse or (base if base in (int, float, Path) else None)
        if parse is not None:
            kwargs["type"] = parse
        if spec.choices is not None:
            kwargs["choices"] = list(spec.choices)
    kwargs["help"] = argparse.SUPPRESS if spec.hidden else spec.help
    return kwargs


def config_fields(cls: type) -> list[tuple[dataclasses.Field, Any, FlagSpec]]:
    """(field, resolved type, flag spec) of every flag field of a config class, in order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(_SPEC)
        if spec is not None:
            out.append((f, hints[f.name], spec))
    return out


def add_config_arguments(parser: argparse.ArgumentParser, cls: type,
                         groups: dict[str, argparse._ArgumentGroup] | None = None,
                         only_groups: Sequence[str | None] | None = None,
                         skip_groups: Sequence[str | None] = ()) -> dict[str, argparse._ArgumentGroup]:
    """Add a flag per field of ``cls`` to ``parser``, in field order, in the field's group
    (created on first use; ``groups`` shares them between classes)."""
    groups = {} if groups is None else groups
    for field, tp, spec in config_fields(cls):
        if spec.group in skip_groups or (only_groups is not None and spec.group not in only_groups):
            continue
        target: Any = parser
        if spec.group is not None:
            if spec.group not in groups:
                groups[spec.group] = parser.add_argument_group(spec.group)
            target = groups[spec.group]
        target.add_argument(f"--{field.name}", *(f"--{a}" for a in spec.aliases),
                            **_argparse_kwargs(field, tp, spec))
    return groups


def config_from_args(cls: type[C], args: argparse.Namespace, **overrides: Any) -> C:
    """``cls`` with every flag field taken from ``args`` (lists become tuples: configs are frozen)."""
    values = {}
    for field, _tp, _spec in config_fields(cls):  # type: ignore[arg-type]
        if hasattr(args, field.name):
            value = getattr(args, field.name)
            values[field.name] = tuple(value) if isinstance(value, list) else value
    values.update(overrides)
    return cls(**values)
