"""The site file's [defaults] table as click's default_map: every option of every command, named in --help.

The commands used here read no other part of the site file when their options are set, so the
tests hold whether or not the site loader (fieldsync.site) knows the [defaults] table yet.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result
from cryptography import x509

from fieldsync.cli import SiteCommand, SiteGroup, main, read_defaults
from storage import ConfigStore


def _site(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), terminal_width=100)


def _flat(text: str) -> str:
    """Help text as one line: click wraps at spaces and after hyphens (add-\\ncardholder)."""
    return re.sub(r"-\s+", "-", " ".join(text.split()))


def test_a_default_from_the_file_takes_effect_and_paths_are_the_files(tmp_path: Path) -> None:
    site = _site(tmp_path / "conf" / "site.toml", '[defaults.status]\ndb = "x.db"\nas_json = true\n')
    for args in (["--site", str(site), "status"], ["status", "--site", str(site)]):
        result = _run(*args)
        assert result.exit_code == 0, result.output
        shown = json.loads(result.output)  # as_json came from the file
        assert shown["panels"] == [] and shown["epoch"] == 0
        assert (tmp_path / "conf" / "x.db").exists()  # relative to the site file, not the cwd


def test_an_explicit_flag_beats_the_file(tmp_path: Path) -> None:
    site = _site(tmp_path / "site.toml", '[defaults.status]\ndb = "x.db"\n')
    other = tmp_path / "other.db"
    result = _run("--site", str(site), "status", "--db", str(other))
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"store {other}: epoch 0") and not (tmp_path / "x.db").exists()


def test_a_command_without_a_site_option_takes_its_defaults_from_the_roots(tmp_path: Path) -> None:
    site = _site(tmp_path / "site.toml", '[defaults.pki.init]\nsite_name = "Harbour Gate"\n')
    assert _run("--site", str(site), "pki", "init", str(tmp_path / "a")).exit_code == 0
    assert _run("--site", str(site), "pki", "init", str(tmp_path / "b"), "--site-name", "Quay").exit_code == 0
    for directory, name in (("a", "Harbour Gate CA"), ("b", "Quay CA")):
        cert = x509.load_pem_x509_certificate((tmp_path / directory / "ca.pem").read_bytes())
        assert cert.subject.rfc4514_string() == f"CN={name}"


def test_a_float_default_ends_a_command_and_an_int_picks_its_port(tmp_path: Path) -> None:
    site = _site(tmp_path / "site.toml", "[defaults.faults]\napi_port = 32187\nduration = 0.2\n")
    result = _run("--site", str(site), "faults")  # stops by itself: the duration came from the file
    assert result.exit_code == 0, result.output
    assert "fault API on http://127.0.0.1:32187/proxies; 0 proxies" in result.output
    result = _run("--site", str(site), "faults", "--api-port", "32188")
    assert "http://127.0.0.1:32188/" in result.output


def test_lists_and_required_options_come_from_the_file(tmp_path: Path) -> None:
    db = tmp_path / "site.db"
    site = _site(
        tmp_path / "site.toml",
        f'[defaults.config.set-level]\nident = 7\ndoors = [0, 2]\nschedule = 1\ndb = "{db}"\n',
    )
    result = _run("config", "set-level", "--site", str(site))
    assert result.exit_code == 0, result.output
    assert "configuration version 1" in result.output
    level = ConfigStore(db).state().levels[7]
    assert [(e.door, e.schedule) for e in level.entries] == [(0, 1), (2, 1)]
    again = _run("config", "set-level", "--site", str(site), "--door", "3")
    assert again.exit_code == 0, again.output
    assert [e.door for e in ConfigStore(db).state().levels[7].entries] == [3]  # the flag replaced the list


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[defaults.serve]\nheartbeat = 5\n",
            r"site\.toml:2: \[defaults\.serve\] unknown key 'heartbeat' for `fieldsync serve` "
            r"\(did you mean 'heartbeat_ms'\?\)",
        ),
        (
            "[site]\n\n[defaults.serv]\nheartbeat_ms = 5\n",
            r"site\.toml:3: \[defaults\.serv\] names no command: `fieldsync` has no command 'serv' "
            r"\(did you mean 'serve'\?\)",
        ),
        (
            "[defaults.cluster.upp]\npanels = 3\n",
            r"site\.toml:1: \[defaults\.cluster\.upp\] names no command: `fieldsync cluster` has no command 'upp' "
            r"\(did you mean 'up'\?\)",
        ),
        (
            '[defaults.serve]\nnode_id = "A"\n\nheartbeat_ms = "fast"\n',
            r'site\.toml:4: \[defaults\.serve\] heartbeat_ms = "fast": expected an integer \(--heartbeat-ms\)',
        ),
        (
            "[defaults.scenario.fuzz]\nfast = 1\n",
            r"site\.toml:2: \[defaults\.scenario\.fuzz\] fast = 1: expected true or false \(--fast\)",
        ),
        (
            "[defaults.cluster.up]\npanels = true\n",
            r"\[defaults\.cluster\.up\] panels = true: expected an integer \(--panels\)",
        ),
        (
            '[defaults.serve]\ndial = "1=127.1.0.1"\n',
            r'\[defaults\.serve\] dial = "1=127\.1\.0\.1": expected a list, each item a string \(--dial\)',
        ),
        (
            '[defaults.emulate]\npolicy = "drop_newest"\n',
            r"\[defaults\.emulate\] policy = \"drop_newest\": 'drop_newest' is not one of .*\(--policy\)",
        ),
        ("[defaults.emulate]\nosdp_readers = 40\n", r"osdp_readers = 40: 40 is not in the range 0<=x<=32"),
        (
            '[defaults]\nlog_level = "loud"\n',
            r"\[defaults\] log_level = \"loud\": 'loud' is not one of .*\(--log-level\)",
        ),
        ("[defaults]\nserve = 3\n", r"\[defaults\] serve = 3: 'serve' is a command; its defaults are a table"),
        (
            "[defaults.demo]\nsite_path = 'x.toml'\n",
            r"\[defaults\.demo\] unknown key 'site_path' for `fieldsync demo` \(its keys are: keep, panels, port",
        ),
        ("[defaults\n", r"site\.toml: not valid TOML"),
    ],
)
def test_a_bad_table_is_a_clear_error_naming_file_table_and_key(tmp_path: Path, text: str, message: str) -> None:
    site = _site(tmp_path / "site.toml", text)
    for args in (["--site", str(site), "demo", "--help"], ["status", "--site", str(site)]):
        result = _run(*args)
        assert result.exit_code == 1, (args, result.output)
        assert isinstance(result.exception, SystemExit)  # a message, not a traceback
        assert re.search(r"^Error: .*" + message, result.output, re.M), result.output


def test_the_roots_log_level_applies_from_a_commands_own_site_file(tmp_path: Path) -> None:
    site = _site(tmp_path / "site.toml", '[defaults]\nlog_level = "debug"\n')
    db = str(tmp_path / "x.db")
    root, before = logging.getLogger(), logging.getLogger().level
    try:
        root.setLevel(logging.WARNING)
        assert _run("--log-level", "error", "status", "--site", str(site), "--db", db).exit_code == 0
        assert root.level != logging.DEBUG  # the flag given to the root wins over the file
        assert _run("status", "--site", str(site), "--db", db).exit_code == 0
        assert root.level == logging.DEBUG
    finally:
        root.setLevel(before)


def _commands(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def test_help_names_the_key_of_every_option_of_every_command() -> None:
    walked = list(_commands(main))
    assert len(walked) > 25 and ("conformance",) in dict(walked)
    hints = 0
    for path, command in walked:
        assert isinstance(command, SiteCommand | SiteGroup), path
        result = _run(*path, "--help")
        assert result.exit_code == 0, (path, result.output)
        text = _flat(result.output)
        options = [p for p in command.params if isinstance(p, click.Option) and p.expose_value]
        for option in options:
            key = ".".join(("defaults", *path, str(option.name)))
            if option.name == "site_path":
                assert f"[site: {key}" not in text
                continue
            assert f"[site: {key}]" in text, (path, option.name, result.output)
            hints += 1
        assert text.count("[site: defaults.") == sum(o.name != "site_path" for o in options), path
    assert hints > 100
    assert "[site: site.db]" in _flat(_run("serve", "--help").output)  # the hints to other site keys stay


def test_help_shows_the_value_the_file_sets(tmp_path: Path) -> None:
    site = _site(tmp_path / "site.toml", "[defaults.serve]\nheartbeat_ms = 500\nbaud = 9600\n")
    for args in (["--site", str(site), "serve", "--help"], ["serve", "--site", str(site), "--help"]):
        text = _flat(_run(*args).output)
        assert "[site: defaults.serve.heartbeat_ms = 500]" in text
        assert "[default: 9600] [site: defaults.serve.baud = 9600]" in text
        assert "[site: defaults.serve.parity]" in text


@pytest.mark.parametrize("page", ["README.md", "docs/architecture.md"])
def test_the_docs_examples_are_tables_the_cli_accepts(tmp_path: Path, page: str) -> None:
    text = (Path(__file__).parent.parent / page).read_text()
    blocks = [b for b in re.findall(r"```toml\n(.*?)```", text, re.S) if "[defaults." in b]
    assert blocks, page
    for block in blocks:
        site = _site(tmp_path / "site.toml", block)
        assert read_defaults(site, main), block
