"""The witness of a mirrored pair: its compare-and-set, its record on disk, what it refuses,
and the active's decisions about its mirror (``decide_mirror``)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import trio

from fieldsync.engine import WitnessError, WitnessRecord, serve_witness, witness_cas, witness_get
from fieldsync.engine._mirrored import MirrorLook, decide_mirror
from fieldsync.site import SiteError, parse_site
from storage.postgres import free_port

HOST = "127.0.0.34"


async def _with_witness(state: Path, test: object) -> None:
    port = free_port(HOST)
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_witness, HOST, port, state)
        await trio.to_thread.run_sync(test, (HOST, port))  # type: ignore[arg-type]
        nursery.cancel_scope.cancel()


def test_one_compare_and_set_wins_and_the_record_outlives_the_witness(tmp_path: Path) -> None:
    state = tmp_path / "witness.json"

    def first(address: tuple[str, int]) -> None:
        seen = witness_get(address)
        assert seen == WitnessRecord()  # nothing recorded yet
        assert witness_cas(address, seen, primary="A", in_sync=("B", "A"))
        # The two sides of a partition race from the same generation: the second loses.
        now = witness_get(address)
        assert now == WitnessRecord(1, "A", ("A", "B"))
        assert witness_cas(address, now, primary="A", in_sync=("A",))
        assert not witness_cas(address, now, primary="B", in_sync=("B",))
        assert witness_get(address) == WitnessRecord(2, "A", ("A",))

    trio.run(_with_witness, state, first)
    assert json.loads(state.read_text()) == {"generation": 2, "primary": "A", "in_sync": ["A"]}

    def again(address: tuple[str, int]) -> None:  # a restarted witness answers from its file
        assert witness_get(address) == WitnessRecord(2, "A", ("A",))

    trio.run(_with_witness, state, again)


def test_what_is_not_a_request_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    def raw(address: tuple[str, int], payload: bytes) -> dict[str, object]:
        with socket.create_connection(address, timeout=2) as conn:
            conn.sendall(payload)
            return dict(json.loads(conn.makefile("rb").readline()))

    def hostile(address: tuple[str, int]) -> None:
        assert "not JSON" in str(raw(address, b"{nope\n")["error"])
        assert "at most 4096 bytes" in str(raw(address, b"x" * 5000)["error"])
        assert "op" in str(raw(address, b'{"op": "delete"}\n')["error"])
        bad = b'{"op": "cas", "generation": 0, "primary": "A", "in_sync": [""]}\n'
        assert "not a witness record" in str(raw(address, bad)["error"])
        assert witness_get(address) == WitnessRecord()

    trio.run(_with_witness, tmp_path / "w.json", hostile)


def test_a_witness_that_cannot_answer_is_an_error_naming_it(tmp_path: Path) -> None:
    port = free_port(HOST)
    with pytest.raises(WitnessError, match=rf"the witness at {HOST}:{port} does not answer"):
        witness_get((HOST, port))
    (tmp_path / "w.json").write_text("{torn")
    with pytest.raises(WitnessError, match="state file is not JSON"):
        trio.run(serve_witness, HOST, port, tmp_path / "w.json")

    async def port_in_use() -> None:
        with socket.socket() as taken:
            taken.bind((HOST, 0))
            taken.listen()
            await serve_witness(HOST, taken.getsockname()[1], tmp_path / "x.json")

    with pytest.raises(WitnessError, match="cannot listen on"):
        trio.run(port_in_use)


def _look(record: WitnessRecord, **kw: object) -> MirrorLook:
    values: dict[str, object] = {
        "own_primary": True,
        "streaming": True,
        "in_sync": True,
        "listed": True,
        "oldest_wait": 0.0,
        "reply_age": 0.1,
    }
    values.update(kw)
    return MirrorLook(record=record, **values)  # type: ignore[arg-type]


def test_the_primary_serves_alone_only_with_the_witness_and_counts_the_standby_back() -> None:
    both, alone = WitnessRecord(3, "A", ("A", "B")), WitnessRecord(4, "A", ("A",))

    def decide(look: MirrorLook, mark: int | None = None, since_degrade: float | None = None) -> str:
        return decide_mirror(look, me="A", peer="B", grace=0.5, mark=mark, since_degrade=since_degrade)

    assert decide(_look(WitnessRecord())) == "record"
    assert decide(_look(both)) == "none"
    assert decide(_look(both, oldest_wait=0.2)) == "none"  # a slow flush is not a lost standby
    assert decide(_look(both, oldest_wait=0.6)) == "degrade"
    assert decide(_look(both, streaming=False, in_sync=False)) == "degrade"
    assert decide(_look(both, reply_age=2.5)) == "degrade"  # "streaming", but silent: a partition
    # Out of sync by the witness yet still waited for (a degrade cut short, a standby gone
    # between list and restore): stop waiting, no CAS needed.
    assert decide(_look(alone, streaming=False, in_sync=False)) == "unlist"
    assert decide(_look(alone, listed=False, in_sync=False)) == "list"  # it streams again: wait for it
    # ... but only on a reply sent after this node stopped waiting (a partition's last one is not).
    assert decide(_look(alone, listed=False, reply_age=1.5), since_degrade=0.4) == "none"
    assert decide(_look(alone, in_sync=False)) == "none"  # catching up
    # Waited for again: counted in sync only once it has flushed past where the primary was
    # then (what was acknowledged while it was out), whatever the walsender calls it.
    assert decide(_look(alone, current_lsn=900)) == "mark"
    assert decide(_look(alone, flush_lsn=800), mark=900) == "none"
    assert decide(_look(alone, flush_lsn=900), mark=900) == "restore"
    assert decide(_look(alone, own_primary=False, streaming=False, oldest_wait=9)) == "none"  # a replica's node
    taken = WitnessRecord(5, "B", ("B",))  # the standby promoted: never serve alone, even waiting
    assert decide(_look(taken, streaming=False, in_sync=False, oldest_wait=9)) == "none"


def test_a_site_names_its_witness_at_its_line(tmp_path: Path) -> None:
    pair = (
        '[nodes.A]\naddress = "127.0.0.11"\ndb = "postgresql://postgres@127.0.0.1:5441/postgres"\n'
        '[nodes.B]\naddress = "127.0.0.12"\ndb = "postgresql://postgres@127.0.0.1:5442/postgres"\n'
    )
    site = parse_site(
        f'[site]\ninsecure = true\nmirror = "sync"\nwitness = "127.0.0.33:5440"\n{pair}', tmp_path / "site.toml"
    )
    assert site.cluster_settings("A").witness == ("127.0.0.33", 5440)
    with pytest.raises(SiteError, match=r":4: .*HOST:PORT"):
        parse_site(f'[site]\ninsecure = true\nmirror = "sync"\nwitness = "nowhere"\n{pair}', tmp_path / "site.toml")
    with pytest.raises(SiteError, match="a witness serves a synchronous mirror"):
        parse_site('[site]\ninsecure = true\nwitness = "127.0.0.33:5440"\n', tmp_path / "site.toml")
    with pytest.raises(SiteError, match="a witness serves a synchronous mirror"):  # async: no
        parse_site(f'[site]\ninsecure = true\nmirror = "async"\nwitness = "127.0.0.33:5440"\n{pair}', tmp_path / "s")
