"""Options declared once: a dataclass field carries its default, its help text and its flags.

`option(...)` declares a field. A config is a dataclass whose fields are options or other
configs (a group); `leaves(cls)` walks the groups to every option. From the same fields come
the `Engine(**options)` keywords (`resolve`), the `loomlm serve` flags (`add_flags`,
`read_flags`) and the report `/server_info` gives (`dataclasses.asdict`).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from collections.abc import Iterator
from dataclasses import Field
from typing import Any, NamedTuple, cast

HELP = "help"
FLAGS = "flags"  # extra spellings of the flag (SGLang's), besides --the-field-name
ON_CLI = "cli"
CHOICES = "choices"


def option(
    default: Any,
    help: str,
    *,
    flags: tuple[str, ...] = (),
    cli: bool = True,
    choices: tuple[str, ...] | None = None,
) -> Any:
    """A config field. `flags`: other names of its `loomlm serve` flag; `cli=False` keeps it
    off the command line (values no flag can spell, such as a JsonFormat); `choices`: the
    values its flag takes."""
    meta = {HELP: help, FLAGS: flags, ON_CLI: cli, CHOICES: choices}
    return dataclasses.field(default=default, metadata=meta)


def group(factory: type) -> Any:
    """A field holding a nested config (its fields are options or groups)."""
    return dataclasses.field(default_factory=factory)


class Leaf(NamedTuple):
    path: tuple[str, ...]  # the groups it sits in, then its own name
    field: Field[Any]
    type: Any  # the resolved annotation

    @property
    def name(self) -> str:
        return self.path[-1]


def is_group(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def leaves(cls: type, prefix: tuple[str, ...] = ()) -> Iterator[Leaf]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        if is_group(tp):
            yield from leaves(tp, (*prefix, f.name))
        else:
            yield Leaf((*prefix, f.name), f, tp)


def groups(cls: type) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if is_group(hints[f.name])}


def resolve(cls: type, options: dict[str, Any], field_name: str = "option") -> Any:
    """Build `cls` from flat keywords: each option by its own name (`schedule_policy=...`),
    or a whole group by the group's name (`scheduler=SchedulerConfig(...)`). An unknown
    name is a ValueError naming it and the nearest valid one."""
    names = [leaf.name for leaf in leaves(cls)]
    if len(set(names)) != len(names):  # flat keywords need every option's name to be unique
        raise TypeError(f"{cls.__name__}: an option name is declared twice")
    valid = sorted({*names, *_group_names(cls)})
    unknown = [k for k in options if k not in valid]
    if unknown:
        hints = []
        for name in unknown:
            near = difflib.get_close_matches(name, valid, n=1)
            hints.append(f"{name!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
        raise ValueError(f"{field_name}: unknown {', '.join(hints)}")
    return _build(cls, options)


def _group_names(cls: type) -> set[str]:
    found = set()
    for name, tp in groups(cls).items():
        found |= {name, *_group_names(tp)}
    return found


def _build(cls: type, options: dict[str, Any]) -> Any:
    kwargs: dict[str, Any] = {}
    for name, tp in groups(cls).items():
        given = options.get(name)
        if given is not None and not isinstance(given, tp):
            raise ValueError(f"{name}: expected a {tp.__name__}, got {type(given).__name__}")
        inner = _build(tp, options)
        if given is not None:
            overrides = {k: getattr(inner, k) for k in _set_fields(tp, options)}
            inner = dataclasses.replace(cast(Any, given), **overrides) if overrides else given
        kwargs[name] = inner
    for f in dataclasses.fields(cls):
        if f.init and f.name not in kwargs and f.name in options:
            kwargs[f.name] = options[f.name]
    return cls(**kwargs)


def _set_fields(cls: type, options: dict[str, Any]) -> list[str]:
    """The fields of group `cls` given one by one (they win over a whole group given)."""
    return [f.name for f in dataclasses.fields(cls) if f.init and f.name in options]


# -- the command line --------------------------------------------------------------------------
def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per option of `cls` (and its groups), defaulting to the field's default."""
    for leaf in leaves(cls):
        meta = leaf.field.metadata
        if not meta.get(ON_CLI, True):
            continue
        names = [flag_of(leaf.name), *meta.get(FLAGS, ())]
        default = leaf.field.default
        text = meta[HELP].replace("%", "%%")  # argparse formats help with %
        if _base_type(leaf.type) is bool:
            parser.add_argument(*names, dest=leaf.name, action="store_true", help=text)
        else:
            # the default once, and only a real one: a help text that explains its default
            # ("default: the model's") keeps its own words, and None means "see the help"
            if default is not None and "default" not in text:
                text = f"{text} (default: {default})"
            parser.add_argument(
                *names,
                dest=leaf.name,
                type=_base_type(leaf.type),
                default=default,
                choices=meta.get(CHOICES),
                help=text,
            )


def read_flags(ns: argparse.Namespace, cls: type) -> Any:
    """`cls` from the flags `add_flags` declared."""
    given = vars(ns)
    options = {
        leaf.name: given[leaf.name]
        for leaf in leaves(cls)
        if leaf.field.metadata.get(ON_CLI, True) and leaf.name in given
    }
    return resolve(cls, options)


def _base_type(tp: Any) -> type:
    """int for `int | None`, and so on: what a flag's text converts to."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0]
    if tp in (bool, int, float, str):
        return tp
    return str  # paths and the like
