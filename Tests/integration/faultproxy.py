"""A fault-injecting TCP proxy for the two-node tests.

Why it exists: the interesting failures of a primary/backup pair happen on the
link between the nodes (a partition, a one-way loss, a reset, a slow link), and
those cannot be produced by killing processes.  So each node's ``--peer``
points at a :class:`FaultProxy` that forwards to the other node's wire port,
and a test flips the proxy into a fault while a workload runs.

Design, and why:

* One asyncio event loop in one background thread owns every socket.  All
  fault switches are executed *on* that loop and the calling thread waits for
  them, so when ``cut()`` returns no further byte is forwarded: a test can rely
  on "after this line the link is down" without sleeping.
* Each direction of each connection is a reader task and a writer task joined
  by a queue bounded in bytes (``max_buffer``, 8 MiB by default).  When the
  destination stops reading, the queue fills, the reader stops reading, and the
  kernel buffers fill up to the sender: the same back-pressure a real link
  gives, never an unbounded buffer in the test process.
* The proxy only ever listens on and connects to 127.0.0.1, so a test can never
  send traffic elsewhere by mistake.

Fault semantics (each one replaces the previous one; :meth:`heal` clears all):

``cut()``
    A black hole, like a pulled cable: bytes in both directions are read and
    thrown away, connections stay open and the endpoints only notice through
    their own timeouts.  A connection accepted during the cut is black-holed
    for its whole life (its handshake was "lost in the partition"): it is never
    connected to the target, even after ``heal()``.  Note that bytes dropped
    from an established stream are gone for good, so after ``heal()`` such a
    stream is desynchronised; a robust endpoint detects that (bad frame, or a
    timeout) and reconnects.  :meth:`stall` is the loss-free variant.
``one_way_cut("forward" | "backward")``
    Drop only client→target ("forward") or only target→client ("backward").
``stall()``
    Stop reading in both directions; bytes wait in queues and kernel buffers
    and flow intact after ``heal()`` (a cable pulled and plugged back before
    TCP gives up).
``reset()``
    Close every connection with RST (SO_LINGER 0) and close new connections at
    once, until ``heal()``.
``delay(ms)``
    Add ``ms`` of latency to every chunk in each direction, keeping order
    (a round trip through the proxy therefore gains ``2 * ms``).  Composes with
    the other faults; ``delay(0)`` or ``heal()`` removes it.
``drop_connections()``
    Close the current connections once (FIN, pending data discarded); new
    connections keep working.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Deque, Dict, List, Optional, Set, Tuple, TypeVar

__all__ = ["FaultProxy", "ProxyStats", "FORWARD", "BACKWARD"]

#: client → target (the side that dialled the proxy → the side the proxy dials).
FORWARD = "forward"
#: target → client.
BACKWARD = "backward"
DIRECTIONS = (FORWARD, BACKWARD)

LOOPBACK = "127.0.0.1"
#: Per-direction cap on bytes held by the proxy itself.
DEFAULT_MAX_BUFFER = 8 * 1024 * 1024
#: Size of one read; also the granularity of the delay queue.
CHUNK = 64 * 1024
#: How long a control call may wait for the proxy thread before giving up.
CONTROL_TIMEOUT = 10.0
#: How long a connection to the target may take (it is on loopback).
CONNECT_TIMEOUT = 2.0

T = TypeVar("T")


def _loopback_only(address: Tuple[str, int]) -> Tuple[str, int]:
    """Validate a target; the proxy must never reach beyond this machine."""
    host, port = address
    if host not in (LOOPBACK, "localhost"):
        raise ValueError(f"FaultProxy only forwards to {LOOPBACK}, not {host!r}")
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"bad target port {port!r}")
    return (LOOPBACK, port)


def _set_rst_on_close(writer: Optional[asyncio.StreamWriter]) -> None:
    """SO_LINGER 0: the next close sends RST instead of FIN."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass


