/* resp.h - RESP, the Redis serialization protocol: commands framed on the
 * server side (arrays of bulk strings and inline commands), whole replies
 * found on the client side (every RESP2 and RESP3 type, nested), and
 * replies encoded into a caller's buffer.  Pure C: no Python, no system
 * calls, no allocation.  What is found is reported as spans (offsets into
 * the caller's buffer), never copied. */
#ifndef IOCPORT_RESP_H
#define IOCPORT_RESP_H

#include <stddef.h>
#include <stdint.h>

/* ---- limits ---------------------------------------------------------------- */

/* Redis's own defaults (src/server.h, src/config.c):
 *   max_bulk   proto-max-bulk-len, 512 MiB;
 *   max_inline PROTO_INLINE_MAX_SIZE, 64 KiB: an inline command's line, and
 *              the count line of a multibulk or bulk header;
 *   max_args   elements in one array: Redis 7 allows up to INT_MAX (before
 *              7.0, 1024*1024); we keep the older 1024*1024, since every
 *              argument is a span the engine holds;
 *   max_depth  reply nesting on the client side (Redis sets none; bounded
 *              by RESP_STACK_CAP, the scanner's explicit stack). */
#define RESP_DEFAULT_MAX_BULK   (512ull * 1024 * 1024)
#define RESP_DEFAULT_MAX_INLINE ((size_t)64 * 1024)
#define RESP_DEFAULT_MAX_ARGS   (1024ull * 1024)
#define RESP_STACK_CAP          64
#define RESP_DEFAULT_MAX_DEPTH  RESP_STACK_CAP

struct resp_limits {
    uint64_t max_bulk;     /* longest bulk string (bytes) */
    uint64_t max_args;     /* most elements in one array (map: pairs) */
    size_t max_inline;     /* longest inline command or header/reply line */
    unsigned max_depth;    /* deepest reply nesting, 1..RESP_STACK_CAP */
};

void resp_limits_default(struct resp_limits *lim);
/* 0, or a static message saying which limit is out of range. */
const char *resp_limits_check(const struct resp_limits *lim);

/* ---- statuses and errors ------------------------------------------------------ */

/* Every protocol error: X(NAME, text, sent).  sent: 1 where a Redis server
 * replies "-<text>\r\n" and closes (the texts are Redis's, src/networking.c
 * processInlineBuffer/processMultibulkBuffer); 0 for errors a client finds
 * in a server's reply (texts after hiredis's read.c).  A "%c" stands for
 * the offending byte (resp_error_text). */
#define RESP_ERRORS(X)                                                        \
    X(BULK_LEN,       "ERR Protocol error: invalid bulk length", 1)           \
    X(MBULK_LEN,      "ERR Protocol error: invalid multibulk length", 1)      \
    X(EXPECTED_BULK,  "ERR Protocol error: expected '$', got '%c'", 1)        \
    X(INLINE_TOO_BIG, "ERR Protocol error: too big inline request", 1)        \
    X(MBULK_TOO_BIG,  "ERR Protocol error: too big mbulk count string", 1)    \
    X(BULK_TOO_BIG,   "ERR Protocol error: too big bulk count string", 1)     \
    X(QUOTES,         "ERR Protocol error: unbalanced quotes in request", 1)  \
    X(REPLY_TYPE,     "Protocol error, got '%c' as reply type byte", 0)       \
    X(REPLY_LINE,     "Protocol error, reply line too long", 0)               \
    X(REPLY_INT,      "Bad integer value", 0)                                 \
    X(REPLY_DOUBLE,   "Bad double value", 0)                                  \
    X(REPLY_BOOL,     "Bad bool value", 0)                                    \
    X(REPLY_NULL,     "Bad nil value", 0)                                     \
    X(REPLY_BIGNUM,   "Bad bignum value", 0)                                  \
    X(REPLY_BULK_LEN, "Bulk string length out of range", 0)                   \
    X(REPLY_AGG_LEN,  "Multi-bulk length out of range", 0)                    \
    X(REPLY_CRLF,     "Bulk string not followed by CRLF", 0)                  \
    X(REPLY_VERBATIM, "Verbatim string without its 3-byte format and ':'", 0) \
    X(REPLY_DEPTH,    "Reply nested deeper than the depth limit", 0)

