"""The HTTP/1.1 request parser (src/lib/http.c) through its private test
hook, iocport._iocport.HTTPParser: a corpus of valid and rejected requests
(the request smuggling cases among them), incremental feeding, pipelining,
100-continue, Upgrade and CONNECT; then a differential test against h11 on
generated requests cut at random points.  The pure C parser's own driver
(tests/c/http_test.c: guard pages, linear work) runs from
tests/test_backend_c.py."""
import random
import re

import pytest

from iocport._iocport import Error, HTTPParseError, HTTPParser

pytestmark = pytest.mark.timeout(60)

H = b"Host: example.com\r\n"


def feed_all(data, cuts=None, **limits):
    """Requests parsed from data fed whole, or cut at the offsets `cuts`."""
    p = HTTPParser(**limits)
    if cuts is None:
        return p.feed(data)
    out, prev = [], 0
    for c in list(cuts) + [len(data)]:
        out += p.feed(data[prev:c])
        prev = c
    return out


def one(data, **limits):
    reqs = feed_all(data, **limits)
    assert len(reqs) == 1, reqs
    return reqs[0]


def status_of(data, **limits):
    """The status a request is rejected with, fed whole and a byte at a
    time (the same either way); None if it is not rejected."""
    got = []
    for cuts in (None, range(1, len(data))):
        try:
            feed_all(data, cuts, **limits)
        except HTTPParseError as e:
            got.append(e.status)
        else:
            got.append(None)
    assert got[0] == got[1], f"whole: {got[0]}, byte by byte: {got[1]}"
    return got[0]


# ---- valid requests ---------------------------------------------------------

def test_simple_get():
    r = one(b"GET /a/b?x=1&y=2 HTTP/1.1\r\nHost: example.com\r\n"
            b"Accept:  */*  \r\n\r\n")
    assert r["method"] == b"GET" and r["target"] == b"/a/b?x=1&y=2"
    assert r["path"] == b"/a/b" and r["query"] == b"x=1&y=2"
    assert r["version"] == b"HTTP/1.1" and r["minor"] == 1
    assert r["headers"] == [(b"Host", b"example.com"), (b"Accept", b"*/*")]
    assert r["body"] == b"" and r["trailers"] == []
    assert r["keep_alive"] and not r["chunked"] and not r["upgrade"]


@pytest.mark.parametrize("version, connection, keep_alive", [
    (b"1.1", None, True),
    (b"1.1", b"close", False),
    (b"1.1", b"Close", False),
    (b"1.1", b"keep-alive, close", False),
    (b"1.1", b"keep-alive", True),
    (b"1.1", b"foo, , bar", True),          # empty list elements ignored
    (b"1.0", None, False),
    (b"1.0", b"keep-alive", True),
    (b"1.0", b"Keep-Alive", True),
    (b"1.0", b"keep-alive, close", False),
])
def test_keep_alive(version, connection, keep_alive):
    req = b"GET / HTTP/" + version + b"\r\n" + H
    if connection is not None:
        req += b"Connection: " + connection + b"\r\n"
    assert one(req + b"\r\n")["keep_alive"] is keep_alive


def test_http10_needs_no_host():
    r = one(b"GET / HTTP/1.0\r\n\r\n")
    assert r["minor"] == 0 and r["headers"] == []


def test_higher_minor_version_is_processed_as_1_1():
    """RFC 9110 6.2: HTTP/1.2 is answered as the highest 1.x we implement."""
    r = one(b"GET / HTTP/1.2\r\n" + H + b"\r\n")
    assert r["minor"] == 1 and r["version"] == b"HTTP/1.2" and r["keep_alive"]
    assert status_of(b"GET / HTTP/1.2\r\n\r\n") == 400    # Host, as 1.1


def test_field_values():
    r = one(b"GET / HTTP/1.1\r\n" + H +
            b"Empty:\r\nSpaces: \t a  b \t \r\nObs: caf\xc3\xa9 \x80\xff\r\n"
            b"x-Token!#$%&'*+.^_`|~: v\r\n\r\n")
    assert r["headers"][1:] == [(b"Empty", b""), (b"Spaces", b"a  b"),
                                (b"Obs", b"caf\xc3\xa9 \x80\xff"),
                                (b"x-Token!#$%&'*+.^_`|~", b"v")]


def test_content_length_body():
    body = bytes(range(256)) * 4
    r = one(b"POST /up HTTP/1.1\r\n" + H +
            b"Content-Length: %d\r\n\r\n" % len(body) + body)
    assert r["body"] == body and not r["chunked"]


