"""TOML files into typed models: tomllib parses, pydantic validates, and the first problem is
reported at its exact line.

The trade-off: tomllib keeps no positions, and tomlkit keeps them only as the text of its
items (a line would be recounted by re-rendering what comes before). So ``key_lines`` scans
the text tomllib has already accepted, which makes the scan small (no error paths: the text
is valid TOML) and exact: it reads strings, comments, arrays and inline tables as TOML does,
so a ``#`` or a ``key =`` inside a string never moves a line. Every table of a file is a
``toml_table`` dataclass: its defaults are declared once, there, and a key it does not
have is an error naming the closest key it does have.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar, TypeVar, cast, dataclass_transform

import pydantic
import pydantic.dataclasses
from pydantic_core import PydanticCustomError

__all__ = [
    "KeyPath",
    "TomlDocument",
    "TomlFileError",
    "TomlTable",
    "dump_toml",
    "key_lines",
    "refuse",
    "toml_table",
]

#: Where a value sits in a document: table keys and array indexes, ``("timeline", 1, "for")``.
KeyPath = tuple[str | int, ...]


class TomlFileError(Exception):
    """A TOML file says something its model refuses: the file, the line and the key of the problem."""

    def __init__(self, message: str, *, where: str | None = None, line: int | None = None, key: str = "") -> None:
        super().__init__(message)
        self.where = where
        self.line = line
        self.key = key


# -- positions -------------------------------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SCALAR_END = frozenset(",]}#\r\n")


def key_lines(text: str) -> dict[KeyPath, int]:
    """The line (1-based) of every key, table header and array element of a valid TOML text.

    A table made implicitly (``a`` by ``[a.b]`` or by ``a.b = 1``) gets the line where it is
    first named; an ``[[array]]`` entry gets the line of its header.
    """
    return _Scan(text).document()


class _Scan:
    """One pass over text tomllib accepted; positions only, so no error paths."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.lines: dict[KeyPath, int] = {}
        #: Entries so far of each ``[[array]]`` (by its resolved path).
        self.entries: dict[KeyPath, int] = {}

    def _advance(self, n: int = 1) -> None:
        self.line += self.text.count("\n", self.pos, self.pos + n)
        self.pos += n

    def _at(self, token: str) -> bool:
        return self.text.startswith(token, self.pos)

    def _space(self, *, newlines: bool) -> None:
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char in " \t" or (newlines and char in "\r\n"):
                self._advance()
            elif char == "#":
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
            else:
                return

    def _mark(self, path: KeyPath, line: int, *, explicit: bool) -> None:
        for n in range(1, len(path)):
            self.lines.setdefault(path[:n], line)
        if explicit:
            self.lines[path] = line
        else:
            self.lines.setdefault(path, line)

    def document(self) -> dict[KeyPath, int]:
        table: KeyPath = ()
        while True:
            self._space(newlines=True)
            if self.pos >= len(self.text):
                return self.lines
            line = self.line
            if self._at("[["):
                self._advance(2)
                keys = self._key()
                self._space(newlines=False)
                self._advance(2)
                array = self._resolve(keys[:-1]) + keys[-1:]
                index = self.entries.get(array, 0)
                self.entries[array] = index + 1
                table = (*array, index)
                self._mark(array, line, explicit=False)
                self._mark(table, line, explicit=True)
            elif self._at("["):
                self._advance()
                keys = self._key()
                self._space(newlines=False)
                self._advance()
                table = self._resolve(keys)
                self._mark(table, line, explicit=True)
            else:
                self._pair(table)

    def _resolve(self, keys: tuple[str, ...]) -> KeyPath:
        """A header's keys as a path: a key that names an ``[[array]]`` means its last entry."""
        path: KeyPath = ()
        for key in keys:
            path = (*path, key)
            if path in self.entries:
                path = (*path, self.entries[path] - 1)
        return path

    def _pair(self, table: KeyPath) -> None:
        line = self.line
        path = table + self._key()
        self._space(newlines=False)
        self._advance()  # "="
        self._space(newlines=False)
        self._mark(path, line, explicit=True)
        self._value(path)

    def _key(self) -> tuple[str, ...]:
        keys: list[str] = []
        while True:
            self._space(newlines=False)
            if self._at('"'):
                keys.append(self._basic_string())
            elif self._at("'"):
                end = self.text.index("'", self.pos + 1)
                keys.append(self.text[self.pos + 1 : end])
                self._advance(end + 1 - self.pos)
            else:
                match = _BARE_KEY.match(self.text, self.pos)
                assert match is not None, "key_lines needs text tomllib accepted"
                keys.append(match.group())
                self._advance(match.end() - self.pos)
            self._space(newlines=False)
            if not self._at("."):
                return tuple(keys)
            self._advance()

    def _basic_string(self) -> str:
        end = self.pos + 1
        while self.text[end] != '"':
            end += 2 if self.text[end] == "\\" else 1
        token = self.text[self.pos : end + 1]
        self._advance(end + 1 - self.pos)
        value = tomllib.loads(f"k = {token}")["k"]  # TOML's own escapes, exactly
        assert isinstance(value, str)
        return value

    def _value(self, path: KeyPath) -> None:
        if self._at('"""') or self._at("'''"):
            self._multiline_string(self.text[self.pos])
        elif self._at('"'):
            self._basic_string()
        elif self._at("'"):
            self._advance(self.text.index("'", self.pos + 1) + 1 - self.pos)
        elif self._at("["):
            self._array(path)
        elif self._at("{"):
            self._inline_table(path)
        else:
            while self.pos < len(self.text) and self.text[self.pos] not in _SCALAR_END:
                self.pos += 1

    def _multiline_string(self, quote: str) -> None:
        self._advance(3)
        while True:
            if quote == '"' and self._at("\\"):
                self._advance(2)
            elif self._at(quote * 3):
                run = 3
                while run < 5 and self._at(quote * (run + 1)):
                    run += 1  # up to two quotes may end the content itself
                self._advance(run)
                return
            else:
                self._advance()

    def _array(self, path: KeyPath) -> None:
        self._advance()
        index = 0
        while True:
            self._space(newlines=True)
            if self._at("]"):
                self._advance()
                return
            self._mark((*path, index), self.line, explicit=True)
            self._value((*path, index))
            index += 1
            self._space(newlines=True)
            if self._at(","):
                self._advance()

    def _inline_table(self, path: KeyPath) -> None:
        self._advance()
        while True:
            self._space(newlines=True)
            if self._at("}"):
                self._advance()
                return
            self._pair(path)
            self._space(newlines=True)
            if self._at(","):
                self._advance()


