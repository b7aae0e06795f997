"""tandemctl sessions against a real pair holding the msm fixtures (loaded through
the memcached port): list, count, show (with msm decoding), delete, export and
import; --json parsed and checked; every error path with its message and exit code."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from conftest import MSM_FIXTURES
from nodes import Node, nodes  # noqa: F401  (a fixture)
from test_replication import start_pair, wait_in_sync
from test_tandemctl import tandemctl

pytestmark = pytest.mark.tandemd_only

FIXTURES = MSM_FIXTURES


def fixtures() -> List[Tuple[str, str, int, bytes]]:
    """(file, key, exptime, bytes) of every fixture, from MANIFEST.md's table."""
    manifest = FIXTURES / "MANIFEST.md"
    assert manifest.is_file(), f"the msm fixtures are missing: {manifest}"
    rows = []
    pattern = re.compile(r"^\| `([^`]+\.bin)` \| `([^`]+)` \| \w+ \| `(?:set|add) 0 (\d+) \d+` \|")
    seen = set()
    for line in manifest.read_text().splitlines():
        match = pattern.match(line)
        if match and match.group(2) not in seen:
            seen.add(match.group(2))
            rows.append((match.group(1), match.group(2), int(match.group(3)), (FIXTURES / match.group(1)).read_bytes()))
    assert len(rows) >= 15
    return rows


#: This clock's reading before loaded_pair stores anything: deadlines are
#: bounded by it (the server's clock at each write is later).
STORED_AFTER = 0.0


@pytest.fixture
def loaded_pair(nodes, tmp_path: Path) -> Tuple[Node, Node, List[Tuple[str, str, int, bytes]]]:
    primary, backup = start_pair(nodes, tmp_path)
    rows = fixtures()
    global STORED_AFTER
    STORED_AFTER = time.time()
    with primary.client() as c:
        for _, key, exptime, data in rows:
            # The lock and the ping marker are short-lived in msm; keep them for the test.
            assert c.store(b"set", key.encode(), data, exptime=max(exptime, 600) if exptime else 0) == b"STORED"
        for i in range(40):
            assert c.store(b"set", b"other:%02d" % i, b"x" * (i * 10), exptime=60 * (i + 1)) == b"STORED"
    wait_in_sync(primary, backup)
    return primary, backup, rows


def ctl(node: Node, *args: str, input_: bytes = None):
    return tandemctl(*args, "--port", str(node.wire_port))


