"""What the lab writes before anything runs: the site file, keepalived's configuration and
notify script per node host, and the command line of each process it starts."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from storage import open_cluster_store

from ..engine import node_command
from ..site import issue_pair_pki, load_site, pair_site_toml, seed_config
from ._spec import _PREFIX, _PRIORITY, NODE_HOSTS, VIP, LabSpec

__all__ = ["argv", "seed_store", "write_keepalived", "write_site"]


def write_site(spec: LabSpec) -> None:
    """The lab's site file, its PKI (a fresh CA) and an empty store with a seeded configuration."""
    text = pair_site_toml(
        hosts=spec.pair_hosts(),
        name=f"lab {spec.name}",
        port=spec.port,
        panels=spec.panels,
        first_id=spec.first_id,
        mode=spec.mode,
        buffer="2MiB",
        batch=512,
        heartbeat_ms=spec.heartbeat_ms,
        idle_ms=spec.idle_ms,
        mirror=spec.mirror,
        node_dbs=spec.database_urls() if spec.mirror else None,
        pg_data={h: spec.pg_dir / f"pg-{h}" for h in NODE_HOSTS} if spec.mirror else None,
        witness=spec.witness_address(),
    )
    spec.site_path.write_text(
        f"# Written by `fieldsync lab up` for lab {spec.name}: nodes on {spec.namespace('A')} and "
        f"{spec.namespace('B')}, panels on {spec.namespace('panels')}.\n" + text
    )
    site = load_site(spec.site_path)
    shutil.rmtree(site.pki, ignore_errors=True)  # a fresh CA for a fresh lab: EC keys cost little
    issue_pair_pki(site, f"lab {spec.name}")
    if spec.mirror is None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{site.db_file}{suffix}").unlink(missing_ok=True)
        seed_store(site.db_file)


def seed_store(target: Path | str) -> None:
    """A lab's starting configuration and an empty lease, in the shared store or the primary."""
    seed_config(target, doors=4, cardholders=100).close()
    open_cluster_store(target).close()


def write_keepalived(spec: LabSpec, host: str) -> None:
    """keepalived's config for ``host``, the notify script that writes its VRRP state to a file,
    and the track script that ties the VRRP state to the host's node.

    Two trackers tie the host's VRRP state to its node: a track file that the node's wrapper
    sets to 1 when the node ends (keepalived reads it on inotify: FAULT at once), and a track
    script (every second, keepalived's finest ``interval``) asking whether the node's recorded
    process still runs, for a node whose wrapper died with it. A node that died alone puts its
    host in FAULT, which gives up the VIP, so the other host's node can take over (without
    them, the VIP would stay on a host with no node behind it and the other node would,
    rightly, never serve while its host is BACKUP).
    """
    state, notify, check = spec.vrrp_state(host), spec.file("notify", host, "sh"), spec.file("check", host, "sh")
    state.write_text("INIT\n")
    notify.write_text(
        "#!/bin/sh\n"
        "# keepalived runs this on every VRRP transition; $3 is the new state (MASTER, BACKUP, FAULT, STOP).\n"
        f"printf '%s\\n' \"$3\" > '{state}.tmp' && mv -f '{state}.tmp' '{state}'\n"
    )
    notify.chmod(0o755)
    started = spec.file("node", host, "started")
    check.write_text(
        "#!/bin/sh\n"
        "# keepalived's track script: does the node the lab started on this host still run?\n"
        "# (its recorded pid, and that pid's command line naming this lab's site file: not a recycled pid)\n"
        f"pid=$(cat '{started}' 2>/dev/null) || exit 1\n"
        f"tr '\\0' '\\n' < /proc/\"$pid\"/cmdline 2>/dev/null | grep -qxF -- '{spec.site_path}'\n"
    )
    check.chmod(0o755)
    spec.file("keepalived", host, "conf").write_text(
        "global_defs {\n"
        f"    router_id fsl-{spec.name}-{host}\n"
        "    vrrp_version 3\n"
        "    enable_script_security\n"
        "    script_user root\n"
        "}\n"
        # At once: the node's wrapper writes 1 here when the node ends (inotify, no polling).
        "track_file node_ended {\n"
        f'    file "{spec.node_track(host)}"\n'
        "    weight 0\n"
        "    init_file 0 overwrite\n"
        "}\n"
        # Every second, a backstop: the node's recorded process still runs.
        "vrrp_script node_alive {\n"
        f"    script {check}\n"
        "    interval 1\n"
        "    fall 1\n"
        "    rise 1\n"
        "}\n"
        "vrrp_instance VIP {\n"
        "    state BACKUP\n"
        "    nopreempt\n"
        "    interface eth0\n"
        f"    virtual_router_id {spec.virtual_router_id}\n"
        f"    priority {_PRIORITY[host]}\n"
        f"    advert_int {spec.advert_int:.2f}\n"
        f"    virtual_ipaddress {{\n        {VIP}/{_PREFIX} dev eth0\n    }}\n"
        f"    notify {notify}\n"
        # A gratuitous ARP every second while MASTER: after a split brain heals, or beside a
        # killed keepalived's leftover VIP, the panels' ARP caches point at the MASTER again
        # within a second instead of at the loser until the cache entry expires.
        "    garp_master_refresh 1\n"
        "    track_file {\n        node_ended weight 0\n    }\n"
        "    track_script {\n        node_alive\n    }\n"
        "}\n"
    )


def argv(spec: LabSpec, host: str, kind: str, keepalived: str | None) -> list[str]:
    """The command line of ``kind`` (keepalived or the node) on ``host``."""
    if kind == "keepalived":
        assert keepalived is not None
        return [
            keepalived,
            "--dont-fork",
            "--log-console",
            "--log-detail",
            "--vrrp",
            "-f",
            str(spec.file("keepalived", host, "conf")),
            "-p",
            str(spec.file("keepalived", host, "pid")),
            "-r",
            str(spec.vrrp_pid(host)),
        ]
    if kind == "witness":
        state = spec.file("witness", host, "json")
        return [
            sys.executable,
            "-m",
            "fieldsync.cli",
            "witness",
            "--listen",
            str(spec.witness_address()),
            "--state",
            str(state),
        ]
    if kind == "console":
        assert spec.console is not None
        metrics = [arg for h in NODE_HOSTS for arg in ("--metrics", f"{h}={spec.metrics_address(h)}")]
        return [
            sys.executable,
            "-m",
            "fieldsync.cli",
            "console",
            "--site",
            str(spec.site_path),
            "--listen",
            spec.console,
            "--netns",
            spec.namespace(host),
            *metrics,
        ]
    extra = [] if spec.stonith else ["--no-stonith"]
    if spec.console is not None:
        extra += ["--metrics", spec.metrics_address(host), "--metrics-anywhere"]
    return node_command(host, str(spec.site_path), *extra)
