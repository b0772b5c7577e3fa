/* resp_test.c - src/lib/resp.c without Python: commands and replies fed a
 * byte at a time never search a byte twice (counted, not timed), NEED
 * reports a big bulk's end, the argument array grows on RESP_GROW, deep
 * nesting is refused on the explicit stack, and every encoder writes
 * exactly the size it reported.  Built with ASan and UBSan by
 * tests/test_backend_c.py; prints "resp: ok". */
#include "lib/resp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond) do { if (!(cond)) { \
    fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, #cond); exit(1); } } while (0)

static struct resp_limits lim;

/* Feed buf[0..len) one byte more at a time; the command must come whole
 * at the last byte.  Returns the bytes searched for line ends. */
static uint64_t
cmd_bytewise(const uint8_t *buf, size_t len, size_t want_args)
{
    struct resp_cmd cmd;
    memset(&cmd, 0, sizeof cmd);
    resp_cmd_reset(&cmd);
    size_t cap = 1;
    struct resp_arg *args = malloc(cap * sizeof *args);
    CHECK(args != NULL);
    for (size_t n = 0; n <= len; n++) {
        int rc;
        while ((rc = resp_cmd_next(&lim, &cmd, buf, n, args, cap)) == RESP_GROW) {
            cap *= 2;
            args = realloc(args, cap * sizeof *args);
            CHECK(args != NULL);
        }
        if (n < len) {
            CHECK(rc == RESP_NEED);
        } else {
            CHECK(rc == RESP_OK);
            CHECK(cmd.consumed == len && cmd.nargs == want_args);
        }
    }
    free(args);
    return cmd.examined;
}

static void
test_no_rescan(void)
{
    /* An inline line of 60000 bytes. */
    size_t len = 60000;
    uint8_t *buf = malloc(len + 2);
    CHECK(buf != NULL);
    for (size_t i = 0; i < len; i++)
        buf[i] = (i % 10 == 9) ? ' ' : 'a';
    buf[len] = '\r';
    buf[len + 1] = '\n';
    uint64_t seen = cmd_bytewise(buf, len + 2, len / 10);
    /* Each RESP_GROW (the array doubling from 1 to 8192) looks at the LF
     * once more. */
    CHECK(seen <= len + 2 + 13);
    free(buf);

    /* A multibulk of 2000 arguments, with long count lines. */
    size_t nargs = 2000, cap = 64 + nargs * 32, off = 0;
    buf = malloc(cap);
    CHECK(buf != NULL);
    off += (size_t)snprintf((char *)buf, cap, "*%zu\r\n", nargs);
    for (size_t i = 0; i < nargs; i++)
        off += (size_t)snprintf((char *)buf + off, cap - off,
                                "$10\r\n%010zu\r\n", i);
    seen = cmd_bytewise(buf, off, nargs);
    /* Only the count lines are searched, each once (plus the CR found
     * again while its LF is missing). */
    CHECK(seen <= off);
    free(buf);

    /* A reply nested and long, fed a byte at a time. */
    const char *reply = "*3\r\n+a long simple string line here\r\n"
                        "%1\r\n$5\r\nhello\r\n~2\r\n,1.5\r\n#t\r\n:42\r\n";
    size_t rl = strlen(reply);
    struct resp_reply r;
    memset(&r, 0, sizeof r);
    for (size_t n = 0; n <= rl; n++) {
        int rc = resp_reply_next(&lim, &r, (const uint8_t *)reply, n);
        CHECK(n < rl ? rc == RESP_NEED : rc == RESP_OK);
    }
    CHECK(r.consumed == rl && r.top == '*');
    CHECK(r.examined <= rl);
}

static void
test_need_and_errors(void)
{
    struct resp_cmd cmd;
    struct resp_arg args[4];
    memset(&cmd, 0, sizeof cmd);
    resp_cmd_reset(&cmd);
    const char *big = "*2\r\n$3\r\nSET\r\n$100000\r\nxx";
    CHECK(resp_cmd_next(&lim, &cmd, (const uint8_t *)big, strlen(big), args,
                        4) == RESP_NEED);
    CHECK(cmd.need == 13 + 9 + 100000 + 2);   /* headers, payload, CRLF */

    char text[RESP_ERROR_MAX];
    memset(&cmd, 0, sizeof cmd);
    resp_cmd_reset(&cmd);
    int rc = resp_cmd_next(&lim, &cmd, (const uint8_t *)"*1\r\n\r\n", 6, args, 4);
    CHECK(rc == -RESP_E_EXPECTED_BULK && resp_error_sent(rc));
    resp_error_text(rc, cmd.bad, text, sizeof text);
    CHECK(strcmp(text, "ERR Protocol error: expected '$', got ' '") == 0);
    CHECK(!resp_error_sent(-RESP_E_REPLY_DEPTH));
}

