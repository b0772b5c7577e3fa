/* http_test.c - the HTTP/1.1 request parser of src/lib/http.c, driven
 * directly: every input lies against a guard page (an over-read crashes),
 * is fed whole and growing a byte at a time the way the engine feeds it,
 * and must give the same answer both ways; a big header section fed a
 * byte at a time must cost linear work (counted, not timed); chunked
 * bodies are de-chunked in place; mutated requests must not crash.  Built
 * with ASan+UBSan by tests/test_backend_c.py.  Exit 0 and "http: ok" when
 * every check holds; a failed check prints it and exits 1. */
#include "lib/http.h"
#include "check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define S(lit) (const uint8_t *)(lit), sizeof(lit) - 1

enum { MAX_INPUT = 1 << 20 };

/* A writable region whose end touches a PROT_NONE page. */
static uint8_t *arena, *arena_end;

static void
arena_init(void)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t size = (MAX_INPUT + page - 1) / page * page;
    arena = mmap(NULL, size + page, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(arena != MAP_FAILED);
    CHECK(mprotect(arena + size, page, PROT_NONE) == 0);
    arena_end = arena + size;
}

/* Copy src[0..n) so that it ends at the guard page. */
static uint8_t *
guarded(const uint8_t *src, size_t n)
{
    CHECK(n <= MAX_INPUT);
    uint8_t *p = arena_end - n;
    memmove(p, src, n);
    return p;
}

static struct http_field fields[1 << 10];

/* Parse src[0..n) whole (first request only). */
static int
parse_whole(const struct http_limits *lim, const uint8_t *src, size_t n,
            struct http_request *out, uint8_t **buf)
{
    struct http_parser p;
    http_parser_init(&p, lim);
    *buf = guarded(src, n);
    return http_parse(&p, *buf, n, fields, out);
}

/* Feed src as the engine would: the same request buffer, one byte longer
 * each call.  `move`: moved each time as the parser left it, so that it
 * ends at the guard page (quadratic: small inputs only); else growing in
 * place.  Returns the first result that is not HTTP_NEED. */
static int
parse_growing(const struct http_limits *lim, const uint8_t *src, size_t n,
              int move, struct http_request *out, uint8_t **buf,
              uint64_t *work)
{
    struct http_parser p;
    http_parser_init(&p, lim);
    uint8_t *prev = NULL;
    int rc = HTTP_NEED;
    CHECK(n <= MAX_INPUT);
    for (size_t k = 1; k <= n && rc == HTTP_NEED; k++) {
        uint8_t *b = move ? arena_end - k : arena;
        if (prev != NULL && move)
            memmove(b, prev, k - 1);
        b[k - 1] = src[k - 1];
        rc = http_parse(&p, b, k, fields, out);
        prev = b;
        *buf = b;
    }
    if (work != NULL)
        *work = p.work;
    return rc;
}

static int
span_is(const uint8_t *buf, struct http_span s, const char *want)
{
    return s.len == strlen(want) && memcmp(buf + s.off, want, s.len) == 0;
}

static const struct http_limits *dflt = &http_limits_default;

/* Both ways give rc; on HTTP_OK the same request. */
static int
parse_both(const uint8_t *src, size_t n, struct http_request *out,
           uint8_t **buf)
{
    static uint8_t body2[MAX_INPUT];
    struct http_request r2;
    uint8_t *b2;
    int rc2 = parse_growing(dflt, src, n, 1, &r2, &b2, NULL);
    if (rc2 == HTTP_OK)   /* the arena is reused below */
        memcpy(body2, b2 + r2.body.off, r2.body.len);
    int rc = parse_whole(dflt, src, n, out, buf);
    CHECK(rc == rc2);
    if (rc == HTTP_OK) {
        CHECK(out->consumed == r2.consumed && out->flags == r2.flags);
        CHECK(out->body.len == r2.body.len);
        CHECK(memcmp(*buf + out->body.off, body2, out->body.len) == 0);
    }
    return rc;
}