enum resp_error {
    RESP_E_NONE = 0,
#define RESP_ERROR_ENUM(name, text, sent) RESP_E_##name,
    RESP_ERRORS(RESP_ERROR_ENUM)
#undef RESP_ERROR_ENUM
    RESP_E_COUNT
};

/* What the framers return: RESP_OK, RESP_NEED, RESP_GROW, or -(enum
 * resp_error) on a protocol error (sticky: the stream cannot be resynced). */
enum resp_status {
    RESP_OK = 0,     /* a whole command or reply */
    RESP_NEED = 1,   /* not yet: feed more bytes, call again */
    RESP_GROW = 2    /* commands: the argument array is full (see below) */
};

/* The error's text with "%c" replaced by `byte` (CR and LF become spaces,
 * as Redis's addReplyErrorFormat does) into out[0..cap), NUL-terminated;
 * returns its length.  `status` is a negative framer status. */
#define RESP_ERROR_MAX 96
size_t resp_error_text(int status, uint8_t byte, char *out, size_t cap);
/* 1 when a Redis server sends this error to the client before closing. */
int resp_error_sent(int status);

/* ---- commands (server side) -------------------------------------------------- */

/* One argument: buf[off .. off+len).  An inline argument written with
 * quotes or escapes ("a b", 'x', "\x00") has quoted set: its span is the
 * raw token, and resp_unquote gives its value. */
struct resp_arg {
    size_t off;
    size_t len;
    uint8_t quoted;
};

/* The state of one command being framed, and the result.  Zero it (or
 * resp_cmd_reset) before the first call; pass it back with the same buffer
 * (grown, possibly moved, its first bytes unchanged) and the same argument
 * array until the command is whole: nothing is searched twice. */
struct resp_cmd {
    /* state */
    size_t pos;            /* bytes of the command framed so far */
    size_t scanned;        /* a line search resumes here */
    uint64_t left;         /* multibulk: arguments still to come */
    int64_t bulk;          /* multibulk: the pending bulk's length, or -1 */
    uint8_t kind;          /* 0 not started, RESP_MULTIBULK, RESP_INLINE */
    uint8_t bad;           /* the offending byte of an EXPECTED_BULK error */
    /* results */
    size_t nargs;          /* arguments in args[0..nargs) (so far) */
    size_t consumed;       /* RESP_OK: bytes the command took */
    size_t need;           /* RESP_NEED: total bytes needed, when known (a
                              bulk's end), else 0 */
    uint64_t want_args;    /* RESP_GROW: arguments the command has */
    uint64_t examined;     /* bytes searched for line ends, in total (for
                              tests: the framer never rescans) */
};
#define RESP_MULTIBULK 1
#define RESP_INLINE    2

void resp_cmd_reset(struct resp_cmd *cmd);

/* Frame the command at buf[0..len) into args[0..cap).  RESP_OK: args
 * [0..nargs) hold the arguments, `consumed` bytes can go; the state is
 * reset for the next command.  nargs == 0 is an empty command (an empty
 * line, "*0", "*-1"): Redis ignores it, so should the caller.  RESP_NEED:
 * call again with more bytes.  RESP_GROW: a whole argument is ready but
 * args is full; make it hold `want_args` (or at least cap + 1), keeping
 * args[0..nargs), and call again. */
int resp_cmd_next(const struct resp_limits *lim, struct resp_cmd *cmd,
                  const uint8_t *buf, size_t len, struct resp_arg *args,
                  size_t cap);

/* The value of a quoted inline argument, written to out (at most arg->len
 * bytes); returns its length. */
size_t resp_unquote(const uint8_t *buf, const struct resp_arg *arg,
                    uint8_t *out);

/* ---- replies (client side) --------------------------------------------------- */

