"""The code against docs/protocol.md, the normative spec: its tables decide the layouts.

Each message's table (field, type) must be exactly the construct declaration's field
order and wire type; the record table's offsets and sizes the record struct's; every
event kind and error code the code has must be in the page with the same number.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import protocol as p
from protocol import _wire

DOC = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()

# What a type in the spec's tables encodes a sample value to.
_SAMPLES: dict[str, tuple[object, bytes]] = {
    "u8": (1, b"\x01"),
    "u16": (1, b"\x00\x01"),
    "u32": (1, b"\x00\x00\x00\x01"),
    "u64": (1, b"\x00" * 7 + b"\x01"),
    "bytes32": (b"\x07" * 32, b"\x07" * 32),
    "str8": ("ab", b"\x02ab"),
    "str16": ("ab", b"\x00\x02ab"),
    "list32": ([], b"\x00\x00\x00\x00"),
}


def _section(name: str, number: int) -> str:
    match = re.search(rf"^### {name} \({number}\)\n(.*?)(?=^### |^## )", DOC, re.S | re.M)
    assert match, f"docs/protocol.md has no section '### {name} ({number})'"
    return match.group(1)


def _table(section: str) -> list[tuple[str, str]]:
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+?) \|", section, re.M)
    return [(name, kind.strip()) for name, kind in rows]


def test_the_page_is_the_version_the_code_speaks() -> None:
    assert DOC.startswith(f"# fieldsync wire protocol, version {p.PROTOCOL_VERSION}\n")
    assert f"| 2 | 1 | `version` | protocol version: `{p.PROTOCOL_VERSION}` |" in DOC


@pytest.mark.parametrize("kind", list(p.MessageType), ids=lambda k: k.name)
def test_each_message_layout_is_the_one_the_page_gives(kind: p.MessageType) -> None:
    documented = _table(_section(kind.name, int(kind)))
    declared = [sub for sub in _wire.MESSAGES[int(kind)].subcons if sub.name]
    assert [name for name, _ in documented] == [sub.name for sub in declared], f"{kind.name}: fields or order differ"
    for (name, doc_type), sub in zip(documented, declared, strict=True):
        base = doc_type.split(",")[0].split("(")[0].strip()
        if base.startswith("`count` x 32 bytes"):
            continue  # EVENT_BATCH records: the record table, below
        value, expected = _SAMPLES[base]
        assert sub.build(value) == expected, f"{kind.name}.{name} is not a {doc_type} on the wire"


def test_the_record_table_is_the_record_struct() -> None:
    rows = re.findall(r"^\| (\d+) \| (\d+) \| `(\w+)` \|", DOC.split("### 7.1")[1].split("###")[0], re.M)
    offset = 0
    subs = _wire.EVENT_RECORD.subcons
    assert [name for _, _, name in rows] == [s.name for s in subs]
    for (at, size, name), sub in zip(rows, subs, strict=True):
        assert (int(at), int(size)) == (offset, sub.sizeof()), name
        offset += sub.sizeof()
    assert offset == p.RECORD_SIZE


def test_the_frame_header_table_is_the_header_struct() -> None:
    rows = re.findall(r"^\| (\d+) \| (\d+) \| `(\w+)` \|", DOC.split("## 3. Frame")[1].split("## 4.")[0], re.M)
    subs = _wire.FRAME_HEADER.subcons
    assert [name for _, _, name in rows] == [s.name for s in subs]
    offset = 0
    for (at, size, name), sub in zip(rows, subs, strict=True):
        assert (int(at), int(size)) == (offset, sub.sizeof()), name
        offset += sub.sizeof()


def test_event_kinds_error_codes_and_operations_are_the_pages() -> None:
    for kind in p.EventKind:
        assert f"{int(kind)} {kind.name}" in DOC
    documented_codes = dict(re.findall(r"^\| (\d{3}) \| (\w+) \|", DOC, re.M))
    assert {int(k): v for k, v in documented_codes.items()} == {int(c): c.name for c in p.ErrorCode}
    for number, name in (
        (1, "PutCardholder"),
        (2, "DeleteCardholder"),
        (3, "PutSchedule"),
        (4, "DeleteSchedule"),
        (5, "PutDoor"),
        (6, "PutAccessLevel"),
        (7, "DeleteAccessLevel"),
    ):
        assert f"| {number} | {name} |" in DOC
        assert getattr(_wire, "OP_" + re.sub(r"(?<!^)([A-Z])", r"_\1", name).upper()) == number


def test_the_limits_in_the_page_are_the_codes() -> None:
    assert p.MAX_SEQ == 2**63 - 1 and "1..2^63-1" in DOC
    assert p.DEFAULT_MAX_PAYLOAD == 1_048_576 and "1,048,576 bytes (1 MiB)" in DOC
    assert p.EMPTY_DIGEST.hex() in DOC