static void
test_tables(void)
{
    for (int e = 1; e < HTTP_ERROR_COUNT; e++) {
        int st = http_error_status(-e);
        CHECK(st == 400 || st == 408 || st == 413 || st == 414 ||
              st == 431 || st == 501 || st == 505);   /* (408: the engine's) */
        CHECK(http_error_reason(-e)[0] != '\0');
    }
    CHECK(http_error_status(HTTP_OK) == 0 && http_error_status(HTTP_NEED) == 0);
    CHECK(http_error_status(-HTTP_ERROR_COUNT) == 0);
    CHECK(http_limits_check(dflt) == NULL);
    struct http_limits lim = http_limits_default;
    lim.max_body = 0;
    CHECK(http_limits_check(&lim) != NULL);
    CHECK(dflt->max_request_line == 8192 && dflt->max_headers == 100);
}

static void
test_simple(void)
{
    static const char req[] =
        "GET /p/a?q=1 HTTP/1.1\r\nHost: h\r\nX-A:  v w \t\r\n\r\n";
    struct http_request r;
    uint8_t *b;
    CHECK(parse_both(S(req), &r, &b) == HTTP_OK);
    CHECK(span_is(b, r.method, "GET") && span_is(b, r.target, "/p/a?q=1"));
    CHECK(span_is(b, r.path, "/p/a") && span_is(b, r.query, "q=1"));
    CHECK(span_is(b, r.version, "HTTP/1.1") && r.minor == 1);
    CHECK(r.nheaders == 2 && r.ntrailers == 0);
    CHECK(span_is(b, fields[1].name, "X-A") && span_is(b, fields[1].value, "v w"));
    CHECK(r.consumed == sizeof req - 1 && (r.flags & HTTP_KEEP_ALIVE));
}

static void
test_chunked_in_place(void)
{
    static const char req[] =
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        "3;x=\"a;b\"\r\nabc\r\n10\r\n0123456789abcdef\r\n1\r\nZ\r\n"
        "0\r\nT: 1\r\n\r\nGET";
    struct http_request r;
    uint8_t *b;
    CHECK(parse_both(S(req), &r, &b) == HTTP_OK);
    CHECK((r.flags & HTTP_CHUNKED) && span_is(b, r.body, "abc0123456789abcdefZ"));
    CHECK(r.ntrailers == 1 && span_is(b, fields[r.nheaders].name, "T"));
    CHECK(r.consumed == sizeof req - 1 - 3);
    /* The body starts right after the header section, in place. */
    CHECK(b + r.body.off == (uint8_t *)memmem(b, r.consumed, "\r\n\r\n", 4) + 4);
}

static void
test_need(void)
{
    static const char req[] =
        "PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n"
        "Content-Length: 100\r\n\r\n";
    struct http_parser p;
    struct http_request r;
    http_parser_init(&p, dflt);
    uint8_t *b = guarded(S(req));
    CHECK(http_parse(&p, b, sizeof req - 1, fields, &r) == HTTP_NEED);
    CHECK(r.need == sizeof req - 1 + 100);
    CHECK((r.flags & HTTP_HEADERS_DONE) && (r.flags & HTTP_EXPECT_CONTINUE));
    /* Nothing new: the same answer, no work. */
    uint64_t w = p.work;
    CHECK(http_parse(&p, b, sizeof req - 1, fields, &r) == HTTP_NEED);
    CHECK(p.work == w && r.need == sizeof req - 1 + 100);
}

static void
test_sticky_error(void)
{
    static const char req[] = "GET / HTTP/1.1\r\nHost : h\r\n\r\n";
    struct http_parser p;
    struct http_request r;
    http_parser_init(&p, dflt);
    uint8_t *b = guarded(S(req));
    int rc = http_parse(&p, b, sizeof req - 1, fields, &r);
    CHECK(rc == -HTTP_E_WS_BEFORE_COLON && http_error_status(rc) == 400);
    CHECK(http_parse(&p, b, sizeof req - 1, fields, &r) == rc);
}

