"""Large messages and bulk input: from a message with 32 KiB or more still to
come, or a receive that filled a whole engine buffer, the core receives
straight into the connection's buffer (recv_into) instead of through the
engine's buffers, and goes back to those once messages are small again (see
DIRECT_* in src/core/recv.c).  These tests cross the edges of that mode:
switching in and out mid-stream, slow arrival, EOF, a close or a pause while
a direct receive is in flight, and an idle connection giving its buffer back.

Every test runs on both backends (the ``backend`` fixture).
"""
import random
import socket
import struct
import time

import pytest

import iocport
from conftest import DEADLINE, Codec, Events, is_closed_by_peer, recv_messages, wait_for

pytestmark = pytest.mark.timeout(60)

LEN4 = iocport.LengthPrefixed(4)


def echo(conn, msg):
    conn.send(msg)


def payloads(rng, sizes):
    return [rng.randbytes(n) for n in sizes]


# Small and large in one stream, so the mode switches both ways, several
# times, with messages of each kind arriving in the same segment.
MIXED = [10, 40_000, 3, 200_000, 0, 1_500_000, 5, 70_000, 12, 33_000, 65_536,
         1, 300_000, 2, 2]


@pytest.mark.parametrize("native", [False, True], ids=["python", "native"])
def test_large_and_small_interleaved(make_server, client, threads, native):
    srv = make_server(None if native else echo, native_echo=native)
    codec = Codec(LEN4)
    msgs = payloads(random.Random(1), MIXED)
    s = client(srv.address)
    threads(s.sendall, b"".join(codec.encode(m) for m in msgs))
    assert recv_messages(s, codec, len(msgs)) == msgs
    assert sum(srv.stats()["errors"].values()) == 0


def test_native_echo_pipelined_counts_every_message(make_server, client, threads):
    """Native echo answers each run of whole frames in one piece, handing
    the connection's buffer over when it can: many pipelined messages of
    mixed sizes on several connections come back intact, each counted."""
    srv = make_server(None, native_echo=True)
    codec = Codec(LEN4)
    conns = []
    for i in range(6):
        rng = random.Random(200 + i)
        msgs = payloads(rng, [rng.choice([0, 64, 4096, 50_000, 65_536, 130_000])
                              for _ in range(50)])
        s = client(srv.address)
        threads(s.sendall, b"".join(codec.encode(m) for m in msgs))
        conns.append((s, msgs))
    for s, msgs in conns:
        assert recv_messages(s, codec, len(msgs)) == msgs
    st = srv.stats()
    assert st["messages_in"] == st["messages_out"] == 6 * 50
    assert sum(st["errors"].values()) == 0


def test_native_echo_too_big_after_large_messages(make_server, client):
    """A frame over max_message after large whole ones: those are counted,
    only that connection closes (too_big), and another carries on."""
    ev = Events()
    srv = make_server(None, native_echo=True, max_message=100_000,
                      on_close=ev.on_close)
    codec = Codec(LEN4)
    other = client(srv.address)
    s = client(srv.address)
    good = payloads(random.Random(10), [60_000, 40_000, 5])
    s.sendall(b"".join(codec.encode(m) for m in good)
              + struct.pack(">I", 100_001) + b"y" * 1000)
    wait_for(lambda: ev.closed_with("too_big"), what="a too_big close")
    wait_for(lambda: is_closed_by_peer(s), what="the server to close")
    assert srv.stats()["messages_in"] == 3
    msgs = payloads(random.Random(11), [99_000, 1])
    other.sendall(b"".join(codec.encode(m) for m in msgs))
    assert recv_messages(other, codec, 2) == msgs
    assert srv.stats()["errors"]["too_big"] == 1


def test_large_messages_pipelined_many_connections(make_server, client, threads):
    srv = make_server(echo)
    conns = []
    for i in range(8):
        rng = random.Random(100 + i)
        msgs = payloads(rng, [rng.choice([64, 50_000, 65_536, 130_000]) for _ in range(40)])
        s = client(srv.address)
        threads(s.sendall, b"".join(Codec(LEN4).encode(m) for m in msgs))
        conns.append((s, msgs))
    for s, msgs in conns:
        assert recv_messages(s, Codec(LEN4), len(msgs)) == msgs


def test_large_message_trickled(make_server, client):
    """A large message that arrives a little at a time: many short direct
    receives, each followed by more; then small messages on the same
    connection."""
    srv = make_server(echo)
    codec = Codec(LEN4)
    big, small = payloads(random.Random(2), [300_000, 7])
    s = client(srv.address)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    frame = codec.encode(big)
    for i in range(0, len(frame), 997):
        s.sendall(frame[i:i + 997])
    assert recv_messages(s, codec, 1) == [big]
    for _ in range(3):
        s.sendall(codec.encode(small))
        assert recv_messages(s, codec, 1) == [small]


def test_length_field_only_reserves_what_arrives(make_server, client):
    """A header announcing 16 MiB followed by a trickle: the direct receive
    asks for at most 1 MiB at a time, and the message still completes."""
    srv = make_server(echo, max_message=16 << 20)
    codec = Codec(LEN4)
    (big,) = payloads(random.Random(3), [(16 << 20) - 4])
    s = client(srv.address)
    frame = codec.encode(big)
    s.sendall(frame[:4])
    s.sendall(frame[4:1000])
    s.sendall(frame[1000:])
    assert recv_messages(s, codec, 1) == [big]


