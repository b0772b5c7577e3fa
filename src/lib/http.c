/* http.c - the incremental HTTP/1.1 request parser (the API in http.h):
 * the request line, field lines, the framing of the body (Content-Length
 * or chunked, de-chunked in place) and the rules against request
 * smuggling.  Pure C: no Python, no system calls, no allocation.
 *
 * Lines are found with one memchr that resumes where the last call
 * stopped (`scan`) and validated once whole, so a request fed a byte at a
 * time costs what it costs fed at once.  Line terminators: the request
 * line and the header section accept a bare LF (RFC 9112 section 2.2
 * allows it there); inside a chunked body (chunk-size lines, the CRLF after
 * each chunk's data, the trailer section) only CRLF is accepted, and a CR
 * anywhere but right before an LF is rejected everywhere. */
#include "lib/http.h"

#include <string.h>

#define HTTP_LIMIT_DEFAULT(name, dflt, doc) .name = dflt,
const struct http_limits http_limits_default = {
    HTTP_LIMITS(HTTP_LIMIT_DEFAULT)
};
#undef HTTP_LIMIT_DEFAULT

static const struct {
    int status;
    const char *reason;
} http_errors[HTTP_ERROR_COUNT] = {
    {0, ""},
#define HTTP_ERROR_ROW(name, status, reason) {status, reason},
    HTTP_ERRORS(HTTP_ERROR_ROW)
#undef HTTP_ERROR_ROW
};

int
http_error_status(int rc)
{
    return rc < 0 && -rc < HTTP_ERROR_COUNT ? http_errors[-rc].status : 0;
}

const char *
http_error_reason(int rc)
{
    return rc < 0 && -rc < HTTP_ERROR_COUNT ? http_errors[-rc].reason : "";
}

/* Sums of limits and offsets must not overflow a size_t; the fields count
 * is kept in 32 bits. */
#define HTTP_LIMIT_CEILING ((uint64_t)SIZE_MAX / 8)
#define HTTP_MAX_FIELDS_CEILING (1u << 20)

const char *
http_limits_check(const struct http_limits *lim)
{
#define HTTP_LIMIT_CHECK(name, dflt, doc)                                     \
    if (lim->name == 0)                                                       \
        return #name " must be positive";                                     \
    if (lim->name > HTTP_LIMIT_CEILING)                                       \
        return #name " is too large";
    HTTP_LIMITS(HTTP_LIMIT_CHECK)
#undef HTTP_LIMIT_CHECK
    if (lim->max_headers > HTTP_MAX_FIELDS_CEILING)
        return "max_headers is too large";
    return NULL;
}

/* ---- characters ---------------------------------------------------------- */

static inline int
is_alpha(uint8_t c)
{
    c |= 0x20;
    return c >= 'a' && c <= 'z';
}

static inline int
is_digit(uint8_t c)
{
    return c >= '0' && c <= '9';
}

static inline int
is_tchar(uint8_t c)
{
    if (is_alpha(c) || is_digit(c))
        return 1;
    switch (c) {
    case '!': case '#': case '$': case '%': case '&': case '\'': case '*':
    case '+': case '-': case '.': case '^': case '_': case '`': case '|':
    case '~':
        return 1;
    default:
        return 0;
    }
}

static inline int
is_vchar(uint8_t c)
{
    return c > 0x20 && c < 0x7f;
}

static inline int
is_ws(uint8_t c)
{
    return c == ' ' || c == '\t';
}

/* field-vchar / SP / HTAB: VCHAR, obs-text (0x80-0xff), SP, HTAB. */
static inline int
is_field_char(uint8_t c)
{
    return c == '\t' || (c >= 0x20 && c != 0x7f);
}

/* uri-host [":" port]: reg-name, IP-literal, IPv4 (RFC 3986). */
static inline int
is_host_char(uint8_t c)
{
    if (is_alpha(c) || is_digit(c))
        return 1;
    return strchr("-._~!$&'()*+,;=:[]%", c) != NULL && c != 0;
}