static void
test_deep_nesting(void)
{
    size_t depth = 200000, len = depth * 4 + 4;
    uint8_t *buf = malloc(len);
    CHECK(buf != NULL);
    for (size_t i = 0; i < depth; i++)
        memcpy(buf + 4 * i, "*1\r\n", 4);
    memcpy(buf + 4 * depth, ":1\r\n", 4);
    struct resp_reply r;
    memset(&r, 0, sizeof r);
    CHECK(resp_reply_next(&lim, &r, buf, len) == -RESP_E_REPLY_DEPTH);
    memset(&r, 0, sizeof r);
    size_t ok = RESP_STACK_CAP * 4;
    CHECK(resp_reply_next(&lim, &r, buf + 4 * depth - ok, ok + 4) == RESP_OK);
    free(buf);
}

/* Each encoder: the size it reports is what it writes. */
#define SIZED(call_null, call_out) do { \
    size_t want = (call_null), got; uint8_t out[128]; memset(out, 0xAA, sizeof out); \
    uint8_t *o = out; (void)o; got = (call_out); \
    CHECK(want == got && want < sizeof out && out[want] == 0xAA); } while (0)

static void
test_encoder_sizes(void)
{
    long long ints[] = {0, 1, -1, 9, 10, -10, 12345, -9223372036854775807LL - 1,
                        9223372036854775807LL};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        SIZED(resp_put_int(NULL, ints[i]), resp_put_int(o, ints[i]));
    double ds[] = {0.0, 1.5, 0.1, -1e300, 5e-324, 1.0 / 3.0};
    for (int p = 2; p <= 3; p++) {
        for (size_t i = 0; i < sizeof ds / sizeof ds[0]; i++)
            SIZED(resp_put_double(NULL, ds[i], p), resp_put_double(o, ds[i], p));
        SIZED(resp_put_null(NULL, p), resp_put_null(o, p));
        SIZED(resp_put_null_array(NULL, p), resp_put_null_array(o, p));
        SIZED(resp_put_map(NULL, 12, p), resp_put_map(o, 12, p));
        SIZED(resp_put_set(NULL, 3, p), resp_put_set(o, 3, p));
        SIZED(resp_put_bool(NULL, 1, p), resp_put_bool(o, 1, p));
        SIZED(resp_put_bignum(NULL, "123", 3, p), resp_put_bignum(o, "123", 3, p));
    }
    SIZED(resp_put_simple(NULL, "OK", 2), resp_put_simple(o, "OK", 2));
    SIZED(resp_put_error(NULL, "ERR x", 5), resp_put_error(o, "ERR x", 5));
    SIZED(resp_put_bulk(NULL, "hello", 5), resp_put_bulk(o, "hello", 5));
    SIZED(resp_put_array(NULL, 1000), resp_put_array(o, 1000));
    SIZED(resp_put_push(NULL, 2), resp_put_push(o, 2));

    uint8_t out[64];
    size_t n = resp_put_map(out, 3, 2);
    CHECK(n == 4 && memcmp(out, "*6\r\n", 4) == 0);
    n = resp_put_double(out, 0.1, 3);
    CHECK(n == 6 && memcmp(out, ",0.1\r\n", 6) == 0);
    n = resp_put_simple(out, "OK", 2);
    CHECK(n == 5 && memcmp(out, "+OK\r\n", 5) == 0);
    CHECK(resp_line_ok("OK", 2) && !resp_line_ok("a\nb", 3));
}

int
main(void)
{
    resp_limits_default(&lim);
    CHECK(resp_limits_check(&lim) == NULL);
    test_no_rescan();
    test_need_and_errors();
    test_deep_nesting();
    test_encoder_sizes();
    printf("resp: ok\n");
    return 0;
}
