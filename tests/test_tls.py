"""TLS: accepted and outgoing connections encrypted by the native workers,
with handlers still getting whole plaintext messages.

Certificates are made for the run with trustme: a CA, a server certificate
for 127.0.0.1, localhost and ::1, a client certificate, and the same from a
second CA nobody trusts.  The peers are Python's ssl module (SSLSocket, and
an SSLObject on a raw socket when the test must decide exactly what goes on
the wire: a close_notify without waiting for the peer's, a FIN without one,
several messages and a bad frame in one record), ``openssl s_client`` and
``openssl s_server`` (skipped when the binary is missing), and raw sockets
playing hostile peers.

What is proven, on both backends:
- echo over TLS 1.2 and 1.3, both framings, small, 1 MiB and pipelined
  messages; what a handler sees (tls_version, tls_cipher, alpn_protocol,
  peer_certificate); client certificates required;
- outgoing connect(): verification, SNI, the errors a failed verification
  reports;
- closing: conn.close() sends every queued reply, then close_notify; the
  peer's close_notify ends the input like a FIN; a FIN without it is
  'tls_eof'; the lose-nothing cases of test_lose_nothing.py over TLS;
- hostile peers and renegotiation close only their own connection, with
  reason 'tls', counted in stats()["errors"]["tls"];
- no fd or memory leak over thousands of handshakes.

Waiting is on conditions (wait_for, replies, on_close), never on a sleep;
no assertion is about timing.
"""
import collections
import gc
import os
import random
import select
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading

import pytest

import iocport
from conftest import (CHILD_CWD, DEADLINE, TREE, Codec, Events, child_env,
                      is_closed_by_peer, recv_messages, recv_until_eof, wait_for)

trustme = pytest.importorskip("trustme")

pytestmark = pytest.mark.timeout(60)

KiB = 1024
MiB = 1024 * KiB
LINE = iocport.Delimited(b"\n")
LEN4 = iocport.LengthPrefixed(4)
OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None,
                                   reason="needs the openssl command-line tool")
VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
# OpenSSL's X509_V_ERR_* codes (x509_vfy.h), as ssl.SSLCertVerificationError
# reports them in verify_code.
X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY = 20
X509_V_ERR_HOSTNAME_MISMATCH = 62


# ---- certificates ----------------------------------------------------------------

