"""Every option's default can come from the site file's ``[defaults]`` table, through click's default_map.

The site file may hold ``[defaults.<command path>]`` tables (``[defaults.serve]``,
``[defaults.cluster.up]``) whose keys are the click parameter names (``heartbeat_ms``, ``as_json``);
keys right under ``[defaults]`` are the root group's (``log_level``).

How, with what click offers: ``--site`` is an *eager* option. Click processes eager parameters
before all the others, wherever they stand on the command line, so the callback of ``--site`` reads
``[defaults]`` with tomllib, checks it against the whole command tree and sets ``ctx.default_map``
before click resolves any other parameter of that command. The order of precedence is then click's
own: a flag given on the command line, then the file, then the built-in default.

- ``fieldsync --site FILE <command> ...`` (the root group's --site) sets the root context's
  default_map to the whole table; click gives each subcommand's context its sub-table
  (``parent.default_map[info_name]``), so every command takes its defaults, also the ones with no
  --site of their own (demo, pki, line, faults, scenario, conformance), and a command's own
  --site falls back to the root's.
- ``fieldsync <command> --site FILE`` (``site_option``) sets that command's default_map to its own
  table. The root's options were settled before (click runs a group before it parses the
  subcommand), so the one root option, --log-level, is applied again from the file here.

Relative paths in ``[defaults]`` are relative to the site file's directory, as in the rest of the file.
The site loader (fieldsync.site) reads the other tables; this module reads only ``[defaults]``.

Every option that can be set this way ends its help with ``[site: defaults.<path>.<key>]``
(``= value`` when the file sets it): SiteCommand and SiteGroup add it when they format their
options, once for all commands.
"""

from __future__ import annotations

import difflib
import json
import logging
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from storage import is_database_url

__all__ = [
    "DefaultsError",
    "SiteCommand",
    "SiteGroup",
    "command_path",
    "read_defaults",
    "root_site_option",
    "settable",
    "site_option",
]

_SITE = "fieldsync.site"  # ctx.meta key: the root's --site, the default of each command's --site


class DefaultsError(click.ClickException):
    """A ``[defaults]`` table the command tree does not accept (file, line, table and key named)."""


def command_path(ctx: click.Context) -> tuple[str, ...]:
    """The subcommand names from the root to ``ctx`` (empty for the root itself)."""
    names: list[str] = []
    while ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return tuple(reversed(names))


def settable(command: click.Command) -> dict[str, click.Option]:
    """The options of ``command`` a ``[defaults]`` table may set, by parameter name.

    --help, --version and --site are not among them: they expose no value, or name the file itself.
    """
    return {
        p.name: p
        for p in command.params
        if isinstance(p, click.Option) and p.expose_value and p.name and p.name != "site_path"
    }


def _table_name(parts: tuple[str, ...]) -> str:
    return "[" + ".".join(("defaults", *parts)) + "]"


def _toml(value: object) -> str:
    return json.dumps(value, default=str)


# -- reading and checking the table --------------------------------------------------------


class _Source:
    """The site file's text, to name the line of a bad key (best effort: plain tables and keys)."""

    def __init__(self, path: Path, text: str) -> None:
        self.path, self.lines = path, text.splitlines()

    def _header(self, parts: tuple[str, ...], *, prefix: bool) -> re.Pattern[str]:
        dotted = r"\s*\.\s*".join(re.escape(p) for p in ("defaults", *parts))
        return re.compile(rf"^\s*\[\s*{dotted}" + (r"(?=\s*[.\]])" if prefix else r"\s*\]"))

    def line(self, parts: tuple[str, ...], key: str, *, table: bool) -> int | None:
        if table:
            wanted = self._header((*parts, key), prefix=True)
            return next((n for n, text in enumerate(self.lines, 1) if wanted.match(text)), None)
        header, assign = self._header(parts, prefix=False), re.compile(rf"^\s*{re.escape(key)}\s*=")
        inside = False
        for n, text in enumerate(self.lines, 1):
            if text.lstrip().startswith("["):
                inside = bool(header.match(text))
            elif inside and assign.match(text):
                return n
        return None

    def error(self, parts: tuple[str, ...], key: str, message: str, *, table: bool = False) -> DefaultsError:
        n = self.line(parts, key, table=table)
        return DefaultsError(f"{self.path}{f':{n}' if n else ''}: {message}")


