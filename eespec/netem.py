"""An in-process network emulator: an asyncio TCP proxy with delay, jitter, bandwidth, loss, stalls and cuts.

There is no tc/netem on our machines, so the benchmark harness and the tests put this proxy between the
edge and the cloud. Each accepted client gets its own upstream connection; bytes are relayed through two
links, ``"up"`` (client -> upstream) and ``"down"`` (upstream -> client). A chunk read at time ``a`` is
released at::

    finish  = max(a, wire_free) + len / bandwidth      # serialization; one wire per direction, shared
    release = max(previous release on this connection,  # TCP is in order: never reorder bytes
                  finish + delay + jitter sample [+ rto if "lost"])

and then held further while the direction is stalled. RTT is twice the one-way delay (DESIGN.md,
"Measuring"). Loss is modelled as one delayed retransmission: the chunk arrives ``rto`` late and holds the
bytes behind it (head-of-line blocking), as TCP would.

Scripting: :class:`NetworkEmulator` (``async with``, or :meth:`NetworkEmulator.start_in_thread` for
synchronous code). Its control methods may be called from any thread.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import math
import random
import re
import socket
import sys
import threading
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

Direction = Literal["up", "down"]
Directions = Literal["up", "down", "both"]
JitterDist = Literal["uniform", "normal"]

T = TypeVar("T")

READ_SIZE = 65536
# Bandwidth-limited chunks are cut into segments this size so delivery is smooth rather than one burst
# per 64 KiB read, and loss applies per segment (closer to per-packet).
SEGMENT_BYTES = 16384


@dataclass(frozen=True)
class LinkProfile:
    """One direction of the emulated link.

    delay_ms: one-way propagation delay. jitter_ms: spread added per chunk; ``"uniform"`` draws from
    [-jitter, +jitter], ``"normal"`` from N(0, jitter) (the total delay is clamped at 0). bandwidth_bps:
    the cap in **bytes** per second (None = unlimited). loss: probability that a chunk is "lost" and
    delivered one retransmission timeout late. rto_ms: that timeout; None = max(200 ms, 2 * RTT) with
    RTT = up.delay_ms + down.delay_ms.
    """

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    bandwidth_bps: float | None = None
    loss: float = 0.0
    rto_ms: float | None = None
    jitter_dist: JitterDist = "uniform"

    def __post_init__(self) -> None:
        if not (self.delay_ms >= 0 and math.isfinite(self.delay_ms)):
            raise ValueError(f"delay_ms must be >= 0, got {self.delay_ms}")
        if not (self.jitter_ms >= 0 and math.isfinite(self.jitter_ms)):
            raise ValueError(f"jitter_ms must be >= 0, got {self.jitter_ms}")
        if self.bandwidth_bps is not None and not (self.bandwidth_bps > 0):
            raise ValueError(f"bandwidth_bps must be > 0 or None, got {self.bandwidth_bps}")
        if not 0.0 <= self.loss <= 1.0:
            raise ValueError(f"loss must be in [0, 1], got {self.loss}")
        if self.rto_ms is not None and not (self.rto_ms >= 0):
            raise ValueError(f"rto_ms must be >= 0 or None, got {self.rto_ms}")
        if self.jitter_dist not in ("uniform", "normal"):
            raise ValueError(f"jitter_dist must be 'uniform' or 'normal', got {self.jitter_dist!r}")

    @classmethod
    def symmetric(
        cls,
        rtt_ms: float = 0.0,
        jitter_ms: float = 0.0,
        bandwidth_bps: float | None = None,
        loss: float = 0.0,
        rto_ms: float | None = None,
        jitter_dist: JitterDist = "uniform",
    ) -> LinkProfile:
        """The profile to use for *both* directions so that the round trip is ``rtt_ms``."""
        return cls(rtt_ms / 2.0, jitter_ms, bandwidth_bps, loss, rto_ms, jitter_dist)


def retransmission_timeout_ms(profile: LinkProfile, rtt_ms: float) -> float:
    """The extra delay of a "lost" chunk: ``profile.rto_ms``, else max(200 ms, 2 * RTT)."""
    return profile.rto_ms if profile.rto_ms is not None else max(200.0, 2.0 * rtt_ms)


@dataclass(frozen=True)
class NetemStats:
    """Counters since start; bytes and chunks count what was delivered to the far side."""

    connections_opened: int = 0
    connections_open: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    chunks_up: int = 0
    chunks_down: int = 0
    chunks_delayed: int = 0  # released later than they arrived (delay, jitter, bandwidth, loss, order)
    losses: int = 0
    stalled_chunks: int = 0  # held back by a stall
    forced_disconnects: int = 0  # disconnect_all, disconnect_when, disconnect_after


@dataclass(eq=False)
class DisconnectRule:
    """A forced-disconnect trigger (from :meth:`NetworkEmulator.disconnect_when` / ``disconnect_after``)."""

    direction: Directions
    once: bool
    predicate: Callable[[bytes], bool] | None = None
    after_bytes: int | None = None
    fired: int = 0
    remaining: dict[int, int] = dataclasses.field(default_factory=dict, repr=False)  # per connection


@dataclass
class _Item:
    release: float
    data: bytes  # b"" with eof=True: half-close the far side
    eof: bool = False
    cut: bool = False  # abort the connection once this chunk has been written
    stalled: bool = False


class _Lane:
    """Emulator-wide state of one direction: profile, the shared wire clock, stalls, rules."""

    def __init__(self, profile: LinkProfile) -> None:
        self.profile = profile
        self.wire_free = 0.0
        self.stalls: list[tuple[float, float]] = []
        self.rules: list[DisconnectRule] = []
        self.links: set[_Link] = set()

    def stall_end(self, now: float) -> float:
        """When the stall covering ``now`` ends (``now`` itself if none does; inf if open-ended)."""
        self.stalls = [w for w in self.stalls if w[1] > now]
        end = now
        changed = True
        while changed:  # windows may overlap or abut
            changed = False
            for start, stop in self.stalls:
                if start <= end < stop:
                    end, changed = stop, True
        return end


class _Link:
    """One direction of one connection: a reader task that schedules chunks and a writer task."""

    def __init__(
        self,
        conn: _Connection,
        direction: Direction,
        lane: _Lane,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.conn = conn
        self.direction = direction
        self.lane = lane
        self.reader = reader
        self.writer = writer
        self.queue: deque[_Item] = deque()
        self.queued_bytes = 0
        self.last_release = 0.0
        self.done = False  # EOF delivered
        self.rng = random.Random(f"{conn.emu.seed}:{conn.cid}:{direction}")
        self._wake: asyncio.Future[None] | None = None
        self._room = asyncio.Event()
        self._room.set()

    def _push(self, item: _Item) -> None:
        self.queue.append(item)
        self.queued_bytes += len(item.data)
        if len(self.queue) == 1:  # otherwise the writer is waiting for an earlier item, not for this one
            self.poke()

    def poke(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def _wait(self, when: float | None) -> None:
        """Sleep until loop time ``when`` (forever if None) or until poked."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._wake = fut
        handle = None
        if when is not None and math.isfinite(when):
            handle = loop.call_at(when, lambda: fut.done() or fut.set_result(None))
        try:
            await fut
        finally:
            self._wake = None
            if handle is not None:
                handle.cancel()

    def _schedule(self, data: bytes, arrival: float, cut: bool) -> None:
        emu = self.conn.emu
        p = self.lane.profile
        segments = [data]
        if p.bandwidth_bps is not None and len(data) > SEGMENT_BYTES:
            segments = [data[i : i + SEGMENT_BYTES] for i in range(0, len(data), SEGMENT_BYTES)]
        for k, seg in enumerate(segments):
            finish = arrival
            if p.bandwidth_bps is not None:
                finish = max(arrival, self.lane.wire_free) + len(seg) / p.bandwidth_bps
                self.lane.wire_free = finish
            delay_ms = p.delay_ms
            if p.jitter_ms > 0:
                if p.jitter_dist == "uniform":
                    delay_ms += self.rng.uniform(-p.jitter_ms, p.jitter_ms)
                else:
                    delay_ms += self.rng.gauss(0.0, p.jitter_ms)
            release = finish + max(0.0, delay_ms) / 1000.0
            if p.loss > 0 and self.rng.random() < p.loss:
                emu._counters["losses"] += 1
                release += emu.rto_ms(self.direction) / 1000.0
            release = max(release, self.last_release)
            self.last_release = release
            if release > arrival:
                emu._counters["chunks_delayed"] += 1
            self._push(_Item(release, seg, cut=cut and k == len(segments) - 1))
        if self.queued_bytes > emu.max_buffer_bytes:
            self._room.clear()

    def _apply_rules(self, data: bytes) -> tuple[bytes, bool]:
        """Cut ``data`` short / mark it as the last chunk if a disconnect rule fires."""
        for rule in list(self.lane.rules):
            if rule.predicate is not None:
                fire = bool(rule.predicate(data))
            else:
                assert rule.after_bytes is not None
                left = rule.remaining.get(self.conn.cid, rule.after_bytes)
                fire = left <= len(data)
                if fire:
                    data = data[:left]
                else:
                    rule.remaining[self.conn.cid] = left - len(data)
            if fire:
                rule.fired += 1
                if rule.once:
                    for lane in self.conn.emu._lanes.values():
                        if rule in lane.rules:
                            lane.rules.remove(rule)
                return data, True
        return data, False

    async def read_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._room.wait()
            data = await self.reader.read(READ_SIZE)
            now = loop.time()
            if not data:
                release = max(now + self.lane.profile.delay_ms / 1000.0, self.last_release)
                self._push(_Item(release, b"", eof=True))
                return
            data, cut = self._apply_rules(data)
            if data:
                self._schedule(data, now, cut)
            elif cut:  # cut after exactly 0 more bytes
                self._push(_Item(self.last_release, b"", cut=True))
            if cut:
                return

    async def write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        emu = self.conn.emu
        while True:
            if not self.queue:
                await self._wait(None)
                continue
            item = self.queue[0]
            now = loop.time()
            if item.release > now:
                await self._wait(item.release)
                continue
            end = self.lane.stall_end(now)
            if end > now:
                if not item.stalled:
                    emu._counters["stalled_chunks"] += 1
                    item.stalled = True
                await self._wait(end)
                continue
            self.queue.popleft()
            if item.eof:
                self.done = True
                if self.writer.can_write_eof():
                    self.writer.write_eof()
                self.conn.half_closed()
                return
            if item.data:
                self.writer.write(item.data)
                self.queued_bytes -= len(item.data)
                self.conn.bytes[self.direction] += len(item.data)
                emu._counters[f"bytes_{self.direction}"] += len(item.data)
                emu._counters[f"chunks_{self.direction}"] += 1
                if self.queued_bytes <= emu.max_buffer_bytes // 2:
                    self._room.set()
                await self.writer.drain()
            if item.cut:
                emu._counters["forced_disconnects"] += 1
                self.conn.abort(f"cut after {self.direction} chunk")
                return


