"""The protocol doc names every message and every field the code has."""

from __future__ import annotations

import re
from pathlib import Path

import protocol as p
from protocol import _wire

DOC = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()


def _section(name: str, number: int) -> str:
    match = re.search(rf"^### {name} \({number}\)\n(.*?)(?=^### |^## )", DOC, re.S | re.M)
    assert match, f"docs/protocol.md has no section '### {name} ({number})'"
    return match.group(1)


def test_every_message_type_is_documented_with_its_fields() -> None:
    for kind in p.MessageType:
        section = _section(kind.name, int(kind))
        for sub in _wire.MESSAGES[int(kind)].subcons:
            if sub.name:
                assert f"`{sub.name}`" in section, f"{kind.name}.{sub.name} missing from docs/protocol.md"


def test_event_kinds_error_codes_and_record_fields_are_documented() -> None:
    for kind in p.EventKind:
        assert f"{int(kind)} {kind.name}" in DOC
    for code in p.ErrorCode:
        assert f"| {int(code)} | {code.name} |" in DOC
    for sub in _wire.EVENT_RECORD.subcons:
        assert f"`{sub.name}`" in DOC
    for sub in _wire.FRAME_HEADER.subcons:
        assert f"`{sub.name}`" in DOC
