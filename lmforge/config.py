"""Engine configs on the command line: one flag per field, declared once in the pydantic model.

Every engine stage has a pydantic config whose fields carry their defaults and a description.
``add_config_arguments`` turns those fields into ``--flags`` (the help is the description and the
default), and ``config_from_args`` builds the config from the flags that were given, on top of an
optional ``--config FILE`` (JSON or YAML, or an inline JSON object). The Dagster launchpad is
generated from the same model (``resources.config.dagster_config``), so the CLI, the UI and the
defaults cannot drift apart.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Literal, TypeVar

import pydantic

from lmforge.errors import InputError

M = TypeVar("M", bound=pydantic.BaseModel)

_NONE_WORDS = {"none", "null"}


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """``(inner type, optional)`` for ``X | None``; the type itself otherwise."""
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        return (args[0] if len(args) == 1 else tp), optional
    return tp, False


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _kind(tp: Any) -> str:
    inner, _ = _unwrap(tp)
    origin = typing.get_origin(inner)
    if inner is bool:
        return "bool"
    if origin in (list, tuple, set, frozenset) or inner in (list, tuple):
        return "list"
    if origin is dict or inner is dict or (isinstance(inner, type)
                                          and issubclass(inner, pydantic.BaseModel)):
        return "json"
    if origin is Literal:
        return "choice"
    return "scalar"


def _default_text(field: pydantic.fields.FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is pydantic_core_undefined():
        return "required"
    else:
        value = field.default
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) if value else "none"
    return "none" if value is None else str(value)


def pydantic_core_undefined():
    from pydantic_core import PydanticUndefined

    return PydanticUndefined


def add_config_arguments(parser: argparse.ArgumentParser, model: type[pydantic.BaseModel],
                         exclude: Iterable[str] = (), config_flag: bool = True) -> None:
    """Add one ``--flag`` per field of ``model`` (less ``exclude``: what positional arguments
    give). A flag left out keeps the field's default; lists are comma-separated (or JSON), dicts
    and nested models JSON, booleans ``--x`` / ``--no-x``, optional fields take ``none``."""
    skip = set(exclude)
    group = parser.add_argument_group(f"{model.__name__} (every field; defaults in brackets)")
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        kind = _kind(field.annotation)
        help_ = f"{field.description or ''} [{_default_text(field)}]".strip()
        help_ = help_.replace("%", "%%")
        if kind == "bool":
            group.add_argument(flag_name(name), dest=name, default=None,
                               action=argparse.BooleanOptionalAction, help=help_)
            continue
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": help_}
        if kind == "choice":
            kwargs["choices"] = [str(c) for c in typing.get_args(_unwrap(field.annotation)[0])]
        metavar = {"list": "A,B,...", "json": "JSON"}.get(kind)
        if metavar:
            kwargs["metavar"] = metavar
        group.add_argument(flag_name(name), **kwargs)
    if config_flag:
        parser.add_argument("--config", default=None, metavar="FILE",
                            help="a JSON or YAML file (or an inline JSON object) with any of the "
                            "fields above; the flags given override it")


def _parse(name: str, field: pydantic.fields.FieldInfo, raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    kind = _kind(field.annotation)
    _, optional = _unwrap(field.annotation)
    text = raw.strip()
    if optional and text.lower() in _NONE_WORDS:
        return None
    if kind == "list":
        if text.startswith("["):
            return _json(name, text)
        return [] if text.lower() in _NONE_WORDS | {""} else [x.strip() for x in text.split(",")
                                                              if x.strip()]
    if kind == "json":
        return _json(name, text)
    return text


def _json(name: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{flag_name(name)}: not JSON ({e.msg})") from None


def read_data_file(path: Path, label: str) -> Any:
    """What a JSON or YAML file holds (YAML by its suffix); a syntax error is one line naming
    ``label``."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        if Path(path).suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text)
        return json.loads(text)
    except Exception as e:  # noqa: BLE001 - yaml and json errors alike: one line
        raise InputError(f"{label}: not valid {Path(path).suffix.lstrip('.') or 'JSON'} "
                         f"({' '.join(str(e).split())[:200]})") from None


def load_config_file(value: str) -> dict[str, Any]:
    """The mapping in ``--config``: an inline JSON object, or a JSON or YAML file."""
    if value.lstrip().startswith("{"):
        data = _json("config", value)
    else:
        path = Path(value)
        if not path.is_file():
            raise InputError(f"--config: no file at {path}")
        data = read_data_file(path, f"--config {path}")
    if not isinstance(data, dict):
        raise InputError("--config must hold a mapping of field names to values")
    return data


def validation_message(e: pydantic.ValidationError) -> str:
    """One line naming each bad field and what is wrong with it."""
    parts = []
    for err in e.errors():
        where = ".".join(str(x) for x in err.get("loc", ())) or "config"
        parts.append(f"{flag_name(where) if where != 'config' else where}: {err.get('msg')}")
    return "; ".join(parts)


def build_config(model: type[M], values: dict[str, Any]) -> M:
    try:
        return model.model_validate(values)
    except pydantic.ValidationError as e:
        raise InputError(f"bad {model.__name__}: {validation_message(e)}") from None


def config_from_args(model: type[M], args: argparse.Namespace, **fixed: Any) -> M:
    """The config from ``--config`` (if any), the flags that were given, then ``fixed``."""
    data: dict[str, Any] = {}
    if getattr(args, "config", None):
        data.update(load_config_file(args.config))
        unknown = sorted(set(data) - set(model.model_fields))
        if unknown:
            raise InputError(f"--config: unknown field(s) {', '.join(unknown)} for {model.__name__}")
    for name, field in model.model_fields.items():
        raw = getattr(args, name, None)
        if raw is not None:
            data[name] = _parse(name, field, raw)
    data.update(fixed)
    return build_config(model, data)
