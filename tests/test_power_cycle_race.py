"""An ACK already on its way when the panel's power goes must not touch the new boot.

Found by the checker's every-boot accounting (an event "acknowledged but missing" after
RAM power-cycles, under load): the old session's reader could still hand over one
message after ``power_cycle()``, and an ACK for the old boot's seqs then freed the new
boot's unsent events. Deterministic here: the ACK is put into the panel's receive stream
and the power cut in the same step, before the reader runs.
"""

from __future__ import annotations

import trio
import trio.testing

import protocol as p
from emulator import LinkMode, Panel, PanelSettings
from protocol.streams import Link


async def test_an_ack_in_flight_at_a_power_cut_frees_nothing_of_the_next_boot() -> None:
    to_panel_send, to_panel = trio.testing.memory_stream_one_way_pair()
    from_panel, from_panel_receive = trio.testing.memory_stream_one_way_pair()
    panel_end = trio.StapledStream(from_panel, to_panel)
    panel = Panel(PanelSettings(panel_id=3, mode=LinkMode.PUNCH_OUT, batch_records=64), journal=True)
    for card in range(10):
        panel.record(p.EventKind.DENIED_PIN, door=1, card=card)  # seqs 1..10 of boot 1 (no alarm: no ALARM first)
    host = p.HostConnection(now=0.0)

    async def host_receive() -> p.Message:
        while True:
            event = host.next_event()
            if not isinstance(event, p.NeedData):
                assert isinstance(event, p.Message), event
                return event
            host.receive_data(await from_panel_receive.receive_some(65536), trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(panel._run_link, Link(panel_end, None, "memory"))
        hello = await host_receive()
        assert isinstance(hello, p.Hello)
        welcome = p.Welcome(
            node_id="A", epoch=1, hwm=0, config_version=0, config_digest=p.EMPTY_DIGEST, heartbeat_ms=1000, idle_ms=5000
        )
        await to_panel_send.send_all(host.send(welcome, trio.current_time()))
        batch = await host_receive()
        assert isinstance(batch, p.EventBatch) and batch.last_seq >= 10  # and its HOST_ONLINE
        ack = host.send(p.Ack(epoch=1, up_to_seq=batch.last_seq), trio.current_time())
        # The ACK arrives and the power goes in the same step: the reader has not run yet.
        to_panel.put_data(ack)
        panel.power_cycle()
        for card in range(100, 110):
            panel.record(p.EventKind.TAMPER, card=card)  # the new boot's events, numbered from 1 again
        await trio.testing.wait_all_tasks_blocked()
        assert panel.past_boots[-1].promised_seq == 0, "the ACK never reached the old boot's reader"
        assert panel.statistics().promised_seq == 0, "an ACK of the old boot counted for the new one"
        assert len(panel.buffer) >= 10, "the old boot's ACK freed the new boot's unsent events"
        nursery.cancel_scope.cancel()