static inline int
hex_value(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* An invalid byte where `err` applies: a CR is a bare CR wherever it is. */
static inline int
bad(uint8_t c, int err)
{
    return c == '\r' ? -HTTP_E_BARE_CR : -err;
}

static size_t
skip_ws(const uint8_t *buf, size_t i, size_t e)
{
    while (i < e && is_ws(buf[i]))
        i++;
    return i;
}

/* buf[s..s+n) equals the lower-case `name`, ignoring ASCII case. */
static int
name_is(const uint8_t *buf, size_t s, size_t n, const char *name)
{
    size_t k = strlen(name);
    if (n != k)
        return 0;
    for (size_t i = 0; i < k; i++) {
        uint8_t c = buf[s + i];
        if (c >= 'A' && c <= 'Z')
            c |= 0x20;
        if (c != (uint8_t)name[i])
            return 0;
    }
    return 1;
}

/* The next element of a comma-separated list in buf[*i .. e), OWS
 * trimmed, possibly empty: [*es, *ee).  0 once the list is over. */
static int
next_elem(const uint8_t *buf, size_t *i, size_t e, size_t *es, size_t *ee)
{
    if (*i > e)
        return 0;
    size_t s = skip_ws(buf, *i, e);
    const uint8_t *comma = memchr(buf + s, ',', e - s);
    size_t end = comma ? (size_t)(comma - buf) : e;
    *i = end + 1;          /* past the comma, or past e: the last element */
    while (end > s && is_ws(buf[end - 1]))
        end--;
    *es = s;
    *ee = end;
    return 1;
}

/* ---- state --------------------------------------------------------------- */

/* What the steps return to go on (HTTP_OK, 0, is a whole request and
 * HTTP_NEED is 1). */
#define GO 2

enum {
    S_REQUEST_LINE = 0,   /* and the empty lines before it */
    S_FIELDS,             /* the header section */
    S_BODY,               /* Content-Length */
    S_CHUNK_SIZE,         /* a chunk-size line */
    S_CHUNK_DATA,
    S_CHUNK_END,          /* the CRLF after a chunk's data */
    S_TRAILERS            /* the trailer section, after the last chunk */
};

/* Private flags, above the public ones (http.h). */
enum {
    F_PUBLIC = (1 << 8) - 1,
    F_CLOSE = 1 << 8,             /* Connection: close */
    F_KEEP_ALIVE = 1 << 9,        /* Connection: keep-alive */
    F_UPGRADE_OPTION = 1 << 10,   /* Connection: upgrade */
    F_UPGRADE_FIELD = 1 << 11,    /* an Upgrade field with a value */
    F_EXPECT = 1 << 12,           /* Expect: 100-continue */
    F_HOST = 1 << 13,
    F_LENGTH = 1 << 14,           /* a Content-Length: p->length */
    F_TE = 1 << 15,               /* a Transfer-Encoding */
    F_TE_CHUNKED = 1 << 16,       /* chunked among its codings */
    F_TE_TWICE = 1 << 17,         /* chunked more than once */
    F_TE_OTHER = 1 << 18,         /* another coding */
    F_TE_LAST_CHUNKED = 1 << 19,  /* chunked is the last coding so far */
    F_OPTIONS = 1 << 20           /* method OPTIONS (for the '*' target) */
};

void
http_parser_init(struct http_parser *p, const struct http_limits *lim)
{
    memset(p, 0, sizeof *p);
    p->lim = lim;
}

/* The LF ending the line that starts at p->pos, if it lies within `limit`
 * bytes of it (the LF counted): its offset, or SIZE_MAX when there is none
 * yet, with *too_long set when `limit` bytes hold none.  Searches only
 * what no earlier call searched. */
static size_t
find_lf(struct http_parser *p, const uint8_t *buf, size_t len,
        uint64_t limit, int *too_long)
{
    size_t end = len - p->pos > limit ? p->pos + (size_t)limit : len;
    size_t from = p->scan > p->pos ? p->scan : p->pos;
    *too_long = 0;
    if (from < end) {
        const uint8_t *hit = memchr(buf + from, '\n', end - from);
        if (hit != NULL) {
            size_t lf = (size_t)(hit - buf);
            p->work += lf + 1 - from;
            p->scan = lf + 1;
            return lf;
        }
        p->work += end - from;
        p->scan = end;
    }
    if (end - p->pos >= limit)
        *too_long = 1;
    return SIZE_MAX;
}

/* ---- the request line ---------------------------------------------------- */

/* Check the target buf[off .. off+len) for the method's form and find its
 * path and query: origin-form ("/p?q"), absolute-form
 * ("http://h/p?q"), authority-form ("h:443", CONNECT only), asterisk-form
 * ("*", OPTIONS only).  A fragment ('#') is never part of a target. */
static int
target_split(const uint8_t *buf, size_t off, size_t len, uint32_t flags,
             struct http_span *path, struct http_span *query)
{
    const uint8_t *t = buf + off;
    size_t p0 = 0;
    path->off = query->off = off;
    path->len = query->len = 0;
    if (memchr(t, '#', len) != NULL)
        return -HTTP_E_BAD_TARGET;
    if (flags & HTTP_CONNECT) {
        /* authority-form: host ":" port, no userinfo */
        size_t colon = len;
        for (size_t i = 0; i < len; i++) {
            if (!is_host_char(t[i]))
                return -HTTP_E_BAD_TARGET;
            if (t[i] == ':')
                colon = i;
        }
        if (colon == 0 || colon >= len - 1)
            return -HTTP_E_BAD_TARGET;
        for (size_t i = colon + 1; i < len; i++)
            if (!is_digit(t[i]))
                return -HTTP_E_BAD_TARGET;
        return 0;
    }
    if (len == 1 && t[0] == '*') {
        if (!(flags & F_OPTIONS))
            return -HTTP_E_BAD_TARGET;
        path->len = 1;
        return 0;
    }
    if (t[0] != '/') {
        /* absolute-form: scheme ":" hier-part */
        size_t i = 0;
        if (!is_alpha(t[0]))
            return -HTTP_E_BAD_TARGET;
        while (i < len && (is_alpha(t[i]) || is_digit(t[i]) || t[i] == '+' ||
                           t[i] == '-' || t[i] == '.'))
            i++;
        if (i == len || t[i] != ':')
            return -HTTP_E_BAD_TARGET;
        i++;
        if (len - i >= 2 && t[i] == '/' && t[i + 1] == '/') {
            i += 2;   /* the authority, up to the path or the query */
            while (i < len && t[i] != '/' && t[i] != '?')
                i++;
        }
        p0 = i;
    }
    const uint8_t *q = memchr(t + p0, '?', len - p0);
    size_t pe = q ? (size_t)(q - t) : len;
    path->off = off + p0;
    path->len = pe - p0;
    if (q != NULL) {
        query->off = off + pe + 1;
        query->len = len - pe - 1;
    } else {
        query->off = off + len;
    }
    return 0;
}

/* method SP request-target SP HTTP-version, in buf[s .. e). */
static int
request_line(struct http_parser *p, const uint8_t *buf, size_t s, size_t e)
{
    size_t i = s;
    p->work += e - s;
    while (i < e && is_tchar(buf[i]))
        i++;
    if (i == s || i == e || buf[i] != ' ')
        return i == e && i > s ? -HTTP_E_BAD_REQUEST_LINE
                               : bad(buf[i], HTTP_E_BAD_METHOD);
    p->method_len = i - s;
    /* Methods are case-sensitive (RFC 9110 9.1). */
    if (i - s == 7 && memcmp(buf + s, "CONNECT", 7) == 0)
        p->flags |= HTTP_CONNECT;
    if (i - s == 7 && memcmp(buf + s, "OPTIONS", 7) == 0)
        p->flags |= F_OPTIONS;
    size_t t = ++i;
    while (i < e && is_vchar(buf[i]))
        i++;
    if (i == t)
        return i < e && buf[i] != ' ' ? bad(buf[i], HTTP_E_BAD_TARGET)
                                      : -HTTP_E_BAD_REQUEST_LINE;
    if (i == e)
        return -HTTP_E_BAD_REQUEST_LINE;
    if (buf[i] != ' ')
        return bad(buf[i], HTTP_E_BAD_TARGET);
    p->target_off = t;
    p->target_len = i - t;
    struct http_span path, query;
    int rc = target_split(buf, t, i - t, p->flags, &path, &query);
    if (rc < 0)
        return rc;
    const uint8_t *v = buf + i + 1;
    if (e - (i + 1) != 8 || memcmp(v, "HTTP/", 5) != 0 || !is_digit(v[5]) ||
        v[6] != '.' || !is_digit(v[7])) {
        const uint8_t *cr = memchr(v, '\r', e - (i + 1));
        return cr ? -HTTP_E_BARE_CR : -HTTP_E_BAD_VERSION;
    }
    if (v[5] != '1')
        return -HTTP_E_VERSION;
    /* RFC 9110 section 6.2: a higher minor version of a major version we
     * implement is processed as the highest we implement. */
    p->minor = v[7] == '0' ? 0 : 1;
    return 0;
}

/* ---- field lines --------------------------------------------------------- */

/* field-name ":" OWS field-value OWS, in buf[s .. e); the value, trimmed,
 * is buf[*vs .. *ve).  `first`: the section's first line. */
static int
field_line(struct http_parser *p, const uint8_t *buf, size_t s, size_t e,
           int first, size_t *ne, size_t *vs, size_t *ve)
{
    size_t i = s;
    p->work += e - s;
    if (is_ws(buf[s]))
        return first ? -HTTP_E_LEADING_WS : -HTTP_E_OBS_FOLD;
    while (i < e && is_tchar(buf[i]))
        i++;
    if (i == e)
        return -HTTP_E_NO_COLON;
    if (buf[i] != ':') {
        if (i > s && is_ws(buf[i])) {
            size_t w = skip_ws(buf, i, e);
            if (w < e && buf[w] == ':')
                return -HTTP_E_WS_BEFORE_COLON;
        }
        return bad(buf[i], HTTP_E_BAD_FIELD_NAME);
    }
    if (i == s)
        return -HTTP_E_BAD_FIELD_NAME;
    *ne = i;
    i = skip_ws(buf, i + 1, e);
    *vs = i;
    for (; i < e; i++)
        if (!is_field_char(buf[i]))
            return bad(buf[i], HTTP_E_BAD_FIELD_VALUE);
    while (e > *vs && is_ws(buf[e - 1]))
        e--;
    *ve = e;
    return 0;
}

/* Content-Length: 1*DIGIT, or a list of equal ones (RFC 9110 8.6); more
 * than one field line must agree too. */
static int
content_length(struct http_parser *p, const uint8_t *buf, size_t vs, size_t ve)
{
    size_t i = vs, es, ee;
    while (next_elem(buf, &i, ve, &es, &ee)) {
        uint64_t v = 0;
        if (es == ee)
            return -HTTP_E_BAD_LENGTH;
        for (size_t k = es; k < ee; k++) {
            unsigned d = (unsigned)buf[k] - '0';
            if (d > 9 || v > (UINT64_MAX - d) / 10)
                return -HTTP_E_BAD_LENGTH;
            v = v * 10 + d;
        }
        if ((p->flags & F_LENGTH) && v != p->length)
            return -HTTP_E_LENGTHS_DIFFER;
        p->flags |= F_LENGTH;
        p->length = v;
    }
    return 0;
}

/* Transfer-Encoding: a list of codings over all its field lines; judged at
 * the end of the header section (framing). */
static int
transfer_encoding(struct http_parser *p, const uint8_t *buf, size_t vs,
                  size_t ve)
{
    size_t i = vs, es, ee;
    p->flags |= F_TE;
    while (next_elem(buf, &i, ve, &es, &ee)) {
        if (es == ee)
            return -HTTP_E_BAD_TE;
        if (name_is(buf, es, ee - es, "chunked")) {
            if (p->flags & F_TE_CHUNKED)
                p->flags |= F_TE_TWICE;
            p->flags |= F_TE_CHUNKED | F_TE_LAST_CHUNKED;
        } else {
            p->flags = (p->flags | F_TE_OTHER) & ~(uint32_t)F_TE_LAST_CHUNKED;
        }
    }
    return 0;
}

/* What the header fields that matter to framing and to the connection
 * say.  Names are compared by length first: most fields cost one switch. */
static int
header_semantics(struct http_parser *p, const uint8_t *buf, size_t s,
                 size_t ne, size_t vs, size_t ve)
{
    size_t n = ne - s, i = vs, es, ee;
    switch (n) {
    case 4:
        if (!name_is(buf, s, n, "host"))
            return 0;
        if (p->flags & F_HOST)
            return -HTTP_E_DUP_HOST;
        p->flags |= F_HOST;
        for (size_t k = vs; k < ve; k++)
            if (!is_host_char(buf[k]))
                return -HTTP_E_BAD_HOST;
        return 0;
    case 6:
        if (!name_is(buf, s, n, "expect"))
            return 0;
        while (next_elem(buf, &i, ve, &es, &ee))
            if (name_is(buf, es, ee - es, "100-continue"))
                p->flags |= F_EXPECT;
        return 0;
    case 7:
        if (name_is(buf, s, n, "upgrade") && ve > vs)
            p->flags |= F_UPGRADE_FIELD;
        return 0;
    case 10:
        if (!name_is(buf, s, n, "connection"))
            return 0;
        while (next_elem(buf, &i, ve, &es, &ee)) {
            if (name_is(buf, es, ee - es, "close"))
                p->flags |= F_CLOSE;
            else if (name_is(buf, es, ee - es, "keep-alive"))
                p->flags |= F_KEEP_ALIVE;
            else if (name_is(buf, es, ee - es, "upgrade"))
                p->flags |= F_UPGRADE_OPTION;
        }
        return 0;
    case 14:
        return name_is(buf, s, n, "content-length")
                   ? content_length(p, buf, vs, ve) : 0;
    case 17:
        return name_is(buf, s, n, "transfer-encoding")
                   ? transfer_encoding(p, buf, vs, ve) : 0;
    default:
        return 0;
    }
}

/* The header section is over: how the body is framed (RFC 9112 6.3), and
 * the request's flags. */
static int
framing(struct http_parser *p)
{
    uint32_t f = p->flags;
    if (p->minor == 1 && !(f & F_HOST))
        return -HTTP_E_NO_HOST;
    if (f & F_TE) {
        if (f & F_LENGTH)
            return -HTTP_E_LENGTH_AND_CHUNKED;
        if (p->minor == 0)
            return -HTTP_E_TE_HTTP10;
        if (!(f & F_TE_LAST_CHUNKED))
            return -HTTP_E_CHUNKED_NOT_FINAL;
        if (f & F_TE_TWICE)
            return -HTTP_E_BAD_TE;
        if (f & F_TE_OTHER)
            return -HTTP_E_UNSUPPORTED_TE;
        f |= HTTP_CHUNKED;
    }
    if ((f & HTTP_CONNECT) && ((f & HTTP_CHUNKED) || p->length > 0))
        return -HTTP_E_CONNECT_BODY;
    if (p->length > p->lim->max_body)
        return -HTTP_E_BODY_TOO_LARGE;
    if (!(f & F_CLOSE) && (p->minor == 1 || (f & F_KEEP_ALIVE)))
        f |= HTTP_KEEP_ALIVE;
    if (p->minor == 1) {
        if (f & F_EXPECT)
            f |= HTTP_EXPECT_CONTINUE;
        if ((f & F_UPGRADE_FIELD) && (f & F_UPGRADE_OPTION))
            f |= HTTP_UPGRADE;
    }
    p->flags = f | HTTP_HEADERS_DONE;
    return 0;
}

/* A field section's end of line at `lf`: the content ends before it (and
 * before its CR).  `crlf`: a bare LF is an error. */
static int
line_end(const uint8_t *buf, size_t s, size_t lf, int crlf, size_t *e)
{
    if (lf > s && buf[lf - 1] == '\r') {
        *e = lf - 1;
        return 0;
    }
    *e = lf;
    return crlf ? -HTTP_E_BARE_LF : 0;
}

/* One line of a field section starting at p->pos (the header section at
 * `off` when !trailers, the trailer section otherwise).  GO: a field line
 * taken, 0: the empty line ending the section, HTTP_NEED, or an error. */
static int
section_line(struct http_parser *p, const uint8_t *buf, size_t len,
             size_t off, int trailers)
{
    const struct http_limits *lim = p->lim;
    uint64_t left = lim->max_header_bytes - (p->pos - off);
    uint64_t limit = left < lim->max_header_line ? left : lim->max_header_line;
    int too_long, rc;
    if (limit == 0)
        return -HTTP_E_FIELDS_TOO_LARGE;
    size_t lf = find_lf(p, buf, len, limit, &too_long), e, ne, vs, ve;
    if (lf == SIZE_MAX) {
        if (too_long)
            return limit < lim->max_header_line ? -HTTP_E_FIELDS_TOO_LARGE
                                                : -HTTP_E_FIELD_TOO_LONG;
        return HTTP_NEED;
    }
    size_t s = p->pos;
    if ((rc = line_end(buf, s, lf, trailers, &e)) < 0)
        return rc;
    p->pos = lf + 1;
    if (e == s)
        return 0;
    rc = field_line(p, buf, s, e, s == off, &ne, &vs, &ve);
    if (rc < 0)
        return rc;
    if (p->nfields >= lim->max_headers)
        return -HTTP_E_TOO_MANY_FIELDS;
    p->nfields++;
    if (!trailers && (rc = header_semantics(p, buf, s, ne, vs, ve)) < 0)
        return rc;
    return GO;
}

/* ---- chunked bodies ------------------------------------------------------ */

/* chunk-size [ chunk-ext ] CRLF; chunk-ext = *( BWS ";" BWS name
 * [ BWS "=" BWS ( token / quoted-string ) ] ). */
static int
chunk_line(struct http_parser *p, const uint8_t *buf, size_t s, size_t e,
           uint64_t *size)
{
    uint64_t v = 0;
    size_t i = s;
    int d;
    p->work += e - s;
    for (; i < e && (d = hex_value(buf[i])) >= 0; i++) {
        if (v > (UINT64_MAX >> 4))
            return -HTTP_E_BAD_CHUNK_SIZE;
        v = v << 4 | (uint64_t)d;
    }
    if (i == s || (i < e && buf[i] != ';' && !is_ws(buf[i])))
        return bad(i < e ? buf[i] : 0, HTTP_E_BAD_CHUNK_SIZE);
    for (;;) {
        size_t w = skip_ws(buf, i, e);
        if (w == e) {
            if (w != i)   /* whitespace with no extension after it */
                return -HTTP_E_BAD_CHUNK_EXT;
            break;
        }
        if (buf[w] != ';')
            return bad(buf[w], HTTP_E_BAD_CHUNK_EXT);
        i = skip_ws(buf, w + 1, e);
        size_t n = i;
        while (i < e && is_tchar(buf[i]))
            i++;
        if (i == n)
            return bad(i < e ? buf[i] : 0, HTTP_E_BAD_CHUNK_EXT);
        w = skip_ws(buf, i, e);
        if (w == e || buf[w] != '=')
            continue;
        i = skip_ws(buf, w + 1, e);
        if (i < e && buf[i] == '"') {
            for (i++; i < e && buf[i] != '"'; i++) {
                if (buf[i] == '\\' && i + 1 < e)
                    i++;
                if (!is_field_char(buf[i]))
                    return bad(buf[i], HTTP_E_BAD_CHUNK_EXT);
            }
            if (i == e)
                return -HTTP_E_BAD_CHUNK_EXT;
            i++;
        } else {
            n = i;
            while (i < e && is_tchar(buf[i]))
                i++;
            if (i == n)
                return bad(i < e ? buf[i] : 0, HTTP_E_BAD_CHUNK_EXT);
        }
    }
    *size = v;
    return 0;
}

/* The chunk-size line at p->pos. */
static int
chunk_size(struct http_parser *p, const uint8_t *buf, size_t len)
{
    int too_long, rc;
    size_t lf = find_lf(p, buf, len, p->lim->max_chunk_line, &too_long), e;
    if (lf == SIZE_MAX)
        return too_long ? -HTTP_E_CHUNK_LINE_TOO_LONG : HTTP_NEED;
    if ((rc = line_end(buf, p->pos, lf, 1, &e)) < 0)
        return rc;
    uint64_t size;
    if ((rc = chunk_line(p, buf, p->pos, e, &size)) < 0)
        return rc;
    if (size > p->lim->max_body - p->body_len)
        return -HTTP_E_BODY_TOO_LARGE;
    p->pos = lf + 1;
    p->chunk_left = size;
    p->state = size ? S_CHUNK_DATA : S_TRAILERS;
    if (size == 0)
        p->trailers_off = p->pos;
    return 0;
}

/* Move what arrived of this chunk's data down to the end of the body so
 * far: the body is contiguous at body_off, the chunk-size lines overwritten
 * (memmove: the regions may overlap). */
static void
chunk_data(struct http_parser *p, uint8_t *buf, size_t len)
{
    size_t n = len - p->pos;
    if (n > p->chunk_left)
        n = (size_t)p->chunk_left;
    memmove(buf + p->body_off + p->body_len, buf + p->pos, n);
    p->body_len += n;
    p->pos += n;
    p->chunk_left -= n;
    if (p->chunk_left == 0)
        p->state = S_CHUNK_END;
}

static int
chunk_end(struct http_parser *p, const uint8_t *buf, size_t len)
{
    if (len - p->pos < 1)
        return HTTP_NEED;
    if (buf[p->pos] != '\r')
        return buf[p->pos] == '\n' ? -HTTP_E_BARE_LF : -HTTP_E_BAD_CHUNK_END;
    if (len - p->pos < 2)
        return HTTP_NEED;
    if (buf[p->pos + 1] != '\n')
        return -HTTP_E_BARE_CR;
    p->pos += 2;
    p->state = S_CHUNK_SIZE;
    return 0;
}

/* ---- the whole request --------------------------------------------------- */

/* Fill fields[] from the field section buf[s .. e) (validated: every line
 * is name ":" value, the last one empty). */
static size_t
fill_fields(struct http_parser *p, const uint8_t *buf, size_t s, size_t e,
            struct http_field *fields)
{
    size_t n = 0;
    p->work += e - s;
    while (s < e) {
        const uint8_t *lf = memchr(buf + s, '\n', e - s);
        size_t le = (size_t)(lf - buf), next = le + 1;
        if (le > s && buf[le - 1] == '\r')
            le--;
        if (le == s)
            break;
        size_t colon = (size_t)((const uint8_t *)memchr(buf + s, ':', le - s) - buf);
        size_t vs = skip_ws(buf, colon + 1, le);
        while (le > vs && is_ws(buf[le - 1]))
            le--;
        fields[n].name.off = s;
        fields[n].name.len = colon - s;
        fields[n].value.off = vs;
        fields[n].value.len = le - vs;
        n++;
        s = next;
    }
    return n;
}

static void
fill_request(struct http_parser *p, const uint8_t *buf,
             struct http_field *fields, struct http_request *out)
{
    out->method.off = p->start;
    out->method.len = p->method_len;
    out->target.off = p->target_off;
    out->target.len = p->target_len;
    out->version.off = p->target_off + p->target_len + 1;
    out->version.len = 8;
    (void)target_split(buf, p->target_off, p->target_len, p->flags,
                       &out->path, &out->query);
    out->nheaders = fill_fields(p, buf, p->fields_off, p->body_off, fields);
    out->body.off = p->body_off;
    if (p->flags & HTTP_CHUNKED) {
        out->body.len = (size_t)p->body_len;
        out->ntrailers = fill_fields(p, buf, p->trailers_off, p->pos,
                                     fields + out->nheaders);
    } else {
        out->body.len = (size_t)p->length;
        p->pos = p->body_off + (size_t)p->length;
    }
    out->consumed = p->pos;
    out->minor = p->minor;
    out->flags = p->flags & F_PUBLIC;
}

/* One step of the state machine: GO, HTTP_OK for a whole request,
 * HTTP_NEED, or an error. */
static int
step(struct http_parser *p, uint8_t *buf, size_t len, struct http_request *out)
{
    const struct http_limits *lim = p->lim;
    int too_long, rc;
    size_t lf, e;
    switch (p->state) {
    case S_REQUEST_LINE:
        if (p->pos >= lim->max_request_line)
            return -HTTP_E_LINE_TOO_LONG;
        /* Not a method's first byte: no need to wait for the line (a TLS
         * hello on a plaintext port, say). */
        if (p->pos < len && buf[p->pos] != '\r' && buf[p->pos] != '\n' &&
            !is_tchar(buf[p->pos]))
            return -HTTP_E_BAD_METHOD;
        lf = find_lf(p, buf, len, lim->max_request_line - p->pos, &too_long);
        if (lf == SIZE_MAX)
            return too_long ? -HTTP_E_LINE_TOO_LONG : HTTP_NEED;
        line_end(buf, p->pos, lf, 0, &e);
        if (e == p->pos) {
            /* RFC 9112 2.2: empty lines before the request line are
             * ignored (within the request line's limit). */
            p->pos = p->start = lf + 1;
            return GO;
        }
        if ((rc = request_line(p, buf, p->pos, e)) < 0)
            return rc;
        p->pos = p->fields_off = lf + 1;
        p->state = S_FIELDS;
        return GO;
    case S_FIELDS:
        rc = section_line(p, buf, len, p->fields_off, 0);
        if (rc != 0)
            return rc;
        if ((rc = framing(p)) < 0)
            return rc;
        p->body_off = p->pos;
        if (p->flags & HTTP_CHUNKED)
            p->state = S_CHUNK_SIZE;
        else if (p->length > 0)
            p->state = S_BODY;
        else
            return HTTP_OK;
        return GO;
    case S_BODY:
        if (len - p->body_off < p->length) {
            out->need = p->body_off + (size_t)p->length;
            return HTTP_NEED;
        }
        return HTTP_OK;
    case S_CHUNK_SIZE:
        rc = chunk_size(p, buf, len);
        return rc == 0 ? GO : rc;
    case S_CHUNK_DATA:
        chunk_data(p, buf, len);
        if (p->chunk_left > 0) {
            out->need = p->pos + (size_t)p->chunk_left + 2;
            return HTTP_NEED;
        }
        return GO;
    case S_CHUNK_END:
        rc = chunk_end(p, buf, len);
        if (rc == HTTP_NEED)
            out->need = p->pos + 2;
        return rc == 0 ? GO : rc;
    case S_TRAILERS:
        rc = section_line(p, buf, len, p->trailers_off, 1);
        if (rc != 0)
            return rc;
        return HTTP_OK;
    default:
        return -HTTP_E_BAD_REQUEST_LINE;
    }
}

int
http_parse(struct http_parser *p, uint8_t *buf, size_t len,
           struct http_field *fields, struct http_request *out)
{
    memset(out, 0, sizeof *out);
    if (p->error)
        return p->error;
    if (len < p->pos)   /* not the buffer of the last call: nothing to do */
        return HTTP_NEED;
    int rc;
    while ((rc = step(p, buf, len, out)) == GO)
        ;
    if (rc < 0) {
        p->error = rc;
        return rc;
    }
    if (rc == HTTP_NEED) {
        out->flags = p->flags & F_PUBLIC;
        out->minor = p->minor;
        return rc;
    }
    fill_request(p, buf, fields, out);
    uint64_t work = p->work;
    http_parser_init(p, p->lim);
    p->work = work;
    return HTTP_OK;
}
