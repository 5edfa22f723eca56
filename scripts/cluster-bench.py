#!/usr/bin/env python3
"""Cluster figures on loopback: the delay one NATS hop adds, and failover times.

    scripts/cluster-bench.py [ROUNDS] [SECONDS]

Starts a nats-server (JetStream) and boothcast relays joined through it, all on 127.0.0.1.
1. The NATS hop: a booth on the deciding node `a` sends a looped tone; one `listen` on `a`
   and one on `b` for SECONDS (default 20); each one's delay from capture to arrival,
   p50 and p99, side by side: the difference is what crossing to another node adds.
2. Failover, ROUNDS times (default 10): a listener of English and a live French booth, both
   given two follower nodes' addresses (`--server` twice), sit on one; it is killed (SIGKILL);
   the times until the listener hears English again from the other node, and until the booth
   is welcomed there (muted), are printed, then summed up. A fresh node takes the dead one's
   place for the next round.
3. Deciding node killed, ROUNDS times: a French booth live on one follower, a raw WebSocket
   listener on the other; the decider is killed; the longest silence between two frames at the
   listener is printed. The new decider then leaves the followers and a fresh node joins.
Needs nats-server and sox. BIN=path picks the binary (default target/release/boothcast, built).
"""
import base64, json, os, queue, signal, socket, statistics, subprocess, sys, tempfile, threading, time

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 10
SECONDS = float(sys.argv[2]) if len(sys.argv) > 2 else 20
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("BIN")
if not BIN:
    subprocess.run(["cargo", "build", "--release", "--locked", "-q"], cwd=ROOT, check=True)
    BIN = os.path.join(ROOT, "target/release/boothcast")
TMP = tempfile.mkdtemp(prefix="boothcast-cluster-bench-")
EVENT = """
[event]
name = "Cluster bench"
[secrets]
floor = "floor-secret"
engineer = "engineer-secret"
[[rooms]]
id = "plenary"
[[rooms.channels]]
lang = "en"
name = "English"
native = "English"
[[rooms.channels]]
lang = "fr"
name = "French"
native = "Français"
[[rooms.booths]]
id = "en"
languages = ["en"]
secret = "secret-en"
[[rooms.booths]]
id = "fr"
languages = ["fr"]
secret = "secret-fr"
"""
CONFIG = os.path.join(TMP, "event.toml")
open(CONFIG, "w").write(EVENT)
TONE = os.path.join(TMP, "tone.wav")
subprocess.run(["sox", "-n", "-r", "48000", "-c", "1", "-b", "16", TONE, "synth", "2", "sine", "440", "vol", "0.5"], check=True)
procs = []


