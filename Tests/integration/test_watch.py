"""tandemctl watch against a real node: the live stream of changes, filtered by prefix."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import poll_until, tandemd_binary
from nodes import nodes  # noqa: F401  (a fixture)

pytestmark = pytest.mark.tandemd_only


def start_watch(*args: str) -> subprocess.Popen:
    binary = tandemd_binary().parent / "tandemctl"
    assert binary.is_file(), f"{binary} not found: swift build builds it"
    return subprocess.Popen([str(binary), "watch", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_subscribed(node, count: int = 1) -> None:
    """The node counts its watchers: a change made after this is streamed."""
    poll_until(lambda: node.stats().get("watchers") == str(count), 10.0, what=f"{count} watcher(s) on the node")


def test_watch_streams_the_prefix_and_flush_all_as_json_and_exits_after_count(nodes, tmp_path: Path):
    node = nodes(tmp_path / "solo")
    watch = start_watch("--prefix", "sess:", "--count", "3", "--json", "--port", str(node.wire_port))
    try:
        wait_subscribed(node)
        with node.client() as c:
            assert c.store(b"set", b"sess:1", b"hello", exptime=1800) == b"STORED"
            assert c.store(b"set", b"other:1", b"x") == b"STORED"
            assert c.call(b"delete sess:1") == b"DELETED"
            assert c.call(b"flush_all") == b"OK"
        out, err = watch.communicate(timeout=20)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert watch.returncode == 0, err
    events = [json.loads(line) for line in out.decode().splitlines()]
    assert [(e["event"], e["key"]) for e in events] == [("set", "sess:1"), ("delete", "sess:1"), ("flush_all", "")]
    assert events[0]["size"] == 5 and events[0]["deadline"] is not None
    assert events[0]["time"].endswith("Z") and "key_base64" not in events[0]
    assert events[1]["deadline"] is None
    # The watcher's connection is gone with it.
    wait_subscribed(node, 0)


def test_watch_prints_a_line_per_event_and_exits_0_on_sigint(nodes, tmp_path: Path):
    node = nodes(tmp_path / "solo")
    watch = start_watch("--port", str(node.wire_port))
    try:
        wait_subscribed(node)
        with node.client() as c:
            assert c.store(b"set", b"k", b"abc") == b"STORED"
        # Each line is written as it happens, not when the buffer fills.
        line = watch.stdout.readline().decode()
        fields = line.split()
        assert fields[1:] == ["set", "k", "3", "B", "ttl", "never"], line
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=10)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert watch.returncode == 0, err
    assert out == b""


def test_watch_of_an_unreachable_node_is_exit_code_3():
    watch = start_watch("--port", "1", "--count", "1")
    _, err = watch.communicate(timeout=20)
    assert watch.returncode == 3 and b"cannot reach a Tandem node" in err