class _Connection:
    def __init__(
        self, emu: NetworkEmulator, cid: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.emu = emu
        self.cid = cid
        self.client_reader = reader
        self.client_writer = writer
        self.upstream_writer: asyncio.StreamWriter | None = None
        self.links: list[_Link] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.reason = "closed"
        self.closed = asyncio.Event()
        self.bytes = {"up": 0, "down": 0}

    def _transports(self) -> list[asyncio.BaseTransport]:
        writers = [self.client_writer] + ([self.upstream_writer] if self.upstream_writer else [])
        return [w.transport for w in writers]

    def abort(self, reason: str) -> None:
        """Reset both sides now; queued data is dropped."""
        if self.closed.is_set():
            return
        self.reason = reason
        for transport in self._transports():
            transport.abort()  # type: ignore[attr-defined]
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        self.closed.set()

    def half_closed(self) -> None:
        if self.links and all(link.done for link in self.links) and not self.closed.is_set():
            for transport in self._transports():
                transport.close()
            self.closed.set()

    async def _guard(self, loop_fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        try:
            await loop_fn()
        except (ConnectionError, OSError) as exc:
            self.abort(type(exc).__name__)
        except Exception as exc:  # a failing predicate, say: reset the connection and say why
            self.abort(f"error: {exc!r}")

    async def run(self) -> None:
        emu = self.emu
        peer = _fmt(self.client_writer.get_extra_info("peername"))
        _nodelay(self.client_writer)
        try:
            up_reader, self.upstream_writer = await asyncio.open_connection(
                emu.upstream_host, emu.upstream_port
            )
        except OSError as exc:
            emu._event(f"netem #{self.cid} {peer}: upstream {emu.upstream} connect failed: {exc}")
            self.client_writer.transport.abort()  # type: ignore[attr-defined]
            return
        _nodelay(self.upstream_writer)
        if self.closed.is_set():  # stopped or disconnected while connecting
            self.upstream_writer.transport.abort()  # type: ignore[attr-defined]
            return
        emu._event(f"netem #{self.cid} open {peer} -> {emu.upstream}")
        loop = asyncio.get_running_loop()
        opened = loop.time()
        self.links = [
            _Link(self, "up", emu._lanes["up"], self.client_reader, self.upstream_writer),
            _Link(self, "down", emu._lanes["down"], up_reader, self.client_writer),
        ]
        for link in self.links:
            link.lane.links.add(link)
            self.tasks.append(asyncio.create_task(self._guard(link.read_loop)))
            self.tasks.append(asyncio.create_task(self._guard(link.write_loop)))
        try:
            await self.closed.wait()
        finally:
            for link in self.links:
                link.lane.links.discard(link)
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            for transport in self._transports():
                if not transport.is_closing():
                    transport.abort()  # type: ignore[attr-defined]
            emu._event(
                f"netem #{self.cid} close ({self.reason}) after {loop.time() - opened:.3f} s, "
                f"up {self.bytes['up']} B, down {self.bytes['down']} B"
            )


class NetworkEmulator:
    """A TCP proxy from ``listen_host:listen_port`` to ``upstream_host:upstream_port`` through two links.

    ``up`` shapes client -> upstream, ``down`` upstream -> client. Each direction is one emulated wire
    shared by all connections (bandwidth is shared, stalls and rules apply to every connection); delay,
    jitter and loss are drawn per chunk from an RNG seeded by (seed, connection number, direction).
    Control methods (``set_profile``, ``stall``, ``disconnect_*``, ``stats``...) may be called from any
    thread; from another thread they run on the emulator's loop and return its result.
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        up: LinkProfile | None = None,
        down: LinkProfile | None = None,
        seed: int = 0,
        max_buffer_bytes: int = 4 << 20,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.seed = seed
        # Per direction and connection, bytes accepted but not yet delivered; above it we stop reading.
        self.max_buffer_bytes = max_buffer_bytes
        self.on_event = on_event
        self._lanes: dict[Direction, _Lane] = {
            "up": _Lane(up or LinkProfile()),
            "down": _Lane(down or LinkProfile()),
        }
        self._counters: dict[str, int] = {
            f.name: 0 for f in dataclasses.fields(NetemStats) if f.name != "connections_open"
        }
        self._conns: dict[int, _Connection] = {}
        self._conn_tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread_id: int | None = None
        self._next_cid = 0
        self.host = listen_host
        self.port = listen_port

    # -- addresses ---------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """``host:port`` the emulator listens on (the real port once started)."""
        return _join_hostport(self.host, self.port)

    @property
    def upstream(self) -> str:
        return _join_hostport(self.upstream_host, self.upstream_port)

    def url(self, path: str = "", scheme: str = "http") -> str:
        """E.g. ``url("/v1/speculate", "ws")`` -> ``ws://127.0.0.1:PORT/v1/speculate``."""
        return f"{scheme}://{self.address}{path}"

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> NetworkEmulator:
        if self._server is not None:
            raise RuntimeError("emulator already started")
        self._loop = asyncio.get_running_loop()
        self._thread_id = threading.get_ident()
        self._server = await asyncio.start_server(self._accept, self.listen_host, self.listen_port)
        sockname = self._server.sockets[0].getsockname()
        self.host, self.port = sockname[0], sockname[1]
        return self

    async def stop(self) -> None:
        """Stop listening and reset every open connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for conn in list(self._conns.values()):
            conn.abort("emulator stopped")
        await asyncio.gather(*self._conn_tasks, return_exceptions=True)
        await server.wait_closed()

    async def __aenter__(self) -> NetworkEmulator:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def start_in_thread(self, timeout: float = 10.0) -> EmulatorThread:
        """Run the emulator on its own event loop in a daemon thread (for synchronous callers)."""
        return EmulatorThread(self, timeout)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._next_cid += 1
        conn = _Connection(self, self._next_cid, reader, writer)
        task = asyncio.current_task()
        assert task is not None
        self._conns[conn.cid] = conn
        self._conn_tasks.add(task)
        self._counters["connections_opened"] += 1
        try:
            await conn.run()
        finally:
            self._conns.pop(conn.cid, None)
            self._conn_tasks.discard(task)

    def _event(self, line: str) -> None:
        if self.on_event is not None:
            self.on_event(line)

    def _call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the emulator's loop, waiting for it when called from another thread."""
        loop = self._loop
        if loop is None or self._thread_id == threading.get_ident() or not loop.is_running():
            return fn()
        result: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                result.set_result(fn())
            except BaseException as exc:
                result.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return result.result(timeout=30)

    def _lanes_for(self, direction: Directions) -> list[_Lane]:
        if direction == "both":
            return [self._lanes["up"], self._lanes["down"]]
        if direction not in ("up", "down"):
            raise ValueError(f"direction must be 'up', 'down' or 'both', got {direction!r}")
        return [self._lanes[direction]]

    # -- shaping -----------------------------------------------------------------------------------

    def profile(self, direction: Direction) -> LinkProfile:
        return self._lanes_for(direction)[0].profile

    def set_profile(
        self, direction: Directions = "both", profile: LinkProfile | None = None, **changes: Any
    ) -> None:
        """Replace a direction's profile, or change some fields (``set_profile("up", delay_ms=80)``).

        Applies to chunks read from now on; chunks already scheduled keep their release times.
        """

        def apply() -> None:
            lanes = self._lanes_for(direction)
            new = [dataclasses.replace(profile or lane.profile, **changes) for lane in lanes]
            for lane, prof in zip(lanes, new, strict=True):
                lane.profile = prof

        self._call(apply)

    def rto_ms(self, direction: Direction) -> float:
        """The retransmission timeout a "lost" chunk in ``direction`` gets now."""
        rtt = self._lanes["up"].profile.delay_ms + self._lanes["down"].profile.delay_ms
        return retransmission_timeout_ms(self._lanes[direction].profile, rtt)

    def stall(self, direction: Directions, seconds: float | None, *, start_in: float = 0.0) -> None:
        """Hold all data in ``direction`` for ``seconds`` (None: until :meth:`resume`), from ``start_in`` s.

        Held chunks are then delivered at once, in order; nothing is dropped.
        """
        if seconds is not None and seconds < 0 or start_in < 0:
            raise ValueError("stall wants seconds >= 0 (or None) and start_in >= 0")

        def apply() -> None:
            assert self._loop is not None, "start the emulator first"
            start = self._loop.time() + start_in
            end = math.inf if seconds is None else start + seconds
            for lane in self._lanes_for(direction):
                lane.stalls.append((start, end))
                for link in lane.links:
                    link.poke()

        self._call(apply)

    def resume(self, direction: Directions = "both") -> None:
        """End every current and scheduled stall in ``direction`` now."""

        def apply() -> None:
            for lane in self._lanes_for(direction):
                lane.stalls.clear()
                for link in lane.links:
                    link.poke()

        self._call(apply)

    # -- forced disconnects ------------------------------------------------------------------------

    def disconnect_all(self) -> int:
        """Reset every open connection now (both sides, ``transport.abort()``); returns how many."""

        def apply() -> int:
            conns = list(self._conns.values())
            for conn in conns:
                conn.abort("disconnect_all")
            self._counters["forced_disconnects"] += len(conns)
            return len(conns)

        return self._call(apply)

    def disconnect_when(
        self, direction: Directions, predicate: Callable[[bytes], bool], *, once: bool = True
    ) -> DisconnectRule:
        """Reset a connection right after a chunk for which ``predicate(chunk)`` is true is delivered.

        The predicate sees each raw chunk as read from the sender (a TCP read: it may hold several
        application messages, or part of one). Websocket frames from a client are masked, so match
        plaintext on ``"down"`` (server -> client) chunks, and only when permessage-deflate is off (the
        ``websockets`` client negotiates it by default: ``connect(..., compression=None)``). With
        ``once`` the rule is spent after it fires on one connection; otherwise it stays (see
        :meth:`clear_rules`).
        """
        return self._add_rules(direction, once, predicate=predicate)

    def disconnect_after(self, direction: Directions, nbytes: int, *, once: bool = True) -> DisconnectRule:
        """Reset a connection once exactly ``nbytes`` more bytes have passed in ``direction``.

        Counted per connection from this call on (with ``"both"``, the two directions together).
        """
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        return self._add_rules(direction, once, after_bytes=nbytes)

    def _add_rules(self, direction: Directions, once: bool, **kwargs: Any) -> DisconnectRule:
        def apply() -> DisconnectRule:
            rule = DisconnectRule(direction, once, **kwargs)
            for lane in self._lanes_for(direction):
                if rule.after_bytes is not None:  # count from now for connections already open
                    rule.remaining.update({link.conn.cid: rule.after_bytes for link in lane.links})
                lane.rules.append(rule)
            return rule

        return self._call(apply)

    def clear_rules(self, direction: Directions = "both") -> None:
        def apply() -> None:
            for lane in self._lanes_for(direction):
                lane.rules.clear()

        self._call(apply)

    # -- counters ----------------------------------------------------------------------------------

    def stats(self) -> NetemStats:
        return self._call(lambda: NetemStats(connections_open=len(self._conns), **self._counters))


class EmulatorThread:
    """A :class:`NetworkEmulator` running on its own loop in a daemon thread; ``stop()`` ends both."""

    def __init__(self, emulator: NetworkEmulator, timeout: float = 10.0) -> None:
        self.emulator = emulator
        self.loop = asyncio.new_event_loop()
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._main, args=(started,), name="netem", daemon=True)
        self._thread.start()
        started.result(timeout=timeout)

    def _main(self, started: concurrent.futures.Future[None]) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.emulator.start())
        except BaseException as exc:
            started.set_exception(exc)
            self.loop.close()
            return
        started.set_result(None)
        try:
            self.loop.run_forever()
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    @property
    def host(self) -> str:
        return self.emulator.host

    @property
    def port(self) -> int:
        return self.emulator.port

    @property
    def address(self) -> str:
        return self.emulator.address

    def url(self, path: str = "", scheme: str = "http") -> str:
        return self.emulator.url(path, scheme)

    def stop(self, timeout: float = 10.0) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self.emulator.stop(), self.loop).result(timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)

    def __enter__(self) -> EmulatorThread:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# -- helpers and the command line ------------------------------------------------------------------