@pytest.mark.parametrize("lines", [
    [b"Content-Length: 5"],
    [b"Content-Length:  5 "],                   # OWS, trimmed
    [b"Content-Length: 5", b"content-length: 5"],
    [b"Content-Length: 5, 5"],
    [b"Content-Length: 5,5 , 5"],
    [b"Content-Length: 005"],
])
def test_content_length_forms(lines):
    r = one(b"POST / HTTP/1.1\r\n" + H + b"".join(l + b"\r\n" for l in lines)
            + b"\r\nhello")
    assert r["body"] == b"hello"


def test_chunked_body_with_extensions_and_trailers():
    req = (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: Chunked\r\n\r\n"
           b"5;name=value\r\nhello\r\n"
           b"0006 ; a = \"q \\\" ;x\" ;b\r\n world\r\n"
           b"A;e\r\n0123456789\r\n"
           b"0\r\nX-Trailer: one\r\nX-Other:\ttwo \r\n\r\n")
    for cuts in (None, range(1, len(req))):
        r = feed_all(req, cuts)[0]
        assert r["chunked"] and r["body"] == b"hello world0123456789"
        assert r["trailers"] == [(b"X-Trailer", b"one"), (b"X-Other", b"two")]
        assert r["headers"][-1] == (b"Transfer-Encoding", b"Chunked")
        assert r["consumed"] == len(req)


