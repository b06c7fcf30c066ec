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


def for_deployment(assets_def: dg.AssetsDefinition, op_prefix: str,
                   values: dict[str, Any] | None = None) -> dg.AssetsDefinition:
    """The same asset (or asset check) with its op named ``<op_prefix>__<name>`` (two
    deployments' copies of one asset may not share an op name in one code location) and, when
    ``values`` is given, those as the defaults of its run config: a deployment's settings, shown
    in the launchpad and used by runs that automation starts (which carry no run config). A run
    config still overrides any field. An asset's compute is wrapped by
    :func:`resources.store.commit_after`, so whatever starts the run (a job, automation, the
    launchpad), what the asset wrote is uploaded to a remote artifact root before its
    materialization is recorded."""
    op = assets_def.node_def
    schema = None
    if values:
        config_arg = op.compute_fn.get_config_arg() if hasattr(op.compute_fn, "get_config_arg") else None
        if config_arg is None:
            raise TypeError(f"{op.name} takes no config to set defaults on")
        cls = config_arg.annotation
        unknown = sorted(set(values) - set(cls.model_fields))
        if unknown:
            raise ValueError(f"{op.name}: unknown config field(s) {unknown}")
        fields = {}
        for key, value in values.items():
            field = cls.model_fields[key]
            try:
                pydantic.TypeAdapter(field.annotation).validate_python(value)
            except pydantic.ValidationError as e:
                reason = e.errors()[0]["msg"] if e.errors() else str(e)
                raise ValueError(f"{op.name}: {key}={value!r}: {reason}") from None
            fields[key] = (field.annotation, pydantic.Field(default=value, description=field.description))
        deployed = pydantic.create_model(cls.__name__, __base__=cls, **fields)  # type: ignore[call-overload]
        schema = deployed.to_config_schema()
    new_op = op.with_replaced_properties(name=f"{op_prefix}__{op.name}", config_schema=schema)
    if assets_def.keys and "store" in op.required_resource_keys:
        from dagster._core.definitions.decorators.op_decorator import DecoratedOpFunction

        from resources.store import commit_after

        new_op = dg.OpDefinition.dagster_internal_init(
            **{**_op_attributes(new_op),
               "compute_fn": DecoratedOpFunction(commit_after(op.compute_fn.decorated_fn))})
    return type(assets_def).dagster_internal_init(**{**assets_def.get_attributes_dict(),
                                                     "node_def": new_op})


def _op_attributes(op: dg.OpDefinition) -> dict[str, Any]:
    """What ``OpDefinition.dagster_internal_init`` takes to rebuild ``op``, as
    ``with_replaced_properties`` passes it."""
    return {"name": op.name, "ins": {d.name: dg.In.from_definition(d) for d in op.input_defs},
            "outs": {d.name: dg.Out.from_definition(d) for d in op.output_defs},
            "compute_fn": op.compute_fn, "config_schema": op.config_schema,
            "description": op.description, "tags": op.tags,
            "required_resource_keys": op.required_resource_keys, "code_version": op._version,
            "retry_policy": op.retry_policy, "version": None, "pool": op.pool}
