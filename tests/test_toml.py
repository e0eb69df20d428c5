"""The typed TOML loader that site and scenario files share: exact lines, clear errors, writing back."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import StrictInt, StrictStr

from fieldsync.site import TomlDocument, TomlFileError, TomlTable, dump_toml, key_lines, toml_table

SHIPPED = sorted((Path(__file__).parent.parent / "scenarios").glob("*.toml"))

TORTURE = '''# a comment with [brackets] and key = 1
title = "a # not a comment"   # a comment
"quoted.key" = 1
'lit' = 2
a.b.c = 3

[table]   # header comment
x = """
y = 1
[not.a.table]
"""
z = \'\'\'
w = 2 \'\'\'
arr = [
  1, # one
  { k = 1, n = { m = 2 } },
  [3, 4],
]
esc = "a \\" quote = 1"

[[timeline]]
at = "1s"

# between

[[timeline]]
at = "2s"
attributes = { latency = 100 }
[timeline.sub]
q = 1
[[timeline.nested]]
r = 1
[[timeline.nested]]
r = 2
[table.deep]
s = 1
'''


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> set[tuple[Any, ...]]:
    out: set[tuple[Any, ...]] = set()
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        out |= {(*prefix, key)} | _paths(value, (*prefix, key))
    return out


@pytest.mark.parametrize("path", [None, *SHIPPED], ids=lambda p: p.stem if p else "torture")
def test_every_key_tomllib_reads_has_a_line_and_nothing_else_does(path: Path | None) -> None:
    text = TORTURE if path is None else path.read_text()
    assert set(key_lines(text)) == _paths(tomllib.loads(text))


def test_lines_are_exact_through_comments_strings_and_tables() -> None:
    lines = key_lines(TORTURE)
    text = TORTURE.splitlines()
    expect = {
        ("title",): 2,
        ("quoted.key",): 3,
        ("lit",): 4,
        ("a", "b", "c"): 5,
        ("table",): 7,
        ("table", "x"): 8,  # a multi-line string whose content looks like a key and a header
        ("table", "z"): 12,
        ("table", "arr", 1, "n", "m"): 16,  # inside an inline table inside an array
        ("table", "arr", 2, 1): 17,
        ("table", "esc"): 19,
        ("timeline", 0): 21,
        ("timeline", 1): 26,  # the second [[timeline]] entry, after a comment and blank lines
        ("timeline", 1, "at"): 27,
        ("timeline", 1, "attributes", "latency"): 28,
        ("timeline", 1, "sub", "q"): 30,
        ("timeline", 1, "nested", 1, "r"): 34,
        ("table", "deep", "s"): 36,
    }
    for path, line in expect.items():
        assert lines[path] == line, (path, text[lines[path] - 1], text[line - 1])
    assert "y" not in {p[-1] for p in lines}  # the string's content is not a key


@toml_table
class _Step(TomlTable):
    at: StrictStr
    count: StrictInt = 1
    options: dict[str, StrictInt] | None = None


@toml_table
class _Inner(TomlTable):
    depth: StrictInt = 0


@toml_table
class _Outer(TomlTable):
    inner: _Inner = _Inner()


@toml_table
class _Doc(TomlTable):
    name: StrictStr
    outer: _Outer = _Outer()
    timeline: tuple[_Step, ...] = ()


DOC = """# a file for the tests
name = "doc"

[outer.inner]
depth = 2

[[timeline]]
at = "a"

# the second entry
[[timeline]]
at = "b"
count = 3
options = { one = 1, two = 2 }
"""


def _error(text: str) -> TomlFileError:
    doc = TomlDocument.parse(text, "doc.toml")
    with pytest.raises(TomlFileError) as caught:
        doc.validate(_Doc)
    return caught.value


def test_a_good_file_validates_into_its_model() -> None:
    doc = TomlDocument.parse(DOC, "doc.toml").validate(_Doc)
    assert doc.outer.inner.depth == 2 and [s.count for s in doc.timeline] == [1, 3]
    assert doc.timeline[1].options == {"one": 1, "two": 2}


@pytest.mark.parametrize(
    ("old", "new", "line", "key", "reason"),
    [
        # the second [[timeline]] entry: its own lines, after a comment
        ("count = 3", "count = 3\ncuont = 4", 14, "timeline[1].cuont", "unknown key; did you mean 'count'?"),
        ("count = 3", 'count = "three"', 13, "timeline[1].count", "must be a valid integer, not 'three'"),
        ('at = "b"\n', "", 11, "timeline[1]", "missing key 'at'"),
        # inside an inline table
        ("two = 2", 'two = "2"', 14, "timeline[1].options.two", "must be a valid integer, not '2'"),
        # a nested table
        ("depth = 2", "depth = true", 5, "outer.inner.depth", "must be a valid integer, not True"),
        ("depth = 2", "dpth = 2", 5, "outer.inner.dpth", "unknown key; did you mean 'depth'?"),
        ("[outer.inner]", "[outer.iner]", 4, "outer.iner", "unknown key; did you mean 'inner'?"),
        # a key nothing resembles: the known ones are listed
        ('name = "doc"', 'name = "doc"\nzzz = 1', 3, "zzz", "unknown key (known: name, outer, timeline)"),
    ],
)
def test_an_error_names_the_exact_line_and_key(old: str, new: str, line: int, key: str, reason: str) -> None:
    error = _error(DOC.replace(old, new, 1))
    assert (error.line, error.key) == (line, key)
    assert str(error) == f"doc.toml:{line}: {key}: {reason}"


def test_a_missing_top_level_key_has_no_line_and_bad_toml_says_so() -> None:
    error = _error(DOC.replace('name = "doc"\n', ""))
    assert error.line is None and str(error) == "doc.toml: missing key 'name'"
    with pytest.raises(TomlFileError, match=r"doc\.toml: not valid TOML: .*line 2"):
        TomlDocument.parse("a = 1\nb = \n", "doc.toml")


def test_the_first_problem_in_the_file_is_the_one_reported() -> None:
    text = DOC.replace("depth = 2", "depth = 'x'").replace("count = 3", "count = 'y'")
    assert _error(text).line == 5


def test_dump_toml_writes_what_tomllib_reads_back() -> None:
    data: dict[str, Any] = {
        "name": 'quote " backslash \\ tab \t newline \n del \x7f é',
        "rate": 1e-05,
        "whole": 3.0,
        "flag": False,
        "ids": [1, 2, 3],
        "weird key": 1,
        "site": {"db": "site.db", "empty": None},
        "nodes": {"A": {"address": "127.0.0.11"}, "B": {"address": "127.0.0.12"}},
        "timeline": [{"at": "1s", "attributes": {"latency": 100.5}}, {"at": "2s"}],
        "nothing": {},
    }
    text = dump_toml(data)
    back = tomllib.loads(text)
    data["site"] = {"db": "site.db"}  # None is left out
    assert back == data
    assert "[nodes]" not in text and "[nodes.A]" in text  # no header for a table of tables
    assert "attributes = { latency = 100.5 }" in text  # inline inside an array's entry
