"""Outgoing connections: iocport talking to iocport, on both backends."""
import random
import socket
import threading

import pytest

import iocport
from conftest import wait_for

pytestmark = pytest.mark.timeout(60)
DEADLINE = 20


class Collector:
    """Messages per connection, and an event once `want` have arrived."""

    def __init__(self, want):
        self.want = want
        self.lock = threading.Lock()
        self.by_conn = {}
        self.total = 0
        self.done = threading.Event()

    def __call__(self, conn, msg):
        with self.lock:
            self.by_conn.setdefault(conn.id, []).append(msg)
            self.total += 1
            if self.total >= self.want:
                self.done.set()


def upper(conn, msg):
    conn.send(msg.upper())


def test_client_and_server_both_iocport(servers):
    srv = servers(upper)
    host, port = srv.listen()
    srv.start()
    per_conn, nconns = 50, 40
    got = Collector(per_conn * nconns)
    cli = servers(got)
    cli.start()
    rng = random.Random(7)
    sent = {}
    results = []
    lock = threading.Lock()

    def on_connected(conn, err):
        with lock:
            results.append(err)

    for _ in range(nconns):
        conn = cli.connect(host, port, on_connected)
        msgs = [bytes(rng.randrange(97, 123) for _ in range(rng.randrange(0, 300)))
                for _ in range(per_conn)]
        sent[conn.id] = msgs
        for m in msgs:          # before the connect completes: queued
            assert conn.send(m) is True
    assert got.done.wait(DEADLINE), got.total
    assert results == [None] * nconns
    assert {cid: [m.upper() for m in msgs] for cid, msgs in sent.items()} == got.by_conn
    assert cli.stats()["connections"] == nconns
    assert srv.stats()["accepted"] == nconns


def test_connect_refused_reports_oserror(servers):
    # A port with nothing listening: bind it, then close it without listen().
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    closed = []
    cli = servers(upper, on_close=closed.append)
    cli.start()
    done = threading.Event()
    outcome = []

    def on_connected(conn, err):
        outcome.append((conn, err))
        done.set()

    conn = cli.connect("127.0.0.1", port, on_connected)
    assert done.wait(DEADLINE)
    (c, err), = outcome
    assert c is conn
    assert isinstance(err, ConnectionRefusedError)
    assert conn.closed and conn.close_reason == "connect"
    assert conn.send(b"x") is False
    # Every connection ends with one on_close, a failed connect too.
    wait_for(lambda: closed, what="on_close of the failed connect")
    assert closed == [conn]
    assert cli.stats()["errors"]["connect"] == 1


def test_server_sees_peer_and_close(servers):
    accepted = []
    srv = servers(upper, on_connect=accepted.append)
    host, port = srv.listen()
    srv.start()
    got = Collector(1)
    closed = threading.Event()
    cli = servers(got, on_close=lambda c: closed.set())
    cli.start()
    conn = cli.connect(host, port)
    conn.send(b"ping")
    assert got.done.wait(DEADLINE)
    assert conn.peer == (host, port)
    assert len(accepted) == 1
    srv.stop()                 # the server side goes away
    assert closed.wait(DEADLINE)
    assert conn.closed and conn.close_reason in ("eof", "reset")


def test_stop_with_connects_in_flight(servers):
    srv = servers(upper)
    host, port = srv.listen()
    srv.start()
    cli = servers(upper)
    for _ in range(5):
        cli.start()
        conns = [cli.connect(host, port) for _ in range(50)]
        for c in conns:
            c.send(b"x" * 100)
        cli.stop()
        assert all(c.closed for c in conns)


def test_connect_arguments(servers):
    cli = servers(upper)
    cli.start()
    with pytest.raises(TypeError):
        cli.connect(127, 80)
    with pytest.raises(ValueError):
        cli.connect("127.0.0.1", -1)
    with pytest.raises(TypeError):
        cli.connect("127.0.0.1", 80, callback=5)
