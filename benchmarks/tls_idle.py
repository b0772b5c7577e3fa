"""Memory per idle TLS connection: each server in turn (``python -m iocport
echo --tls-cert``, and ``benchmarks/rivals.py`` on uvloop and asyncio with the
same kind of context) is started pinned to CPU 0; a client (Python's ssl, in
this process) opens N TLS connections one after the other, does one 20-byte
len4 echo on each and then ``--traffic`` echoes of 16,000 bytes (so the
buffers a busy connection holds have been used), and holds them; the
server's VmRSS is read before, and after 2.5 s and 12.5 s of silence
(iocport gives a quiet connection's buffers back after a second). The
figure is (after - before) / N. Kernel socket memory is not in VmRSS.

    python benchmarks/tls_idle.py [--conns 2000] [--traffic 8] [--servers iocport,uvloop]

Kept apart from ``python -m iocport bench --idle`` (the plaintext scenario)
so that the bench's own code is unchanged; it uses the bench's harness.
"""
from __future__ import annotations

import argparse
import os
import socket
import ssl
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from iocport.bench.harness import ServerProc, raise_nofile, vm_rss  # noqa: E402

SMALL, BIG = 16, 16000


def certificates(directory: str) -> tuple[str, str]:
    """(chain+key PEM, CA PEM) for 127.0.0.1, made by trustme."""
    import trustme
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    pem, ca_pem = os.path.join(directory, "server.pem"), os.path.join(directory, "ca.pem")
    leaf.private_key_and_cert_chain_pem.write_to_path(pem)
    ca.cert_pem.write_to_path(ca_pem)
    return pem, ca_pem


def echo(sock: ssl.SSLSocket, payload: bytes) -> None:
    sock.sendall(len(payload).to_bytes(4, "big") + payload)
    want, got = 4 + len(payload), b""
    while len(got) < want:
        chunk = sock.recv(want - len(got))
        if not chunk:
            raise RuntimeError("the server closed a connection")
        got += chunk
    if got[4:] != payload:
        raise RuntimeError("a wrong reply")


def open_idle(address: tuple[str, int], n: int, traffic: int,
              ca_pem: str) -> list[ssl.SSLSocket]:
    ctx = ssl.create_default_context(cafile=ca_pem)
    ctx.check_hostname = False
    socks: list[ssl.SSLSocket] = []
    for i in range(n):
        raw = socket.create_connection(address, timeout=10)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s = ctx.wrap_socket(raw)
        socks.append(s)
        tag = i.to_bytes(4, "big")
        echo(s, b"x" * SMALL + tag)
        for _ in range(traffic):
            echo(s, b"y" * BIG + tag)
    return socks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--conns", type=int, default=2000)
    p.add_argument("--traffic", type=int, default=8,
                   help="16,000-byte echoes per connection before it idles")
    p.add_argument("--servers", default="iocport,uvloop",
                   help="comma-separated: iocport, uvloop, asyncio")
    args = p.parse_args(argv)
    raise_nofile()
    with tempfile.TemporaryDirectory() as tmp:
        pem, ca_pem = certificates(tmp)
        tls = ["--port", "0", "--tls-cert", pem]
        argvs = {
            "iocport": [sys.executable, "-m", "iocport", "echo", *tls],
            "uvloop": [sys.executable, str(HERE / "rivals.py"), "asyncio", "--loop", "uvloop", *tls],
            "asyncio": [sys.executable, str(HERE / "rivals.py"), "asyncio", "--loop", "asyncio", *tls],
        }
        env = dict(os.environ, PYTHONPATH=str(HERE.parent))
        for name in args.servers.split(","):
            srv = ServerProc(name, argvs[name], env=env, cpu=0)
            socks: list[ssl.SSLSocket] = []
            try:
                time.sleep(0.5)
                before = vm_rss(srv.pid)
                socks = open_idle((srv.host, srv.port), args.conns, args.traffic, ca_pem)
                time.sleep(2.5)
                mid = vm_rss(srv.pid)
                time.sleep(10)
                after = vm_rss(srv.pid)
                print(f"{name}: {args.conns} connections, {args.traffic} x {BIG} B each: "
                      f"{(mid - before) / args.conns:,.0f} bytes per connection after 2.5 s "
                      f"idle, {(after - before) / args.conns:,.0f} after 12.5 s", flush=True)
            finally:
                for s in socks:
                    s.close()
                srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
