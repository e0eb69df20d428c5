"""A narrated session between a panel and a node, with no I/O at all.

Both state machines run in this process and hand each other bytes, which is
what the sans-I/O design allows: the same objects later sit behind TCP, TLS or
a serial line. Time is virtual and advanced by hand.
"""

from __future__ import annotations

from collections.abc import Callable

import protocol as p


def _pump(src_bytes: bytes, dst: p.HostConnection | p.PanelConnection, now: float) -> list[p.Message]:
    dst.receive_data(src_bytes, now)
    out: list[p.Message] = []
    while True:
        event = dst.next_event()
        if isinstance(event, p.NeedData | p.ConnectionClosed):
            return out
        out.append(event)


def run(echo: Callable[[str], None] = print, *, events: int = 1000, batch: int = 250) -> int:
    """Play a session; return the number of events the host acknowledged."""
    now = 0.0
    panel = p.PanelConnection(now=now, epoch_floor=3)
    host = p.HostConnection(now=now)

    def show(direction: str, data: bytes, messages: list[p.Message]) -> None:
        for m in messages:
            echo(f"t={now:6.3f}s  {direction}  {len(data):6d} bytes  {m!r}")

    # Version 41 is empty in this demo; 42 locks door 2 (the delta below).
    digest_41 = p.EMPTY_DIGEST
    locked = p.PutDoor(door=p.Door(door=2, mode=p.DoorMode.LOCKED))
    digest_42 = p.config_digest([locked])
    hello = p.Hello(
        panel_id=17,
        boot_id=0xB007,
        firmware="fs-emu/1",
        oldest_seq=1,
        newest_seq=events,
        config_version=41,
        config_digest=digest_41,
        max_epoch=3,
    )
    data = panel.send(hello, now)
    show("panel -> node", data, _pump(data, host, now))
    welcome = p.Welcome(
        node_id="A", epoch=4, hwm=0, config_version=42, config_digest=digest_42, heartbeat_ms=1000, idle_ms=10_000
    )
    data = host.send(welcome, now)
    show("node -> panel", data, _pump(data, panel, now))

    records = [
        p.EventRecord(
            seq=s,
            time_us=1_764_000_000_000_000 + s * 1000,
            kind=p.EventKind.ACCESS_GRANTED,
            door=s % 4,
            reader=1,
            card=100_000 + s % 97,
            flags=p.EventFlags.DECIDED_OFFLINE,
        )
        for s in range(1, events + 1)
    ]
    for start in range(0, events, batch):
        now += 0.01
        data = panel.send(p.EventBatch.of(records[start : start + batch]), now)
        show("panel -> node", data, _pump(data, host, now))
        data = host.send(p.Ack(epoch=4, up_to_seq=host.sent_seq), now)
        show("node -> panel", data, _pump(data, panel, now))

    delta = p.ConfigDelta(
        epoch=4,
        from_version=41,
        to_version=42,
        digest=digest_42,
        ops=(locked, p.DeleteCardholder(card=100_013)),
    )
    data = host.send(delta, now)
    show("node -> panel", data, _pump(data, panel, now))
    data = panel.send(p.ConfigAck(version=42, digest=digest_42), now)
    show("panel -> node", data, _pump(data, host, now))

    now = panel.next_deadline() or now
    data = panel.handle_timer(now)
    show("panel -> node", data, _pump(data, host, now))

    try:  # a stale node (epoch 3 < 4) is refused by the panel: P5
        stale = p.PanelConnection(now=now, epoch_floor=4)
        stale_host = p.HostConnection(now=now)
        _pump(
            stale.send(
                p.Hello(
                    panel_id=17,
                    boot_id=0xB007,
                    firmware="fs-emu/1",
                    oldest_seq=0,
                    newest_seq=0,
                    config_version=42,
                    config_digest=digest_42,
                    max_epoch=4,
                ),
                now,
            ),
            stale_host,
            now,
        )
        stale_host.send(
            p.Welcome(
                node_id="B",
                epoch=3,
                hwm=events,
                config_version=42,
                config_digest=digest_42,
                heartbeat_ms=1000,
                idle_ms=10_000,
            ),
            now,
        )
    except p.LocalProtocolError as exc:
        echo(f"stale node B refused before it could send: {exc}")

    data = panel.send(p.Bye(epoch=4), now)
    show("panel -> node", data, _pump(data, host, now))
    stats = host.statistics()
    echo(
        f"node: {stats.frames_in} frames in, {stats.bytes_in} bytes, acked up to seq {stats.acked_seq}; "
        f"panel config version {panel.config_acked}"
    )
    return stats.acked_seq