def test_list_count_and_filters(loaded_pair):
    primary, backup, rows = loaded_pair
    total = len(rows) + 40
    listed = ctl(primary, "sessions", "list", "--limit", "1000", "--json")
    listed_before = time.time()
    assert listed.returncode == 0, listed.stderr
    payload = json.loads(listed.stdout)
    assert len(payload["sessions"]) == total and payload["cursor"] is None
    by_key = {s["key"]: s for s in payload["sessions"]}
    rich = by_key["FF19EF1C768E388FBA4D7B9FCF64E56A-n2"]
    # Stored with 3600 s at or after STORED_AFTER, listed before listed_before
    # (whole seconds, hence -1).
    assert rich["size"] == 865 and rich["writer"] == "P"
    assert 3600 - int(listed_before - STORED_AFTER) - 1 <= rich["ttl"] <= 3600, (rich["ttl"], listed_before - STORED_AFTER)
    # The backup lists the same sessions, written by its peer.
    on_backup = json.loads(ctl(backup, "sessions", "list", "--limit", "1000", "--json").stdout)
    assert {s["key"] for s in on_backup["sessions"]} == set(by_key)
    assert on_backup["sessions"][0]["writer"] == "P"

    assert ctl(primary, "sessions", "count").stdout.decode().strip() == str(total)
    count = json.loads(ctl(primary, "sessions", "count", "--prefix", "validity:", "--json").stdout)
    assert count == {"count": sum(1 for _, k, _, _ in rows if k.startswith("validity:"))}
    assert ctl(primary, "sessions", "count", "--match", "*-n1").stdout.decode().strip() == \
        str(sum(1 for _, k, _, _ in rows if k.endswith("-n1")))
    assert ctl(primary, "sessions", "count", "--min-size", "800").stdout.decode().strip() == \
        str(sum(1 for _, _, _, d in rows if len(d) >= 800))
    # other:00 … other:04 expire within 5 minutes (60 s apart).
    assert ctl(primary, "sessions", "count", "--prefix", "other:", "--expiring-within", "5m").stdout.decode().strip() == "5"

    # Sorted, limited.
    by_size = json.loads(ctl(primary, "sessions", "list", "--sort", "size", "--limit", "3", "--json").stdout)
    sizes = [s["size"] for s in by_size["sessions"]]
    assert sizes == sorted((len(d) for _, _, _, d in rows), reverse=True)[:3]
    by_ttl = json.loads(ctl(primary, "sessions", "list", "--prefix", "other:", "--sort", "ttl", "--limit", "2", "--json").stdout)
    assert [s["key"] for s in by_ttl["sessions"]] == ["other:00", "other:01"]

    # Paging with a cursor walks every session exactly once.
    seen: List[str] = []
    cursor = None
    for _ in range(100):
        args = ["sessions", "list", "--limit", "7", "--json"] + (["--cursor", cursor] if cursor else [])
        page = json.loads(ctl(primary, *args).stdout)
        seen += [s["key"] for s in page["sessions"]]
        cursor = page["cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(by_key) and len(seen) == len(set(seen))

    table = ctl(primary, "sessions", "list", "--prefix", "validity:", "--sort", "key").stdout.decode().splitlines()
    assert table[0].split() == ["KEY", "SIZE", "TTL", "LAST", "ACCESS", "WRITER"]
    assert table[1].startswith("validity:")


def test_show_decodes_what_msm_stored(loaded_pair):
    primary, backup, _ = loaded_pair
    shown = ctl(backup, "sessions", "show", "FF19EF1C768E388FBA4D7B9FCF64E56A-n2", "--json")
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert record["size"] == 865 and record["writer"] == "P" and "value_base64" in record
    text = json.dumps(record["msm"])
    for expected in ("FF19EF1C768E388FBA4D7B9FCF64E56A-n2", "hello msm", "java.util.Date", "e2e.User", "alice", "1800"):
        assert expected in text, expected

    human = ctl(primary, "sessions", "show", "FF19EF1C768E388FBA4D7B9FCF64E56A-n2").stdout.decode()
    assert "last writer" in human and "value (865 bytes):" in human and "00000000  " in human
    assert "msm:" in human and "hello msm" in human and "Grüße" in human

    # A session id alone finds msm's <id>-<node> key.
    by_id = ctl(primary, "sessions", "show", "744B82AFE666E0B0B555328A49C2F328", "--json")
    assert by_id.returncode == 0 and json.loads(by_id.stdout)["key"] == "744B82AFE666E0B0B555328A49C2F328-n2"

    validity = ctl(primary, "sessions", "show", "validity:FF19EF1C768E388FBA4D7B9FCF64E56A-n2").stdout.decode()
    assert "1800" in validity and "msm:" in validity

    # A value msm did not write: text, and a clear "not an msm session".
    plain = ctl(primary, "sessions", "show", "other:03").stdout.decode()
    assert "value (text):" in plain and "xxxxxxxxxx" in plain and "not" in plain.split("msm:")[1].lower()


def test_delete_export_import(loaded_pair, tmp_path: Path):
    primary, backup, rows = loaded_pair
    export = tmp_path / "sessions.jsonl"
    exported = ctl(primary, "sessions", "export", str(export))
    assert exported.returncode == 0, exported.stderr
    lines = [json.loads(line) for line in export.read_text().splitlines()]
    assert len(lines) == len(rows) + 40
    sample = next(l for l in lines if l["key"] == "FF19EF1C768E388FBA4D7B9FCF64E56A-n2")
    import base64
    assert base64.b64decode(sample["value"]) == (FIXTURES / "session-rich-attributes.bin").read_bytes()
    assert sample["deadline"] > 0

    # Deleting by prefix needs confirmation; without a terminal, --yes.
    refused = ctl(primary, "sessions", "delete", "--prefix", "other:")
    assert refused.returncode == 1 and "--yes" in refused.stderr.decode()
    deleted = ctl(primary, "sessions", "delete", "--prefix", "other:", "--yes", "--json")
    assert json.loads(deleted.stdout) == {"deleted": 40, "missing": 0}
    gone = ctl(primary, "sessions", "delete", "--yes", "FF19EF1C768E388FBA4D7B9FCF64E56A-n2", "no-such-key")
    assert gone.returncode == 0 and gone.stdout.decode().strip() == "deleted 1 (1 not found)"
    assert ctl(backup, "sessions", "count").stdout.decode().strip() == str(len(rows) - 1)
    # Deletes run on the primary: a backup says where to go.
    on_backup = ctl(backup, "sessions", "delete", "--yes", "x")
    assert on_backup.returncode == 5 and "primary" in on_backup.stderr.decode()

    imported = ctl(primary, "sessions", "import", str(export), "--json")
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout) == {"stored": 41, "unchanged": len(rows) - 1, "expired": 0, "rejected": []}
    again = ctl(primary, "sessions", "import", str(export))
    assert again.stdout.decode().strip() == f"stored 0, unchanged {len(rows) + 40}, expired 0, rejected 0"
    with backup.client() as c:
        assert c.get(b"FF19EF1C768E388FBA4D7B9FCF64E56A-n2")[b"FF19EF1C768E388FBA4D7B9FCF64E56A-n2"].data == sample_bytes()

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"key": "a", "value": "YQ==", "flags": 0, "deadline": 0}\nnot json\n')
    failed = ctl(primary, "sessions", "import", str(bad))
    assert failed.returncode == 1 and "line 2" in failed.stderr.decode()


