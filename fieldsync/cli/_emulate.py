"""`fieldsync emulate`: a fleet of emulated panels, optionally with OSDP readers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import trio

from ..site import SiteError, parse_address, parse_size
from ._common import friendly, metrics_address, metrics_options, run_trio, site_with
from ._defaults import SiteCommand, site_option

__all__ = ["emulate"]


@click.command("emulate", cls=SiteCommand)
@site_option
@click.option("--panels", type=int, help="How many panels [site: fleet.panels].")
@click.option("--first-id", type=int, help="First panel id [site: fleet.first_id].")
@click.option("--mode", type=click.Choice(["punch-out", "host-initiated", "mixed"]))
@click.option("--server", help="HOST:PORT a punch-out panel dials [site: vip:port].")
@click.option(
    "--serial",
    "serial_paths",
    multiple=True,
    help="DEVICE: one serial panel on this line (ids from --first-id); repeatable; replaces --panels.",
)
@click.option("--baud", type=int, default=115_200, show_default=True, help="Baud rate of --serial lines.")
@click.option("--throttle", is_flag=True, help="Write no faster than the baud rate allows.")
@click.option(
    "--osdp-readers",
    type=click.IntRange(0, 32),
    default=0,
    show_default=True,
    help="Give each panel this many libosdp card readers on a virtual OSDP line; swipes go through them.",
)
@click.option("--rate", type=float, help="Swipes per second per panel.")
@click.option("--buffer", "buffer_size", help="Buffer budget per panel, e.g. 32MiB.")
@click.option("--policy", type=click.Choice(["drop_oldest", "refuse_newest", "block"]))
@click.option("--flash-dir", type=click.Path(path_type=Path, file_okay=False), help="Keep buffers in flash files here.")
@click.option("--pki", "pki_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--insecure", is_flag=True, help="Plain TCP; refused unless every address is loopback.")
@click.option("--duration", type=float, help="Stop after this many seconds (default: run until Ctrl-C).")
@click.option("--seed", type=int, default=0, show_default=True)
@metrics_options
@friendly
def emulate(
    site_path: Path | None,
    panels: int | None,
    first_id: int | None,
    mode: str | None,
    server: str | None,
    serial_paths: tuple[str, ...],
    baud: int,
    throttle: bool,
    osdp_readers: int,
    rate: float | None,
    buffer_size: str | None,
    policy: str | None,
    flash_dir: Path | None,
    pki_dir: Path | None,
    insecure: bool,
    duration: float | None,
    seed: int,
    metrics: str | None,
    metrics_anywhere: bool,
) -> None:
    """Run a fleet of emulated panels with card-swipe traffic."""
    import dataclasses

    from emulator import BusSwiper, Fleet, Workload
    from protocol.streams import sparing_gc
    from storage import OverflowPolicy

    metrics_at = metrics_address(metrics, anywhere=metrics_anywhere)
    site = site_with(site_path, pki_dir=pki_dir, insecure=insecure)
    given: dict[str, Any] = {
        "panels": panels,
        "first_id": first_id,
        "mode": mode,
        "rate": rate,
        "buffer": parse_size(buffer_size) if buffer_size else None,
        "policy": OverflowPolicy(policy) if policy else None,
        "flash_dir": flash_dir,
    }
    fleet_spec = dataclasses.replace(site.fleet, **{k: v for k, v in given.items() if v is not None})
    if server:
        host, port = parse_address(server, site.port)
        site = dataclasses.replace(site, vip=host, port=port)
    if serial_paths:
        overrides = dict(site.overrides)
        for i, device in enumerate(serial_paths):
            pid = fleet_spec.first_id + i
            overrides[pid] = {**overrides.get(pid, {}), "serial": device, "baud": baud, "throttle": throttle}
        fleet_spec = dataclasses.replace(fleet_spec, panels=len(serial_paths))
        site = dataclasses.replace(site, overrides=overrides)
    site = dataclasses.replace(site, fleet=fleet_spec)
    settings = [site.panel_settings(pid) for pid in site.panel_ids()]
    site.check_transport(
        *(s.listen[0] for s in settings if s.listen and s.serial is None),
        serial=tuple(s.serial.path for s in settings if s.serial is not None),
    )
    buses: list[Any] = []
    if osdp_readers:
        if len(settings) > 64:
            raise SiteError(f"--osdp-readers: at most 64 panels get OSDP readers (a thread each), not {len(settings)}")
        settings, buses = _with_osdp_readers(settings, osdp_readers)
    fleet = Fleet(settings, Workload(rate=fleet_spec.rate), seed=seed)
    if buses:
        for panel, (_, bus) in zip(fleet.panels.values(), buses, strict=True):
            fleet.swipers[panel.panel_id] = BusSwiper(panel, bus)

    async def run() -> None:
        from ..engine import fleet_render, serve_metrics

        async with sparing_gc(), trio.open_nursery() as nursery:
            if metrics_at is not None:  # first: a port in use fails before any panel runs
                await nursery.start(serve_metrics, fleet_render(fleet), *metrics_at)
            for line, bus in buses:
                line.open()
                bus.start()
                nursery.start_soon(_close_on_cancel, line, bus)
            await nursery.start(fleet.run)
            where = ", ".join(serial_paths) if serial_paths else f"{site.vip}:{site.port}"
            kind = "serial" if serial_paths else fleet_spec.mode
            click.echo(
                f"{len(fleet)} panels ({kind}) -> {where}, {fleet_spec.rate}/s each"
                + (f"; metrics on http://{metrics_at[0]}:{metrics_at[1]}/metrics" if metrics_at else "")
            )
            with trio.move_on_after(duration if duration is not None else float("inf")):
                while True:
                    await trio.sleep(1)
                    s = fleet.statistics()
                    click.echo(
                        f"connected {s.connected}/{s.panels} emitted {s.emitted} acked {s.acked} "
                        f"buffered {s.buffered_events} dropped {s.dropped} refused {s.refused}"
                    )
            nursery.cancel_scope.cancel()

    run_trio(run)


def _with_osdp_readers(settings: list[Any], count: int) -> tuple[list[Any], list[Any]]:
    """Each panel gets ``count`` readers (two per door, a fresh Secure Channel key each)
    on a virtual line of its own; returns the new settings and (line, bus) pairs."""
    import dataclasses
    import secrets
    import tempfile

    from emulator import ReaderBus, ReaderSpec
    from protocol.streams import SerialLine

    from ..harness import VirtualLine

    out, buses = [], []
    base = Path(tempfile.mkdtemp(prefix="fieldsync-osdp-"))
    for s in settings:
        specs = tuple(
            ReaderSpec(address=a, key=secrets.token_bytes(16), door=((a - 1) // 2) % s.doors)
            for a in range(1, count + 1)
        )
        line = VirtualLine(link_dir=base / f"panel-{s.panel_id}")
        buses.append((line, ReaderBus(SerialLine(path=line.b), specs)))
        out.append(dataclasses.replace(s, reader_line=SerialLine(path=line.a), readers=specs))
    return out, buses


async def _close_on_cancel(line: Any, bus: Any) -> None:
    try:
        await trio.sleep_forever()
    finally:
        bus.stop()
        line.close()