def _abort(writer: Optional[asyncio.StreamWriter], rst: bool) -> None:
    """Close a stream now, discarding anything not yet written."""
    if writer is None:
        return
    if rst:
        _set_rst_on_close(writer)
    try:
        writer.transport.abort()
    except Exception:  # already closed
        pass


@dataclass(frozen=True)
class ProxyStats:
    """A consistent snapshot of the proxy's counters."""

    #: Connections accepted on the listening socket (including refused ones).
    accepted: int
    #: Accepted connections closed at once (reset mode, no target, target down).
    refused: int
    #: Connections currently open.
    active: int
    #: Bytes written to the target (client → target).
    forwarded_forward: int
    #: Bytes written to the client (target → client).
    forwarded_backward: int
    #: Bytes read from the client and thrown away.
    dropped_forward: int
    #: Bytes read from the target and thrown away.
    dropped_backward: int
    #: Bytes currently held by the proxy, client → target.
    buffered_forward: int
    #: Bytes currently held by the proxy, target → client.
    buffered_backward: int

    @property
    def forwarded(self) -> int:
        return self.forwarded_forward + self.forwarded_backward

    @property
    def dropped(self) -> int:
        return self.dropped_forward + self.dropped_backward


class _ByteQueue:
    """FIFO of (deliver_at, bytes) chunks bounded in bytes, plus an EOF mark.

    Lives entirely on the proxy's loop.  The byte bound is what turns a slow
    destination into back-pressure on the source.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.items: Deque[Tuple[float, bytes]] = collections.deque()
        self.size = 0
        self.eof = False
        self._cond = asyncio.Condition()

    async def wait_space(self) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: self.size < self.limit)

    async def put(self, deliver_at: float, data: bytes) -> None:
        async with self._cond:
            self.items.append((deliver_at, data))
            self.size += len(data)
            self._cond.notify_all()

    async def put_eof(self) -> None:
        async with self._cond:
            self.eof = True
            self._cond.notify_all()

    async def get(self) -> Optional[Tuple[float, bytes]]:
        """The next chunk, or None once the queue is drained and at EOF."""
        async with self._cond:
            await self._cond.wait_for(lambda: self.items or self.eof)
            if not self.items:
                return None
            item = self.items.popleft()
            self.size -= len(item[1])
            self._cond.notify_all()
            return item

    async def clear(self) -> int:
        """Discard everything queued; returns the number of bytes discarded."""
        async with self._cond:
            n = self.size
            self.items.clear()
            self.size = 0
            self._cond.notify_all()
            return n


class _Conn:
    """One proxied connection: the client side and (unless black-holed) the target side."""

    def __init__(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter, limit: int):
        self.client_r = client_r
        self.client_w = client_w
        self.target_r: Optional[asyncio.StreamReader] = None
        self.target_w: Optional[asyncio.StreamWriter] = None
        self.queues: Dict[str, _ByteQueue] = {d: _ByteQueue(limit) for d in DIRECTIONS}
        self.tasks: List[asyncio.Task] = []
        self.supervisor: Optional[asyncio.Task] = None
        self.closed = False

    def close(self) -> None:
        """Close both sides after flushing what is already written (the clean end)."""
        if self.closed:
            return
        self.closed = True
        for writer in (self.client_w, self.target_w):
            if writer is not None:
                try:
                    writer.close()
                except Exception:  # already closed
                    pass

    def abort(self, rst: bool) -> None:
        """Close both sides now, discarding unwritten data (RST with ``rst``)."""
        if self.closed:
            return
        self.closed = True
        _abort(self.client_w, rst)
        _abort(self.target_w, rst)
        for task in self.tasks:
            task.cancel()


class FaultProxy:
    """A TCP proxy on 127.0.0.1 whose link can be cut, delayed or reset on demand.

    ``FaultProxy(target)`` → ``start()`` → point a client at ``.address`` (or
    ``.endpoint`` for a ``host:port`` flag) → switch faults → ``stop()``.
    Usable as a context manager (``with FaultProxy(t) as p:``), which starts
    and stops it.  All public methods are thread-safe and synchronous: the
    fault is in effect on every existing connection when they return.
    """

    def __init__(self, target: Optional[Tuple[str, int]] = None, max_buffer: int = DEFAULT_MAX_BUFFER):
        self._target: Optional[Tuple[str, int]] = _loopback_only(target) if target else None
        self._max_buffer = max_buffer
        self._lock = threading.Lock()  # guards the counters for snapshots
        self._counters: Dict[str, int] = collections.defaultdict(int)
        self._drop: Dict[str, bool] = {d: False for d in DIRECTIONS}
        self._hold = False
        self._reject = False
        self._delay_s = 0.0
        self._conns: Set[_Conn] = set()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._server: Optional[asyncio.AbstractServer] = None
        self._changed: Optional[asyncio.Event] = None
        self.port: int = 0

    # ------------------------------------------------------------------ lifecycle

    @property
    def address(self) -> Tuple[str, int]:
        """Where clients connect: ``("127.0.0.1", port)``."""
        if not self.port:
            raise RuntimeError("FaultProxy not started")
        return (LOOPBACK, self.port)

    @property
    def endpoint(self) -> str:
        """``"127.0.0.1:PORT"``, the form tandemd's ``--peer`` takes."""
        host, port = self.address
        return f"{host}:{port}"

    @property
    def target(self) -> Optional[Tuple[str, int]]:
        return self._target

    def start(self) -> "FaultProxy":
        """Bind 127.0.0.1:0 and start forwarding; returns self."""
        if self._thread is not None:
            raise RuntimeError("FaultProxy already started")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="faultproxy", daemon=True)
        self._thread.start()
        self.port = self._call(self._start_server)
        return self

    def stop(self) -> None:
        """Close the listening socket and every connection, and join the thread."""
        if self._thread is None or self._loop is None:
            return
        try:
            if self._loop.is_running():
                self._call(self._shutdown)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(CONTROL_TIMEOUT)
            if self._thread.is_alive():  # pragma: no cover - diagnostics only
                raise RuntimeError("FaultProxy thread did not stop")
            self._loop.close()
            self._thread = None

    def __enter__(self) -> "FaultProxy":
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"FaultProxy(127.0.0.1:{self.port} -> {self._target}, mode={self.mode()})"

    # ------------------------------------------------------------------ control

    def set_target(self, target: Tuple[str, int]) -> None:
        """Send NEW connections to ``target`` (a restarted node is on a new port).

        Also how a pair is wired up: start both proxies without a target (their
        connections are reset until one is set), start the nodes with
        ``--peer proxy.endpoint``, then point each proxy at the other node's
        wire port once it is known.
        """
        checked = _loopback_only(target)
        if self._thread is None:  # not started yet: nothing to synchronise with
            self._target = checked
            return

        async def apply() -> None:
            self._target = checked

        self._call(apply)

    def heal(self) -> None:
        """Plain pass-through again: no drop, no stall, no reset, no delay."""
        self._set_mode(drop_fwd=False, drop_bwd=False, hold=False, reject=False, delay_s=0.0)

    def cut(self) -> None:
        """Black-hole both directions (see the module docstring)."""
        self._set_mode(drop_fwd=True, drop_bwd=True, hold=False, reject=False)

    def one_way_cut(self, direction: str) -> None:
        """Drop only ``"forward"`` (client→target) or ``"backward"`` (target→client)."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be 'forward' or 'backward', not {direction!r}")
        self._set_mode(drop_fwd=direction == FORWARD, drop_bwd=direction == BACKWARD, hold=False, reject=False)

    def stall(self) -> None:
        """Stop moving bytes without losing any; ``heal()`` lets them through."""
        self._set_mode(drop_fwd=False, drop_bwd=False, hold=True, reject=False)

    def reset(self) -> None:
        """RST every connection and close new ones at once, until ``heal()``."""
        self._set_mode(drop_fwd=False, drop_bwd=False, hold=False, reject=True)

    def delay(self, ms: float) -> None:
        """Add ``ms`` milliseconds of latency to each chunk in each direction."""
        if ms < 0:
            raise ValueError("delay must be >= 0")
        self._set_mode(delay_s=ms / 1000.0)

    def drop_connections(self, rst: bool = False) -> None:
        """Close every current connection once (FIN, or RST with ``rst=True``)."""

        async def apply() -> None:
            for conn in list(self._conns):
                conn.abort(rst)

        self._call(apply)

    def mode(self) -> str:
        """A short description of the current fault, for messages."""
        if self._reject:
            base = "reset"
        elif self._hold:
            base = "stall"
        elif all(self._drop.values()):
            base = "cut"
        elif any(self._drop.values()):
            base = "one_way_cut(" + ",".join(d for d in DIRECTIONS if self._drop[d]) + ")"
        else:
            base = "pass"
        return base + (f"+delay({self._delay_s * 1000:g}ms)" if self._delay_s else "")

    def stats(self) -> ProxyStats:
        """A snapshot of the counters."""
        with self._lock:
            c = dict(self._counters)
            active = len(self._conns)
        return ProxyStats(
            accepted=c.get("accepted", 0), refused=c.get("refused", 0), active=active,
            forwarded_forward=c.get("fwd_forward", 0), forwarded_backward=c.get("fwd_backward", 0),
            dropped_forward=c.get("drop_forward", 0), dropped_backward=c.get("drop_backward", 0),
            buffered_forward=c.get("buf_forward", 0), buffered_backward=c.get("buf_backward", 0),
        )

    # ------------------------------------------------------------------ loop-side internals

    def _run_loop(self) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()
        # Cancel anything left so the loop closes without warnings.
        pending = [t for t in asyncio.all_tasks(self._loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))

    def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn()`` on the proxy loop and wait for it: control is synchronous."""
        if self._loop is None or self._thread is None:
            raise RuntimeError("FaultProxy not started")
        if threading.current_thread() is self._thread:
            raise RuntimeError("FaultProxy control called from its own thread")
        future: concurrent.futures.Future = asyncio.run_coroutine_threadsafe(fn(), self._loop)
        return future.result(CONTROL_TIMEOUT)

    def _count(self, name: str, n: int) -> None:
        if n:
            with self._lock:
                self._counters[name] += n

    async def _start_server(self) -> int:
        self._changed = asyncio.Event()
        self._server = await asyncio.start_server(self._on_accept, LOOPBACK, 0, limit=CHUNK)
        return self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            conn.abort(rst=False)
            if conn.supervisor is not None:
                conn.supervisor.cancel()
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), CONTROL_TIMEOUT / 2)
            except asyncio.TimeoutError:  # pragma: no cover
                pass

    def _set_mode(self, drop_fwd: Optional[bool] = None, drop_bwd: Optional[bool] = None,
                  hold: Optional[bool] = None, reject: Optional[bool] = None,
                  delay_s: Optional[float] = None) -> None:
        async def apply() -> None:
            if drop_fwd is not None:
                self._drop[FORWARD] = drop_fwd
            if drop_bwd is not None:
                self._drop[BACKWARD] = drop_bwd
            if hold is not None:
                self._hold = hold
            if delay_s is not None:
                self._delay_s = delay_s
            if reject is not None:
                self._reject = reject
            for conn in list(self._conns):
                if self._reject:
                    conn.abort(rst=True)
                    continue
                # Bytes already queued in a direction that now drops are lost.
                for d in DIRECTIONS:
                    if self._drop[d]:
                        n = await conn.queues[d].clear()
                        self._count(f"drop_{d}", n)
                        self._count(f"buf_{d}", -n)
            self._notify_changed()

        self._call(apply)

    def _notify_changed(self) -> None:
        """Wake every task waiting for the mode to change."""
        assert self._changed is not None
        old, self._changed = self._changed, asyncio.Event()
        old.set()

    async def _wait_until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            assert self._changed is not None
            await self._changed.wait()

    async def _on_accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._count("accepted", 1)
        conn = _Conn(reader, writer, self._max_buffer)
        conn.supervisor = asyncio.current_task()
        if self._reject or self._target is None:
            self._count("refused", 1)
            conn.abort(rst=True)
            return
        with self._lock:
            self._conns.add(conn)
        try:
            await self._serve(conn)
        except asyncio.CancelledError:
            pass
        finally:
            conn.abort(rst=False)
            with self._lock:
                self._conns.discard(conn)
                for d in DIRECTIONS:
                    self._counters[f"buf_{d}"] -= conn.queues[d].size

    async def _serve(self, conn: _Conn) -> None:
        loop = asyncio.get_running_loop()
        if all(self._drop.values()):
            # Accepted during a cut: the "handshake" never reaches the target.
            conn.tasks = [loop.create_task(self._discard(conn))]
            await asyncio.gather(*conn.tasks, return_exceptions=True)
            return
        assert self._target is not None
        try:
            conn.target_r, conn.target_w = await asyncio.wait_for(
                asyncio.open_connection(*self._target, limit=CHUNK), CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError):
            # Target down (e.g. a node restarting): the client sees a reset, as
            # it would connecting to a closed port.
            self._count("refused", 1)
            conn.abort(rst=True)
            return
        if conn.closed:  # dropped or reset while connecting
            _abort(conn.target_w, rst=True)
            return
        conn.tasks = [
            loop.create_task(self._pump_in(conn, FORWARD, conn.client_r)),
            loop.create_task(self._pump_out(conn, FORWARD, conn.target_w)),
            loop.create_task(self._pump_in(conn, BACKWARD, conn.target_r)),
            loop.create_task(self._pump_out(conn, BACKWARD, conn.client_w)),
        ]
        pending = set(conn.tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    # An error on one side (reset, broken pipe) is passed on as a reset.
                    conn.abort(rst=True)
                    await asyncio.gather(*pending, return_exceptions=True)
                    return
        conn.close()  # both directions finished cleanly: flush and close

    async def _discard(self, conn: _Conn) -> None:
        """Read and drop everything from a black-holed client until it goes away."""
        while True:
            try:
                data = await conn.client_r.read(CHUNK)
            except OSError:
                return
            if not data:
                return
            self._count(f"drop_{FORWARD}", len(data))

    async def _pump_in(self, conn: _Conn, d: str, src: asyncio.StreamReader) -> None:
        """Source → queue, honouring stall, drop, delay and the buffer bound."""
        loop = asyncio.get_running_loop()
        queue = conn.queues[d]
        while True:
            await self._wait_until(lambda: not self._hold)
            await queue.wait_space()
            try:
                data = await src.read(CHUNK)
            except OSError:
                if self._drop[d]:
                    # The reset is lost in the black hole like everything else.
                    data = b""
                else:
                    raise
            if not data:
                await queue.put_eof()
                return
            if self._drop[d]:
                self._count(f"drop_{d}", len(data))
                continue
            self._count(f"buf_{d}", len(data))
            await queue.put(loop.time() + self._delay_s, data)

    async def _pump_out(self, conn: _Conn, d: str, dst: Optional[asyncio.StreamWriter]) -> None:
        """Queue → destination, in order, each chunk not before its delivery time."""
        assert dst is not None
        loop = asyncio.get_running_loop()
        queue = conn.queues[d]
        while True:
            item = await queue.get()
            if item is None:
                # EOF: a black hole eats the FIN too; pass it on once the link is back.
                await self._wait_until(lambda: not self._drop[d] and not self._hold)
                if dst.can_write_eof():
                    dst.write_eof()
                return
            deliver_at, data = item
            self._count(f"buf_{d}", -len(data))
            wait = deliver_at - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            await self._wait_until(lambda: not self._hold)
            if self._drop[d]:
                self._count(f"drop_{d}", len(data))
                continue
            dst.write(data)
            self._count(f"fwd_{d}", len(data))
            await dst.drain()
