"""CLI options derived from a stage's config dataclass, so each setting's default and help live once.

A field becomes `--field-name` (or the flags in `metadata["flags"]`), typed by its annotation, with
`metadata["help"]` as help and its default shown. Lists repeat the option; dicts take `KEY=VALUE`
(`GROUP.KEY=VALUE` for a dict of dicts) and change only the entries named. A field with
`metadata["cli"] = False` is set some other way by the command (its help says how).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import json
import re
import types
import typing
from collections.abc import Callable
from typing import Any

import typer

from autarky.console import UserError


def setting(
    default: Any = dataclasses.MISSING,
    *,
    factory: Any = dataclasses.MISSING,
    help: str,
    flags: tuple[str, ...] = (),
    cli: bool = True,
) -> Any:
    """A config field with its default, its help text and its CLI flags: the one place each is written."""
    metadata = {"help": help, "flags": flags, "cli": cli}
    return dataclasses.field(default=default, default_factory=factory, metadata=metadata)


def option_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]


def default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def flags_of(f: dataclasses.Field) -> tuple[str, ...]:
    """The declared flags, else `--field-name` (and `--no-field-name` for a switch)."""
    if flags := tuple(f.metadata.get("flags", ())):
        return flags
    flag = f.name.replace("_", "-")
    return (f"--{flag}/--no-{flag}",) if isinstance(default_of(f), bool) else (f"--{flag}",)


def flag_of(f: dataclasses.Field) -> str:
    """The one flag a message names: `--max-steps`, `--pii` (not `--pii/--no-pii`)."""
    return flags_of(f)[0].partition("/")[0]


def in_flags(message: str, cls: type, every_field: bool = False) -> str:
    """`message` with the field names of `cls` written as the flags a user types (`max_steps` → `--max-steps`).

    Only names with an underscore are rewritten unless `every_field`: a one-word field such as `seed`
    is also an ordinary word, which a message may use as one.
    """
    flags = {f.name: flag_of(f) for f in dataclasses.fields(cls) if every_field or "_" in f.name}
    if not flags:
        return message
    names = "|".join(sorted(map(re.escape, flags), key=len, reverse=True))
    return re.sub(rf"(?<![\w-])({names})(?![\w-])", lambda m: flags[m.group(1)], message)


def _parameter(f: dataclasses.Field, annotation: Any) -> inspect.Parameter:
    """The Typer parameter for one field: mappings arrive as KEY=VALUE strings, parsed afterwards."""
    default, help_text = default_of(f), f.metadata.get("help", "")
    origin = typing.get_origin(annotation)
    if origin is dict:
        nested = isinstance(next(iter(default.values()), None), dict)
        metavar = "GROUP.KEY=VALUE" if nested else "KEY=VALUE"
        if nested:  # a table of settings per group: too long to print whole
            example = next(f"{g}.{k}={v}" for g, values in default.items() for k, v in values.items())
            shown = f"groups {', '.join(default)}; e.g. {example}"
        else:
            shown = ", ".join(f"{k}={v}" for k, v in default.items()) or "none"
        help_text = f"{help_text} Repeatable; changes only the entries named (default: {shown})."
        option = typer.Option(None, *flags_of(f), help=help_text, metavar=metavar, show_default=False)
        annotation = list[str] | None
    elif origin is list:
        metavar = f.metadata.get("metavar")  # else the CLI shows the flag's own name
        option = typer.Option(None, *flags_of(f), help=help_text + " Repeatable.", metavar=metavar)
        annotation = annotation | None
    else:
        option = typer.Option(default, *flags_of(f), help=help_text)
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)


def _coerce(text: str, like: Any, flag: str) -> Any:
    """A value of the same type as the one it replaces (JSON for a key with no default)."""
    try:
        if isinstance(like, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        if isinstance(like, int | float | str):
            return type(like)(text)
        return json.loads(text)
    except ValueError:
        kind = type(like).__name__ if like is not None else "JSON"
        raise UserError(f"{flag}: {text!r} is not a {kind}") from None


def parse_mapping(items: list[str], default: dict, flag: str, value_type: Any = None) -> dict:
    """KEY=VALUE items over a copy of `default`; GROUP.KEY=VALUE reaches into a dict of dicts."""
    result = copy.deepcopy(default)
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UserError(f"{flag} takes KEY=VALUE, not {item!r}")
        target = result
        if isinstance(next(iter(default.values()), None), dict):
            group, dot, key = key.partition(".")
            if not dot or group not in default:
                raise UserError(f"{flag} takes GROUP.KEY=VALUE with GROUP one of {', '.join(default)}")
            target = result[group]
        like = target.get(key, value_type() if value_type in (int, float, str) else None)
        target[key] = _coerce(text, like, flag)
    return result


def _value(f: dataclasses.Field, annotation: Any, given: Any) -> Any:
    if typing.get_origin(annotation) is dict:
        value_type = typing.get_args(annotation)[1]
        return parse_mapping(given or [], default_of(f), flags_of(f)[0], value_type)
    if typing.get_origin(annotation) is list:
        return list(given) if given else default_of(f)
    return given


def with_config(cls: type, param: str = "config") -> Callable:
    """Give a command one option per field of `cls`; it receives them as `param=cls(...)`."""
    hints = typing.get_type_hints(cls)
    fields = option_fields(cls)

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command)
        own = [p for p in signature.parameters.values() if p.name != param]
        taken = {p.name for p in own}
        clash = [f.name for f in fields if f.name in taken]
        assert not clash, f"{command.__name__} declares {clash} that {cls.__name__} already has"

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            values = {f.name: _value(f, hints[f.name], kwargs.pop(f.name)) for f in fields}
            try:
                return command(**kwargs, **{param: cls(**values)})
            except UserError as e:  # a stage checks its config by field; the user typed flags
                raise UserError(in_flags(str(e), cls)) from e

        extra = [_parameter(f, _plain(hints[f.name])) for f in fields]
        wrapper.__signature__ = signature.replace(parameters=_ordered(own + extra))
        return wrapper

    return decorate


def _plain(annotation: Any) -> Any:
    """`X | None` as typing.Optional, which Typer understands on every version."""
    if isinstance(annotation, types.UnionType):
        return typing.Union[typing.get_args(annotation)]  # noqa: UP007
    return annotation


def _ordered(params: list[inspect.Parameter]) -> list[inspect.Parameter]:
    """Positional parameters first, then keyword-only, as Python requires of a signature."""
    return sorted(params, key=lambda p: p.kind == inspect.Parameter.KEYWORD_ONLY)
