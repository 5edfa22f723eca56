"""Opens COUNT TCP connections to HOST:PORT that never send a byte, PER_ADDRESS from each
loopback source address (127.1.x.y), keeps them, and reports when the server closes each.

Prints JSON lines: {"type": "opened", ...} once every connection is open, then
{"type": "done", ...} when all are closed or LIMIT seconds have passed.
Usage: idle_flood.py HOST PORT COUNT PER_ADDRESS LIMIT
"""
import json
import resource
import selectors
import socket
import sys
import time

host, port, count, per_address, limit = (
    sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

IP_BIND_ADDRESS_NO_PORT = 24  # Linux: the port is chosen at connect, not by a scan at bind

sel = selectors.DefaultSelector()
opened_at = {}
lifetimes = []
answered_503 = 0
failed = 0
slow_connects = 0


def poll(timeout):
    """Reads what the server sent; notes the connections it closed and when."""
    global answered_503
    for key, _ in sel.select(timeout=timeout):
        s = key.fileobj
        try:
            data = s.recv(4096)
        except (ConnectionResetError, OSError):
            data = b""
        if data:
            if data.startswith(b"HTTP/1.1 503"):
                answered_503 += 1
            continue
        lifetimes.append(time.monotonic() - opened_at.pop(s.fileno()))
        sel.unregister(s)
        s.close()


start = time.monotonic()
for i in range(count):
    if i % 64 == 0:
        poll(0)
    a = i // per_address
    source = f"127.1.{a // 250}.{a % 250 + 1}"
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        s.bind((source, 0))
        s.settimeout(5)
        t = time.monotonic()
        s.connect((host, port))
        if time.monotonic() - t > 0.5:
            slow_connects += 1
    except OSError:
        failed += 1
        s.close()
        continue
    s.setblocking(False)
    opened_at[s.fileno()] = time.monotonic()
    sel.register(s, selectors.EVENT_READ)
print(json.dumps({"type": "opened", "opened": count - failed, "held": len(opened_at),
                  "failed": failed, "slow_connects": slow_connects,
                  "seconds": round(time.monotonic() - start, 3)}), flush=True)

deadline = time.monotonic() + limit
while opened_at and time.monotonic() < deadline:
    poll(0.2)
lifetimes.sort()
print(json.dumps({
    "type": "done",
    "closed": len(lifetimes),
    "still_open": len(opened_at),
    "answered_503": answered_503,
    "max_lifetime_s": round(lifetimes[-1], 3) if lifetimes else None,
    "median_lifetime_s": round(lifetimes[len(lifetimes) // 2], 3) if lifetimes else None,
}), flush=True)
