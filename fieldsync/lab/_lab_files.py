"""What the lab writes before anything runs: the site file, keepalived's configuration and
notify script per node host, and the command line of each process it starts."""

from __future__ import annotations

import shutil
from pathlib import Path

from storage import ClusterStore

from ..engine import node_command
from ..site import issue_pair_pki, load_site, seed_config
from ._spec import _NODE_ADDRESS, _PREFIX, _PRIORITY, NODE_HOSTS, VIP, LabSpec, panel_lab_address

__all__ = ["argv", "write_keepalived", "write_site"]


def write_site(spec: LabSpec) -> None:
    """The lab's site file, its PKI (a fresh CA) and an empty store with a seeded configuration."""
    nodes = []
    for host in NODE_HOSTS:
        vrrp = (
            f'vrrp_state = "{spec.vrrp_state(host).name}"\nvrrp_pid = "{spec.vrrp_pid(host).name}"\n'
            if spec.vrrp_gate
            else ""
        )
        nodes.append(f'[nodes.{host}]\naddress = "{_NODE_ADDRESS[host]}"\n{vrrp}')
    panels = "".join(f'[[panels]]\nid = {p}\naddress = "{panel_lab_address(p)}"\n\n' for p in range(1, spec.panels + 1))
    spec.site_path.write_text(
        f"# Written by `fieldsync lab up` for lab {spec.name}: nodes on {spec.namespace('A')} and "
        f"{spec.namespace('B')}, panels on {spec.namespace('panels')}.\n"
        f'[site]\nname = "lab {spec.name}"\ndb = "site.db"\npki = "pki"\nvip = "{VIP}"\n'
        f"port = {spec.port}\npanel_port = 3001\n\n"
        + "\n".join(nodes)
        + f'\n[fleet]\npanels = {spec.panels}\nmode = "{spec.mode}"\nbuffer = "2MiB"\nbatch = 512\n\n'
        + panels
    )
    site = load_site(spec.site_path)
    shutil.rmtree(site.pki, ignore_errors=True)  # a fresh CA for a fresh lab: EC keys cost little
    issue_pair_pki(site, f"lab {spec.name}")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{site.db_file}{suffix}").unlink(missing_ok=True)
    seed_config(site.db_file, doors=4, cardholders=100).close()
    ClusterStore(site.db_file).close()


def write_keepalived(spec: LabSpec, host: str) -> None:
    """keepalived's config for ``host`` and the notify script that writes its VRRP state to a file."""
    state, notify = spec.vrrp_state(host), spec.file("notify", host, "sh")
    state.write_text("INIT\n")
    notify.write_text(
        "#!/bin/sh\n"
        "# keepalived runs this on every VRRP transition; $3 is the new state (MASTER, BACKUP, FAULT, STOP).\n"
        f"printf '%s\\n' \"$3\" > '{state}.tmp' && mv -f '{state}.tmp' '{state}'\n"
    )
    notify.chmod(0o755)
    spec.file("keepalived", host, "conf").write_text(
        "global_defs {\n"
        f"    router_id fsl-{spec.name}-{host}\n"
        "    vrrp_version 3\n"
        "    enable_script_security\n"
        "    script_user root\n"
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
    extra = () if spec.stonith else ("--no-stonith",)
    return node_command(host, str(spec.site_path), *extra)
