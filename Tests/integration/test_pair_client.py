"""The Swift pair client (TandemPairClient) against real tandemd processes:
writes and reads go on while the primary is killed with SIGKILL, and every
write the client was told succeeded is on the promoted backup.

The client is driven by ``tandem-pair-client-driver`` (built with the
package, ``Tests/integration/pair-client``), which prints every
acknowledged write as it happens."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path
from typing import Dict, List

import pytest

from conftest import REPO_ROOT, poll_until, tandemd_binary
from nodes import nodes  # noqa: F401  (nodes is a fixture)
from test_replication import start_pair

pytestmark = pytest.mark.tandemd_only

WRITES = 3000
KILL_AFTER = 300
#: Longest the driver may run in all; a driver that hangs is killed and the test fails.
DRIVER_TIMEOUT = 120


def driver_binary() -> Path:
    """Beside tandemd: `swift build` builds both."""
    configured = os.environ.get("TANDEM_PAIR_CLIENT_DRIVER")
    path = Path(configured) if configured else tandemd_binary().parent / "tandem-pair-client-driver"
    return path if path.is_absolute() else REPO_ROOT / path


def parse(lines: List[str]) -> Dict[str, str]:
    acked: Dict[str, str] = {}
    for line in lines:
        if line.startswith("ack "):
            _, key, value = line.split()
            acked[key] = value
    return acked


def test_pair_client_follows_a_primary_killed_under_load(nodes, tmp_path: Path):
    driver = driver_binary()
    assert driver.exists(), f"{driver} is not built (swift build builds it)"
    primary, backup = start_pair(nodes, tmp_path)
    proc = subprocess.Popen([str(driver), primary.wire_address, backup.wire_address, str(WRITES), "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(DRIVER_TIMEOUT, proc.kill)
    watchdog.start()
    lines: List[str] = []
    try:
        assert proc.stdout is not None
        # Kill the primary once the client is well under way.
        acks_seen = 0
        for line in proc.stdout:
            lines.append(line)
            acks_seen += line.startswith("ack ")
            if acks_seen >= KILL_AFTER:
                break
        assert acks_seen >= KILL_AFTER, "".join(lines[-20:])
        primary.kill()
        # Read on through the same buffered file (communicate() would read
        # the pipe beneath it and lose what that file already holds).
        lines += proc.stdout.read().splitlines(keepends=True)
        proc.wait()
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    tail = "".join(lines[-20:])
    assert proc.returncode == 0, f"driver exited with {proc.returncode}:\n{tail}"
    done = [line for line in lines if line.startswith("done ")]
    assert done, tail
    _, acks, errors, stale = done[-1].split()
    problems = [line for line in lines if line.startswith(("error ", "stale "))]
    # Sets and gets are retried across the failover, so none fails; the
    # driver's final adds (not retried when they may have run) come after it.
    assert int(errors) == 0 and int(stale) == 0, "".join(problems[:20])
    acked = parse(lines)
    odd = [line for line in lines if not line.startswith(("ack ", "done "))]
    assert int(acks) == len(acked) == WRITES, f"other lines: {odd[:10]}"

    # The backup leads now, and holds every write the client was told succeeded.
    poll_until(lambda: backup.stats()["role"] == "primary", 10, what="the backup to lead")
    stats = backup.stats()
    # A backup counts no replicated write as its own: sets it ran as the
    # primary (beyond the driver's two final adds) show the kill came while
    # the client was still writing.
    assert int(stats["cmd_set"]) > 2, f"the driver finished before the primary was killed: {stats['cmd_set']} sets on the backup"
    keys = sorted(acked)
    with backup.client() as c:
        for start in range(0, len(keys), 200):
            batch = keys[start:start + 200]
            got = c.get(*[key.encode() for key in batch])
            for key in batch:
                assert key.encode() in got, f"acknowledged {key} is missing after the failover"
                assert got[key.encode()].data == acked[key].encode()
