"""Launching tandemd processes with persistence and pairs, for the process-level tests."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from conftest import LISTENING_RE, STARTUP_TIMEOUT, STOP_TIMEOUT, RawClient, poll_until, tandemd_binary

WIRE_RE = re.compile(rb"wire protocol ready on (\S+):(\d+)")

FLUSH_INTERVAL_MS = 50


class Node:
    """A tandemd process with persistence on, over a given data directory."""

    def __init__(self, data_dir: Path, log_path: Path, *extra: str, user: Optional[int] = None):
        self.data_dir = data_dir
        self.log_path = log_path
        self.args = [str(tandemd_binary()), "-p", "0", "--wire-port", "0", "--data-dir", str(data_dir),
                     "--flush-interval", str(FLUSH_INTERVAL_MS), *extra]
        if user is not None:
            # Permissions only bind an unprivileged process.
            self.args = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *self.args]
        self.log_file = open(log_path, "ab")
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=self.log_file,
                                     stderr=self.log_file)
        self.port, self.wire_port = self._wait_for_ports()

    def _wait_for_ports(self) -> Tuple[int, Optional[int]]:
        start = self.log_path.stat().st_size if self.log_path.exists() else 0
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as log:
                log.seek(start)
                text = log.read()
            match = LISTENING_RE.search(text)
            if match:
                wire = WIRE_RE.search(text)
                return int(match.group(2)), int(wire.group(2)) if wire else None
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.proc.kill()
        self.proc.wait(timeout=STOP_TIMEOUT)
        raise AssertionError(f"tandemd did not start: {' '.join(self.args)}\n{self.log()}")

    @property
    def address(self) -> Tuple[str, int]:
        return ("127.0.0.1", self.port)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def client(self) -> RawClient:
        return RawClient(self.address, timeout=10.0)

    def stats(self) -> Dict[str, str]:
        with self.client() as c:
            return {k.decode(): v.decode() for k, v in c.stats()}

    @property
    def wire_address(self) -> str:
        return f"127.0.0.1:{self.wire_port}"

    def wait_flushed(self, timeout: float = 10.0) -> None:
        poll_until(lambda: self.stats()["persistence_pending"] == "0", timeout,
                   what="persistence_pending to reach 0")

    def terminate(self, signum: int = signal.SIGTERM) -> int:
        self.proc.send_signal(signum)
        try:
            code = self.proc.wait(timeout=STOP_TIMEOUT + 10)
        finally:
            self.log_file.close()
        return code

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=STOP_TIMEOUT)
        self.log_file.close()


@pytest.fixture
def nodes(tmp_path: Path):
    """Start nodes with ``nodes(data_dir, *flags)``; any still running are killed at the end."""
    started: List[Node] = []

    def start(data_dir: Path, *extra: str, user: Optional[int] = None) -> Node:
        node = Node(data_dir, tmp_path / f"node{len(started)}.log", *extra, user=user)
        started.append(node)
        return node

    yield start
    for node in started:
        if node.proc.poll() is None:
            node.kill()


