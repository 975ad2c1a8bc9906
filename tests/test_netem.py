"""The network emulator (eespec.netem) on loopback: delay, jitter, bandwidth, loss, stalls, cuts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import socketserver
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, ConnectionClosedError

from eespec.netem import (
    LinkProfile,
    NetworkEmulator,
    parse_hostport,
    parse_rate,
    retransmission_timeout_ms,
)

RECORD = 8  # b"%07d\n"


# -- upstream servers ------------------------------------------------------------------------------


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


class Sink:
    """Collects what arrives, timestamping each complete record (loop time)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.arrivals: list[float] = []  # per record
        self.total = asyncio.Event()
        self.expect = 0
        self.eof = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                now = loop.time()
                self.data += chunk
                self.arrivals += [now] * (len(self.data) // RECORD - len(self.arrivals))
                if self.expect and len(self.data) >= self.expect:
                    self.total.set()
        self.eof.set()
        writer.close()


@contextlib.asynccontextmanager
async def sink_server(sink: Sink) -> AsyncIterator[int]:
    server = await asyncio.start_server(sink.handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def rtt_ms(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int = 5) -> list[float]:
    out = []
    for i in range(n):
        msg = b"ping%04d" % i
        t = time.perf_counter()
        writer.write(msg)
        assert await asyncio.wait_for(reader.readexactly(len(msg)), 5) == msg
        out.append((time.perf_counter() - t) * 1000)
    return out


async def read_to_end(reader: asyncio.StreamReader, timeout: float = 3.0) -> bytes:
    """Everything until EOF or a reset (either is how a forced disconnect shows)."""
    buf = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := await asyncio.wait_for(reader.read(65536), timeout):
            buf += chunk
    return buf


async def send_records(writer: asyncio.StreamWriter, n: int, gap_s: float) -> list[float]:
    loop = asyncio.get_running_loop()
    sent = []
    for i in range(n):
        writer.write(b"%07d\n" % i)
        sent.append(loop.time())
        await asyncio.sleep(gap_s)
    return sent


def records(n: int) -> bytes:
    return b"".join(b"%07d\n" % i for i in range(n))


# -- profile and parsing ---------------------------------------------------------------------------


def test_profile_helpers_and_validation() -> None:
    p = LinkProfile.symmetric(rtt_ms=100, jitter_ms=5, bandwidth_bps=1e6)
    assert (p.delay_ms, p.jitter_ms, p.bandwidth_bps, p.loss) == (50, 5, 1e6, 0)
    assert retransmission_timeout_ms(LinkProfile(), rtt_ms=40) == 200
    assert retransmission_timeout_ms(LinkProfile(), rtt_ms=300) == 600
    assert retransmission_timeout_ms(LinkProfile(rto_ms=50), rtt_ms=300) == 50
    for bad in ({"delay_ms": -1}, {"jitter_ms": -1}, {"bandwidth_bps": 0}, {"loss": 1.5}, {"rto_ms": -1}):
        with pytest.raises(ValueError):
            LinkProfile(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        LinkProfile(jitter_dist="pareto")  # type: ignore[arg-type]
    assert NetworkEmulator("h", 1, up=LinkProfile(30), down=LinkProfile(20)).rto_ms("up") == 200
    assert parse_rate("125000") == 125000
    assert parse_rate("1MB/s") == 1e6
    assert parse_rate("8Mbit") == parse_rate("8Mbps") == 1e6
    assert parse_rate("64KiB") == 65536
    with pytest.raises(ValueError):
        parse_rate("fast")
    assert parse_hostport("127.0.0.1:8000") == ("127.0.0.1", 8000)
    assert parse_hostport("[::1]:9") == ("::1", 9)
    with pytest.raises(ValueError):
        parse_hostport("localhost")


# -- delay, jitter, bandwidth, loss ------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("delay_ms", [0, 50])
async def test_rtt_is_twice_the_one_way_delay(delay_ms: float) -> None:
    async with (
        echo_server() as port,
        NetworkEmulator("127.0.0.1", port, up=LinkProfile(delay_ms), down=LinkProfile(delay_ms)) as emu,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", emu.port)
        rtts = await rtt_ms(reader, writer)
        writer.close()
    if delay_ms == 0:
        assert statistics.median(rtts) < 10, rtts
    else:
        assert min(rtts) >= 2 * delay_ms - 1, rtts
        assert statistics.median(rtts) < 2 * delay_ms + 30, rtts


@pytest.mark.asyncio
async def test_set_profile_applies_to_new_chunks() -> None:
    async with echo_server() as port, NetworkEmulator("127.0.0.1", port) as emu:
        reader, writer = await asyncio.open_connection("127.0.0.1", emu.port)
        assert statistics.median(await rtt_ms(reader, writer, 3)) < 10
        emu.set_profile("both", LinkProfile.symmetric(rtt_ms=60))
        assert emu.profile("up").delay_ms == 30
        rtts = await rtt_ms(reader, writer, 3)
        assert min(rtts) >= 59 and max(rtts) < 90, rtts
        emu.set_profile("down", delay_ms=0)
        rtts = await rtt_ms(reader, writer, 3)
        assert min(rtts) >= 29 and max(rtts) < 60, rtts
        writer.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("dist", ["uniform", "normal"])
async def test_jitter_spreads_delays_but_never_reorders(dist: str) -> None:
    sink = Sink()
    n = 40
    profile = LinkProfile(delay_ms=25, jitter_ms=15, jitter_dist=dist)  # type: ignore[arg-type]
    async with sink_server(sink) as port, NetworkEmulator("127.0.0.1", port, up=profile, seed=7) as emu:
        _, writer = await asyncio.open_connection("127.0.0.1", emu.port)
        sent = await send_records(writer, n, 0.004)
        writer.close()
        await asyncio.wait_for(sink.eof.wait(), 5)
    assert bytes(sink.data) == records(n)
    lat = [(a - s) * 1000 for a, s in zip(sink.arrivals, sent, strict=True)]
    assert min(lat) >= (10 - 1 if dist == "uniform" else 0), lat
    assert max(lat) - min(lat) > 8, lat  # the delays spread
    assert max(lat) < 25 + 4 * 15 + 20, lat


@pytest.mark.asyncio
@pytest.mark.parametrize("direction", ["up", "down"])
async def test_bandwidth_cap(direction: str) -> None:
    size, rate = 256_000, 1_000_000
    payload = os.urandom(size)
    capped = LinkProfile(bandwidth_bps=rate)
    sink = Sink()
    sink.expect = size

    async def source(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(payload)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(sink.handle if direction == "up" else source, "127.0.0.1", 0)
    kwargs = {direction: capped}
    async with NetworkEmulator("127.0.0.1", server.sockets[0].getsockname()[1], **kwargs) as emu:  # type: ignore[arg-type]
        t = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", emu.port)
        if direction == "up":
            writer.write(payload)
            await asyncio.wait_for(sink.total.wait(), 5)
            got = bytes(sink.data)
        else:
            got = await asyncio.wait_for(reader.readexactly(size), 5)
        elapsed = time.perf_counter() - t
        writer.close()
    server.close()
    assert got == payload
    assert 0.7 * size / rate <= elapsed <= 1.3 * size / rate, elapsed


@pytest.mark.asyncio
async def test_backpressure_keeps_data_intact() -> None:
    payload = os.urandom(600_000)
    async with (
        echo_server() as port,
        NetworkEmulator("127.0.0.1", port, up=LinkProfile(bandwidth_bps=8e6), max_buffer_bytes=32768) as emu,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", emu.port)
        writer.write(payload)
        assert await asyncio.wait_for(reader.readexactly(len(payload)), 5) == payload
        writer.close()


@pytest.mark.asyncio
async def test_loss_delivers_late_by_rto_and_is_seeded() -> None:
    rto, n = 60.0, 16

    async def once() -> tuple[list[float], int]:
        sink = Sink()
        profile = LinkProfile(loss=0.5, rto_ms=rto)
        async with sink_server(sink) as port, NetworkEmulator("127.0.0.1", port, up=profile, seed=1) as emu:
            _, writer = await asyncio.open_connection("127.0.0.1", emu.port)
            sent = await send_records(writer, n, 0.02)
            writer.close()
            await asyncio.wait_for(sink.eof.wait(), 5)
            losses = emu.stats().losses
        assert bytes(sink.data) == records(n)
        return [(a - s) * 1000 for a, s in zip(sink.arrivals, sent, strict=True)], losses

    lat, losses = await once()
    assert 0 < losses < n
    assert min(lat) < 10, lat  # some got through at once
    assert rto - 1 <= max(lat) <= rto + 25, lat  # a lost one arrives one rto late
    assert (await once())[1] == losses


# -- stalls ------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_stall_holds_data_then_releases_it() -> None:
    async with echo_server() as port, NetworkEmulator("127.0.0.1", port) as emu:
        reader, writer = await asyncio.open_connection("127.0.0.1", emu.port)
        emu.stall("down", 0.2)
        (held,) = await rtt_ms(reader, writer, 1)
        assert 195 <= held < 260, held
        assert emu.stats().stalled_chunks >= 1
        assert max(await rtt_ms(reader, writer, 2)) < 10  # over

        emu.stall("up", None)  # until resume()
        writer.write(b"held")
        echo = asyncio.ensure_future(reader.readexactly(4))
        done, _ = await asyncio.wait({echo}, timeout=0.1)
        assert not done
        emu.resume()
        assert await asyncio.wait_for(echo, 1) == b"held"

        emu.stall("both", 0.1, start_in=0.05)  # scheduled: not yet
        assert max(await rtt_ms(reader, writer, 1)) < 10
        await asyncio.sleep(0.06)
        (held,) = await rtt_ms(reader, writer, 1)
        assert 50 < held < 130, held
        writer.close()


# -- forced disconnects ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_disconnect_all_resets_and_keeps_accepting() -> None:
    events: list[str] = []
    async with echo_server() as port, NetworkEmulator("127.0.0.1", port, on_event=events.append) as emu:
        reader, writer = await asyncio.open_connection("127.0.0.1", emu.port)
        await rtt_ms(reader, writer, 1)
        assert emu.stats().connections_open == 1
        assert emu.disconnect_all() == 1
        assert await read_to_end(reader) == b""
        writer.close()
        reader2, writer2 = await asyncio.open_connection("127.0.0.1", emu.port)
        await rtt_ms(reader2, writer2, 1)
        writer2.close()
        await asyncio.sleep(0.02)
        stats = emu.stats()
    assert (stats.connections_opened, stats.forced_disconnects) == (2, 1)
    assert any("open" in e for e in events) and any("close (disconnect_all)" in e for e in events)


@pytest.mark.asyncio
async def test_disconnect_when_predicate_cuts_right_after_the_chunk() -> None:
    sink = Sink()
    async with sink_server(sink) as port, NetworkEmulator("127.0.0.1", port) as emu:
        rule = emu.disconnect_when("up", lambda chunk: b"CUT!" in chunk)
        reader, writer = await asyncio.open_connection("127.0.0.1", emu.port)
        writer.write(b"aaaa")
        await asyncio.sleep(0.02)
        writer.write(b"CUT!")
        assert await read_to_end(reader) == b""  # the client sees EOF or a reset
        await asyncio.wait_for(sink.eof.wait(), 2)  # and so does the upstream
        assert bytes(sink.data) == b"aaaaCUT!"  # the matching chunk itself got through
        assert rule.fired == 1
        writer.close()

        sink.data.clear()
        sink.eof.clear()
        reader, writer = await asyncio.open_connection("127.0.0.1", emu.port)
        writer.write(b"CUT!")  # once=True: spent
        writer.write_eof()
        await asyncio.wait_for(sink.eof.wait(), 2)
        assert bytes(sink.data) == b"CUT!"
        writer.close()


@pytest.mark.asyncio
async def test_disconnect_after_bytes_and_failing_predicate() -> None:
    events: list[str] = []
    async with echo_server() as port, NetworkEmulator("127.0.0.1", port, on_event=events.append) as emu:
        emu.disconnect_after("down", 10)
        reader, writer = await asyncio.open_connection("127.0.0.1", emu.port)
        writer.write(b"0123456789abcdef")
        assert await read_to_end(reader) == b"0123456789"
        writer.close()

        emu.disconnect_when("up", lambda chunk: 1 / 0 > 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", emu.port)
        writer.write(b"x")
        assert await read_to_end(reader) == b""
        writer.close()
        await asyncio.sleep(0.02)
    assert any("ZeroDivisionError" in e for e in events), events


@pytest.mark.asyncio
async def test_unreachable_upstream_closes_the_client() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    events: list[str] = []
    async with NetworkEmulator("127.0.0.1", dead, on_event=events.append) as emu:
        reader, writer = await asyncio.open_connection("127.0.0.1", emu.port)
        assert await read_to_end(reader) == b""
        writer.close()
    assert any("connect failed" in e for e in events)


# -- websockets through the emulator ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_websocket_end_to_end_and_cut_after_a_server_frame() -> None:
    async def handler(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                await ws.send(message)

    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with NetworkEmulator("127.0.0.1", port, up=LinkProfile(10), down=LinkProfile(10)) as emu:
            # permessage-deflate would hide "MARK" from the predicate
            async with connect(emu.url("/echo", scheme="ws"), compression=None) as ws:
                t = time.perf_counter()
                await ws.send("hello")
                assert await ws.recv() == "hello"
                assert (time.perf_counter() - t) * 1000 >= 19

                rule = emu.disconnect_when("down", lambda chunk: b"MARK" in chunk)
                await ws.send("MARK-1")
                assert await ws.recv() == "MARK-1"  # delivered, then the cut
                with pytest.raises(ConnectionClosedError):
                    await ws.recv()
            assert rule.fired == 1
            async with connect(emu.url(scheme="ws")) as ws:  # still accepting; the rule is spent
                await ws.send("MARK-2")
                assert await ws.recv() == "MARK-2"


# -- synchronous use ---------------------------------------------------------------------------------


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        with contextlib.suppress(OSError):
            while data := self.request.recv(65536):
                self.request.sendall(data)


@contextlib.contextmanager
def threaded_echo() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _EchoHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _sync_rtt_ms(sock: socket.socket) -> float:
    t = time.perf_counter()
    sock.sendall(b"ping")
    got = b""
    while len(got) < 4:
        got += sock.recv(4)
    return (time.perf_counter() - t) * 1000


def test_start_in_thread_for_synchronous_callers() -> None:
    with threaded_echo() as port:
        emu = NetworkEmulator("127.0.0.1", port, up=LinkProfile(20), down=LinkProfile(20))
        with emu.start_in_thread() as running:
            with socket.create_connection(("127.0.0.1", running.port), timeout=5) as sock:
                assert 39 <= _sync_rtt_ms(sock) < 70
                emu.set_profile(delay_ms=0)  # from this thread
                emu.stall("down", 0.1)
                assert 95 <= _sync_rtt_ms(sock) < 150
                assert emu.stats().connections_open == 1
                assert emu.disconnect_all() == 1
                assert sock.recv(10) == b""
            assert running.url("/x", "ws") == f"ws://127.0.0.1:{running.port}/x"
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", running.port), timeout=1).close()


def test_command_line_runs_until_interrupted() -> None:
    with (
        threaded_echo() as port,
        subprocess.Popen(
            [sys.executable, "-m", "eespec.netem", "--listen", "127.0.0.1:0"]
            + ["--upstream", f"127.0.0.1:{port}", "--delay-ms", "5", "--bandwidth", "8Mbit"],
            stdout=subprocess.PIPE,
            text=True,
            # Ctrl-C as a terminal delivers it: a suite started in the background by a non-interactive
            # shell (`cmd &`) inherits SIGINT ignored, and the child would never see the signal.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        ) as proc,
    ):
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", first)
            assert m, first
            assert "1000000 B/s" in first
            with socket.create_connection(("127.0.0.1", int(m.group(1))), timeout=5) as sock:
                assert _sync_rtt_ms(sock) >= 9
            assert " open " in proc.stdout.readline()
            assert " close (closed)" in proc.stdout.readline()
            proc.send_signal(signal.SIGINT)
            assert proc.wait(5) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
