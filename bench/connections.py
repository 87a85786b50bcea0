#!/usr/bin/env python3
"""bench/connections.py: resident memory per kept-alive client connection.

    bench/proxy.sh                      # once: it leaves its work dir
    WORK_DIR=/tmp/meridian-proxy-bench.XXXX bench/connections.py BIN [CONNS]

Starts the work dir's nginx backend and a Meridian node (`BIN node run` with
the work dir's node.toml), sends one request on a first connection, reads
the node's RSS, then opens CONNS more connections (4,000 by default), sends
one request on each and keeps them open, and reads the RSS again. Prints
the difference per connection: the connection's task, buffers and
bookkeeping (the kernel's socket buffers are not in RSS). Everything
listens on 127.0.0.1; the processes started here are stopped by PID.

Environment: WORK_DIR (required), PORT_BASE=18380 (as bench/proxy.sh).
"""
import os
import resource
import socket
import subprocess
import sys
import time

work = os.environ.get("WORK_DIR") or sys.exit("set WORK_DIR to a work dir bench/proxy.sh left")
if len(sys.argv) < 2:
    sys.exit(f"usage: WORK_DIR=... {sys.argv[0]} MERIDIAN_BIN [CONNS]")
binary, conns = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 4000
port = int(os.environ.get("PORT_BASE", "18380")) + 2
files = 2 * conns + 1000
resource.setrlimit(resource.RLIMIT_NOFILE, (files, max(files, resource.getrlimit(resource.RLIMIT_NOFILE)[1])))
for sub in ("meridian-data", "tmp"):
    os.makedirs(f"{work}/{sub}", exist_ok=True)
quiet = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
started = [
    subprocess.Popen(["nginx", "-p", work, "-e", f"{work}/backend-error.log",
                      "-c", f"{work}/nginx-backend.conf", "-g", "daemon off;"], **quiet),
    subprocess.Popen([binary, "node", "run", "--config", f"{work}/node.toml"], **quiet),
]
node = started[1]


def rss_kib():
    with open(f"/proc/{node.pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))


def connect_and_ask():
    """A new connection that has had one 200 answer (the node may still be
    loading its configuration at first: then it answers 503)."""
    for _ in range(100):
        try:
            conn = socket.create_connection(("127.0.0.1", port), timeout=10)
        except OSError:
            time.sleep(0.1)
            continue
        conn.sendall(b"GET /2b HTTP/1.1\r\nHost: bench\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            try:
                chunk = conn.recv(4096)
            except TimeoutError:
                sys.exit(f"no answer within 10 s on {answer!r} ({len(kept)} connections open)")
            if not chunk:
                sys.exit(f"the connection closed after {answer!r}")
            answer += chunk
        head, body = answer.split(b"\r\n\r\n", 1)
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(body) < length:
            body += conn.recv(4096)
        if head.startswith(b"HTTP/1.1 200"):
            return conn
        conn.close()
        time.sleep(0.1)
    sys.exit(f"no 200 from 127.0.0.1:{port}")


kept = []
try:
    first = connect_and_ask()
    before = rss_kib()
    for _ in range(conns):
        kept.append(connect_and_ask())
    time.sleep(1)
    after = rss_kib()
    print(f"{binary}: RSS {before} KiB, {after} KiB with {conns} more connections: "
          f"{(after - before) * 1024 / conns:.0f} B per connection")
finally:
    for process in started:
        process.terminate()
    for process in started:
        process.wait()
