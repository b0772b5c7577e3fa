/* http.h - an incremental HTTP/1.1 request parser (RFC 9112, RFC 9110).
 * Pure C: no Python, no system calls, no allocation.  It owns the request
 * syntax, the limits, the rules against request smuggling and the
 * de-chunking of bodies; what to do with a request is the caller's.
 *
 * Use: http_parser_init() once per connection; then, each time bytes
 * arrive, http_parse() with the buffer from the start of the current
 * request.  HTTP_NEED: call again with the same bytes and more after them
 * (nothing already parsed is scanned again).  HTTP_OK: one whole request;
 * the next one starts at buf + out->consumed, and the parser is ready for
 * it.  Anything else is a rejection, -(enum http_error), sticky: reply with
 * http_error_status() and close. */
#ifndef IOCPORT_HTTP_H
#define IOCPORT_HTTP_H

#include <stddef.h>
#include <stdint.h>

/* The limits: X(field, default, what it bounds and the status past it).
 * Line and section sizes count their line terminators. */
#define HTTP_LIMITS(X)                                                        \
    X(max_request_line, 8192,    "request line (and empty lines before it): 414") \
    X(max_header_line,  8192,    "one header or trailer field line: 431")  \
    X(max_headers,      100,     "header fields plus trailer fields: 431") \
    X(max_header_bytes, 65536,   "header section; trailer section: 431")   \
    X(max_body,         1048576, "body, de-chunked: 413")                   \
    X(max_chunk_line,   4096,    "chunk-size line with its extensions: 400")

struct http_limits {
#define HTTP_LIMIT_FIELD(name, dflt, doc) uint64_t name;
    HTTP_LIMITS(HTTP_LIMIT_FIELD)
#undef HTTP_LIMIT_FIELD
};

/* The defaults above, as a struct. */
extern const struct http_limits http_limits_default;

/* Validate limits: NULL, or a static message saying what is wrong. */
const char *http_limits_check(const struct http_limits *lim);

/* The rejections: X(NAME, status, reason).  One line each; the status is
 * what a server answers before closing. */
#define HTTP_ERRORS(X)                                                        \
    X(BAD_METHOD,         400, "invalid method")                             \
    X(BAD_REQUEST_LINE,   400, "malformed request line")                     \
    X(BAD_TARGET,         400, "invalid request target")                     \
    X(BAD_VERSION,        400, "malformed HTTP version")                     \
    X(VERSION,            505, "HTTP version not supported")                 \
    X(LINE_TOO_LONG,      414, "request line too long")                      \
    X(BARE_CR,            400, "CR not followed by LF")                      \
    X(BARE_LF,            400, "LF without CR in chunked framing")           \
    X(LEADING_WS,         400, "whitespace before the first field line")     \
    X(OBS_FOLD,           400, "obsolete line folding")                      \
    X(BAD_FIELD_NAME,     400, "invalid field name")                         \
    X(WS_BEFORE_COLON,    400, "whitespace between field name and colon")    \
    X(NO_COLON,           400, "field line without a colon")                 \
    X(BAD_FIELD_VALUE,    400, "invalid character in field value")          \
    X(FIELD_TOO_LONG,     431, "field line too long")                        \
    X(TOO_MANY_FIELDS,    431, "too many fields")                            \
    X(FIELDS_TOO_LARGE,   431, "header or trailer section too large")        \
    X(NO_HOST,            400, "HTTP/1.1 request without Host")              \
    X(DUP_HOST,           400, "more than one Host")                         \
    X(BAD_HOST,           400, "invalid Host")                               \
    X(BAD_LENGTH,         400, "invalid Content-Length")                     \
    X(LENGTHS_DIFFER,     400, "Content-Length values differ")               \
    X(LENGTH_AND_CHUNKED, 400, "both Content-Length and Transfer-Encoding")  \
    X(TE_HTTP10,          400, "Transfer-Encoding in an HTTP/1.0 request")   \
    X(CHUNKED_NOT_FINAL,  400, "chunked is not the final transfer coding")   \
    X(BAD_TE,             400, "invalid Transfer-Encoding")                  \
    X(UNSUPPORTED_TE,     501, "transfer coding not implemented")            \
    X(CONNECT_BODY,       400, "CONNECT request with a body")                \
    X(BODY_TOO_LARGE,     413, "body too large")                             \
    X(BAD_CHUNK_SIZE,     400, "invalid chunk size")                         \
    X(BAD_CHUNK_EXT,      400, "invalid chunk extension")                    \
    X(CHUNK_LINE_TOO_LONG, 400, "chunk-size line too long")                  \
    X(BAD_CHUNK_END,      400, "chunk data not followed by CRLF")         \
    X(HEADER_TIMEOUT,     408, "request header timeout") /* the engine's */

