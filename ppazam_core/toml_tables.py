"""Reading TOML files and checking their tables against dataclasses: the one place where a
configuration's or a suite's values are type-checked (a leaf module: errors only, so that every
module defining a configuration dataclass can use it).
"""

from __future__ import annotations

import codecs
import collections.abc
import tomllib
import types
from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Mapping, TypeVar, Union, get_args, get_origin, get_type_hints

from ppazam_core.errors import ConfigError

TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
T = TypeVar("T")
MAX_SEED = 2**32 - 1


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """The tables of the TOML file ``path`` (``what`` names it in errors); a leading UTF-8 byte
    order mark is skipped.

    Raises:
        ConfigError: the file does not exist, is not UTF-8 or is not valid TOML.
        OSError: it cannot be read (permissions, a folder, I/O).
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    body = raw.removeprefix(codecs.BOM_UTF8)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        offset = e.start + len(raw) - len(body)
        line = raw.count(b"\n", 0, offset) + 1
        raise ConfigError(f"{what} {path} is not UTF-8 (byte 0x{raw[offset]:02x} at offset {offset}, line {line}): "
                          "TOML files must be UTF-8; save it as UTF-8") from e
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{what} {path} is not valid TOML: {e}") from e


def read_table(table: Mapping[str, Any], cls: type[T], where: str, base: T | None = None) -> T:
    """The dataclass ``cls`` of the TOML table ``where`` (``base`` with the keys the table
    sets, if given), each value checked against its field's type (:func:`table_values`).

    Raises:
        ConfigError: a key ``cls`` has no field for, a value of the wrong type, or one its
            ``__post_init__`` refuses.
    """
    values = table_values(table, cls, where)
    try:
        return cls(**values) if base is None else replace(base, **values)
    except ConfigError as e:
        raise e.within(where) from None


def table_values(table: Mapping[str, Any], cls: type, where: str, keys: set[str] | None = None) -> dict[str, Any]:
    """The values of the TOML table ``where`` for the fields ``keys`` of dataclass ``cls``
    (default: all), each checked against its field's type hint: ``bool`` (only ``true`` and
    ``false``), ``int`` (not a ``bool``), ``float`` (an integer too), ``str``, ``X | None``,
    ``tuple[X, ...]`` and ``tuple[X, Y]`` (from lists), ``Mapping[str, X]``, a nested dataclass
    (from a table); ``Any`` takes anything. Lists come back as tuples, tables as dataclasses.
    A seed (a key ``seed`` or ``*_seed``) is an integer from 0 to :data:`MAX_SEED` (what numpy's
    and torch's generators take).

    Raises:
        ConfigError: a key outside ``keys``, or a value of the wrong type, naming ``where.key``,
            the value and the type expected.
    """
    hints = get_type_hints(cls)
    only_keys(table, {f.name for f in fields(cls)} if keys is None else keys, where)
    values = {key: _typed(value, hints[key], f"{where}.{key}") for key, value in table.items()}
    for key, value in values.items():
        if (key == "seed" or key.endswith("_seed")) and isinstance(value, int) and not 0 <= value <= MAX_SEED:
            raise ConfigError.bad_value(f"{where}.{key}", value, f"an integer from 0 to {MAX_SEED}")
    return values


def _typed(value: Any, hint: Any, key: str) -> Any:
    """``value`` as the type ``hint`` (see :func:`table_values`); a :class:`ConfigError` naming
    ``key`` when it is not of that type."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        for option in args:
            try:
                return _typed(value, option, key)
            except ConfigError:
                continue
    elif origin is tuple:
        if isinstance(value, (list, tuple)):
            items = args[:1] * len(value) if args[1:] == (Ellipsis,) else args
            if len(items) == len(value):
                return tuple(_typed(v, item, f"{key}[{i}]") for i, (v, item) in enumerate(zip(value, items)))
    elif origin is collections.abc.Mapping:
        if isinstance(value, Mapping):
            return {k: _typed(v, args[1], f"{key}.{k}") for k, v in value.items()}
    elif is_dataclass(hint):
        if isinstance(value, Mapping):
            return read_table(value, hint, key)
    elif _is_a(value, hint):  # an integer for a float is the float: `12` and `12.0` are one configuration
        return float(value) if hint is float else value
    raise ConfigError.bad_value(key, value, _expected(hint))


def _is_a(value: Any, hint: type) -> bool:
    """``isinstance`` for a TOML value: ``true`` is no number, an integer is a ``float`` too."""
    if isinstance(value, bool):
        return hint is bool
    return isinstance(value, hint) or (hint is float and isinstance(value, int))


def _expected(hint: Any) -> str:
    """What a value of type ``hint`` must be, in words."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        named = " or ".join(_expected(a) for a in args if a is not type(None))
        return f"{named} (or leave the key out)" if type(None) in args else named
    if origin is tuple:
        if args[1:] == (Ellipsis,):
            return f"a list, each item {_expected(args[0])}"
        return f"a list of {len(args)} items: {', '.join(map(_expected, args))}"
    if origin is collections.abc.Mapping:
        return f"a table, each value {_expected(args[1])}"
    if is_dataclass(hint):
        return f"a table of {', '.join(f.name for f in fields(hint))}"
    return TYPE_NAMES.get(hint, getattr(hint, "__name__", str(hint)))


def only_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    """A :class:`ConfigError` for a key of the table ``where`` outside ``allowed``."""
    for key in table:
        if key not in allowed:
            raise ConfigError.bad_value(where, key, sorted(allowed))