/* A header section of ~60 KB fed a byte at a time: each byte is examined
 * a few times, not once per call (which would be ~1.8e9). */
static void
test_linear_work(void)
{
    static uint8_t req[70000];
    size_t n = 0;
    n += (size_t)sprintf((char *)req, "GET / HTTP/1.1\r\nHost: h\r\n");
    for (int i = 0; i < 99; i++) {
        n += (size_t)sprintf((char *)req + n, "X-%02d: ", i);
        memset(req + n, 'a' + i % 26, 590);
        n += 590;
        memcpy(req + n, "\r\n", 2);
        n += 2;
    }
    memcpy(req + n, "\r\n", 2);
    n += 2;
    struct http_request r;
    uint8_t *b;
    uint64_t work;
    CHECK(parse_growing(dflt, req, n, 0, &r, &b, &work) == HTTP_OK);
    CHECK(r.nheaders == 100 && r.consumed == n);
    printf("linear: %zu bytes fed one at a time, %llu examined\n", n,
           (unsigned long long)work);
    CHECK(work <= 4 * (uint64_t)n);
    /* A body is never scanned: Content-Length's bytes cost nothing. */
    static uint8_t post[200000];
    size_t h = (size_t)sprintf((char *)post,
                               "POST / HTTP/1.1\r\nHost: h\r\n"
                               "Content-Length: 150000\r\n\r\n");
    memset(post + h, 'b', 150000);
    CHECK(parse_growing(dflt, post, h + 150000, 0, &r, &b, &work) == HTTP_OK);
    CHECK(work <= 4 * (uint64_t)h);
}

/* Mutations of valid requests: whatever the answer, fed whole and a byte
 * at a time agree, nothing reads past the input (the guard page), and a
 * whole request's spans lie inside what it consumed. */
static void
test_mutations(void)
{
    static const char *const seeds[] = {
        "GET /a?b HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        "5;e=\"q\"\r\nhello\r\n0\r\nT: v\r\n\r\n",
        "CONNECT h:1 HTTP/1.1\r\nHost: h:1\r\n\r\n",
    };
    static const uint8_t bytes[] = {'\r', '\n', ' ', '\t', ':', ';', '"',
                                    '0', 'f', ',', 0, 0x7f, 0xff, 'G'};
    unsigned seed = 12345;
    uint8_t m[512];
    int ok = 0, rejected = 0;
    for (int round = 0; round < 4000; round++) {
        const char *s = seeds[round % 4];
        size_t n = strlen(s);
        memcpy(m, s, n);
        for (int k = 0; k < 1 + round % 3; k++) {
            seed = seed * 1103515245u + 12345u;
            size_t at = (seed >> 8) % n;
            uint8_t c = bytes[(seed >> 20) % sizeof bytes];
            if ((seed >> 16) & 1) {
                m[at] = c;                      /* replace */
            } else if (n < sizeof m) {
                memmove(m + at + 1, m + at, n - at);   /* insert */
                m[at] = c;
                n++;
            }
        }
        struct http_request r;
        uint8_t *b;
        int rc = parse_both(m, n, &r, &b);
        if (rc == HTTP_OK) {
            ok++;
            CHECK(r.consumed <= n);
            CHECK(r.body.off + r.body.len <= r.consumed);
            for (size_t i = 0; i < r.nheaders + r.ntrailers; i++)
                CHECK(fields[i].value.off + fields[i].value.len <= r.consumed);
        } else if (rc < 0) {
            rejected++;
        }
    }
    printf("mutations: %d whole, %d rejected of 4000\n", ok, rejected);
    CHECK(ok > 0 && rejected > 0);
}

int
main(void)
{
    arena_init();
    test_tables();
    test_simple();
    test_chunked_in_place();
    test_need();
    test_sticky_error();
    test_linear_work();
    test_mutations();
    printf("http: ok\n");
    return 0;
}
