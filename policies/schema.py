"""Settings read from TOML and JSON as typed, frozen models: a key that is unknown, missing or
of the wrong kind is an error that names the key.

Models are msgspec structs (:class:`Model`): msgspec checks types, required and unknown keys,
tagged unions and numeric and pattern constraints (``Annotated[int, Meta(ge=1)]``) in C and
costs the daemon a tenth of the memory a validating library with a schema compiler would.
What it does not know is kept here, once:

- types it cannot read (a path, a duration, a size, an HTTP status range) are read by the
  parser :func:`parser` registers for them;
- a duration's or a size's bounds are :class:`Within` in the field's ``Annotated``, checked
  with the unit in the message;
- checks across fields go in :meth:`Model.check`; values a model derives when it is read
  (a secret read from a file) go in ``__dict__`` by :meth:`Model.hold`, so that they are
  neither read from the input nor written out.

:func:`convert` turns msgspec's error into a :class:`SchemaError` whose ``keys`` locate the
bad key, dictionary keys included (msgspec writes them as ``[...]``).
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec

from policies.units import Duration, Size, format_duration, format_size

T = TypeVar("T")
M = TypeVar("M", bound="Model")

Key = str | int


class SchemaError(ValueError):
    """Input that does not fit a model: ``keys`` from the top to the bad key, ``message``
    what is wrong there, in words that never quote a secret."""

    def __init__(self, keys: tuple[Key, ...], message: str) -> None:
        super().__init__(f"{where(keys) or '(top level)'}: {message}")
        self.keys = keys
        self.message = message


def where(keys: tuple[Key, ...]) -> str:
    """``keys`` written as in the file: ``probes.http[0].headers.Authorization``."""
    text = ""
    for key in keys:
        text += f"[{key}]" if isinstance(key, int) else f".{key}" if text else key
    return text


def dotted(keys: tuple[Key, ...]) -> str:
    """``keys`` without list positions, for a file whose lists are named otherwise (rule
    #2, escalation L1): ``labels.team``."""
    return ".".join(str(key) for key in keys if not isinstance(key, int))


@dataclass(frozen=True, slots=True)
class Within:
    """Bounds of a :data:`Duration` or :data:`Size` field (msgspec's ``Meta`` bounds only its
    own number types): ``Annotated[Duration, Within(gt=0, le=300)]``."""

    gt: float | None = None
    ge: float | None = None
    le: float | None = None

    def problem(self, value: float, show: Callable[[float], str]) -> str | None:
        if self.gt is not None and not value > self.gt:
            return f"must be more than {show(self.gt)}"
        if self.ge is not None and not value >= self.ge:
            return f"must be at least {show(self.ge)}"
        if self.le is not None and not value <= self.le:
            return f"must be at most {show(self.le)}"
        return None


Positive = Annotated[Duration, Within(gt=0)]
"""A duration longer than 0 (a timeout, a window, a cooldown)."""


_PARSERS: dict[type, Callable[[Any], Any]] = {}


def parser(kind: type[T], parse: Callable[[Any], T]) -> None:
    """Read settings of type ``kind`` with ``parse`` (a ValueError says what is wrong)."""
    _PARSERS[kind] = parse


def _path(value: Any) -> Path:
    if isinstance(value, Path):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a path (a string), not {_kind(value)}")
    if not value or "\0" in value:
        raise ValueError("expected a path, not an empty string" if not value
                         else "a path cannot hold a NUL character")
    return Path(value)


parser(Path, _path)
parser(Duration, Duration.parse)
parser(Size, Size.parse)


def _dec_hook(kind: type, value: Any) -> Any:
    # A generic type (re.Pattern[str]) comes with its arguments.
    parse = _PARSERS.get(kind) or _PARSERS.get(typing.get_origin(kind))  # type: ignore[arg-type]
    if parse is None:
        raise NotImplementedError(f"no parser for {kind!r}")
    return parse(value)


def _enc_hook(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, re.Pattern):
        return value.pattern
    if isinstance(value, Duration):
        return float(value)
    if isinstance(value, Size):
        return int(value)
    raise NotImplementedError(f"cannot write {type(value).__name__}")


if typing.TYPE_CHECKING:
    # mypy takes a struct's options from its own class statement, not from its bases: frozen
    # here would make every subclass "a non-frozen dataclass inheriting from a frozen one".
    # kw_only, as in dataclasses, holds for the fields of the class that says it: a model
    # whose required fields follow fields with defaults (its own or a base's) says
    # kw_only=True itself.
    _Struct = msgspec.Struct
else:
    class _Struct(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True,
                  dict=True):
        pass


class Model(_Struct):
    """A strict, frozen settings model: unknown keys are errors, so a misspelt key is not
    silently a default. Subclasses check across fields in :meth:`check`."""

    def __post_init__(self) -> None:
        for name, key, within, show in _bounds(type(self)):
            value = getattr(self, name)
            if value is not None and (problem := within.problem(value, show)) is not None:
                raise ValueError(f"`{key}`: {problem}")
        self.check()

    def check(self) -> None:
        """Raise ValueError when fields disagree; ``"`key`: ..."`` names one key."""

    def hold(self, name: str, value: object) -> None:
        """Keep ``value`` derived on reading under ``name`` (declared ``ClassVar`` on the
        class for its type): not a key of the input, never written out."""
        self.__dict__[name] = value


@cache
def _bounds(kind: type[Model]) -> tuple[tuple[str, str, Within, Callable[[float], str]], ...]:
    """Each field's bounds: its name, its key in the input, the bounds and how to show them."""
    hints = typing.get_type_hints(kind, include_extras=True)
    found = []
    for field in msgspec.structs.fields(kind):
        members = typing.get_args(hints[field.name]) if typing.get_origin(
            hints[field.name]) in (typing.Union, types.UnionType) else (hints[field.name],)
        for hint in members:  # an optional field's bounds are on its non-None member
            if typing.get_origin(hint) is not typing.Annotated:
                continue
            base, *extras = typing.get_args(hint)
            for extra in extras:
                if isinstance(extra, Within):
                    show = format_duration if base is Duration else _show_size
                    found.append((field.name, field.encode_name, extra, show))
    return tuple(found)


def _show_size(value: float) -> str:
    return format_size(int(value))


def convert(data: Any, kind: type[T]) -> T:
    """``data`` (from TOML or JSON) as ``kind``; :class:`SchemaError` naming the bad key."""
    try:
        return msgspec.convert(data, kind, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        raise _schema_error(str(exc), data, kind) from None


def decode_json(raw: bytes, kind: type[T]) -> T:
    """JSON ``raw`` as ``kind``; :class:`SchemaError` for JSON that does not fit, ValueError
    for text that is not JSON."""
    try:
        data = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    return convert(data, kind)


def to_builtins(model: object) -> Any:
    """``model`` as dicts, lists, strings and numbers, for JSON (paths as strings)."""
    return msgspec.to_builtins(model, enc_hook=_enc_hook)


def replace(model: M, **changes: Any) -> M:
    """A copy of ``model`` with ``changes``, checked again."""
    return msgspec.structs.replace(model, **changes)


# -- msgspec's messages, told as ours -------------------------------------------------------

_AT = re.compile(r"^(?P<message>.*?)(?: - at (?P<key>`key` in )?`\$(?P<path>.*)`)?$", re.DOTALL)
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")
_UNKNOWN = re.compile(r"^Object contains unknown field `(.*)`$")
_MISSING = re.compile(r"^Object missing required field `(.*)`$")
_KEYED = re.compile(r"^`([^`]+)`: (.*)$", re.DOTALL)
_EXPECTED = re.compile(r"^Expected `([^`]+)`(.*?)(?:, got `([^`]+)`)?$")


def _schema_error(text: str, data: Any, kind: type) -> SchemaError:
    match = _AT.fullmatch(text)
    assert match is not None  # the pattern matches any text
    message, path = match["message"], match["path"] or ""
    keys = _locate(
        [m[1] if m[1] is not None else (int(m[2]) if m[2] != "..." else None)
         for m in _STEP.finditer(path)],
        data, kind,
    )
    if match["key"]:  # a dictionary's key, which msgspec does not repeat
        choices = _choices(_dict_key_type(_type_at(kind, keys)))
        if choices:
            return SchemaError(keys, f"each key must be one of {choices}")
        return SchemaError(keys, f"a key: {_key_message(message)}")
    if found := _UNKNOWN.fullmatch(message):
        return SchemaError((*keys, found[1]), "unknown key")
    if found := _MISSING.fullmatch(message):
        return SchemaError((*keys, found[1]), "required key is missing")
    if found := _KEYED.fullmatch(message):
        return SchemaError((*keys, found[1]), found[2])
    if found := _EXPECTED.fullmatch(message):
        pattern = _pattern(_type_at(kind, keys))
        if pattern is not None and found[2].strip().startswith("matching regex"):
            # From the type: msgspec's message doubles each backslash in the pattern.
            return SchemaError(keys, f"must match the pattern {pattern}")
        return SchemaError(keys, _expected(found[1], found[2], found[3]))
    if message.startswith("Invalid enum value") or message.startswith("Invalid value"):
        choices = _choices(_type_at(kind, keys)) or _tags(_type_at(kind, keys[:-1]))
        return SchemaError(keys, f"expected one of {choices}" if choices else "invalid value")
    return SchemaError(keys, message)


def _key_message(message: str) -> str:
    if found := _EXPECTED.fullmatch(message):
        return _expected(found[1], found[2], found[3])
    return message


_KINDS = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
          "object": "a table", "array": "a list", "null": "nothing"}


def _kind(value: Any) -> str:
    name = {bool: "bool", int: "int", float: "float", str: "str", dict: "object",
            list: "array", type(None): "null"}.get(type(value), type(value).__name__)
    return _KINDS.get(name, name)


_BOUND = re.compile(r"^(?P<length>of length )?(?P<op>>=|<=|>|<) (?P<limit>\S+)$")
_BOUND_WORDS = {">=": "at least", "<=": "at most", ">": "more than", "<": "less than"}
_UNITS = {"str": "characters", "array": "items", "object": "keys"}


def _expected(want: str, rest: str, got: str | None) -> str:
    """msgspec's "Expected `int` >= 1" (or "`array` of length >= 1", "`str` matching regex
    '...'", "`int`, got `str`") in the words of the other messages."""
    rest = rest.strip()
    if match := _BOUND.fullmatch(rest):
        words = f"{_BOUND_WORDS[match['op']]} {match['limit']}"
        if match["length"]:
            unit = _UNITS.get(want, "items")
            return f"must have {words} {unit[:-1] if match['limit'] == '1' else unit}"
        return f"must be {words}"
    # An optional key is left out rather than given as null: "or nothing" would not help.
    kinds = [one for one in want.split(" | ") if one != "null"] or ["null"]
    told = " or ".join(_KINDS.get(one, one) for one in kinds)
    return f"expected {told}, not {_KINDS.get(got, got)}" if got else f"expected {told}"


def _locate(steps: list[Key | None], data: Any, kind: Any) -> tuple[Key, ...]:
    """The keys of msgspec's path, with each dictionary key it writes as ``[...]`` found
    again: the first key of that dictionary whose value does not convert."""
    keys: list[Key] = []
    for step in steps:
        if step is None:
            value_kind = _dict_value_type(_type_at(kind, tuple(keys)))
            step = _first_bad_key(data, value_kind) if value_kind is not None else None
            if step is None:
                break
        keys.append(step)
        data = _child(data, step)
    return tuple(keys)


def _child(data: Any, key: Key) -> Any:
    if isinstance(data, Mapping) and key in data:
        return data[key]
    if isinstance(data, list) and isinstance(key, int) and key < len(data):
        return data[key]
    return None


def _first_bad_key(data: Any, value_kind: Any) -> str | None:
    if not isinstance(data, Mapping):
        return None
    for key, value in data.items():
        try:
            msgspec.convert(value, value_kind, dec_hook=_dec_hook)
        except (msgspec.ValidationError, ValueError):
            return str(key)
    return None


def _members(kind: Any) -> list[Any]:
    while typing.get_origin(kind) is typing.Annotated:
        kind = typing.get_args(kind)[0]
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return [m for member in typing.get_args(kind) for m in _members(member)]
    return [kind]


def _type_at(kind: Any, keys: tuple[Key, ...]) -> Any:
    """The type the value at ``keys`` should have, or None when the path leaves the model."""
    for key in keys:
        nxt = None
        for member in _members(kind):
            origin = typing.get_origin(member)
            struct = isinstance(member, type) and issubclass(member, msgspec.Struct)
            if struct and isinstance(key, str):
                hints = typing.get_type_hints(member, include_extras=True)
                names = {f.encode_name: f.name for f in msgspec.structs.fields(member)}
                if key in names:
                    nxt = hints[names[key]]
            elif origin in (list, tuple) and isinstance(key, int):
                nxt = typing.get_args(member)[0]
            elif origin in (dict, Mapping) and isinstance(key, str):
                nxt = typing.get_args(member)[1]
            if nxt is not None:
                break
        if nxt is None:
            return None
        kind = nxt
    return kind


def _dict_value_type(kind: Any) -> Any:
    return _dict_arg(kind, 1)


def _dict_key_type(kind: Any) -> Any:
    return _dict_arg(kind, 0)


def _dict_arg(kind: Any, index: int) -> Any:
    for member in _members(kind):
        if typing.get_origin(member) in (dict, Mapping):
            return typing.get_args(member)[index]
    return None


def _tags(kind: Any) -> str:
    """The tags of a tagged union's members (``adapter = "git"``), for a tag none matches."""
    tags = [member.__struct_config__.tag for member in _members(kind)
            if isinstance(member, type) and issubclass(member, msgspec.Struct)
            and member.__struct_config__.tag is not None]
    return _either(tags)


def _either(values: list[Any]) -> str:
    """``'a', 'b' or 'c'``."""
    shown = [repr(value) for value in values]
    return " or ".join(filter(None, [", ".join(shown[:-1]), *shown[-1:]]))


def _pattern(kind: Any) -> str | None:
    """The pattern a string at ``kind`` must match, when it has one."""
    if typing.get_origin(kind) is not typing.Annotated:
        return None
    for extra in typing.get_args(kind)[1:]:
        if isinstance(extra, msgspec.Meta) and extra.pattern is not None:
            return extra.pattern
    return None


def _choices(kind: Any) -> str:
    values = [v for member in _members(kind) if typing.get_origin(member) is typing.Literal
              for v in typing.get_args(member)]
    return _either(values)