def sample_bytes() -> bytes:
    return (FIXTURES / "session-rich-attributes.bin").read_bytes()


def test_error_paths(loaded_pair):
    primary, _, _ = loaded_pair
    missing = ctl(primary, "sessions", "show", "NO-SUCH-SESSION")
    assert missing.returncode == 7
    assert len(missing.stderr.decode().strip().splitlines()) == 1 and "no session NO-SUCH-SESSION" in missing.stderr.decode()
    unreachable = tandemctl("sessions", "list", "--port", "1")
    assert unreachable.returncode == 3 and "cannot reach" in unreachable.stderr.decode()
    bad_glob = ctl(primary, "sessions", "count", "--match", "[abc")
    assert bad_glob.returncode == 5 and "'['" in bad_glob.stderr.decode()
    bad_size = ctl(primary, "sessions", "count", "--min-size", "lots")
    assert bad_size.returncode != 0 and "--min-size" in bad_size.stderr.decode()
    for command in (["sessions", "list"], ["sessions", "show"], ["sessions", "delete"], ["sessions", "export"], ["sessions", "import"]):
        helped = tandemctl(*command, "--help")
        assert helped.returncode == 0 and "Example" in helped.stdout.decode(), command


def test_a_scan_of_a_million_sessions_does_not_stall_gets(nodes, tmp_path: Path):
    """Scans run in steps of a few thousand items on the node: gets issued while
    `sessions count` walks 1,000,000 items keep their latency."""
    import socket
    import statistics
    import subprocess
    import time

    from test_tandemctl import tandemctl as _  # noqa: F401  (the binary must exist)
    from conftest import tandemd_binary

    node = nodes(tmp_path / "big", "--no-persistence", "-m", "1024")
    total = 1_000_000
    with socket.create_connection(node.address, timeout=60) as s:
        batch = 20_000
        for start in range(0, total, batch):
            s.sendall(b"".join(b"set s:%07d 0 0 8 noreply\r\nsession!\r\n" % i for i in range(start, start + batch)))
        s.sendall(b"mn\r\n")
        buffered = b""
        while not buffered.endswith(b"MN\r\n"):
            buffered += s.recv(65536)
        assert buffered == b"MN\r\n"
    assert node.stats()["curr_items"] == str(total)

    def get_latencies(client, until) -> list:
        latencies = []
        i = 0
        while not until():
            key = b"s:%07d" % (i * 7919 % total)
            started = time.perf_counter()
            got = client.get(key)
            latencies.append(time.perf_counter() - started)
            assert got[key].data == b"session!"
            i += 1
            if len(latencies) >= 20_000:
                break
        return latencies

    with node.client() as c:
        baseline_deadline = time.monotonic() + 1.0
        baseline = get_latencies(c, lambda: time.monotonic() > baseline_deadline)
        ctl = subprocess.Popen([str(tandemd_binary().parent / "tandemctl"), "sessions", "count", "--port", str(node.wire_port)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        during = get_latencies(c, lambda: ctl.poll() is not None)
        out, err = ctl.communicate(timeout=300)
    assert ctl.returncode == 0, err
    assert out.decode().strip() == str(total)
    assert len(during) >= 50, "the scan finished before enough gets ran to measure anything"
    during.sort()
    p99 = during[int(len(during) * 0.99)]
    print(f"gets during a scan of {total} items: {len(during)} gets, median {statistics.median(during) * 1e3:.2f} ms, "
          f"p99 {p99 * 1e3:.2f} ms, max {during[-1] * 1e3:.2f} ms; before: median {statistics.median(baseline) * 1e3:.2f} ms")
    # A scan done in one piece would hold a get up for the whole walk (seconds).
    assert p99 < 0.05 and during[-1] < 0.25
