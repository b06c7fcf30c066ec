"""One config class for the CLI and the Dagster run config.

The engine's configs are plain pydantic models (the engine never imports dagster);
``dagster_config`` derives a ``dagster.Config`` class with the same fields, defaults and
descriptions, so the launchpad in the UI shows exactly the options the CLI takes.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

import dagster as dg
import pydantic


def _dagster_type(tp: Any) -> Any:
    """Map annotations the Dagster config system refuses onto ones it accepts."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Path:
        return str
    if origin is tuple:
        inner = args[0] if args else str
        return list[_dagster_type(inner)]
    if origin is typing.Union or origin is types.UnionType:
        present = [a for a in args if a is not type(None)]
        optional = len(present) < len(args)
        if set(present) <= {int, float} and len(present) == 2:
            inner: Any = float  # a count or a fraction: Dagster has no unions of scalars
        elif len(present) == 1:
            inner = _dagster_type(present[0])
        else:
            raise TypeError(f"config type {tp} has no Dagster equivalent")
        return typing.Optional[inner] if optional else inner
    if origin is list and args:
        return list[_dagster_type(args[0])]
    return tp


def dagster_config(model: type[pydantic.BaseModel], name: str | None = None,
                   exclude: set[str] = frozenset()) -> type[dg.Config]:
    """A ``dagster.Config`` subclass with the fields of the engine config ``model``.

    ``exclude`` names the fields the asset itself decides (input and output paths), which the
    run config must not set.
    """
    fields: dict[str, Any] = {}
    for key, field in model.model_fields.items():
        if key in exclude:
            continue
        default = field.default
        if isinstance(default, Path):
            default = str(default)
        elif isinstance(default, tuple):
            default = list(default)
        if field.default_factory is not None:
            f = pydantic.Field(default_factory=field.default_factory, description=field.description)
        else:
            f = pydantic.Field(default=default, description=field.description)
        fields[key] = (_dagster_type(field.annotation), f)
    return pydantic.create_model(  # type: ignore[call-overload]
        name or f"{model.__name__}Run", __base__=dg.Config, __doc__=model.__doc__, **fields
    )


M = typing.TypeVar("M", bound=pydantic.BaseModel)


def engine_config(model: type[M], config: dg.Config, **overrides: Any) -> M:
    """The engine config from a run config, with ``overrides`` (paths the asset decides)."""
    values = config.model_dump()
    values.update(overrides)
    return model(**values)
