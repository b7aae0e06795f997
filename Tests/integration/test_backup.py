"""tandemctl backup against real nodes: the copy serves every item as --data-dir; refusals are exit 5 with one line."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import tandemd_binary
from nodes import nodes  # noqa: F401  (a fixture)
from test_tandemctl import tandemctl

pytestmark = pytest.mark.tandemd_only

ITEMS = 500


def session_key(i: int) -> bytes:
    return b"session:%04d" % i


def session_value(i: int) -> bytes:
    return b"attributes of session %d;" % i + bytes((i * 7 + j) % 256 for j in range(300 + i % 50))


def store_sessions(node) -> None:
    with node.client() as c:
        for i in range(ITEMS):
            assert c.store(b"set", session_key(i), session_value(i), flags=i) == b"STORED"


def expect_every_session(node) -> None:
    with node.client() as c:
        for start in range(0, ITEMS, 100):
            keys = [session_key(i) for i in range(start, min(start + 100, ITEMS))]
            values = c.get(*keys)
            for i in range(start, min(start + 100, ITEMS)):
                value = values.get(session_key(i))
                assert value is not None, f"{session_key(i)!r} missing from the copy"
                assert value.data == session_value(i) and value.flags == i, f"{session_key(i)!r} differs"


def test_a_backup_is_a_data_dir_that_serves_every_item(nodes, tmp_path: Path):
    source = nodes(tmp_path / "data")
    store_sessions(source)
    target = tmp_path / "copy"
    # No wait for the flush interval: the node commits what is pending before it copies.
    result = tandemctl("backup", str(target), "--port", str(source.wire_port), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    database = target / "tandem.sqlite3"
    assert summary == {"path": str(target), "items": ITEMS, "bytes": database.stat().st_size}
    # One self-contained file: nothing beside it.
    assert sorted(p.name for p in target.iterdir()) == ["tandem.sqlite3"]

    # The source keeps taking writes; they are not in the copy.
    with source.client() as c:
        assert c.store(b"set", b"after-backup", b"x") == b"STORED"
    source.wait_flushed()

    copy = nodes(target)
    assert copy.stats()["curr_items"] == str(ITEMS)
    expect_every_session(copy)
    with copy.client() as c:
        assert c.get(b"after-backup") == {}
    assert "recovery done" in copy.log() and f"items={ITEMS}" in copy.log()


def test_a_relative_dir_is_made_absolute_on_the_client_side(nodes, tmp_path: Path):
    source = nodes(tmp_path / "data")
    store_sessions(source)
    workdir = tmp_path / "operator"
    workdir.mkdir()
    binary = tandemd_binary().parent / "tandemctl"
    result = subprocess.run([str(binary), "backup", "nightly", "--port", str(source.wire_port)],
                            capture_output=True, timeout=60, cwd=workdir)
    assert result.returncode == 0, result.stderr
    # The node runs elsewhere (this process's directory): the copy still lands under the operator's.
    line = result.stdout.decode().strip()
    assert line.startswith(f"backup of 127.0.0.1:{source.wire_port} written to {workdir / 'nightly'}: {ITEMS} items, ")
    assert line.endswith(" MB")
    assert (workdir / "nightly" / "tandem.sqlite3").is_file()


def test_a_dir_that_is_not_empty_is_refused_with_exit_5_and_one_line(nodes, tmp_path: Path):
    source = nodes(tmp_path / "data")
    store_sessions(source)
    target = tmp_path / "occupied"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    result = tandemctl("backup", str(target), "--port", str(source.wire_port))
    assert result.returncode == 5
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and str(target) in lines[0] and "not empty" in lines[0], lines
    assert result.stdout == b""
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]
    assert (target / "notes.txt").read_text() == "keep me"
    # The node is unharmed: a backup into a new directory works.
    again = tandemctl("backup", str(tmp_path / "fresh"), "--port", str(source.wire_port), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["items"] == ITEMS


def test_a_node_without_persistence_is_exit_5_with_its_message(nodes, tmp_path: Path):
    node = nodes(tmp_path / "unused", "--no-persistence")
    result = tandemctl("backup", str(tmp_path / "copy"), "--port", str(node.wire_port))
    assert result.returncode == 5
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert "this node runs without persistence (--no-persistence): there is no database to copy" in lines[0]
    assert not (tmp_path / "copy").exists()
    assert not (tmp_path / "unused").exists()
