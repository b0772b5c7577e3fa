"""Sends by reference: a ``bytes`` message of 32 KiB or more is sent from the
object itself (the core holds a reference until the kernel has it) instead of
a copy; its header and trailer go in the flat send queue around it, and one
gathered send carries both (see struct sref in src/core/internal.h).  These tests
check the order of the pieces, partial sends, the references given back
(sent, or dropped with the connection) and sends from other threads.

Every test runs on both backends (the ``backend`` fixture).
"""
import random
import socket
import sys

import pytest

import iocport
from conftest import DEADLINE, Codec, Events, is_closed_by_peer, recv_messages, wait_for

pytestmark = pytest.mark.timeout(60)

LEN4 = iocport.LengthPrefixed(4)


@pytest.mark.parametrize("framing", [LEN4, iocport.Delimited(b"\r\n")], ids=["len4", "crlf"])
def test_large_and_small_sends_keep_their_order(make_server, client, framing):
    rng = random.Random(1)
    bigs = [rng.randbytes(n).replace(b"\r\n", b"..") for n in (40_000, 32 * 1024, 300_000)]
    small = b"small"
    codec = Codec(framing)

    def handler(conn, msg):
        # refs and copies interleaved, several refs in one flush, a raw one
        conn.send(bigs[0])
        conn.send(small)
        conn.send(bigs[1])
        conn.send(bigs[2])
        conn.send_raw(codec.encode(bigs[0]))   # bytes, framed by us
        conn.send(bytearray(bigs[1]))          # mutable: always copied
        conn.send(small)

    srv = make_server(handler, framing=framing)
    s = client(srv.address)
    s.sendall(codec.encode(b"go"))
    want = [bigs[0], small, bigs[1], bigs[2], bigs[0], bigs[1], small]
    assert recv_messages(s, codec, len(want)) == want


def test_references_are_given_back(make_server, client):
    big = random.Random(2).randbytes(100_000)
    base = sys.getrefcount(big)

    def handler(conn, msg):
        for _ in range(10):
            conn.send(big)

    srv = make_server(handler)
    codec = Codec(LEN4)
    s = client(srv.address)
    for _ in range(5):
        s.sendall(codec.encode(b"x"))
        assert recv_messages(s, codec, 10) == [big] * 10
    wait_for(lambda: sys.getrefcount(big) == base,
             what=f"the references to go (refcount {sys.getrefcount(big)}, was {base})")


def test_many_references_in_one_send_queue(make_server, threads):
    """More pieces than one gathered send takes (64), queued while the client
    is not reading, so sends are partial and cross piece boundaries."""
    rng = random.Random(3)
    bigs = [rng.randbytes(33_000 + i) for i in range(150)]
    base = [sys.getrefcount(b) for b in bigs]

    def handler(conn, msg):
        for b in bigs:
            conn.send(b)

    srv = make_server(handler, max_unsent=64 << 20)
    codec = Codec(LEN4)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    s.settimeout(DEADLINE)
    s.connect(srv.address)
    try:
        s.sendall(codec.encode(b"go"))
        assert recv_messages(s, codec, len(bigs)) == bigs
    finally:
        s.close()
    wait_for(lambda: [sys.getrefcount(b) for b in bigs] == base,
             what="every reference to be given back")


def test_references_dropped_with_the_connection(make_server):
    """The client never reads and goes away: the references still queued
    are given back when the connection closes."""
    big = random.Random(4).randbytes(64 * 1024)
    base = sys.getrefcount(big)
    ev = Events()

    def handler(conn, msg):
        for _ in range(200):            # ~13 MB: far beyond the socket buffers
            conn.send(big)

    srv = make_server(handler, max_unsent=64 << 20, on_close=ev.on_close)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    s.settimeout(DEADLINE)
    s.connect(srv.address)
    s.sendall(Codec(LEN4).encode(b"go"))
    wait_for(lambda: srv.stats()["messages_out"] == 200, what="the sends to be queued")
    assert sys.getrefcount(big) > base      # some are still queued
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()                           # reset
    wait_for(lambda: ev.closed, what="on_close")
    wait_for(lambda: sys.getrefcount(big) == base,
             what=f"the references to go (refcount {sys.getrefcount(big)}, was {base})")


def test_large_sends_from_another_thread(make_server, client, threads):
    conns = []
    srv = make_server(lambda conn, msg: None, on_connect=conns.append)
    codec = Codec(LEN4)
    s = client(srv.address)
    wait_for(lambda: conns, what="on_connect")
    rng = random.Random(5)
    msgs = [rng.randbytes(rng.choice([10, 40_000, 200_000])) for _ in range(60)]

    def sender():
        for m in msgs:
            assert conns[0].send(m)

    threads(sender)
    assert recv_messages(s, codec, len(msgs)) == msgs


def test_send_after_close_keeps_no_reference(make_server, client):
    big = random.Random(6).randbytes(50_000)
    base = sys.getrefcount(big)
    results = []

    def handler(conn, msg):
        conn.close()
        results.append(conn.send(big))

    srv = make_server(handler)
    s = client(srv.address)
    s.sendall(Codec(LEN4).encode(b"x"))
    wait_for(lambda: results, what="the handler")
    assert results == [False]
    wait_for(lambda: is_closed_by_peer(s), what="the close")
    assert sys.getrefcount(big) == base