class PKI:
    """The run's certificates, in memory and as PEM files (for openssl and
    the CLI): ``ca`` signs ``server`` (127.0.0.1, localhost, ::1) and
    ``client``; ``stranger_ca``, trusted by nobody, signs certificates for
    the same names."""

    def __init__(self, directory):
        self.dir = directory
        self.ca = trustme.CA()
        self.server = self.ca.issue_cert("127.0.0.1", "localhost", "::1")
        self.client = self.ca.issue_cert("client.iocport.test")
        self.stranger_ca = trustme.CA()
        self.stranger_server = self.stranger_ca.issue_cert("127.0.0.1", "localhost", "::1")
        self.stranger_client = self.stranger_ca.issue_cert("client.iocport.test")
        self.ca_pem = self._write("ca.pem", self.ca.cert_pem)
        self.server_pem = self._write("server.pem", *self.server.cert_chain_pems)
        self.server_key = self._write("server.key", self.server.private_key_pem)
        self.client_pem = self._write("client.pem", *self.client.cert_chain_pems)
        self.client_key = self._write("client.key", self.client.private_key_pem)

    def _write(self, name, *blobs):
        path = self.dir / name
        path.write_bytes(b"".join(b.bytes() for b in blobs))
        return str(path)

    @staticmethod
    def der(leaf):
        """A leaf certificate as DER bytes (what conn.peer_certificate gives)."""
        return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())

    def server_context(self, *, leaf=None, require_client_cert=False, alpn=None):
        """A server-side context with `leaf` (default: the server certificate)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        (leaf or self.server).configure_cert(ctx)
        if require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
            self.ca.configure_trust(ctx)
        if alpn:
            ctx.set_alpn_protocols(alpn)
        return ctx

    def client_context(self, *, cert=None, version=None, alpn=None):
        """A client-side context trusting the CA (hostname checked), with a
        client certificate `cert`, TLS `version` only ('TLSv1.2'...)."""
        ctx = ssl.create_default_context(cafile=self.ca_pem)
        if cert is not None:
            cert.configure_cert(ctx)
        if version is not None:
            ctx.minimum_version = ctx.maximum_version = VERSIONS[version]
        if alpn:
            ctx.set_alpn_protocols(alpn)
        return ctx


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return PKI(tmp_path_factory.mktemp("pki"))


# ---- the test's TLS client on a raw socket ------------------------------------------

class TLSClient:
    """A TLS client through ssl.MemoryBIO on a blocking raw socket: the test
    decides when each byte goes out.  recv() returns b"" for the peer's
    close_notify and raises ssl.SSLEOFError for a FIN without one, so
    conftest's recv_messages() and recv_until_eof() work on it, and
    recv_until_eof() returning proves a close_notify."""

    def __init__(self, address, context, *, server_hostname="127.0.0.1",
                 handshake=True, timeout=DEADLINE):
        self.timeout = timeout
        self.sock = socket.create_connection(address, timeout=timeout)
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing,
                                    server_hostname=server_hostname)
        if handshake:
            self.handshake()

    def _flush(self):
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _fill(self):
        data = self.sock.recv(1 << 20)
        if data:
            self.incoming.write(data)
        else:
            self.incoming.write_eof()

    def client_hello(self):
        """The ClientHello this client would send, not sent (for a peer that
        sends it cut or broken)."""
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        return self.outgoing.read()

    def handshake(self):
        while True:
            try:
                self.tls.do_handshake()
                self._flush()
                return
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()

    def send(self, data):
        """Encrypt and send `data`: one record per 16 KiB, so up to 16 KiB
        goes out as a single record."""
        self.tls.write(data)
        self._flush()

    def recv(self, size=1 << 20):
        while True:
            try:
                return self.tls.read(size)
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
            except ssl.SSLZeroReturnError:
                return b""

    def close_notify(self):
        """Send a close_notify without waiting for the peer's (the peer may
        still send: recv() goes on).  Call it with nothing received and
        unread: OpenSSL's second SSL_shutdown, which unwrap() makes, would
        discard application data already in the incoming buffer."""
        try:
            self.tls.unwrap()
        except ssl.SSLWantReadError:
            pass
        self._flush()

    def shutdown_write(self):
        """A FIN on the raw socket (after close_notify() or not)."""
        self.sock.shutdown(socket.SHUT_WR)

    def reset(self):
        """Close the raw socket with an RST (SO_LINGER 0)."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def raw_recv_eof(self):
        """True if the raw socket has nothing more to give but its FIN."""
        return self.sock.recv(1 << 16) == b""

    def exchange(self, data, codec, count):
        """Send `data` and read the replies at the same time until `count`
        messages have been decoded (a pipelined load larger than the socket
        buffers, on one thread: an SSL object is not for two)."""
        self.tls.write(data)
        out = bytearray(self.outgoing.read())
        got = []
        self.sock.setblocking(False)
        try:
            while len(got) < count:
                want_write = [self.sock] if out else []
                r, w, _ = select.select([self.sock], want_write, [], self.timeout)
                assert r or w, f"no progress for {self.timeout}s ({len(got)} of {count})"
                if w:
                    try:
                        del out[:self.sock.send(out[:1 << 20])]
                    except BlockingIOError:
                        pass
                if r:
                    try:
                        chunk = self.sock.recv(1 << 20)
                    except BlockingIOError:
                        continue
                    assert chunk, f"EOF after {len(got)} of {count} messages"
                    self.incoming.write(chunk)
                    while True:
                        try:
                            plain = self.tls.read(1 << 20)
                        except ssl.SSLWantReadError:
                            break
                        assert plain, "close_notify before the replies"
                        got += codec.feed(plain)
                    out += self.outgoing.read()     # TLS 1.3 post-handshake answers
        finally:
            self.sock.settimeout(self.timeout)
        assert len(got) == count
        return got

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def client_hello(pki):
    """A real ClientHello's bytes (for peers that send it cut or broken)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = pki.client_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:    # waiting for the ServerHello
        pass
    return outgoing.read()


def read_to_end(client):
    """Everything a TLSClient receives until the end, and how it ended:
    'close_notify', or 'fin' (a FIN without one).  A reset raises."""
    chunks = []
    try:
        while True:
            data = client.recv()
            if not data:
                return b"".join(chunks), "close_notify"
            chunks.append(data)
    except ssl.SSLEOFError:
        return b"".join(chunks), "fin"


@pytest.fixture
def tls_client(pki):
    """tls_client(address, context=None, **kw) -> TLSClient (default: a
    client context trusting the CA); all are closed at teardown."""
    made = []

    def connect(address, context=None, **kw):
        c = TLSClient(address, context or pki.client_context(), **kw)
        made.append(c)
        return c

    yield connect
    for c in made:
        c.close()


@pytest.fixture
def ssl_socket(pki):
    """ssl_socket(address, context=None, server_hostname=...) -> a connected
    ssl.SSLSocket, handshake done, ragged EOFs raising (recv() returns b""
    for a close_notify only); all are closed at teardown."""
    made = []

    def connect(address, context=None, server_hostname=None):
        raw = socket.create_connection(address, timeout=DEADLINE)
        made.append(raw)
        s = (context or pki.client_context()).wrap_socket(
            raw, server_hostname=server_hostname or address[0],
            suppress_ragged_eofs=False)
        made.append(s)
        return s

    yield connect
    for s in made:
        s.close()


# ---- peers: openssl and a Python ssl server ------------------------------------------

@pytest.fixture
def spawn():
    """spawn(argv, **popen_kw) -> Popen with pipes (text); every process
    still running at teardown is killed and reaped."""
    procs = []

    def start(argv, **kw):
        kw.setdefault("stdin", subprocess.PIPE)
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        kw.setdefault("cwd", CHILD_CWD)
        p = subprocess.Popen(argv, text=True, **kw)
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        for f in (p.stdin, p.stdout, p.stderr):
            if f is not None:
                f.close()
        p.wait()


def s_client_argv(pki, address, *extra):
    host, port = address[:2]
    return [OPENSSL, "s_client", "-connect", f"{host}:{port}",
            "-CAfile", pki.ca_pem, "-servername", "localhost", *extra]


def start_s_server(spawn, pki, *extra):
    """`openssl s_server -rev` (each line comes back reversed; a line CLOSE
    ends the connection with a close_notify) on 127.0.0.1, one connection:
    (process, port)."""
    proc = spawn([OPENSSL, "s_server", "-accept", "127.0.0.1:0", "-naccept", "1",
                  "-cert", pki.server_pem, "-key", pki.server_key, "-rev", *extra])
    for line in proc.stdout:    # the test's timeout bounds it
        if line.startswith("ACCEPT"):
            return proc, int(line.rsplit(":", 1)[1])
    pytest.fail(f"openssl s_server did not start: {proc.communicate()}")


class PyTLSServer:
    """A Python ssl server echoing bytes, on 127.0.0.1 (a thread per
    connection): the peer of server.connect().  Records the SNI names sent
    to it (``names``), the handshakes that failed (``failures``) and the
    connections whose handshake succeeded (``accepted``)."""

    def __init__(self, context):
        self.context = context
        self.context.sni_callback = self._sni
        self.names, self.failures, self.accepted = [], [], []
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conns, self.threads = [], []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _sni(self, sslobj, name, ctx):
        with self.lock:
            self.names.append(name)

    def _accept(self):
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:             # stop(): the listener was shut down
                return
            raw.settimeout(DEADLINE)
            s = self.context.wrap_socket(raw, server_side=True,
                                         do_handshake_on_connect=False)
            with self.lock:
                self.conns.append(s)
            t = threading.Thread(target=self._serve, args=(s,), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, s):
        try:
            s.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            with self.lock:
                self.failures.append(exc)
            return
        with self.lock:
            self.accepted.append(s)
        try:
            while data := s.recv(1 << 16):
                s.sendall(data)
        except (ssl.SSLError, OSError):
            pass

    def stop(self):
        # shutdown() wakes a thread blocked in accept() or recv() (Linux);
        # socket.socket.shutdown, not SSLSocket's, which drops its SSL object
        # under the thread using it.
        self.listener.shutdown(socket.SHUT_RDWR)
        self.acceptor.join(DEADLINE)
        with self.lock:
            conns = list(self.conns)
        for s in conns:
            try:
                socket.socket.shutdown(s, socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self.threads:
            t.join(DEADLINE)
            assert not t.is_alive()
        for s in conns:
            s.close()
        self.listener.close()


@pytest.fixture
def py_tls_server():
    """py_tls_server(context) -> a started PyTLSServer, stopped at teardown."""
    made = []

    def start(context):
        srv = PyTLSServer(context)
        made.append(srv)
        return srv

    yield start
    for srv in made:
        srv.stop()


# ---- small helpers -------------------------------------------------------------------

def echo(conn, msg):
    conn.send(msg)


def echo_until_bye(conn, msg):
    """Echo; after echoing b"bye", close (gracefully)."""
    conn.send(msg)
    if msg == b"bye":
        conn.close()


def frames(codec, payloads):
    return b"".join(codec.encode(p) for p in payloads)


def reasons(ev):
    with ev.lock:
        return [c.close_reason for c in ev.closed]


def tls_errors(srv):
    return srv.stats()["errors"].get("tls", 0)


def round_trip(sock, codec, payload):
    """One message there and back on an SSLSocket or a TLSClient."""
    (sock.sendall if hasattr(sock, "sendall") else sock.send)(codec.encode(payload))
    assert recv_messages(sock, codec, 1) == [payload]


def line_payloads(rng, count, low=0, high=300):
    return [bytes(rng.randrange(32, 127) for _ in range(rng.randrange(low, high)))
            for _ in range(count)]


class Connected:
    """connect()'s callback: the (conn, error) pairs it got, and an event."""

    def __init__(self):
        self.calls = []
        self.done = threading.Event()

    def __call__(self, conn, error):
        self.calls.append((conn, error))
        self.done.set()

    def wait(self):
        assert self.done.wait(DEADLINE), "connect() callback never ran"
        (conn, error), = self.calls
        return conn, error


class Inbox:
    """A handler collecting messages (a client server's replies)."""

    def __init__(self):
        self.cond = threading.Condition()
        self.msgs = []

    def __call__(self, conn, msg):
        with self.cond:
            self.msgs.append(msg)
            self.cond.notify_all()

    def wait(self, count):
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.msgs) >= count, DEADLINE), self.msgs
            return list(self.msgs)


# ---- certificates made in the run ---------------------------------------------------

def test_certificates_cover_every_loopback_name(pki):
    """The server certificate verifies for 127.0.0.1, localhost and ::1
    (Python's own client and server, no iocport): the rest of the file can
    rely on it."""
    for name in ("127.0.0.1", "localhost", "::1"):
        cctx = pki.client_context()
        sctx = pki.server_context()
        c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
        c = cctx.wrap_bio(c_in, c_out, server_hostname=name)
        s = sctx.wrap_bio(s_in, s_out, server_side=True)
        for _ in range(10):
            for obj in (c, s):
                try:
                    obj.do_handshake()
                except ssl.SSLWantReadError:
                    pass
            s_in.write(c_out.read())
            c_in.write(s_out.read())
        assert c.version() in VERSIONS and s.version() == c.version(), name
        assert c.getpeercert(binary_form=True) == pki.der(pki.server)


