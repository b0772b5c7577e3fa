"""``python -m iocport demo``: start the echo server in a child process, load
it from this process over many connections, verify every reply, and print
messages per second and the server's CPU cost.  This is the tour, not the
careful comparison: the client is plain Python.)"""
import os
import selectors
import socket
import struct
import subprocess
import sys
import time


def _cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start_server(args):
    cmd = [sys.executable, "-m", "iocport", "echo", "--port", "0"]
    if args.backend:
        cmd += ["--backend", args.backend]
    if args.native:
        cmd.append("--native")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("listening on "):
        proc.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    hostport = line.split()[2]
    host, port = hostport.rsplit(":", 1)
    return proc, (host, int(port)), line.strip()


class _Conn:
    def __init__(self, addr, payload, depth):
        self.sock = socket.create_connection(addr)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.frame = struct.pack(">I", len(payload)) + payload
        self.depth = depth
        self.buf = bytearray()
        self.done = 0

    def fire(self, n):
        self.sock.sendall(self.frame * n)


def run_demo(args):
    proc, addr, banner = _start_server(args)
    print(banner)
    payload = bytes(range(256)) * (args.size // 256 + 1)
    payload = payload[:args.size]
    sel = selectors.DefaultSelector()
    conns = []
    errors = 0
    try:
        for _ in range(args.connections):
            c = _Conn(addr, payload, args.depth)
            conns.append(c)
            sel.register(c.sock, selectors.EVENT_READ, c)
            c.fire(args.depth)
        flen = len(conns[0].frame) if conns else 0
        cpu0, t0 = _cpu_seconds(proc.pid), time.monotonic()
        deadline = t0 + args.seconds
        while time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1.0):
                c = key.data
                data = c.sock.recv(65536)
                if not data:
                    raise SystemExit("the server closed a connection")
                c.buf += data
                n = len(c.buf) // flen
                if n:
                    got = bytes(c.buf[:n * flen])
                    del c.buf[:n * flen]
                    if got != c.frame * n:
                        errors += 1
                    c.done += n
                    c.fire(n)
        elapsed = time.monotonic() - t0
        cpu = _cpu_seconds(proc.pid) - cpu0
    finally:
        for c in conns:
            sel.unregister(c.sock)
            c.sock.close()
        proc.terminate()
        proc.wait(timeout=10)
    total = sum(c.done for c in conns)
    print(f"{args.connections} connections, {args.depth} in flight each, "
          f"{args.size}-byte messages, {elapsed:.1f} s")
    print(f"  {total / elapsed:,.0f} messages/s verified, {errors} wrong replies")
    if cpu > 0:
        print(f"  server CPU {cpu:.2f} s: {total / cpu:,.0f} messages per CPU-second")
    print("  (the client here is plain Python and is the bottleneck)")
    return 1 if errors else 0
