"""``python -m iocport demo``: start the echo server in a child process, load
it from this process over many connections, verify every reply, and print
messages per second and the server's CPU cost.  This is the tour, not the
careful comparison: the client is plain Python."""
import os
import selectors
import socket
import struct
import subprocess
import sys
import tempfile
import time

from ._cli import Failure, resolve_backend, why

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


def _cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start_server(args, backend):
    cmd = [sys.executable, "-m", "iocport", "echo", "--port", "0", "--backend", backend]
    if args.native:
        cmd.append("--native")
    # Its stderr goes to a file, read only if it fails to start: its own
    # one-line error then becomes ours.
    with tempfile.TemporaryFile(mode="w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        line = proc.stdout.readline()
        if not line.startswith("listening on "):
            proc.kill()
            proc.wait()
            err.seek(0)
            said = [ln for ln in err.read().splitlines() if ln.strip()]
            reason = (said[-1].split("error: ", 1)[-1] if said
                      else f"exit status {proc.returncode}")
            raise Failure(f"the echo server did not start: {reason}")
    hostport = line.split()[2]
    host, port = hostport.rsplit(":", 1)
    return proc, (host, int(port)), line.strip()


class _Conn:
    """One client connection: `depth` frames in flight; what the kernel has
    not taken yet waits in `out` (a large --size times --depth does not fit
    a socket buffer, and the server's replies must be read meanwhile)."""

    def __init__(self, addr, payload):
        self.sock = socket.create_connection(addr)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.frame = struct.pack(">I", len(payload)) + payload
        self.out = bytearray()
        self.buf = bytearray()
        self.done = 0
        self.events = READ

    def fire(self, n):
        self.out += self.frame * n
        self.flush()

    def flush(self):
        try:
            sent = self.sock.send(self.out)
        except BlockingIOError:
            return
        del self.out[:sent]


def run_demo(args):
    backend = resolve_backend(args.backend)
    proc, addr, banner = _start_server(args, backend)
    print(banner)
    payload = bytes(range(256)) * (args.size // 256 + 1)
    payload = payload[:args.size]
    sel = selectors.DefaultSelector()
    conns = []
    errors = 0
    try:
        for i in range(args.connections):
            try:
                c = _Conn(addr, payload)
            except OSError as exc:
                raise Failure(f"cannot open connection {i + 1} of {args.connections} "
                              f"to the echo server: {why(exc)}") from None
            conns.append(c)
            sel.register(c.sock, c.events, c)
            c.fire(args.depth)
        flen = len(conns[0].frame)
        cpu0, t0 = _cpu_seconds(proc.pid), time.monotonic()
        deadline = t0 + args.seconds
        while time.monotonic() < deadline:
            for key, mask in sel.select(timeout=1.0):
                c = key.data
                if mask & WRITE:
                    c.flush()
                if mask & READ:
                    try:
                        data = c.sock.recv(65536)
                    except OSError as exc:
                        raise Failure(f"a connection to the echo server failed: "
                                      f"{why(exc)}") from None
                    if not data:
                        raise Failure("the echo server closed a connection")
                    c.buf += data
                    n = len(c.buf) // flen
                    if n:
                        got = bytes(c.buf[:n * flen])
                        del c.buf[:n * flen]
                        if got != c.frame * n:
                            errors += 1
                        c.done += n
                        c.fire(n)
                events = READ | (WRITE if c.out else 0)
                if events != c.events:
                    c.events = events
                    sel.modify(c.sock, events, c)
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
