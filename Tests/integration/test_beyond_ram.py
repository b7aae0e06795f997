"""Data four times larger than -m: nothing is lost to RAM, across SIGTERM,
kill -9 and a failover of the pair (docs/storage.md).

Real tandemd processes with persistence, real signals, a real SQLite file.
The values carry their key, a generation and a checksum, so a torn, stale or
mixed-up value is told apart from the right one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import pytest

from conftest import RawClient, send_then_shut
from nodes import Node, nodes  # noqa: F401  (nodes is a fixture)
from test_failover import Pair, pair_factory, wait_role  # noqa: F401  (pair_factory is a fixture)
from test_persistence import value_for, value_is_intact

pytestmark = pytest.mark.tandemd_only

MEMORY_MB = 2
VALUE_SIZE = 10_000
# 800 × 10 KB = 8 MB of values: four times -m 2.
ITEMS = 800


def write_all(client: RawClient, generation: int, keys=None) -> Dict[bytes, bytes]:
    written = {}
    for i in (range(ITEMS) if keys is None else keys):
        key = b"s%d" % i
        value = value_for(key, generation, VALUE_SIZE)
        assert client.store(b"set", key, value) == b"STORED", key
        written[key] = value
    return written


def read_all(client: RawClient, keys) -> Dict[bytes, bytes]:
    found: Dict[bytes, bytes] = {}
    keys = list(keys)
    for start in range(0, len(keys), 100):
        found.update({k: v.data for k, v in client.get(*keys[start:start + 100]).items()})
    return found


def stat(node: Node, name: str) -> int:
    return int(node.stats()[name])


def test_data_four_times_ram_survives_sigterm_and_kill9(nodes, tmp_path: Path):
    data = tmp_path / "data"
    node = nodes(data, "-m", str(MEMORY_MB))
    with node.client() as c:
        expected = write_all(c, 1)
        assert read_all(c, expected) == expected, "values beyond RAM come back from the log"
    assert stat(node, "cold_items") > ITEMS // 2
    assert stat(node, "evictions") == 0
    assert stat(node, "bytes") <= MEMORY_MB << 20
    assert stat(node, "cold_read_errors") == 0
    assert node.terminate() == 0, node.log()

    # SIGTERM: every value is back, under the same small memory.
    node = nodes(data, "-m", str(MEMORY_MB))
    assert stat(node, "curr_items") == ITEMS
    with node.client() as c:
        assert read_all(c, expected) == expected
        # Half of them rewritten, then kill -9 once the writer has committed.
        expected.update(write_all(c, 2, range(0, ITEMS, 2)))
    node.wait_flushed()
    node.kill()

    node = nodes(data, "-m", str(MEMORY_MB))
    with node.client() as c:
        found = read_all(c, expected)
    assert all(value_is_intact(v) for v in found.values())
    assert found == expected, "kill -9 after a commit lost or mixed up values beyond RAM"
    assert stat(node, "evictions") == 0
    assert node.terminate() == 0, node.log()


def test_a_pair_with_data_beyond_ram_fails_over_and_rejoins(pair_factory):
    pair: Pair = pair_factory(("-m", str(MEMORY_MB)), ("-m", str(MEMORY_MB)))
    with pair.node["A"].client() as c:
        expected = write_all(c, 1)
    pair.settle()
    assert stat(pair.node["B"], "cold_items") > 0, "the backup's values leave its RAM too"

    pair.node["A"].kill()
    wait_role(pair, "B", "primary")
    with pair.node["B"].client() as c:
        assert read_all(c, expected) == expected, "the promoted backup lost values beyond RAM"
        expected.update(write_all(c, 2, range(0, ITEMS, 3)))

    pair.restart("A")
    wait_role(pair, "A", "backup")
    pair.settle()
    for name in ("A", "B"):
        with pair.node[name].client() as c:
            assert read_all(c, expected) == expected, f"{name} after the rejoin"
        assert stat(pair.node[name], "evictions") == 0


def test_the_disk_budget_evicts_the_least_recently_used_or_refuses_with_M(nodes, tmp_path: Path):
    # 4 MB of values against a 1 MB budget for the log's live data.
    node = nodes(tmp_path / "evicting", "-m", str(MEMORY_MB), "--disk-limit", "1m")
    with node.client() as c:
        written = write_all(c, 1, range(400))
    node.wait_flushed()
    stats = node.stats()
    assert stats["disk_limit"] == str(1 << 20)
    assert int(stats["evictions"]) > 0, stats
    # The removals commit, and the live data comes back under the budget.
    from conftest import poll_until
    poll_until(lambda: int(node.stats()["persistence_live_bytes"]) <= (1 << 20) + 2 * VALUE_SIZE, 10,
               what="the live data to come back under the budget")
    with node.client() as c:
        kept = read_all(c, written)
    assert 0 < len(kept) < 400
    assert all(written[k] == v for k, v in kept.items())
    # The most recently written survive.
    assert b"s399" in kept and b"s0" not in kept
    assert node.terminate() == 0, node.log()

    refusing = nodes(tmp_path / "refusing", "-m", str(MEMORY_MB), "--disk-limit", "1m", "-M")
    refused = 0
    with refusing.client() as c:
        for i in range(400):
            key = b"s%d" % i
            reply = c.store(b"set", key, value_for(key, 1, VALUE_SIZE))
            assert reply in (b"STORED", b"SERVER_ERROR out of memory storing object"), reply
            if reply != b"STORED":
                refused += 1
            if i % 50 == 49:
                refusing.wait_flushed()
    assert refused > 0
    assert int(refusing.stats()["evictions"]) == 0
    assert refusing.stats()["disk_full"] == "1"
    assert refusing.terminate() == 0, refusing.log()


def test_a_client_that_shuts_its_side_gets_the_values_read_from_disk(nodes, tmp_path: Path):
    """A get whose values are on disk is answered after a reader thread read
    them: a client that sent it and shut its side still gets every value."""
    node = nodes(tmp_path / "data", "-m", str(MEMORY_MB))
    with node.client() as c:
        expected = write_all(c, 1)
    assert stat(node, "cold_items") > ITEMS // 2
    keys = [b"s%d" % i for i in range(0, ITEMS, 40)]
    got = send_then_shut(node.address, b"get " + b" ".join(keys) + b"\r\n")
    assert got.endswith(b"END\r\n"), got[-200:]
    for key in keys:
        assert b"VALUE %s 0 %d\r\n%s\r\n" % (key, VALUE_SIZE, expected[key]) in got, key
    assert stat(node, "cold_reads") > 0