# ---- echo over TLS ----------------------------------------------------------------

@pytest.mark.parametrize("framing", [LINE, LEN4], ids=["line", "len4"])
def test_small_messages_echo(make_server, pki, ssl_socket, framing):
    """Handlers get whole plaintext messages and conn.send() encrypts: 200
    small messages, sent at once, come back in order."""
    srv = make_server(echo, framing=framing, ssl=pki.server_context())
    codec = Codec(framing)
    msgs = line_payloads(random.Random(1), 200)
    s = ssl_socket(srv.address)
    s.sendall(frames(codec, msgs))
    assert recv_messages(s, codec, len(msgs)) == msgs


@pytest.mark.parametrize("framing", [LINE, LEN4], ids=["line", "len4"])
def test_one_mib_messages_echo(make_server, pki, ssl_socket, framing):
    """1 MiB messages (64 records each way) come back whole, one at a time."""
    srv = make_server(echo, framing=framing, ssl=pki.server_context())
    codec = Codec(framing)
    blob = random.Random(2).randbytes(MiB + 7).replace(b"\n", b" ")
    s = ssl_socket(srv.address)
    for k in range(3):
        msg = blob[k:k + MiB]
        s.sendall(codec.encode(msg))
        assert recv_messages(s, codec, 1) == [msg]


@pytest.mark.parametrize("framing", [LINE, LEN4], ids=["line", "len4"])
def test_pipelined_messages_larger_than_the_socket_buffers(make_server, pki,
                                                           tls_client, framing):
    """20,000 messages and a few of 256 KiB, all sent before any reply is
    read (sent and read together): every reply, in order."""
    srv = make_server(echo, framing=framing, ssl=pki.server_context())
    codec = Codec(framing)
    rng = random.Random(3)
    msgs = line_payloads(rng, 20000, 0, 100)
    big = rng.randbytes(256 * KiB).replace(b"\n", b".")
    for i in (10, 5000, 19999):
        msgs[i] = big
    c = tls_client(srv.address)
    assert c.exchange(frames(codec, msgs), codec, len(msgs)) == msgs


def test_send_file_over_tls(make_server, pki, ssl_socket, tmp_path):
    """send_file on a TLS connection: the file's bytes arrive encrypted and
    whole, then a message sent meanwhile, then close_notify (conn.close()
    in the callback)."""
    data = random.Random(5).randbytes(3 * MiB + 11)
    path = tmp_path / "blob"
    path.write_bytes(data)
    done = []

    def on_message(conn, msg):
        f = conn.state = srv.open_file(str(path))

        def sent(n, err):
            done.append((n, err))
            f.close()
            conn.close()
        conn.send_file(f, callback=sent)
        conn.send_raw(b"after")

    srv = make_server(on_message, framing=LINE, ssl=pki.server_context())
    s = ssl_socket(srv.address)
    s.sendall(b"go\n")
    assert recv_until_eof(s) == data + b"after"      # b"" only for close_notify
    assert done == [(len(data), None)]


def test_ipv6_loopback(make_server, pki, ssl_socket):
    """A TLS listener on ::1, verified against the certificate's ::1."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    srv = make_server(echo, framing=LINE, host="::1", ssl=pki.server_context())
    s = ssl_socket(srv.address[:2], server_hostname="::1")
    round_trip(s, Codec(LINE), b"over ::1")


def test_listen_ssl_is_for_that_listener_only(make_server, pki, ssl_socket, client):
    """listen(ssl=ctx) makes that listener TLS while the server's others stay
    plain; a plain connection's TLS properties are all None."""
    seen = {}

    def on_message(conn, msg):
        seen[msg] = (conn.tls_version, conn.tls_cipher, conn.alpn_protocol,
                     conn.peer_certificate)
        conn.send(msg)

    srv = make_server(on_message, framing=LINE, start=False)     # plain
    plain_addr = srv.address
    tls_addr = srv.listen("127.0.0.1", 0, ssl=pki.server_context())
    srv.start()
    codec = Codec(LINE)
    round_trip(client(plain_addr), codec, b"plain")
    round_trip(ssl_socket(tls_addr), codec, b"tls")
    assert seen[b"plain"] == (None, None, None, None)
    assert seen[b"tls"][0] in VERSIONS


# ---- what a handler sees -------------------------------------------------------------

@pytest.mark.parametrize("version", list(VERSIONS))
def test_tls_version_and_cipher_as_the_client_sees_them(make_server, pki,
                                                        ssl_socket, version):
    """Forced to one version by the client, the connection reports it in
    on_connect and in the handler, with the cipher tuple the client's
    SSLSocket.cipher() gives."""
    seen = []

    def on_connect(conn):
        seen.append(("connect", conn.tls_version, conn.tls_cipher))

    def on_message(conn, msg):
        seen.append(("message", conn.tls_version, conn.tls_cipher))
        conn.send(msg)

    srv = make_server(on_message, framing=LINE, ssl=pki.server_context(),
                      on_connect=on_connect)
    s = ssl_socket(srv.address, pki.client_context(version=version))
    round_trip(s, Codec(LINE), b"which version?")
    assert s.version() == version
    name, protocol, bits = s.cipher()
    assert isinstance(bits, int) and bits >= 128
    assert seen == [("connect", version, (name, protocol, bits)),
                    ("message", version, (name, protocol, bits))]


@pytest.mark.parametrize("client_alpn, expected", [
    (["iocport/1", "http/1.1"], "iocport/1"),
    (["http/1.1"], None),
    (None, None),
], ids=["agreed", "no-overlap", "client-offers-none"])
def test_alpn_protocol(make_server, pki, ssl_socket, client_alpn, expected):
    """The protocol both sides' set_alpn_protocols() agree on is
    conn.alpn_protocol (None when there is none)."""
    seen = []
    srv = make_server(echo, framing=LINE,
                      ssl=pki.server_context(alpn=["h2", "iocport/1"]),
                      on_connect=lambda conn: seen.append(conn.alpn_protocol))
    s = ssl_socket(srv.address, pki.client_context(alpn=client_alpn))
    round_trip(s, Codec(LINE), b"alpn")
    assert s.selected_alpn_protocol() == expected
    assert seen == [expected]


def test_peer_certificate_is_none_without_a_client_certificate(make_server, pki,
                                                               ssl_socket):
    """A server that asks for no client certificate sees none."""
    seen = []
    srv = make_server(echo, framing=LINE, ssl=pki.server_context(),
                      on_connect=lambda conn: seen.append(conn.peer_certificate))
    round_trip(ssl_socket(srv.address), Codec(LINE), b"anonymous")
    assert seen == [None]


@pytest.mark.parametrize("version", list(VERSIONS))
def test_client_certificate_required_and_given(make_server, pki, ssl_socket, version):
    """CERT_REQUIRED with the CA loaded: a client with a certificate from
    that CA gets in, and conn.peer_certificate is its DER."""
    seen = []
    srv = make_server(echo, framing=LINE,
                      ssl=pki.server_context(require_client_cert=True),
                      on_connect=lambda conn: seen.append(conn.peer_certificate))
    s = ssl_socket(srv.address, pki.client_context(cert=pki.client, version=version))
    round_trip(s, Codec(LINE), b"with a certificate")
    assert seen == [pki.der(pki.client)]