class Proc:
    """A child whose standard output lines are collected with their arrival times."""

    def __init__(self, args, env=None, with_log=False):
        # with_log: the log (standard error) is read among the lines too.
        self.p = subprocess.Popen(args, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT if with_log else subprocess.DEVNULL,
                                  stdin=subprocess.DEVNULL, text=True, env={**os.environ, **(env or {})})
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        procs.append(self)

    def _read(self):
        for line in self.p.stdout:
            self.lines.put((time.monotonic(), line.strip()))

    def wait(self, fits, limit=15.0):
        deadline = time.monotonic() + limit
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SystemExit(f"timed out waiting in {self.p.args}")
            try:
                t, line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if fits(line):
                return t, line

    def kill(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
            self.p.wait()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def node(name, nats_url):
    n = Proc([BIN, "serve", "--listen", "127.0.0.1:0", "--config", CONFIG, "--cluster", nats_url, "--node", name],
             with_log=True)
    _, line = n.wait(lambda l: "listening on http://" in l)
    addr = line.split("listening on http://")[1].split()[0]
    n.url = f"ws://{addr}"
    n.wait(lambda l: "joined the cluster" in l)
    return n


class Listener:
    """A listener of one channel on a raw WebSocket (RFC 6455, written here so the script needs
    nothing beyond Python): the arrival time of every frame."""

    def __init__(self, url, channel):
        host, port = url.split("//")[1].rstrip("/").split(":")
        self.sock = socket.create_connection((host, int(port)), 5)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert b" 101 " in head.split(b"\r\n")[0], head
        self._send(json.dumps({"type": "hello", "role": "listener", "channel": channel}).encode())
        self.arrivals = []
        self.closed = False
        self.sock.settimeout(None)
        threading.Thread(target=self._read, daemon=True).start()

    def _send(self, payload, opcode=1):
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big"))
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def _exact(self, n):
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise EOFError
            out += chunk
        return out

    def _read(self):
        try:
            while True:
                b0, b1 = self._exact(2)
                n = b1 & 0x7F
                if n == 126:
                    n = int.from_bytes(self._exact(2), "big")
                elif n == 127:
                    n = int.from_bytes(self._exact(8), "big")
                payload = self._exact(n)
                op = b0 & 0x0F
                if op == 2:
                    self.arrivals.append(time.monotonic())
                elif op == 9:
                    self._send(payload, 10)
                elif op == 8:
                    break
        except (EOFError, OSError):
            pass
        self.closed = True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def first_to_decide(nodes, limit=15.0):
    """The node of `nodes` that first says it decides for the event."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        for n in nodes:
            try:
                _, line = n.lines.get(timeout=0.01)
            except queue.Empty:
                continue
            if "deciding for the event" in line:
                return n
    raise SystemExit("no node took over as the decider")


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def main():
    nats_port = free_port()
    nats = Proc(["nats-server", "-a", "127.0.0.1", "-p", str(nats_port), "-js", "-sd", os.path.join(TMP, "nats")])
    nats_url = f"nats://127.0.0.1:{nats_port}"
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", nats_port), 0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    a = node("a", nats_url)
    time.sleep(2)  # a takes the lease before the others join
    followers = [node("b", nats_url), node("c", nats_url)]
    booth_en = Proc([BIN, "booth", "--headless", "--live", "--loop", "--booth", "en", "--server", a.url,
                     "--input-file", TONE], env={"BOOTHCAST_SECRET": "secret-en"})
    booth_en.wait(lambda l: '"type":"console"' in l and '"live":"plenary/en"' in l)

    print(f"## The NATS hop ({SECONDS:.0f} s, booth on the deciding node a, binary {BIN})")
    listeners = {}
    for where, n in [("same node (a)", a), ("another node (b)", followers[0])]:
        listeners[where] = Proc([BIN, "listen", "--lang", "en", "--server", n.url, "--output-file",
                                 os.path.join(TMP, "hop.wav"), "--seconds", str(SECONDS)])
    for where, l in listeners.items():
        _, line = l.wait(lambda x: '"type":"summary"' in x, SECONDS + 15)
        s = json.loads(line)["summary"]
        print(f"{where}: {s['frames']} frames, capture to arrival p50 {s['median_network_delay_ms']:.2f} ms, "
              f"p99 {s.get('p99_network_delay_ms', float('nan')):.2f} ms, lost {s['lost']}")

    print(f"\n## Failover: {ROUNDS} kills (SIGKILL) of the node holding a listener and a live booth")
    heard, welcomed = [], []
    for r in range(ROUNDS):
        x, y = followers
        listen = Proc([BIN, "listen", "--lang", "en", "--server", x.url, "--server", y.url,
                       "--output-file", os.path.join(TMP, "failover.wav")])
        listen.wait(lambda l: '"type":"hearing"' in l and x.url in l)
        booth = Proc([BIN, "booth", "--headless", "--live", "--loop", "--booth", "fr", "--server", x.url,
                      "--server", y.url, "--input-file", TONE], env={"BOOTHCAST_SECRET": "secret-fr"})
        booth.wait(lambda l: '"type":"console"' in l and '"live":"plenary/fr"' in l)
        t0 = time.monotonic()
        x.kill()
        t1, _ = listen.wait(lambda l: '"type":"hearing"' in l and y.url in l)
        t2, line = booth.wait(lambda l: '"type":"welcome"' in l and f'"relays":["{y.url}/"' in l)
        t3, state = booth.wait(lambda l: '"type":"console"' in l)
        assert json.loads(state).get("live") is None, f"the booth came back live: {state}"
        heard.append((t1 - t0) * 1000)
        welcomed.append((t2 - t0) * 1000)
        print(f"round {r + 1}: listener hears again after {heard[-1]:.0f} ms; booth welcomed (muted) after {welcomed[-1]:.0f} ms")
        listen.kill()
        booth.kill()
        followers = [y, node(f"n{r}", nats_url)]
    for what, v in [("listener hears again", heard), ("booth welcomed again", welcomed)]:
        print(f"{what}: median {statistics.median(v):.0f} ms, max {max(v):.0f} ms, min {min(v):.0f} ms")

    print(f"\n## Failover: {ROUNDS} kills (SIGKILL) of the deciding node")
    # The decider stamps every channel frame: killed, the channel is silent until another node
    # holds the lease. A booth live on one follower, a listener on the other; the longest gap
    # between two frames at the listener around the kill is the time without sound.
    decider, followers = a, followers
    gaps = []
    for r in range(ROUNDS):
        x, y = followers
        booth = Proc([BIN, "booth", "--headless", "--live", "--loop", "--booth", "fr", "--server", x.url,
                      "--input-file", TONE], env={"BOOTHCAST_SECRET": "secret-fr"})
        booth.wait(lambda l: '"type":"console"' in l and '"live":"plenary/fr"' in l)
        listener = Listener(y.url, "plenary/fr")
        time.sleep(1.0)
        t0 = time.monotonic()
        decider.kill()
        # The new decider is one of the followers: whichever says so first.
        new = first_to_decide(followers)
        time.sleep(1.5)
        after = [t for t in listener.arrivals if t > t0 - 0.1]
        before = [t for t in listener.arrivals if t <= t0]
        seq = ([before[-1]] if before else []) + after
        gap = max((b - a for a, b in zip(seq, seq[1:])), default=float("nan")) * 1000
        gaps.append(gap)
        print(f"round {r + 1}: longest silence at the listener {gap:.0f} ms; {len(after)} frames in the 1.5 s after")
        listener.close()
        booth.kill()
        # The new decider leaves the followers; a fresh node joins as one.
        decider = new
        followers = [n for n in followers if n is not new] + [node(f"d{r}", nats_url)]
    print(f"deciding node killed, longest silence: median {statistics.median(gaps):.0f} ms, "
          f"max {max(gaps):.0f} ms, min {min(gaps):.0f} ms")


try:
    main()
finally:
    for p in reversed(procs):
        p.kill()
