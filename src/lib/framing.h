/* framing.h - message boundaries in a byte stream.  Pure C: no Python, no
 * system calls, no allocation.  Used by the connection layer on every
 * receive and by send() to frame outgoing messages the same way. */
#ifndef IOCPORT_FRAMING_H
#define IOCPORT_FRAMING_H

#include <stddef.h>
#include <stdint.h>

#include "lib/http.h"
#include "lib/resp.h"

/* The kinds of framing: X(NAME, "name" as Python's specs give it).
 *   LENGTH: a length prefix of 1, 2, 4 or 8 bytes
 *   DELIM:  terminated by a delimiter of 1..8 bytes
 *   FIXED:  every message is exactly `size` bytes
 *   HTTP:   HTTP/1.1 requests (lib/http.h), whole with their bodies
 *   RESP:   Redis commands (lib/resp.h), arrays of bulk strings or inline
 * The connection layer runs the HTTP and RESP parsers: framing_next()
 * does not frame them, and framing_wrap() sends bytes as they are. */
#define FRAMING_KINDS(X)                                                      \
    X(LENGTH, "length")                                                       \
    X(DELIM,  "delimited")                                                    \
    X(FIXED,  "fixed")                                                        \
    X(HTTP,   "http")                                                         \
    X(RESP,   "resp")

enum framing_kind {
    FRAMING_NONE = 0,
#define FRAMING_ENUM(name, str) FRAMING_##name,
    FRAMING_KINDS(FRAMING_ENUM)
#undef FRAMING_ENUM
    FRAMING_KIND_COUNT
};
/* "length", ... by enum framing_kind (NULL for FRAMING_NONE). */
extern const char *const framing_kind_name[FRAMING_KIND_COUNT];

struct framing {
    uint8_t kind;         /* enum framing_kind */
    uint8_t hdr_size;     /* LENGTH: 1, 2, 4 or 8 */
    uint8_t big_endian;   /* LENGTH: byte order of the header */
    uint8_t hdr_included; /* LENGTH: the length counts the header itself */
    uint8_t delim_len;    /* DELIM: 1..8 */
    uint8_t delim[8];     /* DELIM */
    uint64_t size;        /* FIXED: message size */
    uint64_t max_size;    /* largest payload accepted (0 < max_size);
                             HTTP: http.max_body; RESP: resp.max_bulk */
    struct http_limits http;   /* HTTP */
    int64_t http_header_ms;    /* HTTP: a request's header section not
                                  whole this long after its first byte is
                                  answered 408; 0: no limit */
    struct resp_limits resp;   /* RESP */
    uint8_t resp_client;       /* RESP: frame replies (a client), not
                                  commands */
};

enum frame_status {
    FRAME_OK = 0,         /* a whole message: see struct frame */
    FRAME_NEED = 1,       /* not yet: need more bytes */
    FRAME_TOO_BIG = -1,   /* payload over max_size */
    FRAME_BAD_HEADER = -2, /* LENGTH with hdr_included and length < header */
    FRAME_REFUSED = -3     /* HTTP, RESP: the parser refused the input */
};

struct frame {
    size_t off;           /* payload offset in the buffer */
    size_t len;           /* payload length (header/delimiter excluded) */
    size_t consumed;      /* bytes to drop from the buffer for this message */
    size_t need;          /* FRAME_NEED: total bytes needed from the buffer
                             start if known, else 0 */
    size_t scanned;       /* FRAME_NEED with DELIM: bytes already searched;
                             pass back as `scan_from` to avoid rescanning */
};

/* Validate a spec: 0 or a static message saying what is wrong. */
const char *framing_check(const struct framing *f);

/* Find the first whole message in buf[0..len).  `scan_from` lets a delimiter
 * search resume where the last FRAME_NEED stopped (0 otherwise). */
int framing_next(const struct framing *f, const uint8_t *buf, size_t len,
                 size_t scan_from, struct frame *out);

/* Bytes written before and after a payload of `len` bytes when framing it
 * for sending.  Writes the header into hdr (up to 8 bytes) and the trailer
 * into trl (up to 8 bytes); returns 0, or FRAME_TOO_BIG when `len` cannot be
 * represented (1- or 2-byte header, or FIXED with len != size). */
int framing_wrap(const struct framing *f, size_t len, uint8_t hdr[8],
                 size_t *hdr_len, uint8_t trl[8], size_t *trl_len);

const char *framing_strerror(int status);

#endif