@pytest.mark.parametrize("version", list(VERSIONS))
@pytest.mark.parametrize("cert", ["none", "untrusted"])
def test_client_certificate_required_and_missing(make_server, pki, tls_client,
                                                 ssl_socket, cert, version):
    """A client with no certificate, or one from a CA the server does not
    trust, is closed with reason 'tls' and never reaches on_connect or the
    handler (with TLS 1.3 its own handshake completes first: the refusal
    comes on its first read); a good client is unaffected."""
    ev = Events()
    srv = make_server(ev.count, framing=LINE,
                      ssl=pki.server_context(require_client_cert=True),
                      on_connect=ev.on_connect, on_close=ev.on_close)
    leaf = None if cert == "none" else pki.stranger_client
    c = tls_client(srv.address, pki.client_context(cert=leaf, version=version),
                   handshake=False)
    try:
        c.handshake()
        c.send(b"let me in\n")
        got = c.recv()
    except (ssl.SSLError, ConnectionError) as exc:
        got = exc
    assert not isinstance(got, bytes) or got == b"", got
    wait_for(lambda: ev.closed, what="on_close of the refused client")
    assert reasons(ev) == ["tls"]
    assert tls_errors(srv) == 1
    assert ev.opened == [] and ev.handled == 0
    good = ssl_socket(srv.address, pki.client_context(cert=pki.client))
    good.sendall(b"good\n")
    wait_for(lambda: ev.handled == 1, what="the good client's message")
    assert len(ev.opened) == 1 and reasons(ev) == ["tls"]


# ---- openssl s_client and s_server as peers ------------------------------------------

@needs_openssl
@pytest.mark.parametrize("flag", ["-tls1_2", "-tls1_3"])
def test_openssl_s_client_sends_lines_and_reads_replies(make_server, pki, spawn, flag):
    """`openssl s_client -quiet`, with a client certificate, writes 100
    lines and reads them back; the server's close (after b"bye") ends
    s_client cleanly."""
    seen = []

    def on_message(conn, msg):
        conn.send(msg)
        if msg == b"bye":
            seen.append((conn.tls_version, conn.peer_certificate))
            conn.close()

    srv = make_server(on_message, framing=LINE,
                      ssl=pki.server_context(require_client_cert=True))
    proc = spawn(s_client_argv(pki, srv.address, "-quiet", "-verify_return_error",
                               "-verify_hostname", "localhost",
                               "-cert", pki.client_pem, "-key", pki.client_key, flag))
    lines = [f"line {i} " + "x" * i for i in range(100)] + ["bye"]
    out, err = proc.communicate("".join(l + "\n" for l in lines), timeout=DEADLINE)
    assert proc.returncode == 0, err
    assert out.splitlines() == lines
    version = {"-tls1_2": "TLSv1.2", "-tls1_3": "TLSv1.3"}[flag]
    assert seen == [(version, pki.der(pki.client))]


@needs_openssl
def test_connect_to_openssl_s_server(make_server, pki, spawn):
    """server.connect(ssl=...) to `openssl s_server -rev`: the handshake
    verifies, messages go out and come back (reversed), and s_server's
    close_notify then FIN closes the connection with reason 'eof'."""
    ev = Events()
    inbox = Inbox()
    proc, port = start_s_server(spawn, pki)
    cli = make_server(inbox, framing=LINE, on_connect=ev.on_connect,
                      on_close=ev.on_close)
    done = Connected()
    conn = cli.connect("127.0.0.1", port, done, ssl=pki.client_context(),
                       server_hostname="localhost")
    assert done.wait() == (conn, None)
    assert ev.opened == [conn]
    assert conn.tls_version in VERSIONS
    assert conn.peer_certificate == pki.der(pki.server)
    for word in (b"hello", b"world"):
        conn.send(word)
    assert inbox.wait(2) == [b"olleh", b"dlrow"]
    conn.send(b"CLOSE")
    wait_for(lambda: ev.closed, what="s_server's close")
    assert reasons(ev) == ["eof"]
    out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, (out, err)


# ---- outgoing connect(): verification and SNI ----------------------------------------

def test_connect_verifies_and_echoes(make_server, pki, py_tls_server):
    """connect() to a Python ssl server: the callback gets None, on_connect
    runs with the handshake done (server certificate, ALPN), messages go
    both ways."""
    ev = Events()
    inbox = Inbox()
    peer = py_tls_server(pki.server_context(alpn=["iocport/1"]))
    seen = []

    def on_connect(conn):
        seen.append((conn.tls_version, conn.alpn_protocol, conn.peer_certificate))

    cli = make_server(inbox, framing=LINE, on_connect=on_connect, on_close=ev.on_close)
    done = Connected()
    conn = cli.connect("127.0.0.1", peer.port, done,
                       ssl=pki.client_context(alpn=["iocport/1"]),
                       server_hostname="localhost")
    assert done.wait() == (conn, None)
    assert seen == [(conn.tls_version, "iocport/1", pki.der(pki.server))]
    assert conn.tls_version in VERSIONS
    msgs = [b"message %d" % i for i in range(50)]
    for m in msgs:
        assert conn.send(m) is True
    assert inbox.wait(len(msgs)) == msgs
    assert ev.closed == []


@pytest.mark.parametrize("host, server_hostname", [
    ("127.0.0.1", "localhost"), ("localhost", None),
], ids=["explicit", "defaults-to-host"])
def test_connect_sends_sni(make_server, pki, py_tls_server, host, server_hostname):
    """The name verified is sent as SNI: server_hostname, or the host."""
    peer = py_tls_server(pki.server_context())
    inbox = Inbox()
    cli = make_server(inbox, framing=LINE)
    done = Connected()
    conn = cli.connect(host, peer.port, done, ssl=pki.client_context(),
                       server_hostname=server_hostname)
    assert done.wait() == (conn, None)
    conn.send(b"ping")
    assert inbox.wait(1) == [b"ping"]
    assert peer.names == ["localhost"]


@pytest.mark.parametrize("case", ["wrong-hostname", "untrusted-ca"])
def test_connect_verification_failure(make_server, pki, py_tls_server, case):
    """A certificate for another name, or from a CA the context does not
    trust: the callback gets ssl.SSLCertVerificationError with OpenSSL's
    code and reason, on_connect never runs, the connection closes once
    with reason 'tls' (counted) and sends nothing."""
    if case == "wrong-hostname":
        peer = py_tls_server(pki.server_context())
        hostname, code, words = "wrong.example", X509_V_ERR_HOSTNAME_MISMATCH, "hostname mismatch"
    else:
        peer = py_tls_server(pki.server_context(leaf=pki.stranger_server))
        hostname, code, words = ("localhost", X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
                                 "unable to get local issuer certificate")
    ev = Events()
    cli = make_server(ev.count, framing=LINE, on_connect=ev.on_connect,
                      on_close=ev.on_close)
    done = Connected()
    conn = cli.connect("127.0.0.1", peer.port, done, ssl=pki.client_context(),
                       server_hostname=hostname)
    conn.send(b"never sent")
    c, err = done.wait()
    assert c is conn
    assert isinstance(err, ssl.SSLCertVerificationError), repr(err)
    assert err.verify_code == code
    assert words in err.verify_message.lower()
    assert words in str(err).lower()
    wait_for(lambda: ev.closed, what="on_close of the failed connect")
    assert ev.closed == [conn] and conn.close_reason == "tls"
    assert ev.opened == []
    assert tls_errors(cli) == 1
    assert conn.send(b"x") is False
    wait_for(lambda: peer.failures, what="the peer to see the handshake fail")
    assert peer.accepted == []


# ---- closing -------------------------------------------------------------------------

