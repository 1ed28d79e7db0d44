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
import re
import textwrap
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from utils.core.layout import default_base_dir

C = TypeVar("C")

_SPEC = "trackverse.flag"
_NESTED = "trackverse.nested"


@dataclasses.dataclass(frozen=True)
class FlagSpec:
    help: str | None = None
    group: str | None = None
    aliases: tuple[str, ...] = ()
    choices: Sequence[Any] | None = None
    parse: Callable[[str], Any] | None = None  # argparse ``type=`` when the annotation is not enough
    required: bool = False
    hidden: bool = False
    positional: str | None = None  # a positional argument (zero or more), shown under this name


def option(default: Any = dataclasses.MISSING, *, help: str | None = None, group: str | None = None,
           aliases: Sequence[str] = (), choices: Sequence[Any] | None = None,
           parse: Callable[[str], Any] | None = None, hidden: bool = False,
           default_factory: Any = dataclasses.MISSING, positional: str | None = None) -> Any:
    """A config field that is also a flag. Without a default the flag is required. With
    ``positional``, a tuple field is the command's positional arguments (zero or more), shown
    under that name."""
    spec = FlagSpec(help=help, group=group, aliases=tuple(aliases), choices=choices, parse=parse,
                    required=default is dataclasses.MISSING and default_factory is dataclasses.MISSING,
                    hidden=hidden, positional=positional)
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={_SPEC: spec})
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata={_SPEC: spec})
    return dataclasses.field(default=default, metadata={_SPEC: spec})


def nested(cls: type, group: str | None = None) -> Any:
    """A field holding another config (e.g. the download options two stages share): its flags
    are added with the outer config's, flat (``--url_template``, not ``--download.url_template``),
    in ``group`` when given, else in the groups the nested config names."""
    return dataclasses.field(default_factory=cls, metadata={_NESTED: (cls, group)})


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
    """(field, resolved type, flag spec) of every flag of a config class, nested configs'
    flags in place of the nested field, in field order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if _NESTED in f.metadata:
            inner, group = f.metadata[_NESTED]
            for field, tp, spec in config_fields(inner):
                out.append((field, tp, spec if group is None else dataclasses.replace(spec, group=group)))
            continue
        if _SPEC in f.metadata:
            out.append((f, hints[f.name], f.metadata[_SPEC]))
    return out


def add_config_arguments(parser: argparse.ArgumentParser, cls: type,
                         groups: dict[str, argparse._ArgumentGroup] | None = None,
                         only_groups: Sequence[str | None] | None = None,
                         skip_groups: Sequence[str | None] = (),
                         defaults: Mapping[str, Any] | None = None) -> dict[str, argparse._ArgumentGroup]:
    """Add a flag per field of ``cls`` to ``parser``, in field order, in the field's group
    (created on first use; ``groups`` shares them between classes). ``defaults`` overrides
    field defaults by name (e.g. a stage's Slurm resources)."""
    groups = {} if groups is None else groups
    defaults = defaults or {}
    for field, tp, spec in config_fields(cls):
        if spec.group in skip_groups or (only_groups is not None and spec.group not in only_groups):
            continue
        kwargs = _argparse_kwargs(field, tp, spec)
        if field.name in defaults:
            kwargs["default"] = defaults[field.name]
        target: Any = parser
        if spec.positional:
            parser.add_argument(field.name, metavar=spec.positional, nargs="*", default=list(kwargs.get("default", ())),
                                help=spec.help)
            continue
        if spec.group is not None:
            if spec.group not in groups:
                groups[spec.group] = parser.add_argument_group(spec.group)
            target = groups[spec.group]
        target.add_argument(f"--{field.name}", *(f"--{a}" for a in spec.aliases), **kwargs)
    return groups


def config_from_args(cls: type[C], args: argparse.Namespace, **overrides: Any) -> C:
    """``cls`` with every flag field (nested configs included) taken from ``args``; lists
    become tuples, since configs are frozen."""
    values: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if _NESTED in f.metadata:
            values[f.name] = config_from_args(f.metadata[_NESTED][0], args)
        elif _SPEC in f.metadata and hasattr(args, f.name):
            value = getattr(args, f.name)
            if isinstance(value, list):
                value = tuple(value)
            elif value is not None and _unwrap_optional(hints[f.name])[0] is Path and not isinstance(value, Path):
                value = Path(value)
            values[f.name] = value
    values.update(overrides)
    return cls(**values)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def base_dir_option(group: str | None = None) -> Any:
    """``--base_dir`` as every script takes it."""
    return option(default_factory=default_base_dir, group=group,
                  help="dataset root (default $TRACKVERSE_DB, else ./TrackVerseDB)")


def log_level_option(group: str | None = None) -> Any:
    """``--log_level`` as every script takes it."""
    return option("INFO", group=group, choices=LOG_LEVELS, help="how much the run logs to stderr")


# ------------------------------------------------------------------------------- --help


def wrap_words(text: str, width: int) -> list[str]:
    """``text`` in lines of at most ``width`` characters, broken only at spaces: a path, a file
    name or a hyphenated word (``tracks_subsets/``, ``yt-dlp``, ``shard-NNNNNN.tar``) is never
    split, even when it is longer than a line."""
    text = re.sub(r"\s+", " ", text).strip()
    return textwrap.wrap(text, max(width, 1), break_long_words=False, break_on_hyphens=False) if text else []


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each flag's default appended as "(default: X)", except where the help
    text already says what the default is (it mentions "default"), where there is no default
    to show (None: the flag is optional, its help says what happens without it) and for
    on/off switches (off unless given). Lines break at spaces only (:func:`wrap_words`)."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return wrap_words(text, width)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(indent + line for line in wrap_words(text, width - len(indent)))

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, argparse.SUPPRESS) or action.default is False:
            return text
        if isinstance(action.default, list | tuple) and not action.default:  # none given, none assumed
            return text
        if not action.option_strings and action.nargs not in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return text
        default = action.default
        if isinstance(default, list | tuple):
            shown = " ".join(str(v) for v in default)
        else:
            shown = str(default)
        return f"{text} (default: {shown.replace('%', '%%')})".lstrip()


class RawDescriptionDefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultsHelpFormatter):
    """:class:`DefaultsHelpFormatter` for a script whose description (its docstring) is laid
    out by hand."""
