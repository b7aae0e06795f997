"""A Jepsen-style lost-write workload and checker for a memcached-compatible pair.

Why: "replication works" is only meaningful under faults, and under faults a
client cannot know whether a timed-out write happened.  So the workload records
every operation with its outcome (acknowledged, definitely failed, or unknown)
and the checker asks the one question a session store must answer well: *is
the last write the store acknowledged still there?*  Timed-out writes are
given the benefit of the doubt, never the blame.

Shape of the workload (modelled on memcached-session-manager, "msm"):

* A *session* is a 32-digit uppercase hex id; writing it sets two keys,
  ``<id>-n1`` (the session) and ``validity:<id>``, one after the other.
* Each worker thread owns a disjoint set of sessions, so the operations on one
  key never overlap in time and "the newest write" is well defined.
* Every value is unique (``w<worker>-<seq>-<random>`` padded with ``.``), so a
  value read back names the exact operation that wrote it.
* Each operation goes to one node (round-robin or random) over a tiny raw
  text-protocol client with msm's timeouts: 0.5 s to connect, 1.0 s per
  operation.

Outcomes:

``ok``
    ``STORED`` for a set; ``DELETED`` or ``NOT_FOUND`` for a delete.
``fail``
    The operation certainly did not happen: the connection could not be made
    (nothing was sent), or a set was answered ``NOT_STORED``.
``unknown``
    Anything else (timeout, closed connection, ``ERROR``, ``SERVER_ERROR``,
    an unexpected reply): the write may or may not have been applied.

Typical use in a test::

    w = Workload([node_a.address, node_b.address], keys=50, workers=4,
                 duration_s=10, max_ops=50_000, seed=1)
    w.start()
    ...  # inject faults through FaultProxy
    w.stop()
    ...  # let the pair settle
    reads = final_reads([node_a.address, node_b.address], w.keys_touched())
    check(w.history, reads).assert_ok()
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

__all__ = [
    "Address", "Op", "OK", "FAIL", "UNKNOWN", "SET", "DELETE",
    "ConnectFailed", "ProtocolError", "MiniClient", "classify_reply",
    "Workload", "final_reads", "check", "Result", "Violation", "node_label",
]

Address = Tuple[str, int]

OK = "ok"
FAIL = "fail"
UNKNOWN = "unknown"
SET = "set"
DELETE = "delete"

#: msm's defaults: how long a connect and one operation may take.
CONNECT_TIMEOUT = 0.5
OP_TIMEOUT = 1.0
#: Keys per ``get`` in the final reads; small, so no server's line limit matters.
READ_BATCH = 20
#: Pause after a failed connect, so a dead node does not turn into a busy loop
#: that fills the history (and the op budget) with thousands of failures.
FAIL_BACKOFF = 0.05


def node_label(address: Address) -> str:
    """``"host:port"``: how nodes are named in the history and the reads."""
    return f"{address[0]}:{address[1]}"


def _short(value: Optional[str]) -> str:
    """A value for messages: the unique token without its padding."""
    if value is None:
        return "<absent>"
    token = value.split(".", 1)[0] if value.startswith("w") else value
    return token if len(token) <= 48 else token[:45] + "..."


# ----------------------------------------------------------------------------
# A tiny memcached text-protocol client
# ----------------------------------------------------------------------------


class ConnectFailed(Exception):
    """The TCP connection could not be made: nothing was sent."""


class ProtocolError(Exception):
    """The server answered something this client does not understand."""


class MiniClient:
    """Just enough of the memcached text protocol: set, delete, get.

    Written out here rather than using pymemcache so that every timeout and
    every reply is visible and classified exactly (pymemcache retries and
    maps replies in its own ways).  Every operation has one deadline,
    ``op_timeout`` seconds from its start, like msm's operation timeout.
    After any exception the connection must be thrown away: a late reply
    would otherwise be read as the answer to the next command.
    """

    def __init__(self, address: Address, connect_timeout: float = CONNECT_TIMEOUT,
                 op_timeout: float = OP_TIMEOUT):
        self.address = address
        self.op_timeout = op_timeout
        try:
            self.sock = socket.create_connection(address, timeout=connect_timeout)
        except OSError as exc:
            raise ConnectFailed(f"connect to {node_label(address)}: {exc!r}") from exc
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "MiniClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing

    def _send(self, data: bytes, deadline: float) -> None:
        self.sock.settimeout(max(0.001, deadline - time.monotonic()))
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("operation timed out")
        self.sock.settimeout(remaining)
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed by server")
        self.buf += chunk

    def _readline(self, deadline: float) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[:i + 2]
                return line
            if len(self.buf) > 1 << 20:
                raise ProtocolError("reply line longer than 1 MiB")
            self._fill(deadline)

    def _read_exact(self, n: int, deadline: float) -> bytes:
        while len(self.buf) < n:
            self._fill(deadline)
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    # -- commands

    def set(self, key: str, value: str, exptime: int = 0, flags: int = 0) -> str:
        """Send a set; returns the reply line (``STORED`` on success)."""
        deadline = time.monotonic() + self.op_timeout
        data = value.encode()
        self._send(b"set %s %d %d %d\r\n%s\r\n" % (key.encode(), flags, exptime, len(data), data), deadline)
        return self._readline(deadline).decode(errors="backslashreplace")

    def delete(self, key: str) -> str:
        """Send a delete; returns the reply line (``DELETED`` / ``NOT_FOUND``)."""
        deadline = time.monotonic() + self.op_timeout
        self._send(b"delete %s\r\n" % key.encode(), deadline)
        return self._readline(deadline).decode(errors="backslashreplace")

    def get_many(self, keys: Sequence[str]) -> Dict[str, str]:
        """One ``get k1 k2 ...``; returns the keys present with their values."""
        deadline = time.monotonic() + self.op_timeout
        self._send(b"get " + b" ".join(k.encode() for k in keys) + b"\r\n", deadline)
        out: Dict[str, str] = {}
        while True:
            line = self._readline(deadline)
            if line == b"END":
                return out
            parts = line.split(b" ")
            if parts[0] != b"VALUE" or len(parts) not in (4, 5):
                raise ProtocolError(f"unexpected reply to get: {line[:200]!r}")
            n = int(parts[3])
            block = self._read_exact(n + 2, deadline)
            if block[-2:] != b"\r\n":
                raise ProtocolError(f"data block for {parts[1]!r} not terminated by CRLF")
            out[parts[1].decode(errors="backslashreplace")] = block[:-2].decode(errors="backslashreplace")


# ----------------------------------------------------------------------------
# History
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """One operation as the client saw it."""

    key: str
    kind: str             # SET or DELETE
    value: Optional[str]  # the value written; None for a delete
    node: str             # node_label() of the node it was sent to
    start: float          # time.monotonic() before connecting / sending
    end: float            # time.monotonic() once the outcome was known
    outcome: str          # OK, FAIL or UNKNOWN
    worker: int = 0
    detail: str = ""      # the reply or the exception, for diagnostics

    def __str__(self) -> str:
        what = f"set {_short(self.value)}" if self.kind == SET else "delete"
        return (f"{what} via {self.node} [{self.start:.3f}..{self.end:.3f}] {self.outcome}"
                + (f" ({self.detail})" if self.detail and self.outcome != OK else ""))


def classify_reply(kind: str, reply: str) -> str:
    """The outcome of a completed request from its reply line (see the module docstring)."""
    if kind == SET:
        if reply == "STORED":
            return OK
        if reply == "NOT_STORED":
            return FAIL
        return UNKNOWN
    if reply in ("DELETED", "NOT_FOUND"):
        return OK
    return UNKNOWN


# ----------------------------------------------------------------------------
# Workload
# ----------------------------------------------------------------------------


class _Worker:
    """Per-thread state: its sessions, its RNG, one connection per node."""

    def __init__(self, index: int, sessions: List[str], rng: random.Random):
        self.index = index
        self.sessions = sessions
        self.rng = rng
        self.seq = 0
        self.rr = index  # round-robin position, staggered between workers
        self.clients: Dict[Address, MiniClient] = {}
        self.history: List[Op] = []

    def drop_client(self, node: Address) -> None:
        client = self.clients.pop(node, None)
        if client is not None:
            client.close()

    def close(self) -> None:
        for node in list(self.clients):
            self.drop_client(node)


class Workload:
    """Writer threads producing a checkable history (see the module docstring).

    ``keys`` is the number of *sessions*; each session is two memcached keys,
    so the workload touches up to ``2 * keys`` keys.  Sessions are dealt out
    round-robin to ``min(workers, keys)`` workers.  The run ends after
    ``duration_s`` seconds (pauses included) or ``max_ops`` operations in
    total, whichever comes first.  Keys and values are derived from ``seed``;
    do not reuse a seed against a server that still holds an earlier run's data
    (those values would rightly be reported as unexpected).
    """

    def __init__(self, nodes: Sequence[Address], keys: int = 20, workers: int = 4,
                 duration_s: float = 10.0, max_ops: int = 100_000, seed: Optional[int] = None, *,
                 value_size: int = 200, delete_fraction: float = 0.0, node_choice: str = "round_robin",
                 exptime: int = 0, connect_timeout: float = CONNECT_TIMEOUT, op_timeout: float = OP_TIMEOUT):
        if not nodes:
            raise ValueError("need at least one node")
        if keys < 1 or workers < 1:
            raise ValueError("keys and workers must be >= 1")
        if node_choice not in ("round_robin", "random"):
            raise ValueError("node_choice must be 'round_robin' or 'random'")
        if not 0.0 <= delete_fraction <= 1.0:
            raise ValueError("delete_fraction must be within [0, 1]")
        self.nodes: List[Address] = [tuple(n) for n in nodes]  # type: ignore[misc]
        self.duration_s = duration_s
        self.max_ops = max_ops
        self.seed = seed if seed is not None else random.SystemRandom().getrandbits(48)
        self.value_size = value_size
        self.delete_fraction = delete_fraction
        self.node_choice = node_choice
        self.exptime = exptime
        self.connect_timeout = connect_timeout
        self.op_timeout = op_timeout

        master = random.Random(self.seed)
        self.sessions: List[str] = [f"{master.getrandbits(128):032X}" for _ in range(keys)]
        n_workers = min(workers, keys)
        self._workers = [
            _Worker(i, self.sessions[i::n_workers], random.Random(master.getrandbits(64)))
            for i in range(n_workers)
        ]
        self._lock = threading.Lock()
        self._ops_reserved = 0
        self._stop = threading.Event()
        self._unpaused = threading.Event()
        self._unpaused.set()
        self._threads: List[threading.Thread] = []
        self._errors: List[BaseException] = []
        self._deadline = 0.0
        self._in_flight = 0
        self._idle = threading.Condition(self._lock)

    # -- keys

    @staticmethod
    def session_keys(session_id: str) -> Tuple[str, str]:
        """The two keys msm writes for a session."""
        return (f"{session_id}-n1", f"validity:{session_id}")

    def all_keys(self) -> List[str]:
        """Every key the workload may touch."""
        return [k for s in self.sessions for k in self.session_keys(s)]

    def keys_touched(self) -> List[str]:
        """Keys with at least one operation in the history, in a stable order."""
        return sorted({op.key for op in self.history})

    # -- running

    def start(self) -> "Workload":
        """Start the workers in the background; returns self."""
        if self._threads:
            raise RuntimeError("workload already started")
        self._deadline = time.monotonic() + self.duration_s
        for w in self._workers:
            t = threading.Thread(target=self._run_worker, args=(w,), name=f"workload-w{w.index}", daemon=True)
            self._threads.append(t)
            t.start()
        return self

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait for the workers to finish by themselves; True if they did."""
        end = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if end is None else max(0.0, end - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop early (or after the fact), join the workers, re-raise worker errors."""
        self._stop.set()
        self._unpaused.set()
        if not self.wait(timeout):
            raise RuntimeError(f"workload workers did not stop within {timeout}s")
        self._raise_errors()

    def run(self) -> List[Op]:
        """Run to completion in the calling thread's time; returns the history."""
        self.start()
        # Each op is bounded by connect + op timeout, so this wait is bounded.
        self.wait(self.duration_s + self.connect_timeout + self.op_timeout + 10.0)
        self.stop()
        return self.history

    def pause(self, timeout: float = 10.0) -> None:
        """Stop issuing operations; returns once no operation is in flight.

        Waiting for the in-flight ones (each bounded by the connect and
        operation timeouts) lets a test rely on "nothing is being written now",
        e.g. before it changes a fault or reads a node.
        """
        self._unpaused.clear()
        with self._idle:
            if not self._idle.wait_for(lambda: self._in_flight == 0, timeout):
                raise RuntimeError(f"workload operations still in flight after {timeout}s")

    def resume(self) -> None:
        self._unpaused.set()

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    @property
    def history(self) -> List[Op]:
        """All operations so far, ordered by start time (a copy)."""
        with self._lock:
            ops = [op for w in self._workers for op in w.history]
        ops.sort(key=lambda o: (o.start, o.end))
        return ops

    # -- convenience

    def final_reads(self, nodes: Optional[Sequence[Address]] = None,
                    timeout_s: float = 30.0) -> Dict[str, Dict[str, Optional[str]]]:
        """:func:`final_reads` of every key this workload touched."""
        return final_reads(nodes if nodes is not None else self.nodes, self.keys_touched(), timeout_s)

    def check(self, reads_by_node: Optional[Mapping[str, Mapping[str, Optional[str]]]] = None,
              **kwargs: bool) -> "Result":
        """:func:`check` of this history (reading the nodes now if no reads are given)."""
        if reads_by_node is None:
            reads_by_node = self.final_reads()
        return check(self.history, reads_by_node, **kwargs)

    # -- internals

    def _raise_errors(self) -> None:
        if self._errors:
            raise RuntimeError(f"workload worker crashed: {self._errors[0]!r}") from self._errors[0]

    def _begin_op(self) -> bool:
        """Take one op from the budget and mark it in flight, unless paused, stopped or done."""
        while self._should_go_on():
            with self._lock:
                if self._ops_reserved >= self.max_ops:
                    return False
                if not self._unpaused.is_set():  # paused between the check and now
                    continue
                self._ops_reserved += 1
                self._in_flight += 1
                return True
        return False

    def _should_go_on(self) -> bool:
        while not self._unpaused.is_set():
            if self._stop.is_set():
                return False
            self._unpaused.wait(0.05)
        return not self._stop.is_set() and time.monotonic() < self._deadline

    def _pick_node(self, w: _Worker) -> Address:
        if self.node_choice == "random":
            return w.rng.choice(self.nodes)
        node = self.nodes[w.rr % len(self.nodes)]
        w.rr += 1
        return node

    def _value(self, w: _Worker) -> str:
        w.seq += 1
        token = f"w{w.index}-{w.seq}-{w.rng.getrandbits(32):08x}"
        return token.ljust(self.value_size, ".")

    def _run_worker(self, w: _Worker) -> None:
        try:
            while self._should_go_on():
                session = w.rng.choice(w.sessions)
                node = self._pick_node(w)
                kind = DELETE if w.rng.random() < self.delete_fraction else SET
                for key in self.session_keys(session):
                    if not self._begin_op():
                        return
                    try:
                        op = self._do(w, node, key, kind)
                    finally:
                        with self._lock:
                            self._in_flight -= 1
                            self._idle.notify_all()
                    with self._lock:
                        w.history.append(op)
                    if op.outcome == FAIL and op.detail.startswith("connect"):
                        time.sleep(FAIL_BACKOFF)
                        break  # the node is unreachable: pick another for the next session
        except BaseException as exc:  # surfaced by stop()/run()
            with self._lock:
                self._errors.append(exc)
        finally:
            w.close()

    def _do(self, w: _Worker, node: Address, key: str, kind: str) -> Op:
        value = self._value(w) if kind == SET else None
        label = node_label(node)
        start = time.monotonic()
        client = w.clients.get(node)
        if client is None:
            try:
                client = MiniClient(node, self.connect_timeout, self.op_timeout)
            except ConnectFailed as exc:
                return Op(key, kind, value, label, start, time.monotonic(), FAIL, w.index, str(exc))
            w.clients[node] = client
        try:
            reply = client.set(key, value, self.exptime) if value is not None else client.delete(key)
        except Exception as exc:  # timeout, reset, closed: the command may have run
            w.drop_client(node)
            return Op(key, kind, value, label, start, time.monotonic(), UNKNOWN, w.index, repr(exc))
        outcome = classify_reply(kind, reply)
        if outcome != OK:
            w.drop_client(node)  # do not trust the stream after a surprise
        return Op(key, kind, value, label, start, time.monotonic(), outcome, w.index, reply)


# ----------------------------------------------------------------------------
# Final reads
# ----------------------------------------------------------------------------


def final_reads(nodes: Sequence[Address], keys: Iterable[str], timeout_s: float = 30.0,
                batch: int = READ_BATCH, op_timeout: float = 5.0) -> Dict[str, Dict[str, Optional[str]]]:
    """Read every key from every node: ``{node_label: {key: value or None}}``.

    Transient errors (a node still restarting, a timeout) are retried, batch
    by batch, until ``timeout_s``; after that an AssertionError says which node
    could not be read, because a check without the final state means nothing.
    """
    keys = list(dict.fromkeys(keys))
    deadline = time.monotonic() + timeout_s
    out: Dict[str, Dict[str, Optional[str]]] = {}
    for node in nodes:
        label = node_label(node)
        if label in out:
            continue
        values: Dict[str, Optional[str]] = {}
        client: Optional[MiniClient] = None
        try:
            for i in range(0, len(keys), batch):
                chunk = keys[i:i + batch]
                last_error: Optional[BaseException] = None
                while True:
                    try:
                        if client is None:
                            client = MiniClient(node, connect_timeout=min(2.0, op_timeout), op_timeout=op_timeout)
                        got = client.get_many(chunk)
                        break
                    except (OSError, ConnectFailed, ProtocolError, ValueError) as exc:
                        last_error = exc
                        if client is not None:
                            client.close()
                            client = None
                        if time.monotonic() >= deadline:
                            raise AssertionError(
                                f"final reads: could not read {len(keys) - i} keys from {label} "
                                f"within {timeout_s}s; last error: {last_error!r}") from exc
                        time.sleep(0.1)
                for key in chunk:
                    values[key] = got.get(key)
        finally:
            if client is not None:
                client.close()
        out[label] = values
    return out


# ----------------------------------------------------------------------------
# Checker
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Violation:
    """One key on one node (or across nodes, for ``differ``) that breaks the rules."""

    kind: str                          # "lost", "unexpected" or "differ"
    key: str
    node: str                          # a node label, or "*" for differ
    expected: Tuple[Optional[str], ...]
    got: Optional[str]
    note: str = ""
    #: The last few ops on the key, oldest first: what a human needs to triage.
    recent: Tuple[Op, ...] = ()

    def __str__(self) -> str:
        expected = ", ".join(sorted(_short(v) for v in self.expected)) or "-"
        return (f"{self.kind}: {self.key} on {self.node}: got {_short(self.got) if self.kind != 'differ' else self.got}; "
                f"allowed {{{expected}}}" + (f" -- {self.note}" if self.note else ""))


@dataclass
class Result:
    """What :func:`check` found."""

    ops: int = 0
    acknowledged: int = 0
    unknown: int = 0
    failed: int = 0
    keys: int = 0
    nodes: int = 0
    #: Keys whose final value (on some node) is a value once written but not allowed:
    #: the last acknowledged write was lost, or rolled back to an older one.
    lost: int = 0
    #: Keys holding (on some node) a value no op that could have run wrote to that key.
    unexpected: int = 0
    #: Keys whose final value differs between nodes.
    differing: int = 0
    require_identical: bool = True
    violations: List[Violation] = field(default_factory=list)

    @property
    def both_identical(self) -> bool:
        """All nodes returned the same final state."""
        return self.differing == 0

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.unexpected == 0 and (self.both_identical or not self.require_identical)

    def summary(self) -> str:
        verdict = "OK" if self.ok else "FAILED"
        return (f"{verdict}: {self.ops} ops ({self.acknowledged} acknowledged, {self.unknown} unknown, "
                f"{self.failed} failed) on {self.keys} keys read from {self.nodes} node(s); "
                f"lost {self.lost}, unexpected {self.unexpected}, differing between nodes {self.differing}")

    def assert_ok(self) -> None:
        """Raise AssertionError with the summary and the first 20 violations."""
        if self.ok:
            return
        lines = [self.summary()]
        for i, v in enumerate(self.violations[:20]):
            lines.append(f"  {v}")
            if i < 5:  # the timelines of the first few keep the message readable
                lines += [f"      {op}" for op in v.recent]
        if len(self.violations) > 20:
            lines.append(f"  ... and {len(self.violations) - 20} more")
        raise AssertionError("\n".join(lines))


def check(history: Iterable[Op], reads_by_node: Mapping[str, Mapping[str, Optional[str]]], *,
          require_identical: bool = True, allow_late_unknown: bool = False) -> Result:
    """Check final reads against a history.

    For each key, with L the acknowledged op that started last, a node's final
    value must be one of:

    * L's value (absent if L was a delete);
    * the value of an unknown-outcome set that started after L started;
    * absent, if an unknown-outcome delete started after L started.

    With no acknowledged op, any value an op that could have run (not
    ``fail``) wrote to the key is allowed, and so is absent.  A value no such
    op wrote to that key is always ``unexpected``.  A key missing from a node's
    reads counts as absent.

    An unknown-outcome write that started *before* L can in principle take
    effect late (linearizability allows it), but for a session store it means
    the acknowledged newer session was rolled back; it is reported as lost,
    with a note, unless ``allow_late_unknown``.
    """
    ops_by_key: Dict[str, List[Op]] = defaultdict(list)
    result = Result(require_identical=require_identical, nodes=len(reads_by_node))
    for op in history:
        ops_by_key[op.key].append(op)
        result.ops += 1
        if op.outcome == OK:
            result.acknowledged += 1
        elif op.outcome == UNKNOWN:
            result.unknown += 1
        elif op.outcome == FAIL:
            result.failed += 1
        else:
            raise ValueError(f"bad outcome {op.outcome!r} in {op}")

    all_keys: Set[str] = set(ops_by_key)
    for reads in reads_by_node.values():
        all_keys.update(reads)
    result.keys = len(all_keys)

    lost_keys: Set[str] = set()
    unexpected_keys: Set[str] = set()
    for key in sorted(all_keys):
        ops = sorted(ops_by_key.get(key, []), key=lambda o: (o.start, o.end))
        may_have_run = [o for o in ops if o.outcome != FAIL]
        written = {o.value for o in may_have_run if o.kind == SET}
        acked = [o for o in ops if o.outcome == OK]
        late: Set[Optional[str]] = set()
        if acked:
            last = acked[-1]
            allowed: Set[Optional[str]] = {last.value if last.kind == SET else None}
            for o in ops:
                if o.outcome == UNKNOWN:
                    v = o.value if o.kind == SET else None
                    if o.start > last.start:
                        allowed.add(v)
                    elif o.start < last.start:
                        late.add(v)
        else:
            allowed = set(written) | {None}
        if allow_late_unknown:
            allowed |= late

        for node, reads in reads_by_node.items():
            got = reads.get(key)
            if got in allowed:
                continue
            expected = tuple(sorted(allowed, key=lambda v: (v is not None, v or "")))
            if got is not None and got not in written:
                failed_by = [o for o in ops if o.outcome == FAIL and o.value == got]
                note = "written only by an op that certainly failed" if failed_by else "never written to this key"
                result.violations.append(Violation("unexpected", key, node, expected, got, note, tuple(ops[-6:])))
                unexpected_keys.add(key)
            else:
                if got in late:
                    note = "a timed-out write older than the last acknowledged one took effect late"
                elif got is None:
                    note = "the last acknowledged write is gone"
                else:
                    note = "an older value came back"
                result.violations.append(Violation("lost", key, node, expected, got, note, tuple(ops[-6:])))
                lost_keys.add(key)

        finals = {node: reads.get(key) for node, reads in reads_by_node.items()}
        if len(set(finals.values())) > 1:
            result.differing += 1
            got_text = ", ".join(f"{n}={_short(v)}" for n, v in finals.items())
            result.violations.append(Violation("differ", key, "*", tuple(sorted(allowed, key=lambda v: (v is not None, v or ""))),
                                               got_text, "nodes disagree", tuple(ops[-6:])))

    result.lost = len(lost_keys)
    result.unexpected = len(unexpected_keys)
    return result