def test_target_forms():
    r = one(b"GET http://example.com:8080/p/q?a=b HTTP/1.1\r\n" + H + b"\r\n")
    assert r["path"] == b"/p/q" and r["query"] == b"a=b"
    r = one(b"GET http://example.com HTTP/1.1\r\n" + H + b"\r\n")
    assert r["path"] == b"" and r["query"] == b""
    r = one(b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n")
    assert r["target"] == b"*" and r["path"] == b"*"
    r = one(b"GET /? HTTP/1.1\r\n" + H + b"\r\n")
    assert r["path"] == b"/" and r["query"] == b""


def test_empty_lines_before_the_request_line_are_ignored():
    """RFC 9112 2.2 (a SHOULD): a client may send a CRLF after a body."""
    data = (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 2\r\n\r\nhi\r\n"
            b"\r\n\nGET /next HTTP/1.1\r\n" + H + b"\r\n")
    reqs = feed_all(data)
    assert [r["target"] for r in reqs] == [b"/", b"/next"]
    assert reqs[1]["method"] == b"GET"


def test_bare_lf_in_the_header_section_is_accepted():
    """RFC 9112 2.2: a recipient MAY take a bare LF as the line end of the
    start line and fields; we do there, and only there."""
    r = one(b"GET / HTTP/1.1\nHost: example.com\nX: y\r\n\n")
    assert r["headers"] == [(b"Host", b"example.com"), (b"X", b"y")]


def test_pipelined_requests_in_one_buffer():
    reqs = [b"GET /1 HTTP/1.1\r\n" + H + b"\r\n",
            b"POST /2 HTTP/1.1\r\n" + H + b"Content-Length: 3\r\n\r\nabc",
            b"PUT /3 HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
            b"2\r\nde\r\n0\r\n\r\n",
            b"DELETE /4 HTTP/1.0\r\n\r\n"]
    data = b"".join(reqs)
    for cuts in (None, range(1, len(data)), [5, 40, 41, 100]):
        got = feed_all(data, cuts)
        assert [r["target"] for r in got] == [b"/1", b"/2", b"/3", b"/4"]
        assert [r["body"] for r in got] == [b"", b"abc", b"de", b""]
        assert [r["consumed"] for r in got] == [len(r) for r in reqs]


def test_need_says_how_much_is_missing():
    head = b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1000\r\n\r\n"
    p = HTTPParser()
    assert p.feed(head[:10]) == [] and p.need == 0     # a line: unknown
    assert p.feed(head[10:] + b"x" * 10) == []
    assert p.need == len(head) + 1000
    p = HTTPParser()
    chunked = b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
    assert p.feed(chunked + b"100\r\nab") == []
    assert p.need == len(chunked) + 5 + 0x100 + 2      # the chunk and its CRLF


def test_expect_100_continue():
    head = (b"PUT /f HTTP/1.1\r\n" + H + b"Expect: 100-Continue\r\n"
            b"Content-Length: 4\r\n\r\n")
    p = HTTPParser()
    assert p.feed(head[:-1]) == [] and not p.expect_continue
    assert p.feed(head[-1:]) == [] and p.expect_continue
    r = p.feed(b"data")[0]
    assert r["expect_continue"] and r["body"] == b"data"
    assert not p.expect_continue
    # HTTP/1.0: ignored (RFC 9110 10.1.1)
    r = one(b"PUT / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n")
    assert not r["expect_continue"]


def test_upgrade_hands_the_rest_over():
    req = (b"GET /chat HTTP/1.1\r\n" + H + b"Upgrade: websocket\r\n"
           b"Connection: keep-alive, Upgrade\r\n\r\n")
    p = HTTPParser()
    reqs = p.feed(req + b"\x81\x05hello" + b"GET / HTTP/1.1\r\n")
    assert len(reqs) == 1 and reqs[0]["upgrade"] and p.paused
    assert p.feed(b"more") == []
    assert p.buffered == b"\x81\x05hello" + b"GET / HTTP/1.1\r\n" + b"more"
    # Upgrade without the connection option, or in HTTP/1.0: ignored
    assert not one(b"GET / HTTP/1.1\r\n" + H + b"Upgrade: h2c\r\n\r\n")["upgrade"]
    assert not one(b"GET / HTTP/1.0\r\nUpgrade: h2c\r\n"
                   b"Connection: upgrade\r\n\r\n")["upgrade"]


def test_connect_hands_the_rest_over():
    p = HTTPParser()
    reqs = p.feed(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443"
                  b"\r\n\r\n\x16\x03\x01")
    assert reqs[0]["connect"] and reqs[0]["path"] == b"" and p.paused
    assert p.buffered == b"\x16\x03\x01"


def test_limits_are_adjustable():
    req = b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 11\r\n\r\n" + b"x" * 11
    assert status_of(req, max_body=10) == 413
    assert one(req, max_body=11)["body"] == b"x" * 11
    assert status_of(b"GET /" + b"a" * 100 + b" HTTP/1.1\r\n" + H + b"\r\n",
                     max_request_line=100) == 414


def test_rejection_is_sticky_and_keeps_earlier_requests():
    p = HTTPParser()
    with pytest.raises(HTTPParseError) as e:
        p.feed(b"GET / HTTP/1.1\r\n" + H + b"\r\nGET / HTTP/2.0\r\n\r\n")
    assert e.value.status == 505 and len(e.value.requests) == 1
    assert e.value.reason == "HTTP version not supported" == str(e.value)
    assert isinstance(e.value, Error) and isinstance(e.value, ValueError)
    with pytest.raises(HTTPParseError) as e:
        p.feed(b"")
    assert e.value.status == 505 and e.value.requests == []


@pytest.mark.parametrize("kwargs, exc", [
    ({"max_body": 0}, ValueError),
    ({"max_body": -1}, ValueError),
    ({"max_headers": 1 << 30}, ValueError),
    ({"max_body": 1 << 100}, ValueError),
    ({"max_body": "1"}, TypeError),
    ({"max_body": True}, TypeError),
    ({"max_bodies": 1}, TypeError),
])
def test_bad_limits(kwargs, exc):
    with pytest.raises(exc):
        HTTPParser(**kwargs)
    with pytest.raises(TypeError):
        HTTPParser(1)


def test_feed_wants_bytes():
    with pytest.raises(TypeError):
        HTTPParser().feed("GET / HTTP/1.1\r\n")
    assert HTTPParser().feed(memoryview(b"GET / HTTP/1.0\r\n\r\n"))
    p = HTTPParser()
    assert p.feed(b"") == [] and p.feed(bytearray(b"GET")) == []
    assert p.buffered == b"GET" and p.feed(b"") == []


# ---- rejections -------------------------------------------------------------

GET = b"GET / HTTP/1.1\r\n"
POST = b"POST / HTTP/1.1\r\n" + H
TE = b"Transfer-Encoding: chunked\r\n"

REJECTED = {
    # request smuggling: framing
    "cl and te": (POST + b"Content-Length: 5\r\n" + TE + b"\r\n0\r\n\r\n", 400),
    "te and cl": (POST + TE + b"Content-Length: 5\r\n\r\n0\r\n\r\n", 400),
    "te gzip": (POST + b"Transfer-Encoding: gzip\r\n\r\n", 400),
    "te identity": (POST + b"Transfer-Encoding: identity\r\n\r\n", 400),
    "te chunked not last": (POST + b"Transfer-Encoding: chunked, gzip\r\n\r\n", 400),
    "te gzip then chunked": (POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n", 501),
    "te gzip line then chunked line": (
        POST + b"Transfer-Encoding: gzip\r\n" + TE + b"\r\n", 501),
    "te chunked, chunked": (POST + b"Transfer-Encoding: chunked, chunked\r\n\r\n", 400),
    "te chunked twice": (POST + TE + TE + b"\r\n", 400),
    "te empty element": (POST + b"Transfer-Encoding: chunked,\r\n\r\n", 400),
    "te empty": (POST + b"Transfer-Encoding:\r\n\r\n", 400),
    "te chunked with a parameter": (
        POST + b"Transfer-Encoding: chunked;q=1\r\n\r\n", 400),
    "te in http/1.0": (b"POST / HTTP/1.0\r\n" + TE + b"\r\n0\r\n\r\n", 400),
    "cl differ": (POST + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
    "cl list differ": (POST + b"Content-Length: 5, 6\r\n\r\n", 400),
    "cl list empty element": (POST + b"Content-Length: 5,,5\r\n\r\n", 400),
    "cl list trailing comma": (POST + b"Content-Length: 5,\r\n\r\n", 400),
    "cl plus": (POST + b"Content-Length: +5\r\n\r\n", 400),
    "cl minus": (POST + b"Content-Length: -1\r\n\r\n", 400),
    "cl hex": (POST + b"Content-Length: 0x5\r\n\r\n", 400),
    "cl space inside": (POST + b"Content-Length: 5 5\r\n\r\n", 400),
    "cl empty": (POST + b"Content-Length:\r\n\r\n", 400),
    "cl overflow": (POST + b"Content-Length: 99999999999999999999999\r\n\r\n", 400),
    "cl 2**64": (POST + b"Content-Length: 18446744073709551616\r\n\r\n", 400),
    "cl over max_body": (POST + b"Content-Length: 1048577\r\n\r\n", 413),
    "connect with a body": (
        b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nContent-Length: 1\r\n\r\nx", 400),
    # request smuggling: field syntax
    "space before colon": (GET + b"Host : example.com\r\n\r\n", 400),
    "tab before colon": (GET + H + b"Content-Length\t: 0\r\n\r\n", 400),
    "obs-fold": (GET + H + b"X: a\r\n b\r\n\r\n", 400),
    "obs-fold tab": (GET + H + b"X: a\r\n\tb\r\n\r\n", 400),
    "leading whitespace": (GET + b" Host: example.com\r\n\r\n", 400),
    "bare cr in value": (GET + H + b"X: a\rb\r\n\r\n", 400),
    "bare cr line end": (GET + b"Host: example.com\rX: y\r\n\r\n", 400),
    "bare cr in request line": (b"GET /\r HTTP/1.1\r\n" + H + b"\r\n", 400),
    "cr cr lf": (b"GET / HTTP/1.1\r\r\n" + H + b"\r\n", 400),
    "nul in value": (GET + H + b"X: a\x00b\r\n\r\n", 400),
    "nul in name": (GET + H + b"X\x00: a\r\n\r\n", 400),
    "ctl in value": (GET + H + b"X: a\x01b\r\n\r\n", 400),
    "del in value": (GET + H + b"X: a\x7fb\r\n\r\n", 400),
    "empty field name": (GET + H + b": a\r\n\r\n", 400),
    "no colon": (GET + H + b"NoColon\r\n\r\n", 400),
    "bad name char": (GET + H + b"X(y): a\r\n\r\n", 400),
    "non-ascii name": (GET + H + b"X\xe9: a\r\n\r\n", 400),
    # the request line
    "bad method char": (b"G(T / HTTP/1.1\r\n" + H + b"\r\n", 400),
    "method with @": (b"GET@ / HTTP/1.1\r\n" + H + b"\r\n", 400),
    "no method": (b" / HTTP/1.1\r\n" + H + b"\r\n", 400),
    "tls hello": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),
    "double space": (b"GET  / HTTP/1.1\r\n" + H + b"\r\n", 400),
    "tab separator": (b"GET\t/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    "no version": (b"GET /\r\n" + H + b"\r\n", 400),
    "http/0.9 line": (b"GET\r\n\r\n", 400),
    "trailing space": (b"GET / HTTP/1.1 \r\n" + H + b"\r\n", 400),
    "http/2.0": (b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505),
    "http/0.9": (b"GET / HTTP/0.9\r\n" + H + b"\r\n", 505),
    "http/3.0": (b"GET / HTTP/3.0\r\n" + H + b"\r\n", 505),
    "http/1.1 junk": (b"GET / HTTP/1.1x\r\n" + H + b"\r\n", 400),
    "http/1.10": (b"GET / HTTP/1.10\r\n" + H + b"\r\n", 400),
    "http/1": (b"GET / HTTP/1\r\n" + H + b"\r\n", 400),
    "http/11.1": (b"GET / HTTP/11.1\r\n" + H + b"\r\n", 400),
    "lower-case http": (b"GET / http/1.1\r\n" + H + b"\r\n", 400),
    "obs-text target": (b"GET /\xff HTTP/1.1\r\n" + H + b"\r\n", 400),
    "fragment": (b"GET /a#b HTTP/1.1\r\n" + H + b"\r\n", 400),
    "asterisk not options": (b"GET * HTTP/1.1\r\n" + H + b"\r\n", 400),
    "relative target": (b"GET a/b HTTP/1.1\r\n" + H + b"\r\n", 400),
    "connect origin-form": (b"CONNECT / HTTP/1.1\r\n" + H + b"\r\n", 400),
    "connect without port": (b"CONNECT a HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    # Host
    "no host": (GET + b"\r\n", 400),
    "two hosts": (GET + H + H + b"\r\n", 400),
    "host with space": (GET + b"Host: a b\r\n\r\n", 400),
    "host with path": (GET + b"Host: a/b\r\n\r\n", 400),
    "host with userinfo": (GET + b"Host: u@a\r\n\r\n", 400),
    # chunked framing
    "chunk size junk": (POST + TE + b"\r\nzz\r\n", 400),
    "chunk size empty": (POST + TE + b"\r\n\r\n", 400),
    "chunk size plus": (POST + TE + b"\r\n+5\r\nhello\r\n0\r\n\r\n", 400),
    "chunk size minus": (POST + TE + b"\r\n-5\r\nhello\r\n0\r\n\r\n", 400),
    "chunk size 0x": (POST + TE + b"\r\n0x5\r\nhello\r\n0\r\n\r\n", 400),
    "chunk size trailing space": (POST + TE + b"\r\n5 \r\nhello\r\n0\r\n\r\n", 400),
    "chunk size overflow": (POST + TE + b"\r\n1" + b"0" * 16 + b"\r\n", 400),
    "chunk size huge": (POST + TE + b"\r\nffffffffffffffff\r\n", 413),
    "chunks over max_body": (POST + TE + b"\r\n80000\r\n" + b"x" * 0x80000 +
                             b"\r\n80001\r\n", 413),
    "chunk size bare lf": (POST + TE + b"\r\n5\nhello\r\n0\r\n\r\n", 400),
    "chunk data bare lf": (POST + TE + b"\r\n5\r\nhello\n0\r\n\r\n", 400),
    "chunk data too long": (POST + TE + b"\r\n5\r\nhelloX\r\n0\r\n\r\n", 400),
    "chunk data cr junk": (POST + TE + b"\r\n5\r\nhello\rX0\r\n\r\n", 400),
    "last chunk bare lf": (POST + TE + b"\r\n0\n\r\n", 400),
    "final crlf bare lf": (POST + TE + b"\r\n0\r\n\n", 400),
    "chunk ext empty": (POST + TE + b"\r\n5;\r\nhello\r\n0\r\n\r\n", 400),
    "chunk ext no value": (POST + TE + b"\r\n5;a=\r\nhello\r\n0\r\n\r\n", 400),
    "chunk ext open quote": (POST + TE + b"\r\n5;a=\"x\r\nhello\r\n0\r\n\r\n", 400),
    "chunk ext bare lf in quote": (POST + TE + b"\r\n5;a=\"x\nb\"\r\nhello\r\n", 400),
    "chunk ext two names": (POST + TE + b"\r\n5;a b\r\nhello\r\n0\r\n\r\n", 400),
    "chunk ext ctl": (POST + TE + b"\r\n5;a=\x01\r\nhello\r\n0\r\n\r\n", 400),
    "trailer obs-fold": (POST + TE + b"\r\n0\r\nX: a\r\n b\r\n\r\n", 400),
    "trailer leading ws": (POST + TE + b"\r\n0\r\n X: a\r\n\r\n", 400),
    "trailer space before colon": (POST + TE + b"\r\n0\r\nX : a\r\n\r\n", 400),
    "trailer bare lf": (POST + TE + b"\r\n0\r\nX: a\n\r\n", 400),
    "trailer nul": (POST + TE + b"\r\n0\r\nX: \x00\r\n\r\n", 400),
    # sizes
    "request line too long": (b"GET /" + b"a" * 8200 + b" HTTP/1.1\r\n", 414),
    "request line too long, no lf yet": (b"GET /" + b"a" * 8200, 414),
    "empty lines over the request line limit": (b"\r\n" * 4100, 414),
    "header line too long": (GET + H + b"X: " + b"a" * 8200 + b"\r\n\r\n", 431),
    "header line too long, no lf yet": (GET + H + b"X: " + b"a" * 8200, 431),
    "too many headers": (GET + H + b"X: y\r\n" * 100 + b"\r\n", 431),
    "header section too large": (
        GET + H + (b"X: " + b"a" * 8000 + b"\r\n") * 9 + b"\r\n", 431),
    "chunk line too long": (POST + TE + b"\r\n5;a=" + b"b" * 5000 + b"\r\n", 400),
    "too many trailers": (POST + TE + b"\r\n0\r\n" + b"T: v\r\n" * 100 + b"\r\n", 431),
    "trailer section too large": (
        POST + TE + b"\r\n0\r\n" + (b"T: " + b"a" * 8000 + b"\r\n") * 9, 431),
}


@pytest.mark.parametrize("name", list(REJECTED))
def test_rejected(name):
    data, status = REJECTED[name]
    assert status_of(data) == status


def test_each_limit_is_exact():
    """A request at each limit passes; one byte more is rejected."""
    line = b"GET /" + b"a" * 10 + b" HTTP/1.1\r\n"
    req = line + H + b"\r\n"
    assert one(req, max_request_line=len(line))
    assert status_of(req, max_request_line=len(line) - 1) == 414
    field = b"X: " + b"b" * 20 + b"\r\n"
    req = GET + H + field + b"\r\n"
    assert one(req, max_header_line=len(field))
    assert status_of(req, max_header_line=len(field) - 1) == 431
    assert one(req, max_headers=2)
    assert status_of(req, max_headers=1) == 431
    section = len(H + field + b"\r\n")
    assert one(req, max_header_bytes=section)
    assert status_of(req, max_header_bytes=section - 1) == 431
    req = POST + TE + b"\r\n5;e=1\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n"
    assert one(req, max_chunk_line=len(b"5;e=1\r\n"), max_body=10)
    assert status_of(req, max_chunk_line=len(b"5;e=1\r\n") - 1) == 400
    assert status_of(req, max_body=9) == 413


# ---- differential test against h11 -----------------------------------------

try:
    import h11
except ImportError:     # the `test` extra installs it
    h11 = None
needs_h11 = pytest.mark.skipif(h11 is None, reason="h11 is not installed")

TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
PATH_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@%"
VALUE_CHARS = bytes(range(0x21, 0x7f)) + bytes(range(0x80, 0x100))
METHODS = [b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"HEAD"]
HOSTS = [b"example.com", b"127.0.0.1:8080", b"[::1]:80", b"a.b-c.d", b""]
# Fields whose meaning the generator sets itself.
SPECIAL = {b"host", b"content-length", b"transfer-encoding", b"connection",
           b"expect", b"upgrade"}


def rand_token(rng, n=None):
    return "".join(rng.choice(TCHARS)
                   for _ in range(n or rng.randint(1, 12))).encode()


def rand_value(rng):
    words = [bytes(rng.choice(VALUE_CHARS) for _ in range(rng.randint(1, 10)))
             for _ in range(rng.randint(0, 3))]
    return b"".join(w + (rng.choice([b" ", b"\t", b"  "]) if i < len(words) - 1
                         else b"") for i, w in enumerate(words))


def rand_ows(rng):
    return rng.choice([b"", b"", b" ", b"\t", b"  \t"])


def rand_fields(rng, n):
    out = []
    while len(out) < n:
        name = rng.choice([rand_token(rng), b"X-" + rand_token(rng),
                           b"Accept", b"User-Agent", b"Cookie"])
        if name.lower() not in SPECIAL:
            out.append((name, rand_value(rng)))
    return out


def field_lines(rng, fields):
    return b"".join(n + b":" + rand_ows(rng) + v + rand_ows(rng) + b"\r\n"
                    for n, v in fields)


def gen_request(rng):
    """(bytes, what it must parse to): a request h11 accepts too."""
    minor = 1 if rng.random() < 0.8 else 0
    method = rng.choice(METHODS + [rand_token(rng)])
    if method == b"CONNECT":
        method = b"GET"
    path = b"/" + "".join(rng.choice(PATH_CHARS)
                          for _ in range(rng.randint(0, 30))).encode()
    if rng.random() < 0.4:
        path += b"?" + "".join(rng.choice(PATH_CHARS + "/?")
                               for _ in range(rng.randint(0, 20))).encode()
    target = path
    if rng.random() < 0.1:
        target = b"http://example.com" + path
    headers = rand_fields(rng, rng.randint(0, 8))
    if minor == 1 or rng.random() < 0.5:
        headers.insert(rng.randint(0, len(headers)),
                       (rng.choice([b"Host", b"host", b"HOST"]), rng.choice(HOSTS)))
    conn = rng.choice([None, None, b"close", b"keep-alive", b"Keep-Alive, foo"])
    if conn is not None:
        headers.append((b"Connection", conn))
    body, trailers, kind = b"", [], rng.choice(["none", "length", "chunked"])
    if kind == "chunked" and minor == 0:
        kind = "length"
    if kind != "none":
        body = rng.randbytes(rng.choice([0, 1, 10, 100, rng.randint(0, 5000)]))
    if kind == "length":
        headers.append((b"Content-Length", b"%d" % len(body)))
    elif kind == "chunked":
        headers.append((b"Transfer-Encoding", b"chunked"))
    if minor == 1 and kind != "none" and rng.random() < 0.2:
        headers.append((b"Expect", b"100-continue"))
    rng.shuffle(headers)
    data = (method + b" " + target + b" HTTP/1.%d\r\n" % minor +
            field_lines(rng, headers) + b"\r\n")
    if kind == "length":
        data += body
    elif kind == "chunked":
        pos = 0
        while pos < len(body):
            n = min(len(body) - pos, rng.choice([1, 2, 7, 100, 1000, 4096]))
            data += rng.choice([b"%x", b"%X", b"%04x"]) % n
            for _ in range(rng.choice([0, 0, 1, 2])):
                data += b";" + rand_token(rng, rng.randint(1, 6))
                if rng.random() < 0.5:
                    data += b"=" + rng.choice([
                        rand_token(rng, rng.randint(1, 6)),
                        b'"' + rand_value(rng).replace(b'"', b"").replace(
                            b"\\", b"") + b'"'])
            data += b"\r\n" + body[pos:pos + n] + b"\r\n"
            pos += n
        data += b"0\r\n"
        trailers = rand_fields(rng, rng.choice([0, 0, 1, 3]))
        data += field_lines(rng, trailers) + b"\r\n"
    return data


def h11_parse(data):
    """What h11 makes of one request: a dict like HTTPParser's, or the
    exception it raises."""
    c = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
    c.receive_data(data)
    out = {"body": b"", "trailers": []}
    while True:
        e = c.next_event()
        if isinstance(e, h11.Request):
            out.update(method=e.method, target=e.target,
                       version=b"HTTP/" + e.http_version,
                       headers=list(e.headers.raw_items()),
                       expect_continue=c.client_is_waiting_for_100_continue)
        elif isinstance(e, h11.Data):
            out["body"] += e.data
        elif isinstance(e, h11.EndOfMessage):
            out["trailers"] = list(e.headers.raw_items())
            out["keep_alive"] = c.their_state is not h11.MUST_CLOSE
            return out
        else:
            raise AssertionError(f"h11 stopped at {e!r}")


KEYS = ("method", "target", "version", "headers", "body", "trailers",
        "keep_alive", "expect_continue")


def ours_as_h11(r):
    """Our result as h11 reports it: h11 keeps HTTP/1.0 connections
    keep-alive never (a deliberate difference: RFC 9112 9.3 lets 1.0 ask
    for it), and lower-cases Transfer-Encoding's value."""
    d = {k: r[k] for k in KEYS}
    if r["minor"] == 0:
        d["keep_alive"] = False
    d["headers"] = [(n, v.lower() if n.lower() == b"transfer-encoding" else v)
                    for n, v in r["headers"]]
    return d


def random_cuts(rng, n):
    k = rng.choice([1, 2, 5, 20, 100])
    return sorted(rng.sample(range(1, n), min(k, n - 1))) if n > 1 else []


DIFF_SEEDS = range(200)    # 200 streams of 1 to 8 requests each


@needs_h11
@pytest.mark.parametrize("seed", DIFF_SEEDS)
def test_differential_against_h11(seed):
    """Generated requests, pipelined into one stream and fed cut at random
    points (every byte for a few streams), parse as h11 parses each."""
    rng = random.Random(seed)
    reqs = [gen_request(rng) for _ in range(rng.randint(1, 8))]
    want = [h11_parse(r) for r in reqs]
    stream = b"".join(reqs)
    cuttings = [None, random_cuts(rng, len(stream)),
                random_cuts(rng, len(stream))]
    if seed < 20:
        cuttings.append(range(1, len(stream)))     # a byte at a time
    for cuts in cuttings:
        got = feed_all(stream, cuts)
        assert [ours_as_h11(r) for r in got] == want
        assert [r["consumed"] for r in got] == [len(r) for r in reqs]
    # Every split of a small request in two.
    small = min(reqs, key=len)
    for i in range(1, len(small)):
        assert ours_as_h11(feed_all(small, [i])[0]) == want[reqs.index(small)]


# Mutations of a generated request into one both parsers must reject
# (where h11 is strict too): name -> function(rng, request) -> bytes.
def _head_body(data):
    i = data.index(b"\r\n\r\n") + 2
    return data[:i], data[i:]


def _add_field(line):
    def mutate(rng, data):
        head, rest = _head_body(data)
        return head + line + b"\r\n" + rest
    return mutate


def _sub(old, new):
    """Replace the first match of the regular expression `old`."""
    def mutate(rng, data):
        out, n = re.subn(old, new, data, count=1)
        assert n == 1, (old, data)
        return out
    return mutate


STRICT_BOTH = {
    "space before colon": _sub(rb"Host:", b"Host :"),
    "bare cr in a value": _add_field(b"X-Bad: a\rb"),
    "nul in a value": _add_field(b"X-Bad: a\x00b"),
    "no colon": _add_field(b"X-Bad"),
    "bad name": _add_field(b"X(Bad): v"),
    "leading whitespace": lambda rng, d: d.replace(b"\r\n", b"\r\n X: y\r\n", 1),
    "bad method": lambda rng, d: b"G(T" + d[d.index(b" "):],
    "bad version": _sub(rb" HTTP/1\.1\r\n", b" HTTP/1.1x\r\n"),
    "space in version": _sub(rb" HTTP/1\.1\r\n", b" HTTP/1.1 \r\n"),
    "te gzip": _sub(rb"Transfer-Encoding:[ \t]*chunked", b"Transfer-Encoding: gzip, chunked"),
    "te twice": _add_field(b"Transfer-Encoding: chunked"),
    "cl differ": _add_field(b"Content-Length: 999999"),
    "cl plus": _sub(rb"Content-Length:[ \t]*", b"Content-Length: +"),
    "cl letters": _sub(rb"Content-Length:[ \t]*", b"Content-Length: 1a"),
    "no host": lambda rng, d: d.replace(b"Host:", b"X-Host:", 1),
    "two hosts": _add_field(b"Host: example.org"),
    "chunk size junk": lambda rng, d: d.replace(b"\r\n\r\n", b"\r\n\r\nzz", 1),
    "chunk data without crlf": lambda rng, d: (
        d[:d.rindex(b"\r\n0\r\n")] + b"XX" + d[d.rindex(b"\r\n0\r\n") + 2:]),
    "last chunk bare lf": lambda rng, d: (
        d[:d.rindex(b"\r\n0\r\n")] + b"\r\n0\n" + d[d.rindex(b"\r\n0\r\n") + 5:]),
}

# Where we reject and h11 accepts: the deliberate differences.
H11_LENIENT = {
    "obs-fold (h11 unfolds it; RFC 9112 5.2 lets a server reject)":
        lambda rng, d: d.replace(b"\r\n\r\n", b"\r\nX: a\r\n b\r\n\r\n", 1),
    "a CTL in a value (h11 takes all but NUL and whitespace)":
        _add_field(b"X-Bad: a\x01b"),
    "Content-Length with Transfer-Encoding (h11: chunked wins)":
        _add_field(b"Content-Length: 0"),
    "a fragment in the target (h11 takes any VCHAR)":
        lambda rng, d: d.replace(b" HTTP/1.1", b"#frag HTTP/1.1", 1),
    "whitespace after the chunk size (h11 allows it, RFC 9112 7.1 does not)":
        lambda rng, d: d.replace(b"\r\n\r\n", b"\r\n\r\n1 \r\nx\r\n", 1),
}


def _base(rng, kind):
    """A generated HTTP/1.1 request with a body of the given framing."""
    while True:
        d = gen_request(rng)
        h = _head_body(d)[0]
        if b" HTTP/1.1\r\n" not in h or b"Host:" not in h:
            continue
        if (b"Transfer-Encoding" in h) == (kind == "chunked") and \
                (kind != "length" or b"Content-Length" in h):
            return d


STRICT_KIND = {"te gzip": "chunked", "te twice": "chunked",
               "cl differ": "length", "cl plus": "length",
               "cl letters": "length", "chunk size junk": "chunked",
               "chunk data without crlf": "chunked",
               "last chunk bare lf": "chunked"}


@needs_h11
@pytest.mark.parametrize("name", list(STRICT_BOTH))
def test_differential_rejections(name):
    rng = random.Random(name)
    for _ in range(10):
        d = _base(rng, STRICT_KIND.get(name, "any"))
        bad = STRICT_BOTH[name](rng, d)
        with pytest.raises(HTTPParseError):
            feed_all(bad)
        with pytest.raises(h11.RemoteProtocolError):
            h11_parse(bad)


@needs_h11
@pytest.mark.parametrize("name", list(H11_LENIENT))
def test_deliberate_differences_from_h11(name):
    """We reject these; h11 (at the version tested) accepts them."""
    rng = random.Random(name)
    kind = "chunked" if ("Transfer" in name or "chunk" in name) else "any"
    d = _base(rng, kind)
    bad = H11_LENIENT[name](rng, d)
    with pytest.raises(HTTPParseError):
        feed_all(bad)
    h11_parse(bad)    # no exception