# -- tables ----------------------------------------------------------------------------------

#: Every table of every file: frozen, keyword-only; a wrong type is an error, not a coercion
#: to something else (ints, bools and strings are TOML's own types; a path or an enum is
#: read from its string).
_CONFIG = pydantic.ConfigDict(extra="forbid", validate_by_name=True, validate_by_alias=True)

T = TypeVar("T")


@dataclass_transform(frozen_default=True, kw_only_default=True, field_specifiers=(pydantic.Field, dataclasses.field))
def toml_table(cls: type[T]) -> type[T]:
    """Make ``cls`` a table of a TOML file: a frozen, keyword-only pydantic dataclass."""
    return cast("type[T]", pydantic.dataclasses.dataclass(frozen=True, kw_only=True, config=_CONFIG)(cls))


def refuse(reason: str, *at: str | int) -> PydanticCustomError:
    """An error for a validator to raise, about the value at ``at`` below the one it checks.

    ``raise refuse("no such group", "group")`` from a step's validator points at the step's
    ``group`` key; with no ``at`` it points at the table itself.
    """
    return PydanticCustomError("fieldsync", "{reason}", {"reason": reason, "at": at})


@toml_table
class TomlTable:
    """The base of every table: a key it does not know is an error that names the closest one."""

    #: Fields that are not keys of the file (set by the loader, e.g. the file's path).
    _not_in_file: ClassVar[frozenset[str]] = frozenset()

    @pydantic.model_validator(mode="before")
    @classmethod
    def _known_keys_only(cls, data: Any) -> Any:
        # A dict is a table read from a file; code passes keyword arguments (ArgsKwargs).
        if isinstance(data, dict):
            known = cls.file_keys()
            for key in data:
                if key not in known:
                    raise refuse(_unknown_key(cls.noun(), key, known), key)
        return data

    @classmethod
    def noun(cls) -> str:
        """What the table is called in an unknown-key error ("action 'kill'"); "" for a plain table."""
        return ""

    @classmethod
    def file_keys(cls) -> list[str]:
        """The keys a file may give this table, in declaration order."""
        keys = []
        for name, info in cls.__pydantic_fields__.items():  # type: ignore[attr-defined]
            if name not in cls._not_in_file:
                alias = info.validation_alias
                keys.append(alias if isinstance(alias, str) else name)
        return keys

    def file_items(self) -> dict[str, Any]:
        """This table's values under their file keys; ``None`` (not given) left out."""
        out = {}
        for name, info in type(self).__pydantic_fields__.items():  # type: ignore[attr-defined]
            value = getattr(self, name)
            if name not in self._not_in_file and value is not None:
                alias = info.validation_alias
                out[alias if isinstance(alias, str) else name] = value
        return out


def _unknown_key(noun: str, key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(sorted(known)) or 'none'})"
    return f"{noun} has no key {key!r}{hint}" if noun else f"unknown key{hint}"


# -- documents -------------------------------------------------------------------------------