def test_close_sends_queued_replies_then_close_notify(make_server, pki, tls_client):
    """conn.close() after queueing 8 MiB of replies: every byte arrives,
    then a close_notify (recv_until_eof() returns: no SSLEOFError), then
    the FIN; reason 'closed'."""
    ev = Events()
    blob = random.Random(4).randbytes(MiB)

    def on_message(conn, msg):
        if msg == b"close":
            for _ in range(8):
                conn.send(blob)
            conn.close()
        else:
            conn.send(msg)

    srv = make_server(on_message, framing=LEN4, ssl=pki.server_context(),
                      on_close=ev.on_close)
    codec = Codec(LEN4)
    c = tls_client(srv.address)
    msgs = [b"before %d" % i for i in range(10)]
    c.send(frames(codec, msgs + [b"close"]))
    data = recv_until_eof(c)
    assert codec.feed(data) == msgs + [blob] * 8 and codec.buf == b""
    assert c.raw_recv_eof()
    wait_for(lambda: ev.closed, what="on_close")
    assert reasons(ev) == ["closed"]
    assert tls_errors(srv) == 0


@pytest.mark.parametrize("version", list(VERSIONS))
def test_python_ssl_socket_sees_close_notify(make_server, pki, ssl_socket, version):
    """Python's own SSLSocket sees conn.close() as a clean TLS shutdown: the
    reply, then recv() returns b"" (OpenSSL's SSL_ERROR_ZERO_RETURN: with
    suppress_ragged_eofs=False a FIN without close_notify would raise
    SSLEOFError instead)."""
    def reply_and_close(conn, msg):
        conn.send(msg)
        conn.close()

    srv = make_server(reply_and_close, framing=LINE, ssl=pki.server_context())
    s = ssl_socket(srv.address, pki.client_context(version=version))
    s.sendall(b"last\n")
    assert recv_until_eof(s) == b"last\n"


@pytest.mark.parametrize("version", list(VERSIONS))
@pytest.mark.parametrize("fin", [True, False], ids=["close_notify+FIN", "close_notify"])
def test_peer_close_notify_ends_the_input_like_a_fin(make_server, pki, tls_client,
                                                     fin, version):
    """Messages, then the peer's close_notify (and FIN, or not): every reply
    comes back, then the server closes; reason 'eof'."""
    ev = Events()
    srv = make_server(echo, framing=LEN4, ssl=pki.server_context(),
                      on_close=ev.on_close)
    codec = Codec(LEN4)
    msgs = [b"owed %d" % i for i in range(30)]
    c = tls_client(srv.address, pki.client_context(version=version))
    c.send(frames(codec, msgs))
    c.close_notify()
    if fin:
        c.shutdown_write()
    data, _ = read_to_end(c)
    assert codec.feed(data) == msgs and codec.buf == b""
    wait_for(lambda: ev.closed, what="on_close")
    assert reasons(ev) == ["eof"]
    assert srv.stats()["eof"] == 1
    assert tls_errors(srv) == 0


def test_replies_from_a_thread_after_close_notify_and_fin(make_server, pki,
                                                          tls_client, threads):
    """on_eof returns True: after the peer's close_notify and FIN the
    connection stays open for replies sent later from another thread;
    they arrive, then close() sends the close_notify (reason 'closed', as
    for any connection the application closes)."""
    ev = Events()
    told = []
    lock = threading.Lock()

    def on_message(conn, msg):
        with lock:
            if conn.state is None:
                conn.state = []
            conn.state.append(msg)

    def on_eof(conn):
        with lock:
            told.append(conn)
        return True

    srv = make_server(on_message, framing=LEN4, ssl=pki.server_context(),
                      on_eof=on_eof, on_close=ev.on_close)
    codec = Codec(LEN4)
    msgs = [b"later %d" % i for i in range(20)]
    c = tls_client(srv.address)
    c.send(frames(codec, msgs))
    c.close_notify()
    c.shutdown_write()
    wait_for(lambda: told, what="on_eof")
    assert ev.closed == []
    sends = []

    def replier(conn):
        for m in conn.state:
            sends.append(conn.send(m.upper()))
        conn.close()

    threads(replier, told[0])
    assert recv_until_eof(c) == frames(codec, [m.upper() for m in msgs])
    assert sends == [True] * len(msgs)
    wait_for(lambda: ev.closed, what="on_close")
    assert reasons(ev) == ["closed"]


def test_close_stays_closed_when_the_peer_answers_with_a_bare_fin(make_server, pki,
                                                                  tls_client):
    """After conn.close() has sent its close_notify and FIN, the peer closes
    without a close_notify of its own (as Python's SSLSocket.close() and
    most clients do): still reason 'closed', the application's close, not
    'tls_eof' (nothing of the input was owed any more)."""
    ev = Events()

    def reply_and_close(conn, msg):
        conn.send(msg)
        conn.close()

    srv = make_server(reply_and_close, framing=LEN4, ssl=pki.server_context(),
                      on_close=ev.on_close)
    codec = Codec(LEN4)
    for _ in range(20):
        c = tls_client(srv.address)
        c.send(codec.encode(b"bye"))
        assert recv_until_eof(c) == codec.encode(b"bye")
        c.close()
    wait_for(lambda: len(ev.closed) == 20, what="every on_close")
    assert reasons(ev) == ["closed"] * 20
    assert tls_errors(srv) == 0


def test_fin_without_close_notify_is_tls_eof(make_server, pki, tls_client):
    """After a whole exchange, a FIN with no close_notify (a truncation
    attack, or a careless peer) closes with reason 'tls_eof', not 'eof'."""
    ev = Events()
    srv = make_server(echo, framing=LEN4, ssl=pki.server_context(),
                      on_close=ev.on_close)
    c = tls_client(srv.address)
    round_trip(c, Codec(LEN4), b"all answered")
    c.shutdown_write()
    wait_for(lambda: ev.closed, what="on_close")
    assert reasons(ev) == ["tls_eof"]
    assert srv.stats()["eof"] == 0


# ---- lose nothing, over TLS (see test_lose_nothing.py) -------------------------------

@pytest.mark.parametrize("fin", [True, False], ids=["close_notify+FIN", "close_notify"])
def test_whole_messages_then_a_cut_one_then_close_notify(make_server, pki,
                                                         tls_client, fin):
    """(a) Three whole messages and 2 bytes of a fourth in one record, then
    the peer's close: the three replies arrive; reason 'truncated', as
    over plain TCP."""
    ev = Events()
    srv = make_server(echo, framing=LEN4, ssl=pki.server_context(),
                      on_close=ev.on_close)
    codec = Codec(LEN4)
    for r in range(10):
        msgs = [b"round %d message %d" % (r, i) for i in range(3)]
        c = tls_client(srv.address)
        c.send(frames(codec, msgs) + codec.encode(b"fourth")[:2])
        c.close_notify()
        if fin:
            c.shutdown_write()
        data, _ = read_to_end(c)
        assert Codec(LEN4).feed(data) == msgs, r
        c.close()
    wait_for(lambda: len(ev.closed) == 10, what="every on_close")
    assert reasons(ev) == ["truncated"] * 10
    assert tls_errors(srv) == 0