def _fmt(addr: Any) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return _join_hostport(str(addr[0]), int(addr[1]))
    return str(addr)


def _join_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def parse_hostport(text: str) -> tuple[str, int]:
    """``"HOST:PORT"`` or ``"[v6]:PORT"`` -> (host, port)."""
    m = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\[\]]*):(\d+)", text.strip())
    if not m:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    host = m.group(1) or m.group(3) or "127.0.0.1"
    port = int(m.group(2) or m.group(4))
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in {text!r}")
    return host, port


_RATE_PREFIX = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "ki": 1024, "mi": 1024**2, "gi": 1024**3}


def parse_rate(text: str) -> float:
    """A rate in bytes/s: ``"125000"``, ``"1MB"``, ``"1MB/s"``, ``"64KiB"``; ``b``/``bit`` means bits
    (``"8Mbit"``, ``"8Mbps"`` -> 1e6)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([kKmMgG]i?)?(B|bit|b)?(/s|ps)?\s*", text)
    if not m:
        raise ValueError(f"cannot parse rate {text!r} (e.g. 125000, 1MB, 8Mbit)")
    value = float(m.group(1)) * _RATE_PREFIX[(m.group(2) or "").lower()]
    if m.group(3) in ("b", "bit"):
        value /= 8
    if value <= 0:
        raise ValueError(f"rate must be > 0, got {text!r}")
    return value


def run_netem(
    listen: str,
    upstream: str,
    delay_ms: float = 0.0,
    jitter_ms: float = 0.0,
    bandwidth_bps: float | None = None,
    loss: float = 0.0,
    seed: int = 0,
    *,
    rto_ms: float | None = None,
    jitter_dist: JitterDist = "uniform",
) -> int:
    """Run a proxy until Ctrl-C with the same profile both ways (``delay_ms`` one-way: RTT = 2x it).

    Prints one line when listening and one per connection opened and closed. Returns the exit code.
    """
    lhost, lport = parse_hostport(listen)
    uhost, uport = parse_hostport(upstream)
    profile = LinkProfile(delay_ms, jitter_ms, bandwidth_bps, loss, rto_ms, jitter_dist)

    async def serve() -> None:
        emu = NetworkEmulator(
            uhost,
            uport,
            listen_host=lhost,
            listen_port=lport,
            up=profile,
            down=profile,
            seed=seed,
            on_event=lambda line: print(line, flush=True),
        )
        async with emu:
            bw = "unlimited" if bandwidth_bps is None else f"{bandwidth_bps:.0f} B/s"
            print(
                f"netem listening on {emu.address} -> {emu.upstream}: delay {delay_ms:g} ms each way "
                f"(RTT {2 * delay_ms:g} ms), jitter {jitter_ms:g} ms, bandwidth {bw}, loss {loss:g}, "
                f"rto {emu.rto_ms('up'):g} ms, seed {seed}",
                flush=True,
            )
            await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        print("netem stopped", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m eespec.netem --listen HOST:PORT --upstream HOST:PORT [--delay-ms ...]``."""
    ap = argparse.ArgumentParser(prog="eespec netem", description=run_netem.__doc__)
    ap.add_argument("--listen", required=True, help="HOST:PORT to accept clients on (port 0: any)")
    ap.add_argument("--upstream", required=True, help="HOST:PORT to connect each client to")
    ap.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay, each direction")
    ap.add_argument("--jitter-ms", type=float, default=0.0)
    ap.add_argument("--jitter-dist", choices=["uniform", "normal"], default="uniform")
    ap.add_argument("--bandwidth", type=parse_rate, default=None, help="bytes/s, or 1MB, 8Mbit ...")
    ap.add_argument("--loss", type=float, default=0.0, help="probability a chunk is retransmitted")
    ap.add_argument("--rto-ms", type=float, default=None, help="default max(200, 2*RTT)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        return run_netem(
            args.listen,
            args.upstream,
            args.delay_ms,
            args.jitter_ms,
            args.bandwidth,
            args.loss,
            args.seed,
            rto_ms=args.rto_ms,
            jitter_dist=args.jitter_dist,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