M = TypeVar("M")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TomlDocument:
    """A parsed TOML file with the line of each of its keys; ``validate`` builds its model."""

    where: str
    data: dict[str, Any]
    lines: Mapping[KeyPath, int]
    error: Callable[..., TomlFileError] = TomlFileError

    @classmethod
    def parse(cls, text: str, where: str, *, error: Callable[..., TomlFileError] = TomlFileError) -> TomlDocument:
        """Raises: ``error`` (a TomlFileError) if the text is not TOML."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise error(f"{where}: not valid TOML: {exc}", where=where) from None
        return cls(where=where, data=data, lines=key_lines(text), error=error)

    def line(self, path: KeyPath) -> int | None:
        """The line of ``path``, or of the nearest table or entry around it; None for the top level."""
        for n in range(len(path), 0, -1):
            if path[:n] in self.lines:
                return self.lines[path[:n]]
        return None

    def fail(self, path: KeyPath, reason: str) -> TomlFileError:
        """The error for ``reason`` about the value at ``path``: ``file:line: key: reason``."""
        line = self.line(path)
        key = _show_path(path)
        place = f"{self.where}:{line}" if line is not None else self.where
        message = f"{place}: {key}: {reason}" if key else f"{place}: {reason}"
        return self.error(message, where=self.where, line=line, key=key)

    def validate(self, model: type[M], data: Any = None) -> M:
        """The document (or ``data`` taken from it) as ``model``.

        Raises:
            TomlFileError: (``error``) the first problem in the file's order, at its line.
        """
        try:
            return pydantic.TypeAdapter(model).validate_python(
                self.data if data is None else data, context={"from_file": True}
            )
        except pydantic.ValidationError as exc:
            problems = [self._problem(e) for e in exc.errors()]
        # The first in the file's order (one fix at a time: a later one may follow from it).
        problems.sort(key=lambda p: (p[0] is None, p[0] or 0))
        _, path, reason = problems[0]
        raise self.fail(path, reason)

    def _problem(self, error: Any) -> tuple[int | None, KeyPath, str]:
        kind, ctx = error["type"], error.get("ctx") or {}
        loc = tuple(error["loc"])
        if kind == "missing":
            path = self._walk(loc[:-1])
            return self.line(path), path, f"missing key {loc[-1]!r}"
        path = self._walk(loc + tuple(ctx.get("at", ())) if kind == "fieldsync" else loc)
        if kind == "fieldsync":
            reason = str(ctx["reason"])
        elif kind in ("value_error", "assertion_error"):
            reason = str(ctx["error"])
        elif kind == "union_tag_not_found":
            key = str(ctx["discriminator"]).strip("'")
            reason = f"missing key {key!r}"
        elif kind == "union_tag_invalid":
            key = str(ctx["discriminator"]).strip("'")
            path = (*path, key)
            reason = f"{ctx['tag']!r} is not one of {ctx['expected_tags']}"
        elif kind in ("literal_error", "enum"):
            reason = f"{error['input']!r} is not one of {ctx['expected']}"
        else:
            message = str(error["msg"])
            message = re.sub(r"^Input should be", "must be", message)
            reason = f"{message[:1].lower()}{message[1:]}, not {error['input']!r}"
        return self.line(path), path, reason

    def _walk(self, loc: tuple[Any, ...]) -> KeyPath:
        """pydantic's ``loc`` as a path in the file: a union's tag or a validator's name in it
        names no key, so it drops out."""
        node: Any = self.data
        path: list[str | int] = []
        for part in loc:
            in_table = isinstance(node, dict) and isinstance(part, str) and part in node
            in_array = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
            if in_table or in_array:
                node = node[part]
                path.append(part)
        return tuple(path)


def _show_path(path: KeyPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            shown = part if _BARE_KEY.fullmatch(part) else _quote(part)
            out += f".{shown}" if out else shown
    return out


# -- writing ---------------------------------------------------------------------------------


def dump_toml(data: Mapping[str, Any]) -> str:
    """``data`` as a TOML document: dicts become ``[tables]``, lists of dicts ``[[arrays]]``;
    inside an array's entry a dict is an inline table. ``None`` values are left out.

    What ``tomllib.loads`` reads back from it equals ``data`` (with paths and enums as strings,
    tuples as lists).
    """
    out: list[str] = []
    _dump_table(out, (), data, header="")
    return "\n".join(out).strip("\n") + "\n"


def _dump_table(out: list[str], path: tuple[str, ...], table: Mapping[str, Any], *, header: str) -> None:
    in_entry = header.startswith("[[")

    def nested(value: Any) -> bool:
        if isinstance(value, Mapping):
            return not in_entry
        return isinstance(value, list | tuple) and bool(value) and all(isinstance(v, Mapping) for v in value)

    plain = [(k, v) for k, v in table.items() if v is not None and not nested(v)]
    # A table that only holds tables needs no header of its own (``[nodes.A]`` makes ``nodes``).
    if header and (plain or in_entry or not any(v is not None for v in table.values())):
        out += ["", header]
    out += [f"{_key(k)} = {_value(v)}" for k, v in plain]
    for key, value in table.items():
        if value is None or not nested(value):
            continue
        here = (*path, key)
        name = ".".join(_key(k) for k in here)
        if isinstance(value, Mapping):
            _dump_table(out, here, value, header=f"[{name}]")
        else:
            for entry in value:
                _dump_table(out, here, entry, header=f"[[{name}]]")


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _quote(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return _value(value.value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str | Path):
        return _quote(str(value))
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items() if v is not None) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"{value!r} has no TOML spelling")


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _quote(text: str) -> str:
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'