@pytest.mark.parametrize("fin", [True, False], ids=["close_notify+FIN", "close_notify"])
def test_half_closed_peers_get_replies_from_write_callbacks(make_server, pki,
                                                            tls_client, tmp_path, fin):
    """(b) Each reply is sent from a file write's callback, after the peer's
    close_notify (and FIN, or not): every one arrives; reason 'eof'."""
    ev = Events()
    store = []
    failures = []

    def on_message(conn, msg):
        def written(n, err):
            if err is not None or n != len(msg):
                failures.append((n, err))
            conn.send(msg)
        store[0].write(msg, callback=written)

    srv = make_server(on_message, framing=LEN4, ssl=pki.server_context(),
                      on_close=ev.on_close)
    store.append(srv.open_file(tmp_path / "store.log", "a"))
    try:
        codec = Codec(LEN4)
        sent = []
        for i in range(8):
            msgs = [b"conn %d message %d" % (i, k) for k in range(5)]
            c = tls_client(srv.address)
            c.send(frames(codec, msgs))
            c.close_notify()
            if fin:
                c.shutdown_write()
            sent.append((c, msgs))
        for c, msgs in sent:
            data, _ = read_to_end(c)
            assert sorted(Codec(LEN4).feed(data)) == sorted(msgs)
        assert failures == []
        wait_for(lambda: len(ev.closed) == len(sent), what="every on_close")
        assert reasons(ev) == ["eof"] * len(sent)
    finally:
        store[0].close()


def test_good_messages_then_a_bad_frame_in_one_record(make_server, pki, tls_client):
    """(c) 20 good messages and an oversized len4 frame (max_message) in the
    same TLS record: the 20 replies arrive, then the connection ends
    (close_notify or FIN, not a reset); reason 'too_big'."""
    ev = Events()
    srv = make_server(echo, framing=LEN4, max_message=1000,
                      ssl=pki.server_context(), on_close=ev.on_close)
    codec = Codec(LEN4)
    msgs = [b"good %d" % i for i in range(20)]
    record = frames(codec, msgs) + struct.pack(">I", 5000) + b"x" * 100
    assert len(record) < 16 * KiB         # one record
    c = tls_client(srv.address)
    c.send(record)
    data, _ = read_to_end(c)              # ConnectionResetError if a reset
    assert codec.feed(data) == msgs and codec.buf == b""
    wait_for(lambda: ev.closed, what="on_close")
    assert reasons(ev) == ["too_big"]
    assert tls_errors(srv) == 0


# ---- hostile peers -------------------------------------------------------------------

def hostile_plaintext(sock, pki):
    sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n" * 10)


def hostile_garbage_client_hello(sock, pki):
    # A handshake record holding a ClientHello header of the right length
    # and a random body.
    body = random.Random(5).randbytes(508)
    sock.sendall(b"\x16\x03\x01" + struct.pack(">H", 4 + len(body))
                 + b"\x01" + len(body).to_bytes(3, "big") + body)


