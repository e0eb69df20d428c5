"""docs/vectors/ against the codec: the committed files are what tests/vectors.py makes,
every valid frame decodes to its fields and back to its bytes, every invalid one is
refused with its code, and every digest is what section 8.1 computes."""

from __future__ import annotations

import json

import pytest

import protocol as p
from tests import vectors

FRAMES = json.loads((vectors.OUT / "frames.json").read_text())
DIGESTS = json.loads((vectors.OUT / "config_digest.json").read_text())


def test_the_committed_vectors_are_what_the_generator_makes() -> None:
    assert (vectors.OUT / "frames.json").read_text() == vectors.render(vectors.frames_document()), (
        "docs/vectors/frames.json is stale: run python tests/vectors.py"
    )
    assert (vectors.OUT / "config_digest.json").read_text() == vectors.render(vectors.digest_document())


@pytest.mark.parametrize("vector", [v for v in FRAMES if v["valid"]], ids=lambda v: v["name"])
def test_a_valid_vector_decodes_to_its_fields_and_back(vector: dict[str, object]) -> None:
    data = bytes.fromhex(str(vector["hex"]))
    decoder = p.FrameDecoder()
    decoder.feed(data)
    frame = decoder.next_frame()
    assert frame is not None and decoder.pending == 0
    message = p.decode_payload(frame.type, frame.payload)
    assert p.message_type(message).name == vector["type"]
    assert vectors.message_fields(message) == vector["fields"]
    assert p.encode_frame(frame.type, p.encode_payload(message)) == data


@pytest.mark.parametrize("vector", [v for v in FRAMES if not v["valid"]], ids=lambda v: v["name"])
def test_an_invalid_vector_is_refused_with_its_code(vector: dict[str, object]) -> None:
    conn: p.HostConnection | p.PanelConnection
    conn = p.HostConnection(now=0.0) if vector["receiver"] == "node" else p.PanelConnection(now=0.0)
    conn.receive_data(bytes.fromhex(str(vector["hex"])), 0.0)
    conn.receive_data(b"", 0.0)
    with pytest.raises(p.RemoteProtocolError) as info:
        for _ in range(3):
            conn.next_event()
    assert info.value.code == vector["code"], info.value
    assert info.value.code.name == vector["error"]


def test_every_error_code_of_the_framing_rules_has_a_vector() -> None:
    codes = {v["code"] for v in FRAMES if not v["valid"]}
    for code in (100, 101, 102, 103, 104, 105, 106, 200, 201, 202, 203, 300, 302, 306):
        assert code in codes, f"no vector for {p.ErrorCode(code).name}"


@pytest.mark.parametrize("vector", DIGESTS, ids=lambda v: v["name"])
def test_a_digest_vector_is_the_digest_of_its_canonical_operations(vector: dict[str, object]) -> None:
    from storage import ConfigState

    by_name = {"PutSchedule": vectors.SCHEDULE, "PutAccessLevel": vectors.LEVEL, "PutDoor": vectors.DOOR}
    ops = []
    for item in vector["ops"]:  # type: ignore[attr-defined]
        if item["op"] == "PutCardholder":
            ops.append(vectors.HOLDER if item["card"] == 1_000_001 else vectors.HIGH_CARD)
        else:
            ops.append(by_name[item["op"]])
    assert [vectors.op_fields(op) for op in ops] == vector["ops"]
    state = ConfigState().apply(ops)
    assert state.snapshot_ops() == tuple(ops), "a vector's operations are in canonical order"
    assert state.digest().hex() == vector["digest"]
