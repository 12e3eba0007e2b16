"""A TCP proxy that delays every byte by a fixed one-way time and counts PostgreSQL round trips.

The kernel here has no ``netem`` qdisc, so a slow link is made in user space: each direction is a
queue whose chunks are written ``delay`` seconds after they were read, in order and without a
bandwidth limit, so a query and its reply each take ``delay`` (round trip ``2 * delay``).

It also reads the client's side of the PostgreSQL protocol, so a test can say what a trial costs
at a given latency: every simple query (``Q``) and every extended-protocol ``Sync`` waits for the
server's ``ReadyForQuery``, so their number is the number of round trips. Counts per client
address (one per worker host) and per statement kind go to a JSON file, rewritten atomically
twice a second while they change.

Run: ``python netproxy.py --listen 0.0.0.0:PORT --upstream 127.0.0.1:PORT --delay-ms 50 --stats F``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
from pathlib import Path
import signal
import struct
import time

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
KIND_CHARS = 70


class Counts:
    """Round trips, connections and statement kinds per client address."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.by_client: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self.dirty = False

    def add(self, client: str, key: str) -> None:
        self.by_client[client][key] += 1
        self.dirty = True

    def dump(self) -> None:
        if self.path is None or not self.dirty:
            return
        self.dirty = False
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({c: dict(k) for c, k in self.by_client.items()}))
        os.replace(tmp, self.path)


def _kind(sql: bytes) -> str:
    """``statement:SELECT ...``: the statement's first :data:`KIND_CHARS` characters, spaces collapsed."""
    return "statement:" + " ".join(sql.decode("utf-8", "replace").split())[:KIND_CHARS]


class ClientParser:
    """Split the client's byte stream into protocol messages and count the round trips."""

    def __init__(self, counts: Counts, client: str) -> None:
        self.counts, self.client = counts, client
        self.buffer = b""
        self.started = False  # after the startup message every message has a type byte

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if not self.started:
                if len(self.buffer) < 8:
                    return
                length, code = struct.unpack("!ii", self.buffer[:8])
                if len(self.buffer) < length:
                    return
                self.buffer = self.buffer[length:]
                if code not in (SSL_REQUEST, GSSENC_REQUEST, CANCEL_REQUEST):
                    self.started = True
                    self.counts.add(self.client, "connections")
                continue
            if len(self.buffer) < 5:
                return
            kind, length = self.buffer[:1], struct.unpack("!i", self.buffer[1:5])[0]
            if len(self.buffer) < 1 + length:
                return
            body, self.buffer = self.buffer[5 : 1 + length], self.buffer[1 + length :]
            if kind == b"Q":
                self.counts.add(self.client, "round_trips")
                self.counts.add(self.client, _kind(body.rstrip(b"\0")))
            elif kind == b"S":
                self.counts.add(self.client, "round_trips")
            elif kind == b"P":  # Parse: name\0 query\0 ...
                self.counts.add(self.client, _kind(body.split(b"\0", 2)[1]))


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float, parser: ClientParser | None
) -> None:
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        while True:
            due, chunk = await queue.get()
            if not chunk:
                break
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(chunk)
            await writer.drain()
        writer.close()

    sender = asyncio.create_task(send())
    try:
        while True:
            chunk = await reader.read(65536)
            if parser is not None and chunk:
                parser.feed(chunk)
            queue.put_nowait((time.monotonic() + delay, chunk))
            if not chunk:
                break
        await sender
    except (ConnectionError, OSError):
        sender.cancel()
        writer.close()


async def main(listen: str, upstream: str, delay: float, counts: Counts) -> None:
    up_host, up_port = upstream.rsplit(":", 1)

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        client = client_w.get_extra_info("peername")[0]
        try:
            server_r, server_w = await asyncio.open_connection(up_host, int(up_port))
        except OSError:
            client_w.close()
            return
        await asyncio.gather(
            _pipe(client_r, server_w, delay, ClientParser(counts, client)),
            _pipe(server_r, client_w, delay, None),
            return_exceptions=True,
        )

    host, port = listen.rsplit(":", 1)
    server = await asyncio.start_server(handle, host, int(port))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print("listening", flush=True)
    async with server:
        while not stop.is_set():
            counts.dump()
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except asyncio.TimeoutError:
                pass
    counts.dirty = True
    counts.dump()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay (round trip: twice)")
    parser.add_argument("--stats", type=Path)
    args = parser.parse_args()
    asyncio.run(main(args.listen, args.upstream, args.delay_ms / 1000, Counts(args.stats)))