def hostile_truncated_client_hello(sock, pki):
    hello = client_hello(pki)
    sock.sendall(hello[:len(hello) // 2])
    sock.shutdown(socket.SHUT_WR)


def hostile_oversized_record(sock, pki):
    # One byte over the largest record TLS allows (2^14 + 2048).
    sock.sendall(b"\x16\x03\x01" + struct.pack(">H", 2 ** 14 + 2048 + 1) + b"\x00" * 64)


def hostile_reset_mid_handshake(sock, pki):
    sock.sendall(client_hello(pki))
    assert sock.recv(1) == b"\x16"       # the server's answer began: mid-handshake
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def hostile_silent(sock, pki):
    pass


HOSTILE = {
    # id: (what the peer does, server options)
    "plaintext": (hostile_plaintext, {}),
    "garbage-client-hello": (hostile_garbage_client_hello, {}),
    "truncated-client-hello-then-fin": (hostile_truncated_client_hello, {}),
    "oversized-record-header": (hostile_oversized_record, {}),
    "reset-mid-handshake": (hostile_reset_mid_handshake, {}),
    "silent-past-the-handshake-timeout": (hostile_silent, {"ssl_handshake_timeout": 0.5}),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_peer_closes_only_its_connection(make_server, pki, ssl_socket,
                                                 client, case):
    """Each hostile peer has its connection closed with reason 'tls'
    (counted), never reaching on_connect; a good TLS connection made before
    it keeps working, and new ones are accepted."""
    action, options = HOSTILE[case]
    ev = Events()
    srv = make_server(echo, framing=LINE, ssl=pki.server_context(),
                      on_connect=ev.on_connect, on_close=ev.on_close, **options)
    codec = Codec(LINE)
    good = ssl_socket(srv.address)
    round_trip(good, codec, b"before")
    bad = client(srv.address)
    action(bad, pki)
    if bad.fileno() != -1:
        wait_for(lambda: is_closed_by_peer(bad), what="the server to close the hostile peer")
        bad.close()
    wait_for(lambda: ev.closed, what="on_close of the hostile peer")
    assert reasons(ev) == ["tls"]
    assert tls_errors(srv) == 1
    round_trip(good, codec, b"after")
    round_trip(ssl_socket(srv.address), codec, b"new")
    assert len(ev.opened) == 2 and reasons(ev) == ["tls"]


@needs_openssl
def test_tls12_renegotiation_is_refused(make_server, pki, spawn, ssl_socket):
    """`openssl s_client -tls1_2` asks to renegotiate (the line R in its
    interactive mode): refused, the connection closes with reason 'tls';
    another connection is unaffected."""
    ev = Events()
    srv = make_server(echo, framing=LINE, ssl=pki.server_context(),
                      on_close=ev.on_close)
    codec = Codec(LINE)
    good = ssl_socket(srv.address)
    round_trip(good, codec, b"before")
    proc = spawn(s_client_argv(pki, srv.address, "-tls1_2", "-brief"))
    proc.stdin.write("hello\n")
    proc.stdin.flush()
    assert proc.stdout.readline() == "hello\n"
    proc.stdin.write("R\n")             # a command: s_client renegotiates
    proc.stdin.flush()
    wait_for(lambda: ev.closed, what="the renegotiating connection to close")
    assert reasons(ev) == ["tls"]
    assert tls_errors(srv) == 1
    out, err = proc.communicate(timeout=DEADLINE)
    assert "RENEGOTIATING" in err, err
    assert out == ""                    # nothing after the echo of hello
    round_trip(good, codec, b"after")


@needs_openssl
@pytest.mark.parametrize("command", ["K", "k"])
def test_tls13_key_update(make_server, pki, spawn, command, tmp_path):
    """`openssl s_client -tls1_3` sends a KeyUpdate (K: asking for ours, k:
    not asking) between two lines: both are echoed, under the new keys,
    and the connection ends cleanly (where the kernel has no TLS, our
    records are made by the core itself: its KeyUpdate and next key)."""
    ev = Events()
    srv = make_server(echo, framing=LINE, ssl=pki.server_context(),
                      on_close=ev.on_close)
    msgs = tmp_path / "msgs"
    proc = spawn(s_client_argv(pki, srv.address, "-tls1_3", "-brief", "-msg",
                               "-msgfile", str(msgs)))
    proc.stdin.write("hello\n")
    proc.stdin.flush()
    assert proc.stdout.readline() == "hello\n"
    proc.stdin.write(command + "\n")    # a command: s_client sends a KeyUpdate
    proc.stdin.flush()
    # (s_client drops what it read with the command: the next line waits)
    while "KEYUPDATE" not in proc.stderr.readline():
        assert proc.poll() is None, "s_client ended before its KeyUpdate"
    for line in ("after\n", "and again\n"):
        proc.stdin.write(line)
        proc.stdin.flush()
        assert proc.stdout.readline() == line
    out, _ = proc.communicate(timeout=DEADLINE)
    assert out == ""
    got = [line for line in msgs.read_text().splitlines()
           if line.startswith("<<<") and "KeyUpdate" in line]
    assert len(got) == (command == "K"), got   # ours: only when asked
    wait_for(lambda: ev.closed, what="the connection to close")
    assert tls_errors(srv) == 0


# ---- arguments -----------------------------------------------------------------------

def sni_context(pki, tmp_path):
    ctx = pki.server_context()
    ctx.sni_callback = lambda sslobj, name, ctx: None
    return ctx


def keylog_context(pki, tmp_path):
    ctx = pki.server_context()
    ctx.keylog_filename = str(tmp_path / "keys.log")
    return ctx


def client_keylog_context(pki, tmp_path):
    ctx = pki.client_context()
    ctx.keylog_filename = str(tmp_path / "keys.log")
    return ctx


BAD_SSL_ARGUMENTS = [
    # (where ssl= goes, what it is, the exception)
    *[(where, "int", lambda pki, tmp_path: 42, TypeError)
      for where in ("Server", "listen", "connect")],
    *[(where, "str", lambda pki, tmp_path: "ssl", TypeError)
      for where in ("Server", "listen", "connect")],
    ("Server", "sni_callback", sni_context, ValueError),
    ("listen", "sni_callback", sni_context, ValueError),
    ("Server", "keylog_filename", keylog_context, ValueError),
    ("listen", "keylog_filename", keylog_context, ValueError),
    # (Python refuses sni_callback on a client context by itself.)
    ("connect", "keylog_filename", client_keylog_context, ValueError),
]


@pytest.fixture
def plain_server():
    srv = iocport.Server(echo)
    srv.listen()
    srv.start()
    yield srv
    srv.stop()


@pytest.mark.parametrize("where, what, make, exc", BAD_SSL_ARGUMENTS,
                         ids=[f"{w}-{what}" for w, what, _, _ in BAD_SSL_ARGUMENTS])
def test_bad_ssl_argument(pki, tmp_path, plain_server, where, what, make, exc):
    """ssl= of the wrong type is a TypeError; a context with sni_callback or
    keylog_filename (Python callbacks that assume Python's own sockets) is
    a ValueError, at Server(), listen() and connect() time, and nothing is
    opened."""
    arg = make(pki, tmp_path)
    if where == "Server":
        with pytest.raises(exc):
            iocport.Server(echo, ssl=arg)
    elif where == "listen":
        with pytest.raises(exc):
            plain_server.listen("127.0.0.1", 0, ssl=arg)
        assert len(plain_server.addresses) == 1
    else:
        with pytest.raises(exc):
            plain_server.connect(*plain_server.address, ssl=arg)
        assert plain_server.stats()["connections"] == 0


# The ssl module's OpenSSL out of reach (a Python whose _ssl is linked
# statically looks the same: its shared object exports no OpenSSL): ssl=
# says so; everything else works.
NO_OPENSSL = r"""
import socket, ssl, sys, _ssl
import iocport
_ssl.__file__ = "/nonexistent/_ssl.so"          # not a loaded library
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
try:
    iocport.Server(print, ssl=ctx)
except RuntimeError as exc:
    print("refused:", exc)
with iocport.Server(lambda conn, msg: conn.send(msg), backend=sys.argv[1]) as srv:
    srv.listen()
    srv.start()
    with socket.create_connection(srv.address) as s:
        s.sendall(b"\0\0\0\2hi")
        print("plain:", s.recv(6))
"""


def test_tls_unavailable_is_a_clear_error_and_plain_works(backend):
    proc = subprocess.run([sys.executable, "-c", NO_OPENSSL, backend], cwd=CHILD_CWD,
                          env=child_env(), capture_output=True, text=True,
                          timeout=DEADLINE)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("refused: TLS is not available: cannot reach the ssl "
                               "module's library /nonexistent/_ssl.so"), lines
    assert lines[1] == "plain: b'\\x00\\x00\\x00\\x02hi'", lines


# ---- the command line ----------------------------------------------------------------

def test_cli_echo_over_tls(backend, pki, spawn):
    """`python -m iocport echo --tls-cert --tls-key` answers an ssl client."""
    proc = spawn([sys.executable, "-m", "iocport", "echo", "--port", "0",
                  "--framing", "line", "--backend", backend,
                  "--tls-cert", pki.server_pem, "--tls-key", pki.server_key],
                 stdin=subprocess.DEVNULL, env=child_env(IOCPORT_BACKEND=None))
    line = proc.stdout.readline()       # the test's timeout bounds it
    if not line.startswith("listening on 127.0.0.1:"):
        proc.kill()
        pytest.fail(f"the server did not start: {line!r} {proc.communicate()}")
    port = int(line.split()[2].rsplit(":", 1)[1])
    codec = Codec(LINE)
    raw = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
    with pki.client_context().wrap_socket(raw, server_hostname="localhost") as s:
        assert s.version() in VERSIONS
        msgs = [b"cli %d" % i for i in range(100)]
        s.sendall(frames(codec, msgs))
        assert recv_messages(s, codec, len(msgs)) == msgs
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, (out, err)


# ---- load ---------------------------------------------------------------------------

STRESS_KINDS = ["half-close", "cut-then-close_notify", "cut-then-fin",
                "reset-after-data", "reset-in-handshake", "fin-in-handshake"]


def test_stress_random_cuts(make_server, pki, threads):
    """200 TLS connections from 8 threads, each ending a random way (half
    close after whole messages, close_notify or FIN inside a message, a
    reset after data or inside the handshake, a FIN inside the handshake):
    the half-closing ones get every reply, every connection gets its
    on_close, and a final good client is answered."""
    ev = Events()
    srv = make_server(echo, framing=LEN4, ssl=pki.server_context(), workers=2,
                      on_close=ev.on_close)
    ctx = pki.client_context()
    codec = Codec(LEN4)
    failures = []
    kinds = collections.Counter()
    lock = threading.Lock()

    def one(rng):
        kind = rng.choice(STRESS_KINDS)
        with lock:
            kinds[kind] += 1
        c = TLSClient(srv.address, ctx, handshake=False)
        try:
            if kind.endswith("in-handshake"):
                hello = c.client_hello()
                c.sock.sendall(hello[:rng.randrange(1, len(hello))])
                if kind.startswith("reset"):
                    c.reset()
                else:
                    c.shutdown_write()
                return
            c.handshake()
            msgs = line_payloads(rng, rng.randrange(1, 20), 0, 3000)
            data = frames(codec, msgs)
            if kind == "half-close":
                c.send(data)
                c.close_notify()
                c.shutdown_write()
                got, _ = read_to_end(c)
                if Codec(LEN4).feed(got) != msgs:
                    failures.append((kind, len(msgs)))
            elif kind.startswith("cut"):
                c.send(data + codec.encode(b"cut here")[:rng.randrange(1, 12)])
                if kind == "cut-then-close_notify":
                    c.close_notify()
                    c.shutdown_write()
                    got, _ = read_to_end(c)
                    if Codec(LEN4).feed(got) != msgs:
                        failures.append((kind, len(msgs)))
                else:
                    c.shutdown_write()
            else:
                c.send(data)
                c.reset()
        except (ssl.SSLError, OSError) as exc:
            failures.append((kind, repr(exc)))
        finally:
            c.close()

    def run(seed, count):
        rng = random.Random(seed)
        for _ in range(count):
            one(rng)

    nthreads, per_thread = 8, 25
    for t in [threads(run, seed, per_thread) for seed in range(nthreads)]:
        t.join(DEADLINE * 2)
    assert failures == []
    total = nthreads * per_thread
    wait_for(lambda: len(ev.closed) == total, what="on_close for every connection")
    with TLSClient(srv.address, ctx) as c:
        round_trip(c, codec, b"still answering")
    assert len(kinds) >= 4, kinds


def fd_count():
    return len(os.listdir("/proc/self/fd"))


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# The issue's 10,000; a fifth of them under a sanitizer's runtime (CI preloads
# it), which is five to twenty times slower.
SANITIZED = "san.so" in os.environ.get("LD_PRELOAD", "")
LEAK_ROUNDS = 2000 if SANITIZED else 10000


@pytest.mark.timeout(300)
def test_sequential_handshakes_leak_nothing(make_server, pki):
    """10,000 full handshakes, each with one message and a close (the server's
    close() for half of them, the client's bare FIN for the others):
    afterwards the process has the fds it had after a warm-up (within 3)
    and its RSS grew by less than 20 MiB."""
    closed = []
    srv = make_server(echo_until_bye, framing=LINE, ssl=pki.server_context(),
                      on_close=lambda conn: closed.append(conn.close_reason))
    ctx = pki.client_context()
    codec = Codec(LINE)

    def handshakes(n):
        start = len(closed)
        for i in range(n):
            raw = socket.create_connection(srv.address, timeout=DEADLINE)
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1",
                                 suppress_ragged_eofs=False) as s:
                if i % 2:
                    s.sendall(b"bye\n")
                    assert recv_until_eof(s) == b"bye\n"
                else:
                    s.sendall(b"ping\n")
                    assert recv_messages(s, codec, 1) == [b"ping"]
        wait_for(lambda: len(closed) == start + n, what="every on_close")

    handshakes(200)             # warm-up: caches, arenas, the workers' buffers
    gc.collect()
    fds, rss = fd_count(), rss_bytes()
    handshakes(LEAK_ROUNDS)
    gc.collect()
    assert fd_count() <= fds + 3, (fds, fd_count())
    growth = rss_bytes() - rss
    assert growth < 20 * MiB, f"RSS grew by {growth / MiB:.1f} MiB"
    assert len(closed) == 200 + LEAK_ROUNDS
    assert tls_errors(srv) == 0


# ---- kernel TLS ----------------------------------------------------------------------

KTLS_TEST = TREE / "tests" / "c" / "ktls_test.c"


def openssl_headers(gcc):
    """Whether gcc finds OpenSSL's headers and libraries (libssl-dev)."""
    probe = subprocess.run([gcc, "-x", "c", "-", "-o", os.devnull, "-lssl", "-lcrypto"],
                           input="#include <openssl/ssl.h>\nint main(void)"
                                 "{ return SSL_library_init() < 0; }\n",
                           capture_output=True, text=True)
    return probe.returncode == 0


@pytest.mark.timeout(120)
def test_kernel_tls_key_material(pki, tmp_path):
    """tests/c/ktls_test.c: a handshake between two SSLs in memory, watched
    as the core watches its own, then the next application record each side
    writes decrypts (AES-GCM) with the key, salt, IV and sequence number of
    the crypto_info the core would give the kernel: TLS 1.2 and 1.3,
    AES-128 and AES-256, server and client, 0 and 2 session tickets
    before.  Built with ASan and UBSan, linked with OpenSSL (skipped without
    its headers)."""
    gcc = shutil.which("gcc")
    if gcc is None or not KTLS_TEST.exists():
        pytest.skip("needs gcc and the C sources")
    if not openssl_headers(gcc):
        pytest.skip("needs OpenSSL's headers (libssl-dev)")
    src = TREE / "src"
    exe = tmp_path / "ktls_test"
    cmd = [gcc, "-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror", "-O1", "-g",
           "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
           "-fno-sanitize-recover=undefined", "-I", str(src), str(KTLS_TEST),
           str(src / "lib" / "ktls.c"), str(src / "lib" / "ossl.c"), "-o", str(exe),
           "-lssl", "-lcrypto", "-ldl"]
    build = subprocess.run(cmd, capture_output=True, text=True)
    if build.returncode != 0 and "sanitize" in build.stderr:
        pytest.skip("gcc here cannot link with AddressSanitizer and UBSan")
    assert build.returncode == 0, build.stderr
    pem = tmp_path / "key-and-chain.pem"
    pki.server.private_key_and_cert_chain_pem.write_to_path(str(pem))
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    env.pop("LD_PRELOAD", None)   # (its own sanitizer runtime, not CI's)
    run = subprocess.run([str(exe), str(pem)], capture_output=True, text=True,
                         timeout=100, env=env)
    if "LeakSanitizer has encountered a fatal error" in run.stderr:
        env["ASAN_OPTIONS"] = "detect_leaks=0"   # (no ptrace in this sandbox)
        run = subprocess.run([str(exe), str(pem)], capture_output=True, text=True,
                             timeout=100, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.endswith("ok\n")


def test_kernel_tls_falls_back_where_the_kernel_has_none(make_server, pki, ssl_socket):
    """After each handshake the core offers the session to the kernel
    (TCP_ULP "tls", then TLS_TX).  Where the kernel has no tls ULP (these
    machines) the first attempt fails with ENOENT, counted in
    stats()["ktls"]["no_ulp"], the connection goes on through OpenSSL, and
    later connections do not try again (counted the same).  Where the
    kernel has it, the sessions are counted in "tx" instead, and the same
    echo and close_notify work through the records the kernel makes."""
    closed = []
    srv = make_server(echo_until_bye, framing=LINE, ssl=pki.server_context(),
                      on_close=lambda conn: closed.append(conn.close_reason))
    codec = Codec(LINE)
    n = 0
    for version in ("TLSv1.3", "TLSv1.2"):
        for _ in range(2):
            s = ssl_socket(srv.address, pki.client_context(version=version))
            s.sendall(b"ping\n" * 3 + b"x" * 40000 + b"\n")
            assert recv_messages(s, codec, 4) == [b"ping"] * 3 + [b"x" * 40000]
            s.sendall(b"bye\n")
            # (a FIN without close_notify would raise: ragged EOFs do)
            assert recv_until_eof(s) == b"bye\n"
            n += 1
    wait_for(lambda: len(closed) == n, what="every on_close")
    assert closed == ["closed"] * n
    k = srv.stats()["ktls"]
    assert k["tx"] + k["no_ulp"] + k["unsupported"] == n, k
    if k["tx"] == 0:   # no tls ULP here: every connection went on without
        assert k == {"tx": 0, "no_ulp": n, "unsupported": 0}
    assert tls_errors(srv) == 0


def test_the_context_stays_pythons(make_server, pki, ssl_socket, tmp_path):
    """Our keylog callback on the user's context (for the kernel's TLS 1.3
    keys) leaves Python's own sockets from that context alone, and Python's
    keylog_filename, set afterwards, still works (it replaces ours: our
    later TLS 1.3 sessions just go on without the kernel)."""
    ctx = pki.server_context()
    srv = make_server(echo, framing=LINE, ssl=ctx)
    s = ssl_socket(srv.address)
    s.sendall(b"one\n")
    assert recv_messages(s, Codec(LINE), 1) == [b"one"]
    # Python's own server socket from the same context
    lsock = socket.create_server(("127.0.0.1", 0))
    log = tmp_path / "keys.log"
    ctx.keylog_filename = str(log)
    got = []

    def serve():
        raw, _ = lsock.accept()
        with ctx.wrap_socket(raw, server_side=True) as t:
            got.append(t.recv(100))
            t.sendall(b"pong")

    th = threading.Thread(target=serve)
    th.start()
    c = ssl_socket(lsock.getsockname())
    c.sendall(b"ping")
    assert c.recv(100) == b"pong"
    th.join(DEADLINE)
    lsock.close()
    assert got == [b"ping"]
    assert b"SERVER_TRAFFIC_SECRET_0" in log.read_bytes()
    ctx.keylog_filename = None
    # and iocport's connections from it still work
    s = ssl_socket(srv.address)
    s.sendall(b"two\n")
    assert recv_messages(s, Codec(LINE), 1) == [b"two"]
