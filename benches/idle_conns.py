#!/usr/bin/env python3
"""Open N idle HTTP/1.1 keep-alive client connections to a proxy and hold them.

Used by `benches/compare.sh memory` to see what 1 000 idle clients cost a proxy in resident
memory. Each connection sends one GET with keep-alive and reads the whole response, so the proxy
has gone through a full request on it (buffers allocated, upstream picked) and now holds it
idle, as a browser's connection between clicks.

Usage: idle_conns.py HOST PORT COUNT [PATH]

Prints `ready N` on stdout once every connection is open and has had its answer, then holds them
until SIGTERM or SIGINT (not stdin: a background job's stdin is /dev/null). Exits 1 if any
connection failed, or was closed by the proxy while held (the memory figure would then be a lie).
"""

import signal
import socket
import sys


def read_response(sock: socket.socket) -> int:
    """Reads one response with a Content-Length body; returns the status code."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response headers")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed in the middle of the body")
        body += chunk
    return status


def main() -> int:
    if len(sys.argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    path = sys.argv[4] if len(sys.argv) > 4 else "/"
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: keep-alive\r\n\r\n"
    ).encode()

    conns = []
    for i in range(count):
        s = socket.create_connection((host, port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(request)
        status = read_response(s)
        if status != 200:
            print(f"connection {i}: status {status}", file=sys.stderr)
            return 1
        conns.append(s)

    print(f"ready {len(conns)}", flush=True)

    # Hold until told to stop, then check that the proxy kept every connection open.
    def stop(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass

    # A connection the proxy closed while we held it reads as EOF now (non-blocking peek).
    closed = 0
    for s in conns:
        s.setblocking(False)
        try:
            if s.recv(1, socket.MSG_PEEK) == b"":
                closed += 1
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
        s.close()
    if closed:
        print(f"{closed} of {len(conns)} connections were closed by the peer", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