/* One element of a reply at buf[pos..): its type byte and
 *   + - ( : , # _  the line: buf[off .. off+len)
 *   $ ! =          the payload: buf[off .. off+len); $ with n == -1 is null
 *   * % ~ | >      n elements (%, |: n pairs); * with n == -1 is null
 * :  also gives its value in n; ,  in d; #  in n (0 or 1).
 * `end` is where the next element starts (after an aggregate's header). */
struct resp_item {
    uint8_t type;
    size_t off, len;
    int64_t n;
    double d;
    size_t end;
};

/* Read the element at buf[pos..len): RESP_OK, RESP_NEED (*need: total
 * bytes needed from buf[0] when known, else 0; *scanned: where the line
 * search stopped, to pass back as scan_from) or -error. */
int resp_item_at(const struct resp_limits *lim, const uint8_t *buf,
                 size_t len, size_t pos, size_t scan_from,
                 struct resp_item *it, size_t *need, size_t *scanned);

/* The scanner's state between calls: zero it (resp_reply_reset) first and
 * pass it back, with the same buffer grown, until a reply is whole.  The
 * stack is explicit: nesting costs no C stack. */
struct resp_reply {
    size_t pos;            /* bytes of the reply scanned so far */
    size_t scanned;        /* the pending element's line search resumes here */
    unsigned depth;
    uint64_t attr;         /* bit d: level d is an attribute */
    uint64_t left[RESP_STACK_CAP];   /* elements still due at each level */
    uint8_t top;           /* the reply's type (its first non-attribute) */
    uint8_t bad;           /* the offending byte of a REPLY_TYPE error */
    size_t consumed;       /* RESP_OK: the reply's bytes */
    size_t need;           /* RESP_NEED: total bytes needed, when known */
    uint64_t examined;     /* bytes searched for line ends, in total */
};

void resp_reply_reset(struct resp_reply *r);
/* Find the end of the reply at buf[0..len): RESP_OK (r->consumed, r->top;
 * the state is reset for the next reply), RESP_NEED, or -error. */
int resp_reply_next(const struct resp_limits *lim, struct resp_reply *r,
                    const uint8_t *buf, size_t len);

/* ---- encoding ------------------------------------------------------------------ */

/* Each writes one RESP element at out and returns its size; with out ==
 * NULL it only returns the size, so a caller can reserve once and then
 * write.  `proto` is 2 or 3: what Redis sends a RESP2 or a RESP3 client
 * (src/networking.c, addReplyNull, addReplyBool, addReplyDouble,
 * addReplyMapLen, addReplySetLen, addReplyBigNum). */
size_t resp_put_simple(uint8_t *out, const void *s, size_t n);  /* +s */
size_t resp_put_error(uint8_t *out, const void *s, size_t n);   /* -s */
size_t resp_put_int(uint8_t *out, long long v);                  /* :v */
size_t resp_put_bulk_header(uint8_t *out, size_t n);             /* $n CRLF */
size_t resp_put_bulk(uint8_t *out, const void *s, size_t n);    /* $n s */
size_t resp_put_null(uint8_t *out, int proto);       /* $-1 | _ */
size_t resp_put_null_array(uint8_t *out, int proto); /* *-1 | _ */
size_t resp_put_array(uint8_t *out, size_t n);       /* *n */
size_t resp_put_map(uint8_t *out, size_t n, int proto);   /* %n | *2n */
size_t resp_put_set(uint8_t *out, size_t n, int proto);   /* ~n | *n */
size_t resp_put_push(uint8_t *out, size_t n);        /* >n (RESP3 only) */
size_t resp_put_bool(uint8_t *out, int b, int proto);     /* #t | :1 */
/* ,d (RESP3) or d as a bulk string (RESP2): the shortest text that reads
 * back as d, "inf", "-inf" or "nan". */
size_t resp_put_double(uint8_t *out, double d, int proto);
/* (digits (RESP3) or the digits as a bulk string (RESP2). */
size_t resp_put_bignum(uint8_t *out, const void *s, size_t n, int proto);
/* 1 when s[0..n) can be a simple string or error (no CR, no LF). */
int resp_line_ok(const void *s, size_t n);

#endif
