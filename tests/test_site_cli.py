"""The site file and the CLI as a user meets them: clear errors, working commands."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from fieldsync.cli import main
from fieldsync.site import FleetSpec, SiteError, load_site, pair_site_toml, parse_site, parse_size, write_pair_site
from storage import ConfigStore, OverflowPolicy


def test_unknown_keys_and_bad_values_name_the_file_line_and_key(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text("[fleet]\npanels = 3\nbufer = '1MiB'\n")
    with pytest.raises(SiteError, match=r"site\.toml:3: fleet\.bufer: unknown key; did you mean 'buffer'\?$"):
        load_site(site)
    site.write_text("[fleet]\nbuffer = 'lots'\n")
    with pytest.raises(SiteError, match=r"site\.toml:2: fleet\.buffer: 'lots' is not a size"):
        load_site(site)
    site.write_text("# a site\n\n[site]\nport = '30002'\n")
    with pytest.raises(SiteError, match=r"site\.toml:4: site\.port: must be a valid integer, not '30002'"):
        load_site(site)
    site.write_text("[nodes.A]\naddress = '127.0.0.11'\n[nodes.B]\nadress = '127.0.0.12'\n")
    with pytest.raises(SiteError, match=r"site\.toml:4: nodes\.B\.adress: unknown key; did you mean 'address'\?"):
        load_site(site)
    site.write_text("[[panels]]\nid = 3\n\n[[panels]]\n# no id\nmode = 'punch-out'\n")
    with pytest.raises(SiteError, match=r"site\.toml:4: panels\[1\]: missing key 'id'"):
        load_site(site)
    site.write_text("[[panels]]\nid = 3\n[[panels]]\nid = 3\n")
    with pytest.raises(SiteError, match=r"site\.toml:4: panels\[1\]\.id: panel 3 has another \[\[panels\]\] entry"):
        load_site(site)
    site.write_text("[fleet]\nmode = 'mixd'\n")
    with pytest.raises(SiteError, match=r"site\.toml:2: fleet\.mode: 'mixd' is not one of") as caught:
        load_site(site)
    assert (caught.value.line, caught.value.key) == (2, "fleet.mode")
    site.write_text("[site]\nheartbeat_ms = 2000\nidle_ms = 1500\n")
    with pytest.raises(
        SiteError, match=r"site\.toml:3: site\.idle_ms: idle_ms 1500 \(10000 unless set\) is below heartbeat_ms 2000"
    ):
        load_site(site)
    site.write_text("[site\n")
    with pytest.raises(SiteError, match="not valid TOML"):
        load_site(site)
    with pytest.raises(SiteError, match="no such site file"):
        load_site(tmp_path / "missing.toml")


def test_every_default_is_the_models_whether_or_not_a_file_is_given(tmp_path: Path) -> None:
    """The embedded default and an empty file agree, key by key (they once differed: batch 4096 vs 1024)."""
    site = tmp_path / "site.toml"
    site.write_text("")
    from_file, embedded = load_site(site), load_site(None)
    assert from_file.fleet == embedded.fleet == FleetSpec()
    assert from_file.fleet.batch == 4096
    assert from_file.nodes == embedded.nodes and from_file.vip == embedded.vip
    assert from_file.db == tmp_path / "fieldsync.db" and embedded.db == Path("fieldsync.db")


def test_the_pair_site_is_written_whole_and_reads_back_as_built(tmp_path: Path) -> None:
    options = dict(
        port=31000,
        panels=5,
        first_id=7,
        mode="host-initiated",
        buffer=65536,
        policy=OverflowPolicy.BLOCK,
        doors=2,
        flash_dir="flash",
        insecure=True,
        db="store/site.db",
        name='a "quoted" name',
        heartbeat_proxies=True,
    )
    text = pair_site_toml(**options)
    site = parse_site(text, tmp_path / "site.toml")
    assert write_pair_site(tmp_path / "site.toml", **options).read_text() == text
    assert load_site(tmp_path / "site.toml") == site
    assert site.name == 'a "quoted" name' and site.insecure and site.port == 31000 and site.panel_port == 31001
    assert site.db == tmp_path / "store" / "site.db" and site.fleet.flash_dir == tmp_path / "flash"
    assert [n.heartbeat_via for n in site.nodes] == ["127.0.0.21", "127.0.0.22"]
    assert site.panel_ids() == [7, 8, 9, 10, 11]
    settings = site.panel_settings(8)
    assert (settings.buffer_bytes, settings.policy, settings.doors, settings.batch_records) == (
        65536,
        OverflowPolicy.BLOCK,
        2,
        1024,
    )
    assert settings.flash == tmp_path / "flash" / "panel-8.flash"


def test_the_defaults_table_is_kept_as_written_with_its_lines(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text(
        "[site]\nname = 'x'\n\n# option defaults of CLI commands\n[defaults.serve]\nheartbeat_ms = 500\n"
        "listen = '127.0.0.1:30002'\n\n[defaults.cluster.up]\npanels = 20\nno_restart = true\n"
    )
    loaded = load_site(site)
    assert loaded.defaults == {
        "serve": {"heartbeat_ms": 500, "listen": "127.0.0.1:30002"},
        "cluster": {"up": {"panels": 20, "no_restart": True}},
    }
    assert loaded.defaults_lines[("serve", "heartbeat_ms")] == 6
    assert loaded.defaults_lines[("serve",)] == 5
    assert loaded.defaults_lines[("cluster", "up", "no_restart")] == 11
    site.write_text("defaults = 3\n")
    with pytest.raises(SiteError, match=r"site\.toml:1: defaults: must be a valid dictionary, not 3"):
        load_site(site)


def test_site_builds_panel_settings(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text(
        "[site]\ninsecure = true\n[fleet]\npanels = 4\nmode = 'mixed'\nbuffer = '64KiB'\n"
        "[[panels]]\nid = 3\npolicy = 'refuse_newest'\n"
    )
    loaded = load_site(site)
    settings = {pid: loaded.panel_settings(pid) for pid in loaded.panel_ids()}
    assert [s.mode.value for s in settings.values()] == ["punch-out", "host-initiated", "punch-out", "host-initiated"]
    assert settings[3].policy.value == "refuse_newest" and settings[1].buffer_bytes == 65536
    assert settings[2].listen == ("127.1.0.2", 3001) and settings[1].tls is None
    assert parse_size("32MiB") == 32 << 20


def test_plain_text_off_loopback_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["serve", "--insecure", "--listen", "198.18.0.1:30002", "--db", str(tmp_path / "x.db")]
    )
    assert result.exit_code == 1
    assert "not a loopback address" in result.output


def test_config_commands_change_versions(tmp_path: Path) -> None:
    db = tmp_path / "site.db"
    runner = CliRunner()
    for args in (
        [
            "config",
            "set-schedule",
            "--db",
            str(db),
            "--id",
            "1",
            "--days",
            "mon-fri",
            "--from",
            "08:00",
            "--to",
            "18:00",
        ],
        ["config", "set-level", "--db", str(db), "--id", "1", "--door", "0", "--door", "1", "--schedule", "1"],
        ["config", "add-cardholder", "--db", str(db), "--card", "42", "--levels", "1"],
        ["config", "set-door-mode", "--db", str(db), "--door", "1", "--mode", "locked"],
    ):
        result = runner.invoke(main, args)
        assert result.exit_code == 0, result.output
    assert "configuration version 4" in result.output
    state = ConfigStore(db).state()
    assert state.cardholders[42].levels == (1,) and state.doors[1].mode.name == "LOCKED"
    assert state.schedules[1].intervals[0].days == 0b11111
    shown = runner.invoke(main, ["config", "show", "--db", str(db)])
    assert "version 4: 1 cardholders" in shown.output
    status = runner.invoke(main, ["status", "--db", str(db)])
    assert status.exit_code == 0 and "config version 4" in status.output
    bad = runner.invoke(main, ["config", "set-schedule", "--db", str(db), "--id", "2", "--days", "funday"])
    assert bad.exit_code != 0 and "unknown day" in bad.output


def test_pki_commands(tmp_path: Path) -> None:
    runner = CliRunner()
    pki = tmp_path / "pki"
    assert runner.invoke(main, ["pki", "issue", "panel", "1", "--dir", str(pki)]).exit_code == 1  # no CA yet
    assert runner.invoke(main, ["pki", "init", str(pki)]).exit_code == 0
    again = runner.invoke(main, ["pki", "init", str(pki)])
    assert again.exit_code == 1 and "--force" in again.output
    result = runner.invoke(main, ["pki", "issue", "panel", "1-3", "--dir", str(pki)])
    assert result.exit_code == 0 and "issued 3 panel" in result.output
    assert (pki / "panel-3.pem").exists() and oct((pki / "panel-3.key").stat().st_mode & 0o777) == "0o600"
    bad = runner.invoke(main, ["pki", "issue", "node", "no spaces", "--dir", str(pki)])
    assert bad.exit_code == 1 and "node name" in bad.output


def test_every_command_has_help() -> None:
    runner = CliRunner()
    for args in (
        [],
        ["demo"],
        ["serve"],
        ["emulate"],
        ["node"],
        ["status"],
        ["config"],
        ["pki"],
        ["cluster"],
        ["cluster", "up"],
        ["cluster", "status"],
        ["cluster", "switchover"],
    ):
        result = runner.invoke(main, [*args, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output, args


@pytest.mark.slow
def test_sigterm_stops_cluster_up_and_every_node_it_started(site_pki: Path, tmp_path: Path) -> None:
    """What a service manager does: SIGTERM to `fieldsync cluster up`. Its node processes
    (sessions of their own) must not live on as orphans holding the VIP."""
    import os
    import re
    import signal
    import subprocess
    import sys
    import time

    from fieldsync.engine import process_is_fieldsync
    from fieldsync.site import write_pair_site

    site = write_pair_site(tmp_path / "site.toml", pki_dir=site_pki, port=31950, panels=2)
    up = subprocess.Popen(
        [sys.executable, "-m", "fieldsync.cli", "cluster", "up", "--site", str(site)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pids: list[int] = []
    try:
        assert up.stdout is not None
        deadline = time.monotonic() + 30
        while not pids and time.monotonic() < deadline:
            line = up.stdout.readline()
            found = re.findall(r"[AB]=(\d+)", line)
            if len(found) == 2:
                pids = [int(p) for p in found]
        assert len(pids) == 2 and all(process_is_fieldsync(p) for p in pids), pids
        up.send_signal(signal.SIGTERM)
        _, err = up.communicate(timeout=15)  # the supervisor's bound: SIGINT, SIGKILL after 3 s
        assert up.returncode == 0 and "SIGTERM: stopped" in err, err[-2000:]
        assert not [p for p in pids if process_is_fieldsync(p)], f"orphans left: {pids}"
    finally:
        if up.poll() is None:
            up.kill()
            up.communicate()
        for pid in pids:  # only what this test's command started
            if process_is_fieldsync(pid):
                os.kill(pid, signal.SIGKILL)


def test_log_format_json_gives_one_object_per_line(tmp_path: Path) -> None:
    """A real command's log, as a log shipper reads it: every line parses, nothing is free text."""
    import json
    import subprocess
    import sys

    site = tmp_path / "site.toml"
    site.write_text(f'[site]\ndb = "{tmp_path / "site.db"}"\ninsecure = true\nvip = "127.0.0.1"\nport = 31955\n')
    root = [sys.executable, "-m", "fieldsync.cli", "--log-format", "json", "--log-level", "info"]
    done = subprocess.run(
        [*root, "serve", "--site", str(site), "--duration", "0.3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    entries = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert entries and all({"time", "level", "logger", "message", "pid"} <= set(e) for e in entries), done.stderr
    assert any(e["logger"] == "fieldsync.node" and "serving with epoch" in e["message"] for e in entries)
    # Everything on stderr that is a log record is JSON: the rest is the command's own output.
    assert not [line for line in done.stderr.splitlines() if " fieldsync.node " in line], done.stderr


def test_status_watch_refreshes_until_sigterm(tmp_path: Path) -> None:
    """`status --watch` piped: one block per refresh, each showing what the store holds then;
    SIGTERM ends it cleanly."""
    import signal
    import subprocess
    import sys

    from storage import EventStore

    db = tmp_path / "site.db"
    EventStore(db).close()
    watch = subprocess.Popen(
        [sys.executable, "-m", "fieldsync.cli", "status", "--db", str(db), "--watch", "--every", "0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watch.stdout is not None
        stamps = []
        while len(stamps) < 3:
            line = watch.stdout.readline()
            assert line, watch.stderr.read() if watch.stderr else ""
            if line.startswith("-- "):
                stamps.append(line)
            else:
                assert line.startswith(("store ", "  panel", "\n")) or line.strip().startswith("panel"), line
        watch.send_signal(signal.SIGTERM)
        _, err = watch.communicate(timeout=10)
        assert watch.returncode == 0 and "SIGTERM: stopped" in err, err
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.communicate()


def test_a_flag_value_a_model_refuses_is_one_line_naming_the_flag() -> None:
    result = CliRunner().invoke(main, ["emulate", "--panels", "-1"])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [
        "Error: --panels: input should be greater than or equal to 0 (got -1)"
    ]


def test_a_site_whose_store_is_postgresql_serves_and_the_pair_says_it_cannot(tmp_path: Path) -> None:
    """`db = "postgresql://..."` stays a URL (a path would fold its "//"); `serve` takes it, and the
    pair, which is mirrored on PostgreSQL (each node its own database), refuses one server under
    both nodes with a line that says so."""
    site_file = tmp_path / "site.toml"
    site_file.write_text('[site]\ndb = "postgresql://fieldsync@127.0.0.1:5432/site"\n')
    site = load_site(site_file)
    assert site.db == "postgresql://fieldsync@127.0.0.1:5432/site"
    with pytest.raises(SiteError, match=r"PostgreSQL URL; a pair on PostgreSQL is mirrored \(\[site\] mirror"):
        site.cluster_settings("A")
    result = CliRunner().invoke(main, ["cluster", "status", "--site", str(site_file)])
    assert result.exit_code == 1 and "db is a PostgreSQL URL" in result.output, result.output
    assert load_site(tmp_path / "site.toml").db != Path("postgresql:/fieldsync@127.0.0.1:5432/site")
    relative = tmp_path / "rel.toml"
    relative.write_text('[site]\ndb = "data/site.db"\n')
    assert load_site(relative).db == tmp_path / "data" / "site.db"


def test_the_batch_logs_bound_is_a_site_key_that_reaches_each_node(tmp_path: Path) -> None:
    text = pair_site_toml(port=31000).replace("[site]\n", '[site]\ningest = "log"\nmax_log_lag = 12000000\n', 1)
    site = parse_site(text, tmp_path / "site.toml")
    assert site.max_log_lag == 12_000_000
    assert site.cluster_settings("A").max_log_lag == site.cluster_settings("B").max_log_lag == 12_000_000
    with pytest.raises(SiteError, match="max_log_lag"):
        parse_site(text.replace("max_log_lag = 12000000", "max_log_lag = 0"), tmp_path / "site.toml")