def test_eof_mid_large_message_is_truncated(make_server, client):
    ev = Events()
    srv = make_server(echo, on_close=ev.on_close)
    codec = Codec(LEN4)
    other = client(srv.address)
    s = client(srv.address)
    s.sendall(struct.pack(">I", 500_000) + b"p" * 100_000)
    s.shutdown(socket.SHUT_WR)
    wait_for(lambda: ev.closed_with("truncated"), what="a truncated close")
    # The other connection carries on, large messages included.
    msgs = payloads(random.Random(4), [100_000, 3])
    other.sendall(b"".join(codec.encode(m) for m in msgs))
    assert recv_messages(other, codec, 2) == msgs


def test_close_from_handler_while_large_messages_stream(make_server, client, threads):
    ev = Events()

    def handler(conn, msg):
        ev.count()
        conn.send(msg)
        conn.close()

    srv = make_server(handler, on_close=ev.on_close)
    codec = Codec(LEN4)
    msgs = payloads(random.Random(5), [80_000] * 6)
    s = client(srv.address)

    def send_all():
        try:
            s.sendall(b"".join(codec.encode(m) for m in msgs))
        except OSError:
            pass   # the server may reset us once it has closed

    threads(send_all)
    assert recv_messages(s, codec, 1) == msgs[:1]
    wait_for(lambda: is_closed_by_peer(s), what="the server to close")
    wait_for(lambda: ev.closed, what="on_close")
    assert ev.closed[0].close_reason == "closed"
    assert ev.handled == 1
    wait_for(lambda: srv.stats()["connections"] == 0, what="the connection to go")


@pytest.mark.parametrize("native", [False, True], ids=["python", "native"])
def test_backpressure_pauses_a_direct_receive(make_server, threads, native):
    """The client sends large messages and reads nothing for a while: the
    server stops receiving (cancelling a direct receive in flight) and later
    resumes; every reply arrives, in order.  (Native echo: replies sent at
    once from the receive buffer until the socket is full, then queued.)"""
    srv = make_server(None if native else echo, native_echo=native,
                      max_unsent=256 * 1024)
    codec = Codec(LEN4)
    msgs = payloads(random.Random(6), [90_000 + i for i in range(60)])
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    s.settimeout(DEADLINE)
    s.connect(srv.address)
    try:
        threads(s.sendall, b"".join(codec.encode(m) for m in msgs))
        # Unsent replies pile up until the server pauses the connection.
        wait_for(lambda: srv.stats()["bytes_out"] > 0, what="replies to start")
        assert recv_messages(s, codec, len(msgs)) == msgs
        assert sum(srv.stats()["errors"].values()) == 0
    finally:
        s.close()


def test_quiet_large_connection_goes_back_to_small(make_server, client):
    """After a large message and a quiet second, the idle sweep ends the
    direct receive held open for the next one; small and large messages on
    that connection are still echoed intact."""
    srv = make_server(echo)
    codec = Codec(LEN4)
    big, small, big2 = payloads(random.Random(7), [100_000, 9, 120_000])
    s = client(srv.address)
    s.sendall(codec.encode(big))
    assert recv_messages(s, codec, 1) == [big]
    time.sleep(2.5)   # past the sweep's 1 s quiet mark (the path taken, not the result)
    for m in (small, big2, small):
        s.sendall(codec.encode(m))
        assert recv_messages(s, codec, 1) == [m]


@pytest.mark.parametrize("framing", [iocport.FixedSize(100_000),
                                     iocport.LengthPrefixed(8, byteorder="little")],
                         ids=["fixed", "len8le"])
def test_other_framings_with_large_messages(make_server, client, threads, framing):
    srv = make_server(echo, framing=framing)
    codec = Codec(framing)
    rng = random.Random(8)
    sizes = [100_000] * 5 if isinstance(framing, iocport.FixedSize) else [5, 200_000, 6]
    msgs = payloads(rng, sizes)
    s = client(srv.address)
    threads(s.sendall, b"".join(codec.encode(m) for m in msgs))
    assert recv_messages(s, codec, len(msgs)) == msgs


@pytest.mark.parametrize("framing", [LEN4, iocport.Delimited(b"\r\n")], ids=["len4", "crlf"])
def test_bulk_small_messages_then_request_response(make_server, client, threads, framing):
    """A burst of small messages fills whole engine buffers (bulk input:
    direct receives), then one message at a time (back to the engine's
    buffers), then a burst again."""
    srv = make_server(echo, framing=framing)
    codec = Codec(framing)
    rng = random.Random(9)
    s = client(srv.address)

    def burst(n):
        msgs = [rng.randbytes(rng.randint(0, 1500)).replace(b"\r\n", b"..")
                for _ in range(n)]
        threads(s.sendall, b"".join(codec.encode(m) for m in msgs))
        assert recv_messages(s, codec, n) == msgs

    burst(3000)
    for i in range(20):
        m = b"one at a time %d" % i
        s.sendall(codec.encode(m))
        assert recv_messages(s, codec, 1) == [m]
    burst(3000)
    assert sum(srv.stats()["errors"].values()) == 0