def read_defaults(path: Path, root: click.Command) -> dict[str, Any]:
    """The ``[defaults]`` table of the site file at ``path``, checked against ``root``'s command tree.

    Returns the nested dict click takes as a default_map, with relative paths made relative to the
    file's directory. An unknown command or key, or a value of the wrong type, is a DefaultsError.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DefaultsError(f"{path}: no such site file") from None
    except OSError as exc:
        raise DefaultsError(f"{path}: cannot read the site file: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DefaultsError(f"{path}: not valid TOML: {exc}") from None
    table = data.get("defaults", {})
    if not isinstance(table, dict):
        raise DefaultsError(f"{path}: defaults must be a table: [defaults.<command>] key = value")
    return _checked(_Source(path, text), root, (), table)


def _checked(source: _Source, command: click.Command, parts: tuple[str, ...], table: dict[str, Any]) -> dict[str, Any]:
    subcommands = command.commands if isinstance(command, click.Group) else {}
    options = settable(command)
    where = _table_name(parts)
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key in subcommands:
            if not isinstance(value, dict):
                message = f"{where} {key} = {_toml(value)}: '{key}' is a command; its defaults are a table, "
                raise source.error(parts, key, message + _table_name((*parts, key)))
            out[key] = _checked(source, subcommands[key], (*parts, key), value)
        elif key in options:
            try:
                out[key] = _value(options[key], value, source.path.parent)
            except ValueError as exc:
                flag = options[key].opts[0]
                raise source.error(parts, key, f"{where} {key} = {_toml(value)}: {exc} ({flag})") from None
        else:
            raise _unknown(source, command, parts, key, is_table=isinstance(value, dict))
    return out


def _unknown(
    source: _Source, command: click.Command, parts: tuple[str, ...], key: str, *, is_table: bool
) -> DefaultsError:
    subcommands = sorted(command.commands) if isinstance(command, click.Group) else []
    options = sorted(settable(command))
    close = difflib.get_close_matches(key, subcommands if is_table else [*options, *subcommands], n=1)
    hint = f"did you mean '{close[0]}'?" if close else ""
    name = " ".join(("fieldsync", *parts))
    if is_table:
        has = f"its commands are: {', '.join(subcommands)}" if subcommands else "it has no subcommands"
        message = f"{_table_name((*parts, key))} names no command: `{name}` has no command '{key}'"
        return source.error(parts, key, f"{message} ({hint or has})", table=True)
    known = f"its keys are: {', '.join([*options, *subcommands])}" if options or subcommands else "it takes no keys"
    message = f"{_table_name(parts)} unknown key '{key}' for `{name}`"
    return source.error(parts, key, f"{message} ({hint or known})")


def _value(param: click.Option, value: object, base: Path) -> object:
    """The value as click should get it; a ValueError says what was expected instead."""
    if param.multiple or param.nargs != 1:
        if not isinstance(value, list):
            raise ValueError(f"expected a list, each item {_kind(param)}")
        return [_one(param, item, base) for item in value]
    return _one(param, value, base)


def _kind(param: click.Option) -> str:
    kind = param.type
    if param.is_bool_flag or isinstance(kind, click.types.BoolParamType):
        return "true or false"
    if isinstance(kind, click.types.IntParamType):
        return "an integer"
    if isinstance(kind, click.types.FloatParamType):
        return "a number"
    if isinstance(kind, click.Choice):
        return "one of " + ", ".join(map(str, kind.choices))
    return "a path" if isinstance(kind, click.Path) else "a string"


def _one(param: click.Option, value: object, base: Path) -> object:
    kind = param.type
    # TOML has its own types: take the one that means the option's, never a look-alike
    # (true is no integer, 5 no string), then let click check ranges and choices.
    if param.is_bool_flag or isinstance(kind, click.types.BoolParamType):
        ok = isinstance(value, bool)
    elif isinstance(kind, click.types.IntParamType):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(kind, click.types.FloatParamType):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ValueError(f"expected {_kind(param)}")
    if isinstance(kind, click.Path) and not is_database_url(str(value)):
        # Whether it exists is checked when it is used (click.Path), not for every command.
        return str(base / str(value))  # an absolute value stays what it is
    if param.is_bool_flag:
        return value
    try:
        kind.convert(value, param, None)
    except click.BadParameter as exc:
        raise ValueError(exc.message) from None
    return value


# -- the options and the command classes -------------------------------------------------


def _root_site(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    if value is not None and not ctx.resilient_parsing:
        ctx.default_map = read_defaults(value, ctx.command)
        ctx.meta[_SITE] = value
    return value


def _command_site(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    if value is None:
        return ctx.meta.get(_SITE)
    if ctx.resilient_parsing:
        return value
    root = ctx.find_root()
    table = read_defaults(value, root.command)
    own: dict[str, Any] = table
    for name in command_path(ctx):
        own = own.get(name, {})
    ctx.default_map = own
    # The root ran before this --site was read; its --log-level is the one root option with an effect.
    if "log_level" in table and root.get_parameter_source("log_level") is ParameterSource.DEFAULT:
        logging.getLogger().setLevel(str(table["log_level"]).upper())
    return value


root_site_option = click.option(
    "--site",
    type=click.Path(path_type=Path, dir_okay=False),
    is_eager=True,
    expose_value=False,
    callback=_root_site,
    help="Site file (TOML); its [defaults] table gives every command's option defaults.",
)

site_option = click.option(
    "--site",
    "site_path",
    type=click.Path(path_type=Path, dir_okay=False),
    is_eager=True,
    callback=_command_site,
    help="Site file (TOML) with the defaults.",
)


def _hint(ctx: click.Context, name: str) -> str:
    key = ".".join(("defaults", *command_path(ctx), name))
    if ctx.default_map is not None and name in ctx.default_map:
        return f"[site: {key} = {_toml(ctx.default_map[name])}]"
    return f"[site: {key}]"


def _option_rows(command: click.Command, ctx: click.Context) -> Iterator[tuple[str, str]]:
    names = settable(command)
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None or isinstance(param, click.Argument):
            continue
        spec, text = record
        if param.name is not None and param.name in names:
            text = f"{text}  {_hint(ctx, param.name)}" if text else _hint(ctx, param.name)
        yield spec, text


def _format_options(command: click.Command, ctx: click.Context, formatter: click.HelpFormatter) -> None:
    rows = list(_option_rows(command, ctx))
    if rows:
        with formatter.section("Options"):
            formatter.write_dl(rows)


class SiteCommand(click.Command):
    """A command whose options' help names their ``[defaults]`` key."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        _format_options(self, ctx, formatter)

    @classmethod
    def adopt(cls, command: click.Command) -> SiteCommand:
        """The same command (callback, parameters, help) built as a SiteCommand, for one made elsewhere."""
        if isinstance(command, click.Group):
            raise TypeError(f"{command.name}: a group is not adopted; build it with cls=SiteGroup")
        return cls(
            name=command.name,
            context_settings=command.context_settings,
            callback=command.callback,
            params=command.params,
            help=command.help,
            epilog=command.epilog,
            short_help=command.short_help,
            options_metavar=command.options_metavar,
            add_help_option=command.add_help_option,
            no_args_is_help=command.no_args_is_help,
            hidden=command.hidden,
            deprecated=command.deprecated,
        )


class SiteGroup(click.Group):
    """A group whose commands and subgroups are SiteCommand / SiteGroup (checked when one is added)."""

    command_class = SiteCommand
    group_class = type  # subgroups are of this class too

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if not isinstance(cmd, SiteCommand | SiteGroup):
            raise TypeError(f"{cmd.name}: build it with cls=SiteCommand (or adopt it) so --help names its keys")
        super().add_command(cmd, name)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        _format_options(self, ctx, formatter)
        self.format_commands(ctx, formatter)
