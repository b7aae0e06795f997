"""Fixtures for Tandem's real-client integration tests.

The suite runs against one of two servers, chosen by the environment:

* ``TANDEM_SERVER`` unset or ``tandemd`` (the default, what CI runs): the
  binary named by ``TANDEMD_BIN`` (default ``.build/debug/tandemd`` in the
  repository root) is started with ``-p 0 --no-persistence`` plus whatever a
  test asks for.  The real port is read from its log line
  ``listening on <host>:<port>``.  At the end it is stopped with SIGTERM and
  must exit with status 0.
* ``TANDEM_SERVER=memcached``: the real memcached 1.6 from ``PATH``.  This
  mode exists to prove that the tests themselves are right: every test that
  is not marked ``tandemd_only`` must pass against memcached.  Tests marked
  ``tandemd_only`` are *deselected* (not skipped) in this mode.

Every wait in here is a bounded poll on a condition, never a fixed sleep.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

#: Which server the suite drives: "tandemd" or "memcached".
SERVER_KIND = os.environ.get("TANDEM_SERVER", "").strip() or "tandemd"
if SERVER_KIND not in ("tandemd", "memcached"):
    raise pytest.UsageError(
        f"TANDEM_SERVER must be 'tandemd' or 'memcached', not {SERVER_KIND!r}"
    )

#: How long a server may take to announce its port / accept connections.
STARTUP_TIMEOUT = 30.0
#: How long a server may take to exit after SIGTERM before it is SIGKILLed.
STOP_TIMEOUT = 10.0
#: Default socket timeout for raw connections.
SOCKET_TIMEOUT = 5.0

LISTENING_RE = re.compile(rb"listening on (\S+):(\d+)")


def tandemd_binary() -> Path:
    configured = os.environ.get("TANDEMD_BIN")
    path = Path(configured) if configured else REPO_ROOT / ".build" / "debug" / "tandemd"
    if not path.is_absolute():
        path = REPO_ROOT / path
    return path


# --------------------------------------------------------------------------
# Marker: tandemd_only tests are deselected when running against memcached.
# --------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "tandemd_only: asserts tandemd-specific behaviour; deselected "
        "(not skipped) when TANDEM_SERVER=memcached",
    )


def pytest_report_header(config: pytest.Config) -> str:
    if SERVER_KIND == "tandemd":
        return f"tandem server under test: tandemd ({tandemd_binary()})"
    return f"tandem server under test: memcached ({shutil.which('memcached')})"


#: Wall-clock seconds spent per test file (set-up, call and tear-down), for the
#: summary that tells where the suite's time goes (CI has a time budget).
_FILE_SECONDS: Dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = report.nodeid.split("::", 1)[0]
    _FILE_SECONDS[path] = _FILE_SECONDS.get(path, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not _FILE_SECONDS:
        return
    terminalreporter.section("time per test file")
    for path, seconds in sorted(_FILE_SECONDS.items(), key=lambda item: -item[1]):
        terminalreporter.write_line(f"{seconds:8.1f} s  {path}")
    terminalreporter.write_line(f"{sum(_FILE_SECONDS.values()):8.1f} s  in all")


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    if SERVER_KIND != "memcached":
        return
    keep, deselected = [], []
    for item in items:
        (deselected if item.get_closest_marker("tandemd_only") else keep).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = keep


# --------------------------------------------------------------------------
# Server processes
# --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _parse_size(text: str) -> int:
    """memcached-style size: plain bytes, or with a k/m suffix."""
    m = re.fullmatch(r"(\d+)([kKmM]?)", text)
    if not m:
        raise ValueError(f"bad size {text!r}")
    mult = {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2).lower()]
    return int(m.group(1)) * mult


def _memcached_args(extra: Sequence[str]) -> List[str]:
    """Translate tandemd flags into what memcached 1.6 needs for the same effect."""
    args: List[str] = []
    item_size: Optional[int] = None
    it = iter(extra)
    for arg in it:
        if arg == "--no-persistence":
            continue  # tandemd only
        args.append(arg)
        if arg in ("-I", "--max-item-size"):
            value = next(it)
            args.append(value)
            item_size = _parse_size(value)
    if item_size is not None and item_size < 1024 * 1024:
        # memcached refuses -I below its default slab chunk maximum (512 KiB);
        # shrink the chunk maximum with it (1.6.18 takes this in bytes).
        args += ["-o", f"slab_chunk_max={max(1024, item_size // 2)}"]
    return args


@dataclass
class Server:
    """A running server process and where to reach it."""

    kind: str
    host: str
    port: int
    proc: subprocess.Popen
    args: List[str]
    log_path: Path
    stopped: bool = False
    exit_code: Optional[int] = None

    @property
    def address(self) -> Tuple[str, int]:
        return (self.host, self.port)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError as exc:  # pragma: no cover - diagnostics only
            return f"<cannot read log {self.log_path}: {exc}>"

    def describe(self) -> str:
        return f"{self.kind} {' '.join(self.args)} (pid {self.pid}, port {self.port})"

    def send_signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait_exit(self, timeout: float = STOP_TIMEOUT) -> Optional[int]:
        """Wait (bounded) for the process to exit; None if it did not."""
        try:
            self.exit_code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self.stopped = True
        return self.exit_code

    def stop(self, signum: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> Tuple[Optional[int], bool]:
        """Stop the server.

        Returns ``(exit_code, was_running)``; ``exit_code`` is None when the
        process had to be SIGKILLed after ``timeout``.
        """
        if self.stopped:
            return self.exit_code, False
        was_running = self.proc.poll() is None
        if was_running:
            self.proc.send_signal(signum)
        code = self.wait_exit(timeout)
        if code is None:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)
            self.stopped = True
            self.exit_code = None
        return code, was_running


def _wait_for_listening_line(proc: subprocess.Popen, log_path: Path, deadline: float) -> Tuple[str, int]:
    while time.monotonic() < deadline:
        data = log_path.read_bytes() if log_path.exists() else b""
        m = LISTENING_RE.search(data)
        if m:
            return m.group(1).decode(), int(m.group(2))
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    return "", 0


def _wait_for_accept(proc: subprocess.Popen, host: str, port: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return True
        except OSError:
            time.sleep(0.02)
    return False


def start_server(extra_args: Sequence[str], workdir: Path) -> Server:
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "server.log"
    log = open(log_path, "wb")
    try:
        if SERVER_KIND == "tandemd":
            binary = tandemd_binary()
            if not (binary.is_file() and os.access(binary, os.X_OK)):
                pytest.fail(
                    f"tandemd binary not found at {binary}: run `swift build` or set "
                    "TANDEMD_BIN (or TANDEM_SERVER=memcached to validate the tests)",
                    pytrace=False,
                )
            args = [str(binary), "-p", "0", "--wire-port", "0", "--no-persistence", *extra_args]
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=workdir)
            deadline = time.monotonic() + STARTUP_TIMEOUT
            host, port = _wait_for_listening_line(proc, log_path, deadline)
            if not port:
                running = proc.poll() is None
                if running:
                    proc.kill()
                proc.wait(timeout=STOP_TIMEOUT)
                pytest.fail(
                    f"tandemd did not log 'listening on HOST:PORT' within {STARTUP_TIMEOUT:.0f}s "
                    f"(exit code {proc.returncode}, {'killed' if running else 'exited by itself'})\n"
                    f"command: {' '.join(args)}\n--- log ---\n{log_path.read_text(errors='replace')}",
                    pytrace=False,
                )
            if host in ("0.0.0.0", "*", "[::]", "::"):
                host = "127.0.0.1"
            return Server("tandemd", host.strip("[]"), port, proc, args, log_path)

        memcached = shutil.which("memcached")
        if not memcached:
            pytest.fail("TANDEM_SERVER=memcached but no memcached on PATH", pytrace=False)
        for _attempt in range(5):  # a freshly picked free port can be taken in between
            port = _free_port()
            args = [memcached, "-l", "127.0.0.1", "-p", str(port), "-U", "0"]
            if os.geteuid() == 0:
                args += ["-u", "root"]
            args += _memcached_args(extra_args)
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=workdir)
            if _wait_for_accept(proc, "127.0.0.1", port, time.monotonic() + STARTUP_TIMEOUT):
                return Server("memcached", "127.0.0.1", port, proc, args, log_path)
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)
        pytest.fail(
            f"memcached did not start: {' '.join(args)} (exit code {proc.returncode})\n"
            f"--- log ---\n{log_path.read_text(errors='replace')}",
            pytrace=False,
        )
    finally:
        log.close()


@pytest.fixture
def server_kind() -> str:
    """'tandemd' or 'memcached'."""
    return SERVER_KIND


@pytest.fixture
def server_factory(tmp_path: Path) -> Callable[..., Server]:
    """Start servers with extra command-line flags: ``server_factory("-c", "5")``.

    Every server started is stopped at the end of the test with SIGTERM (SIGKILL
    after a bounded wait).  A server that died on its own during the test, or a
    tandemd that does not exit 0 on SIGTERM, fails the test at teardown.
    Tests that stop a server themselves call ``server.stop()`` and check the
    result; teardown then leaves it alone.
    """
    servers: List[Server] = []

    def start(*extra_args: str) -> Server:
        server = start_server([str(a) for a in extra_args], tmp_path / f"server{len(servers)}")
        servers.append(server)
        return server

    yield start

    # Signal every server first, then wait: they shut down in parallel.
    running = {}
    for server in servers:
        if not server.stopped:
            running[id(server)] = server.proc.poll() is None
            if running[id(server)]:
                server.send_signal(signal.SIGTERM)
    problems = []
    for server in servers:
        if server.stopped:
            continue
        code = server.wait_exit(STOP_TIMEOUT)
        if code is None:
            server.proc.kill()
            server.proc.wait(timeout=STOP_TIMEOUT)
            server.stopped = True
        problem = None
        if not running[id(server)]:
            problem = f"{server.describe()} was no longer running at teardown (exit code {code})"
        elif code is None:
            problem = f"{server.describe()} did not exit within {STOP_TIMEOUT}s of SIGTERM; killed"
        elif server.kind == "tandemd" and code != 0:
            problem = f"{server.describe()} exited with {code} after SIGTERM, expected 0"
        if problem:
            problems.append(problem + "\n--- log (tail) ---\n" + server.log()[-4000:])
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def server(server_factory: Callable[..., Server]) -> Server:
    """A server with default settings, fresh for each test."""
    return server_factory()


# --------------------------------------------------------------------------
# A raw text-protocol connection
# --------------------------------------------------------------------------


class ConnectionClosed(Exception):
    """The server closed the connection."""


@dataclass
class Value:
    key: bytes
    flags: int
    data: bytes
    cas: Optional[int] = None


class RawClient:
    """A minimal memcached text-protocol connection over a plain socket.

    Every read is bounded by ``timeout`` seconds of silence.
    """

    def __init__(self, address: Tuple[str, int], timeout: float = SOCKET_TIMEOUT):
        self.sock = socket.create_connection(address, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "RawClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionClosed(f"connection closed by server; unread bytes: {bytes(self.buf)!r}")
        self.buf += chunk

    def readline(self) -> bytes:
        """One reply line without its trailing CRLF."""
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[: i + 2]
                return line
            if len(self.buf) > 1 << 20:
                raise AssertionError(f"reply line longer than 1 MiB: {bytes(self.buf[:200])!r}...")
            self._fill()

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def read_block(self, n: int) -> bytes:
        """A data block of n bytes followed by CRLF."""
        data = self.read_exact(n + 2)
        assert data[-2:] == b"\r\n", f"data block not terminated by CRLF: {data[-10:]!r}"
        return data[:-2]

    def call(self, line: bytes) -> bytes:
        """Send one command line and return the one-line reply."""
        self.send(line + b"\r\n")
        return self.readline()

    def store(self, cmd: bytes, key: bytes, data: bytes, flags: int = 0, exptime: int = 0,
              cas: Optional[int] = None, noreply: bool = False) -> Optional[bytes]:
        line = b"%s %s %d %d %d" % (cmd, key, flags, exptime, len(data))
        if cas is not None:
            line += b" %d" % cas
        if noreply:
            line += b" noreply"
        self.send(line + b"\r\n" + data + b"\r\n")
        return None if noreply else self.readline()

    def read_values(self, with_cas: bool = False) -> Dict[bytes, Value]:
        """Read VALUE blocks up to END."""
        values: Dict[bytes, Value] = {}
        for _ in range(1_000_000):
            line = self.readline()
            if line == b"END":
                return values
            parts = line.split(b" ")
            assert parts[0] == b"VALUE" and len(parts) == (5 if with_cas else 4), f"unexpected line {line!r}"
            n = int(parts[3])
            data = self.read_block(n)
            values[parts[1]] = Value(parts[1], int(parts[2]), data, int(parts[4]) if with_cas else None)
        raise AssertionError("no END after a million VALUE lines")

    def get(self, *keys: bytes, cmd: bytes = b"get") -> Dict[bytes, Value]:
        self.send(cmd + b" " + b" ".join(keys) + b"\r\n")
        return self.read_values(with_cas=cmd.split()[0] in (b"gets", b"gats"))

    def stats(self, *args: bytes) -> List[Tuple[bytes, bytes]]:
        """Raw ``stats`` lines as (name, value) pairs, asserting the STAT framing."""
        self.send(b" ".join((b"stats",) + args) + b"\r\n")
        out = []
        for _ in range(100000):
            line = self.readline()
            if line == b"END":
                return out
            parts = line.split(b" ", 2)
            assert len(parts) == 3 and parts[0] == b"STAT" and parts[1] and b" " not in parts[1], \
                f"malformed stats line {line!r}"
            out.append((parts[1], parts[2]))
        raise AssertionError("stats reply never ended")


@pytest.fixture
def raw_factory() -> Callable[..., RawClient]:
    """Open raw text-protocol connections: ``raw_factory(server.address)``."""
    conns: List[RawClient] = []

    def connect(address: Tuple[str, int], timeout: float = SOCKET_TIMEOUT) -> RawClient:
        conn = RawClient(address, timeout)
        conns.append(conn)
        return conn

    yield connect
    for conn in conns:
        conn.close()


@pytest.fixture
def raw(server: Server, raw_factory) -> RawClient:
    """A raw connection to the default server."""
    return raw_factory(server.address)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    got = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return got
        got += chunk


def send_then_shut(address: Tuple[str, int], request: bytes) -> bytes:
    """Sends REQUEST, shuts the sending side (as ``printf ... | nc -N`` does)
    and returns all that comes back until the server closes."""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        return read_until_closed(sock)


def poll_until(condition: Callable[[], object], timeout: float, interval: float = 0.05,
               what: str = "condition") -> object:
    """Evaluate ``condition`` until it is truthy, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    attempts = 0
    while True:
        attempts += 1
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline or attempts > 100000:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture
def poll() -> Callable[..., object]:
    """``poll(condition, timeout, what=...)``: bounded wait for a condition."""
    return poll_until


MSM_FIXTURES = REPO_ROOT / "Tests" / "fixtures" / "msm"


@pytest.fixture(scope="session")
def msm_fixtures() -> Path:
    """Recorded msm traffic and session values (Tests/fixtures/msm/README.md)."""
    return MSM_FIXTURES
