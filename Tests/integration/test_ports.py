"""Ports as a new user meets them, with real tandemd and tandemctl processes:
two nodes on one machine with nothing but their memcached ports, bind
failures that name the address, the flag and the remedy, and tandemctl's
connection options before the subcommand as well as after it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import pytest

from conftest import LISTENING_RE, STARTUP_TIMEOUT, STOP_TIMEOUT, tandemd_binary
from nodes import WIRE_RE
from test_tandemctl import tandemctl

pytestmark = pytest.mark.tandemd_only

#: How far the default wire port sits above the memcached port.
WIRE_OFFSET = 100


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_run(count: int) -> int:
    """A port P such that P..P+count-1 and the ports 100 above them are all free
    (ports the kernel hands out for port 0 are outside the range searched)."""
    for base in range(20000, 30000, 7):
        ports = [base + i for i in range(count)] + [base + WIRE_OFFSET + i for i in range(count)]
        if all(port_is_free(port) for port in ports):
            return base
    raise AssertionError("no run of free ports between 20000 and 30000")


@contextmanager
def listening(port: int) -> Iterator[socket.socket]:
    """Something else listening on 127.0.0.1:port for the duration."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", port))
    holder.listen(1)
    try:
        yield holder
    finally:
        holder.close()


class Daemon:
    """tandemd started with exactly the given flags, in its own working
    directory (so its default data directory is its own)."""

    def __init__(self, workdir: Path, *flags: str):
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "tandemd.log"
        self.log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen([str(tandemd_binary()), *flags], cwd=workdir, stdin=subprocess.DEVNULL,
                                     stdout=self.log_file, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_serving(self) -> Tuple[int, int]:
        """(memcached port, wire port) once the memcached port listens."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()
            listening_line, wire_line = LISTENING_RE.search(text), WIRE_RE.search(text)
            if listening_line and wire_line:
                return int(listening_line.group(2)), int(wire_line.group(2))
            assert self.proc.poll() is None, f"tandemd exited with {self.proc.returncode}:\n{self.log()}"
            time.sleep(0.02)
        raise AssertionError(f"tandemd did not start:\n{self.log()}")

    def wait_exit(self) -> int:
        try:
            return self.proc.wait(timeout=STARTUP_TIMEOUT)
        finally:
            self.log_file.close()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT + 10)
        finally:
            self.log_file.close()


@pytest.fixture
def daemons(tmp_path: Path):
    started: List[Daemon] = []

    def start(name: str, *flags: str) -> Daemon:
        daemon = Daemon(tmp_path / name, *flags)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(timeout=STOP_TIMEOUT)


def fails_to_start(daemon: Daemon) -> str:
    """The one line tandemd logged about why it could not start."""
    code = daemon.wait_exit()
    log = daemon.log()
    assert code == 2, f"exit code {code}:\n{log}"
    lines = [line for line in log.splitlines() if "cannot start" in line]
    assert len(lines) == 1, log
    assert "bind(descriptor" not in log, log
    return lines[0]


# ---------------------------------------------------------------- default wire port


def test_two_nodes_on_one_machine_need_nothing_but_their_memcached_ports(daemons):
    base = free_run(2)
    first = daemons("a", "-p", str(base))
    second = daemons("b", "-p", str(base + 1))
    assert first.wait_serving() == (base, base + WIRE_OFFSET)
    assert second.wait_serving() == (base + 1, base + 1 + WIRE_OFFSET)
    for daemon, wire in ((first, base + WIRE_OFFSET), (second, base + 1 + WIRE_OFFSET)):
        ping = tandemctl("ping", "--port", str(wire), "--json")
        assert ping.returncode == 0, ping.stderr
        assert json.loads(ping.stdout)["role"] == "primary"
    # Each node persisted into its own default data directory.
    assert first.stop() == 0 and second.stop() == 0
    assert (first.log_path.parent / "tandem-data").is_dir() and (second.log_path.parent / "tandem-data").is_dir()


def test_port_zero_picks_a_free_wire_port_too_and_logs_it(daemons):
    node = daemons("a", "-p", "0", "--no-persistence")
    port, wire = node.wait_serving()
    assert port > 0 and wire > 0 and wire != port
    assert f"wire protocol ready on 127.0.0.1:{wire}" in node.log()
    ping = tandemctl("ping", "--port", str(wire))
    assert ping.returncode == 0, ping.stderr
    assert node.stop() == 0


def test_an_explicit_wire_port_still_wins(daemons):
    base = free_run(1)
    node = daemons("a", "-p", str(base), "--wire-port", str(base + 1), "--no-persistence")
    assert node.wait_serving() == (base, base + 1)
    assert node.stop() == 0


def test_a_memcached_port_too_high_for_the_default_wire_port_says_to_give_one(daemons):
    node = daemons("a", "-p", "65500", "--no-persistence")
    code = node.wait_exit()
    assert code == 64, node.log()
    assert "--port 65500 leaves no room for the default wire port" in node.log()
    assert "give --wire-port" in node.log()


# ---------------------------------------------------------------- bind failures


def test_a_wire_port_in_use_names_the_address_the_flag_and_the_remedy(daemons):
    base = free_run(1)
    with listening(base + WIRE_OFFSET):
        line = fails_to_start(daemons("a", "-p", str(base), "--no-persistence"))
    assert (f"wire port 127.0.0.1:{base + WIRE_OFFSET} (--wire-port) is in use: another tandemd? "
            "pick another with --wire-port") in line, line


def test_a_second_tandemd_on_the_same_ports_is_told_which_port_is_taken(daemons):
    base = free_run(1)
    first = daemons("a", "-p", str(base), "--no-persistence")
    first.wait_serving()
    line = fails_to_start(daemons("b", "-p", str(base), "--no-persistence"))
    assert f"wire port 127.0.0.1:{base + WIRE_OFFSET} (--wire-port) is in use" in line, line
    # Its own wire port given, the memcached port is the one in use.
    line = fails_to_start(daemons("c", "-p", str(base), "--wire-port", "0", "--no-persistence"))
    assert (f"memcached port 127.0.0.1:{base} (--port) is in use: another tandemd? "
            "pick another with --port") in line, line
    assert first.stop() == 0


def test_a_metrics_port_in_use_names_its_flag(daemons):
    base = free_run(1)
    with listening(base):
        line = fails_to_start(daemons("a", "-p", "0", "--metrics-port", str(base), "--no-persistence"))
    assert f"metrics port 127.0.0.1:{base} (--metrics-port) is in use" in line, line


def test_an_address_this_machine_does_not_have_says_so(daemons):
    # 192.0.2.0/24 is TEST-NET-1 (RFC 5737): never assigned to a real interface.
    line = fails_to_start(daemons("a", "-p", "0", "-l", "192.0.2.1", "--insecure", "--no-persistence"))
    assert "192.0.2.1" in line and "no interface of this machine has the address" in line, line
    assert "check --listen" in line, line


# ---------------------------------------------------------------- tandemctl option order


def test_tandemctl_takes_connection_options_before_the_subcommand(daemons):
    node = daemons("a", "-p", "0", "--no-persistence")
    port, wire = node.wait_serving()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"set k1 0 0 1\r\na\r\nset k2 0 0 1\r\nb\r\n")
        data = b""
        while data.count(b"STORED\r\n") < 2:
            chunk = s.recv(100)
            assert chunk, data
            data += chunk

    after = tandemctl("status", "--host", "127.0.0.1", "--port", str(wire), "--json")
    before = tandemctl("--host", "127.0.0.1", "--port", str(wire), "status", "--json")
    assert after.returncode == before.returncode == 6, (after.stderr, before.stderr)  # a primary alone: degraded
    assert json.loads(before.stdout)["role"] == json.loads(after.stdout)["role"] == "primary"

    # Before the group, between group and subcommand, with =, mixed with the subcommand's own options.
    for args in (("--port", str(wire), "sessions", "count"),
                 ("sessions", "--port", str(wire), "count"),
                 ("--port=" + str(wire), "--json", "sessions", "list", "--prefix", "k"),
                 ("--json", "sessions", "list", "--port", str(wire), "--prefix", "k")):
        result = tandemctl(*args)
        assert result.returncode == 0, (args, result.stderr)
        out = result.stdout.decode()
        if "list" in args:
            assert sorted(s["key"] for s in json.loads(out)["sessions"]) == ["k1", "k2"], (args, out)
        else:
            assert out.split()[-1] == "2", (args, out)

    # The environment still supplies what no flag gives.
    from_env = tandemctl("--json", "stats", env={"TANDEM_PORT": str(wire)})
    assert from_env.returncode == 0 and json.loads(from_env.stdout)["curr_items"] == "2", from_env.stderr
    # A flag before the subcommand overrides the environment, as one after it does.
    overridden = tandemctl("--port", str(wire), "ping", env={"TANDEM_PORT": "1"})
    assert overridden.returncode == 0, overridden.stderr
    assert node.stop() == 0


def test_tandemctl_option_mistakes_before_the_subcommand_get_usage_errors():
    unknown = tandemctl("--hots", "127.0.0.1", "status")
    assert unknown.returncode == 64 and b"--hots" in unknown.stderr, unknown.stderr
    missing = tandemctl("status", "--port")
    assert missing.returncode == 64, missing.stderr
    missing_before = tandemctl("--port")
    assert missing_before.returncode == 64, missing_before.stderr
    no_subcommand = tandemctl("--host", "127.0.0.1", "--port", "11311")
    assert no_subcommand.returncode == 64, no_subcommand.stderr
    assert b"--host 127.0.0.1 --port 11311 needs a subcommand, e.g. tandemctl --host 127.0.0.1 --port 11311 status" \
        in no_subcommand.stderr, no_subcommand.stderr
    bad = tandemctl("--port", "x", "ping")
    assert bad.returncode == 64 and b"--port" in bad.stderr, bad.stderr