enum http_error {
    HTTP_E_NONE = 0,
#define HTTP_ERROR_ENUM(name, status, reason) HTTP_E_##name,
    HTTP_ERRORS(HTTP_ERROR_ENUM)
#undef HTTP_ERROR_ENUM
    HTTP_ERROR_COUNT
};

enum {
    HTTP_OK = 0,      /* a whole request: see struct http_request */
    HTTP_NEED = 1     /* not yet: more bytes (out->need says how many if
                         known); rejections are -(enum http_error) */
};

/* The status (400, 413, 414, 431, 501, 505) and the reason for a value
 * http_parse() returned; 0 and "" for HTTP_OK and HTTP_NEED. */
int http_error_status(int rc);
const char *http_error_reason(int rc);

/* Request flags (struct http_request.flags). */
enum {
    HTTP_KEEP_ALIVE = 1 << 0,       /* the connection stays open after it */
    HTTP_EXPECT_CONTINUE = 1 << 1,  /* HTTP/1.1 with Expect: 100-continue */
    HTTP_UPGRADE = 1 << 2,          /* HTTP/1.1, Upgrade with Connection:
                                       upgrade: if the handler switches, the
                                       bytes after `consumed` are its own */
    HTTP_CONNECT = 1 << 3,          /* method CONNECT: the same, on a 2xx */
    HTTP_CHUNKED = 1 << 4,          /* the body came chunked */
    HTTP_HEADERS_DONE = 1 << 5      /* (HTTP_NEED) the header section is
                                       whole, the body is on its way: the
                                       flags above are final */
};

/* A part of the buffer: buf[off .. off + len). */
struct http_span {
    size_t off, len;
};

struct http_field {
    struct http_span name, value;   /* value without surrounding OWS */
};

struct http_request {
    struct http_span method, target, version;
    struct http_span path, query;   /* of the target (query without '?';
                                       both empty for authority-form) */
    struct http_span body;          /* chunked: the de-chunked body */
    size_t nheaders;                /* fields[0 .. nheaders) */
    size_t ntrailers;               /* then fields[nheaders .. + ntrailers) */
    size_t consumed;                /* bytes of the whole request */
    size_t need;                    /* HTTP_NEED: the buffer length needed
                                       to go on, if known, else 0 (a lower
                                       bound inside a chunked body) */
    unsigned minor;                 /* HTTP/1.<minor>: 0 or 1 */
    unsigned flags;                 /* HTTP_KEEP_ALIVE, ... */
};

/* The parser's state between calls.  Offsets, never pointers: the caller
 * may move the buffer between calls (realloc, copy into another buffer)
 * as long as its first `len` bytes are moved as the last call left them.
 * Fields are private but `work`. */
struct http_parser {
    const struct http_limits *lim;  /* the caller's, alive as long */
    uint64_t work;                  /* bytes examined since init: each byte
                                       of a line about three times at most,
                                       body bytes once or never */
    int error;                      /* sticky rejection (< 0), else 0 */
    uint32_t flags;                 /* public flags and private ones */
    uint8_t state;
    uint8_t minor;
    uint32_t nfields;               /* header plus trailer field lines */
    uint32_t nheaders;
    size_t pos;                     /* bytes parsed */
    size_t scan;                    /* the LF search resumes here */
    size_t start;                   /* request line, after empty lines */
    size_t method_len, target_off, target_len;
    size_t fields_off;              /* the header section */
    size_t body_off;                /* the body (after the empty line) */
    size_t trailers_off;            /* the trailer section */
    uint64_t length;                /* Content-Length */
    uint64_t body_len;              /* chunked: de-chunked bytes so far, at
                                       buf[body_off .. body_off + body_len) */
    uint64_t chunk_left;            /* chunked: bytes left in this chunk */
};

void http_parser_init(struct http_parser *p, const struct http_limits *lim);

/* Parse buf[0 .. len), the current request from its first byte (len never
 * less than at the last call: the bytes are the same, more may follow).  On
 * HTTP_OK, fields[] (room for lim->max_headers) holds the header and then
 * the trailer fields.  A chunked body is de-chunked in place: each chunk's
 * data is moved down over the chunk-size lines before it, so the bytes of
 * the buffer between the body and `pos` change (the caller owns the
 * buffer; nothing else may read them as received).  The fields are found
 * at HTTP_OK in a second pass over the validated field sections, so the
 * array need not live between calls; `out` is written on every call. */
int http_parse(struct http_parser *p, uint8_t *buf, size_t len,
               struct http_field *fields, struct http_request *out);

#endif
