#!/usr/bin/env python3
"""HTTP stream listeners on one core: the relay's CPU per frame for players of
`GET /listen/<room>/<lang>.opus`.

    scripts/http-streams.py BIN LISTENERS SECONDS

Starts `BIN serve --threads 1` with config/bench.toml on core 0, one bench booth live on
bench/l0 (`BIN bench --channels 1` on core 1), then LISTENERS HTTP stream listeners of
bench/l0, each from a loopback address of its own (127.3.x.y), read as fast as they come by
this script (one thread, non-blocking sockets). Prints the relay's CPU over SECONDS (after 3 s)
per million frames due (LISTENERS x 50 a second), what each listener read, and how often.
"""
import os, selectors, socket, subprocess, sys, time
BIN, N, SECS = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
port = 18400 + int(time.time()) % 50
relay = subprocess.Popen(["taskset", "-c", "0", BIN, "serve", "--config", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config", "bench.toml"), "--listen", f"127.0.0.1:{port}", "--threads", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
time.sleep(1.5)
bench = subprocess.Popen(["taskset", "-c", "1", BIN, "bench", "--addr", f"127.0.0.1:{port}", "--listeners", "1", "--channels", "1", "--seconds", str(SECS + 20)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
time.sleep(3)
sel = selectors.DefaultSelector()
socks = []
for i in range(N):
    s = socket.socket()
    s.bind((f"127.3.{i // 250}.{i % 250 + 1}", 0))
    s.connect(("127.0.0.1", port))
    s.sendall(f"GET /listen/bench/l0.opus HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
    socks.append(s)
def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().split(")")[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
def pump(secs):
    n = 0; reads = 0
    end = time.time() + secs
    while time.time() < end:
        for key, _ in sel.select(0.05):
            try:
                b = key.fileobj.recv(65536)
            except BlockingIOError:
                continue
            n += len(b); reads += 1
    return n, reads
pump(3)
c0 = cpu(relay.pid); n, reads = pump(SECS); c1 = cpu(relay.pid)
frames = N * 50 * SECS
print(f"{N} HTTP stream listeners, {SECS:.0f} s: relay {c1 - c0:.2f} CPU s ({100 * (c1 - c0) / SECS:.0f} % of a core), "
      f"{1e6 * (c1 - c0) / frames:.2f} CPU s per million frames due, {n / N / SECS * 8 / 1000:.1f} kbit/s per listener read, {reads / N / SECS:.1f} reads a second each")
bench.kill(); relay.kill()
