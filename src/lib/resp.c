/* resp.c - RESP (the API in resp.h): the command framer a Redis-compatible
 * server needs (multibulk and inline, with Redis's limits and its exact
 * protocol errors), the reply scanner a client needs (RESP2 and RESP3,
 * nested, on an explicit stack), and the reply encoder.  Pure C: no
 * Python, no system calls, no allocation. */
#include "lib/resp.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- limits and errors -------------------------------------------------------- */

void
resp_limits_default(struct resp_limits *lim)
{
    lim->max_bulk = RESP_DEFAULT_MAX_BULK;
    lim->max_args = RESP_DEFAULT_MAX_ARGS;
    lim->max_inline = RESP_DEFAULT_MAX_INLINE;
    lim->max_depth = RESP_DEFAULT_MAX_DEPTH;
}

const char *
resp_limits_check(const struct resp_limits *lim)
{
    if (lim->max_bulk == 0 || lim->max_bulk > (uint64_t)INT64_MAX - 2)
        return "max_bulk must be between 1 and 2**63 - 3";
    if (lim->max_args == 0 || lim->max_args > INT_MAX)
        return "max_args must be between 1 and 2**31 - 1";
    if (lim->max_inline == 0 || lim->max_inline > SIZE_MAX / 2)
        return "max_inline must be positive";
    if (lim->max_depth == 0 || lim->max_depth > RESP_STACK_CAP)
        return "max_depth must be between 1 and 64";
    return NULL;
}

#define RESP_ERROR_TEXT(name, text, sent) text,
static const char *const error_text[RESP_E_COUNT] = {
    "no error", RESP_ERRORS(RESP_ERROR_TEXT)
};
#undef RESP_ERROR_TEXT
#define RESP_ERROR_SENT(name, text, sent) sent,
static const uint8_t error_sent[RESP_E_COUNT] = {
    0, RESP_ERRORS(RESP_ERROR_SENT)
};
#undef RESP_ERROR_SENT

static int
error_index(int status)
{
    return status < 0 && -status < RESP_E_COUNT ? -status : 0;
}

size_t
resp_error_text(int status, uint8_t byte, char *out, size_t cap)
{
    const char *t = error_text[error_index(status)];
    size_t n = 0;
    if (cap == 0)
        return 0;
    for (; *t != '\0' && n + 1 < cap; t++) {
        if (t[0] == '%' && t[1] == 'c') {
            out[n++] = (byte == '\r' || byte == '\n') ? ' ' : (char)byte;
            t++;
        } else {
            out[n++] = *t;
        }
    }
    out[n] = '\0';
    return n;
}

int
resp_error_sent(int status)
{
    return error_sent[error_index(status)];
}

/* Redis's string2ll (src/util.c): optional '-', no '+', no leading zero
 * (but "0"), no blanks, at most 20 digits, within long long. */
static int
parse_ll(const uint8_t *p, size_t n, long long *out)
{
    size_t i = 0;
    int neg = 0;
    unsigned long long v = 0;
    if (n == 0 || n > 20)
        return 0;
    if (n == 1 && p[0] == '0') {
        *out = 0;
        return 1;
    }
    if (p[0] == '-') {
        neg = 1;
        if (++i == n)
            return 0;
    }
    if (p[i] < '1' || p[i] > '9')
        return 0;
    for (; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return 0;
        unsigned d = (unsigned)(p[i] - '0');
        if (v > (ULLONG_MAX - d) / 10)
            return 0;
        v = v * 10 + d;
    }
    if (neg) {
        if (v > (unsigned long long)LLONG_MAX + 1)
            return 0;
        *out = v == (unsigned long long)LLONG_MAX + 1 ? LLONG_MIN
                                                       : -(long long)v;
    } else {
        if (v > (unsigned long long)LLONG_MAX)
            return 0;
        *out = (long long)v;
    }
    return 1;
}

/* Search buf[from..len) for `c`; count what was searched. */
static const uint8_t *
search(const uint8_t *buf, size_t from, size_t len, int c, uint64_t *examined)
{
    if (from >= len)
        return NULL;
    const uint8_t *hit = memchr(buf + from, c, len - from);
    *examined += (uint64_t)((hit ? (size_t)(hit - buf) + 1 : len) - from);
    return hit;
}

/* ---- commands: inline ----------------------------------------------------------- */

/* isspace() in the C locale, which Redis's sdssplitargs skips between
 * arguments; inside an unquoted argument only these four end it. */
static int
is_blank(uint8_t c)
{
    return c == ' ' || (c >= '\t' && c <= '\r');
}

static int
ends_token(uint8_t c)
{
    return c == ' ' || c == '\n' || c == '\r' || c == '\t';
}

static int
hex_value(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* One argument of an inline line, as Redis's sdssplitargs reads it: p is
 * at a non-blank byte before end.  Returns where the token ends (past a
 * closing quote), or NULL for unbalanced quotes.  When out != NULL the
 * value is written there and its length to *outlen; *quoted tells whether
 * the token used quotes (its value differs from its bytes). */
static const uint8_t *
inline_token(const uint8_t *p, const uint8_t *end, uint8_t *out,
             size_t *outlen, int *quoted)
{
    size_t n = 0;
    int inq = 0, insq = 0;
    *quoted = 0;
#define EMIT(ch) do { if (out) out[n] = (uint8_t)(ch); n++; } while (0)
    for (;;) {
        if (inq) {
            if (p == end)
                return NULL;
            if (p[0] == '\\' && end - p >= 4 && p[1] == 'x' &&
                hex_value(p[2]) >= 0 && hex_value(p[3]) >= 0) {
                EMIT(hex_value(p[2]) * 16 + hex_value(p[3]));
                p += 4;
            } else if (p[0] == '\\' && end - p >= 2) {
                uint8_t c = p[1];
                switch (c) {
                case 'n': c = '\n'; break;
                case 'r': c = '\r'; break;
                case 't': c = '\t'; break;
                case 'b': c = '\b'; break;
                case 'a': c = '\a'; break;
                default: break;
                }
                EMIT(c);
                p += 2;
            } else if (p[0] == '"') {
                /* A closing quote ends the line or comes before a blank. */
                if (end - p >= 2 && !is_blank(p[1]))
                    return NULL;
                p++;
                break;
            } else {
                EMIT(*p);
                p++;
            }
        } else if (insq) {
            if (p == end)
                return NULL;
            if (p[0] == '\\' && end - p >= 2 && p[1] == '\'') {
                EMIT('\'');
                p += 2;
            } else if (p[0] == '\'') {
                if (end - p >= 2 && !is_blank(p[1]))
                    return NULL;
                p++;
                break;
            } else {
                EMIT(*p);
                p++;
            }
        } else {
            if (p == end || ends_token(*p))
                break;
            if (*p == '"') {
                inq = *quoted = 1;
            } else if (*p == '\'') {
                insq = *quoted = 1;
            } else {
                EMIT(*p);
            }
            p++;
        }
    }
#undef EMIT
    if (outlen)
        *outlen = n;
    return p;
}

size_t
resp_unquote(const uint8_t *buf, const struct resp_arg *arg, uint8_t *out)
{
    size_t n = 0;
    int quoted;
    const uint8_t *p = buf + arg->off;
    if (inline_token(p, p + arg->len, out, &n, &quoted) == NULL)
        return 0;   /* not a token resp_cmd_next produced */
    return n;
}

static int
next_inline(const struct resp_limits *lim, struct resp_cmd *cmd,
            const uint8_t *buf, size_t len, struct resp_arg *args, size_t cap)
{
    const uint8_t *nl = search(buf, cmd->scanned, len, '\n', &cmd->examined);
    if (nl == NULL) {
        /* A line of max_inline bytes may still be waiting for its CRLF. */
        if (len > lim->max_inline + 1)
            return -RESP_E_INLINE_TOO_BIG;
        cmd->scanned = len;
        return RESP_NEED;
    }
    size_t eol = (size_t)(nl - buf), line = eol;
    if (line > 0 && buf[line - 1] == '\r')
        line--;
    /* Whether the line came whole or in pieces, the same limit. */
    if (line > lim->max_inline)
        return -RESP_E_INLINE_TOO_BIG;
    const uint8_t *p = buf, *end = buf + line;
    size_t n = 0;
    for (;;) {
        while (p < end && is_blank(*p))
            p++;
        if (p == end)
            break;
        int quoted;
        const uint8_t *t = inline_token(p, end, NULL, NULL, &quoted);
        if (t == NULL)
            return -RESP_E_QUOTES;
        if (n < cap) {
            args[n].off = (size_t)(p - buf);
            args[n].len = (size_t)(t - p);
            args[n].quoted = (uint8_t)quoted;
        }
        n++;
        p = t;
    }
    if (n > cap) {
        /* Framed again once the array is big enough: a line is short. */
        cmd->nargs = 0;
        cmd->want_args = n;
        cmd->scanned = eol;
        return RESP_GROW;
    }
    cmd->nargs = n;
    cmd->consumed = eol + 1;
    return RESP_OK;
}

/* ---- commands: multibulk --------------------------------------------------------- */

/* The count line at buf[pos..): *line_end is at its CR, which Redis
 * requires to be followed by one more byte (and does not check it). */
static int
count_line(const struct resp_limits *lim, struct resp_cmd *cmd,
           const uint8_t *buf, size_t len, int too_big, size_t *line_end)
{
    size_t from = cmd->scanned > cmd->pos ? cmd->scanned : cmd->pos;
    const uint8_t *cr = search(buf, from, len, '\r', &cmd->examined);
    if (cr == NULL) {
        if (len - cmd->pos > lim->max_inline)
            return too_big;
        cmd->scanned = len;
        return RESP_NEED;
    }
    size_t at = (size_t)(cr - buf);
    if (at - cmd->pos > lim->max_inline)
        return too_big;
    if (at + 1 >= len) {
        cmd->scanned = at;   /* found again at once, not searched again */
        return RESP_NEED;
    }
    *line_end = at;
    return RESP_OK;
}

static int
next_multibulk(const struct resp_limits *lim, struct resp_cmd *cmd,
               const uint8_t *buf, size_t len, struct resp_arg *args,
               size_t cap)
{
    size_t at;
    long long ll;
    int rc;
    if (cmd->pos == 0) {
        rc = count_line(lim, cmd, buf, len, -RESP_E_MBULK_TOO_BIG, &at);
        if (rc != RESP_OK)
            return rc;
        if (!parse_ll(buf + 1, at - 1, &ll) || ll > (long long)lim->max_args)
            return -RESP_E_MBULK_LEN;
        cmd->pos = cmd->scanned = at + 2;
        if (ll <= 0) {
            cmd->nargs = 0;
            cmd->consumed = cmd->pos;
            return RESP_OK;
        }
        cmd->left = (uint64_t)ll;
        cmd->bulk = -1;
    }
    while (cmd->left > 0) {
        if (cmd->bulk < 0) {
            rc = count_line(lim, cmd, buf, len, -RESP_E_BULK_TOO_BIG, &at);
            if (rc != RESP_OK)
                return rc;
            if (buf[cmd->pos] != '$') {
                cmd->bad = buf[cmd->pos];
                return -RESP_E_EXPECTED_BULK;
            }
            if (!parse_ll(buf + cmd->pos + 1, at - cmd->pos - 1, &ll) ||
                ll < 0 || (uint64_t)ll > lim->max_bulk)
                return -RESP_E_BULK_LEN;
            cmd->pos = cmd->scanned = at + 2;
            cmd->bulk = ll;
        }
        /* As Redis, the two bytes after the payload are not checked. */
        size_t total = cmd->pos + (size_t)cmd->bulk + 2;
        if (len < total) {
            cmd->need = total;
            return RESP_NEED;
        }
        if (cmd->nargs == cap) {
            cmd->want_args = cmd->nargs + cmd->left;
            return RESP_GROW;
        }
        args[cmd->nargs].off = cmd->pos;
        args[cmd->nargs].len = (size_t)cmd->bulk;
        args[cmd->nargs].quoted = 0;
        cmd->nargs++;
        cmd->pos = cmd->scanned = total;
        cmd->bulk = -1;
        cmd->left--;
    }
    cmd->consumed = cmd->pos;
    return RESP_OK;
}

void
resp_cmd_reset(struct resp_cmd *cmd)
{
    uint64_t examined = cmd->examined;
    memset(cmd, 0, sizeof *cmd);
    cmd->bulk = -1;
    cmd->examined = examined;
}

int
resp_cmd_next(const struct resp_limits *lim, struct resp_cmd *cmd,
              const uint8_t *buf, size_t len, struct resp_arg *args,
              size_t cap)
{
    cmd->need = 0;
    cmd->want_args = 0;
    if (cmd->kind == 0) {
        cmd->nargs = cmd->consumed = 0;   /* the last command's results */
        if (len == 0)
            return RESP_NEED;
        cmd->kind = buf[0] == '*' ? RESP_MULTIBULK : RESP_INLINE;
        cmd->bulk = -1;
    }
    int rc = cmd->kind == RESP_MULTIBULK
                 ? next_multibulk(lim, cmd, buf, len, args, cap)
                 : next_inline(lim, cmd, buf, len, args, cap);
    if (rc == RESP_OK) {
        size_t nargs = cmd->nargs, consumed = cmd->consumed;
        resp_cmd_reset(cmd);
        cmd->nargs = nargs;
        cmd->consumed = consumed;
    }
    return rc;
}

/* ---- replies ------------------------------------------------------------------------ */

/* A reply line: up to CRLF (a lone CR belongs to the line, as in hiredis). */
static int
reply_line(const struct resp_limits *lim, const uint8_t *buf, size_t len,
           size_t pos, size_t scan_from, size_t *eol, size_t *scanned,
           uint64_t *examined)
{
    size_t from = scan_from > pos + 1 ? scan_from : pos + 1;
    for (;;) {
        const uint8_t *cr = search(buf, from, len, '\r', examined);
        if (cr == NULL) {
            if (len - pos > lim->max_inline + 1)
                return -RESP_E_REPLY_LINE;
            *scanned = len;
            return RESP_NEED;
        }
        size_t at = (size_t)(cr - buf);
        if (at - pos - 1 > lim->max_inline)
            return -RESP_E_REPLY_LINE;
        if (at + 1 >= len) {
            *scanned = at;
            return RESP_NEED;
        }
        if (buf[at + 1] == '\n') {
            *eol = at;
            return RESP_OK;
        }
        from = at + 1;
    }
}

static int
parse_double(const uint8_t *p, size_t n, double *out)
{
    char tmp[400];
    if (n == 0 || n >= sizeof tmp)
        return 0;
    if ((n == 3 && memcmp(p, "inf", 3) == 0) ||
        (n == 4 && memcmp(p, "+inf", 4) == 0)) {
        *out = HUGE_VAL;
        return 1;
    }
    if (n == 4 && memcmp(p, "-inf", 4) == 0) {
        *out = -HUGE_VAL;
        return 1;
    }
    if (n == 3 && memcmp(p, "nan", 3) == 0) {
        *out = NAN;
        return 1;
    }
    /* Digits, sign, point and exponent only (strtod would also take
     * "0x1p3", "infinity" and leading blanks). */
    for (size_t i = 0; i < n; i++) {
        uint8_t c = p[i];
        if (!((c >= '0' && c <= '9') || c == '-' || c == '+' || c == '.' ||
              c == 'e' || c == 'E'))
            return 0;
    }
    memcpy(tmp, p, n);
    tmp[n] = '\0';
    char *end;
    *out = strtod(tmp, &end);
    return end == tmp + n;
}

static int
is_aggregate(uint8_t t)
{
    return t == '*' || t == '%' || t == '~' || t == '|' || t == '>';
}

static int
item_at(const struct resp_limits *lim, const uint8_t *buf, size_t len,
        size_t pos, size_t scan_from, struct resp_item *it, size_t *need,
        size_t *scanned, uint64_t *examined)
{
    size_t eol;
    long long ll;
    *need = 0;
    *scanned = scan_from;
    memset(it, 0, sizeof *it);
    if (pos >= len)
        return RESP_NEED;
    uint8_t t = buf[pos];
    switch (t) {
    case '+': case '-': case ':': case ',': case '#': case '_': case '(':
    case '$': case '!': case '=':
    case '*': case '%': case '~': case '|': case '>':
        break;
    default:
        return -RESP_E_REPLY_TYPE;
    }
    int rc = reply_line(lim, buf, len, pos, scan_from, &eol, scanned,
                        examined);
    if (rc != RESP_OK)
        return rc;
    const uint8_t *line = buf + pos + 1;
    size_t n = eol - pos - 1;
    it->type = t;
    it->off = pos + 1;
    it->len = n;
    it->end = eol + 2;
    switch (t) {
    case '+': case '-':
        return RESP_OK;
    case ':':
        if (!parse_ll(line, n, &ll))
            return -RESP_E_REPLY_INT;
        it->n = ll;
        return RESP_OK;
    case '(':
        for (size_t i = (n > 0 && line[0] == '-'); i < n; i++)
            if (line[i] < '0' || line[i] > '9')
                return -RESP_E_REPLY_BIGNUM;
        if (n == 0 || (n == 1 && line[0] == '-'))
            return -RESP_E_REPLY_BIGNUM;
        return RESP_OK;
    case ',':
        return parse_double(line, n, &it->d) ? RESP_OK : -RESP_E_REPLY_DOUBLE;
    case '#':
        if (n != 1 || (line[0] != 't' && line[0] != 'f'))
            return -RESP_E_REPLY_BOOL;
        it->n = line[0] == 't';
        return RESP_OK;
    case '_':
        return n == 0 ? RESP_OK : -RESP_E_REPLY_NULL;
    default:
        break;
    }
    if (!parse_ll(line, n, &ll))
        return is_aggregate(t) ? -RESP_E_REPLY_AGG_LEN : -RESP_E_REPLY_BULK_LEN;
    it->n = ll;
    if (is_aggregate(t)) {
        if (ll < (t == '*' ? -1 : 0) || (ll > 0 && (uint64_t)ll > lim->max_args))
            return -RESP_E_REPLY_AGG_LEN;
        it->len = 0;
        return RESP_OK;
    }
    /* $ ! = : a payload and its CRLF. */
    if (ll < (t == '$' ? -1 : 0) || (ll > 0 && (uint64_t)ll > lim->max_bulk))
        return -RESP_E_REPLY_BULK_LEN;
    it->off = eol + 2;
    it->len = 0;
    if (ll < 0)
        return RESP_OK;
    size_t end = eol + 2 + (size_t)ll + 2;
    if (len < end) {
        *need = end;
        *scanned = pos;   /* the header is read again: a few bytes */
        return RESP_NEED;
    }
    if (buf[end - 2] != '\r' || buf[end - 1] != '\n')
        return -RESP_E_REPLY_CRLF;
    if (t == '=' && (ll < 4 || buf[eol + 2 + 3] != ':'))
        return -RESP_E_REPLY_VERBATIM;
    it->len = (size_t)ll;
    it->end = end;
    return RESP_OK;
}

int
resp_item_at(const struct resp_limits *lim, const uint8_t *buf, size_t len,
             size_t pos, size_t scan_from, struct resp_item *it, size_t *need,
             size_t *scanned)
{
    uint64_t examined = 0;
    return item_at(lim, buf, len, pos, scan_from, it, need, scanned,
                   &examined);
}

void
resp_reply_reset(struct resp_reply *r)
{
    uint64_t examined = r->examined;
    memset(r, 0, sizeof *r);
    r->examined = examined;
}

int
resp_reply_next(const struct resp_limits *lim, struct resp_reply *r,
                const uint8_t *buf, size_t len)
{
    struct resp_item it;
    r->need = 0;
    if (r->pos == 0)
        r->top = 0;   /* a new reply (the last one's type was kept for its caller) */
    for (;;) {
        size_t scanned;
        int rc = item_at(lim, buf, len, r->pos, r->scanned, &it, &r->need,
                         &scanned, &r->examined);
        if (rc == RESP_NEED) {
            r->scanned = scanned;
            return RESP_NEED;
        }
        if (rc < 0) {
            r->bad = r->pos < len ? buf[r->pos] : 0;
            return rc;
        }
        r->pos = r->scanned = it.end;
        if (r->depth == 0 && it.type != '|' && r->top == 0)
            r->top = it.type;
        if (is_aggregate(it.type) && it.n > 0) {
            if (r->depth >= lim->max_depth)
                return -RESP_E_REPLY_DEPTH;
            uint64_t n = (uint64_t)it.n;
            r->left[r->depth] = it.type == '%' || it.type == '|' ? 2 * n : n;
            if (it.type == '|')
                r->attr |= (uint64_t)1 << r->depth;
            else
                r->attr &= ~((uint64_t)1 << r->depth);
            r->depth++;
            continue;
        }
        if (it.type == '|')
            continue;   /* an empty attribute: its value is still to come */
        /* A whole value: it completes its parent's slot, perhaps the
         * parent, and so on up; an attribute that completes leaves the
         * slot to the value it annotates. */
        int whole = 1;
        while (r->depth > 0) {
            unsigned d = r->depth - 1;
            if (--r->left[d] > 0) {
                whole = 0;
                break;
            }
            r->depth--;
            if (r->attr & ((uint64_t)1 << d)) {
                whole = 0;
                break;
            }
        }
        if (!whole)
            continue;
        uint8_t top = r->top;
        size_t consumed = r->pos;
        resp_reply_reset(r);
        r->top = top;
        r->consumed = consumed;
        return RESP_OK;
    }
}

/* ---- encoding -------------------------------------------------------------------------- */

/* prefix, the decimal v, CRLF. */
static size_t
put_num(uint8_t *out, uint8_t prefix, long long v)
{
    char tmp[24];
    unsigned long long u = v < 0 ? 0ull - (unsigned long long)v
                                 : (unsigned long long)v;
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u != 0);
    size_t size = 1 + (v < 0) + n + 2;
    if (out != NULL) {
        *out++ = prefix;
        if (v < 0)
            *out++ = '-';
        while (n > 0)
            *out++ = (uint8_t)tmp[--n];
        out[0] = '\r';
        out[1] = '\n';
    }
    return size;
}

/* prefix, the decimal count n, CRLF (a count never exceeds LLONG_MAX). */
static size_t
put_count(uint8_t *out, uint8_t prefix, size_t n)
{
    return put_num(out, prefix, (long long)n);
}

/* prefix, s, CRLF. */
static size_t
put_line(uint8_t *out, uint8_t prefix, const void *s, size_t n)
{
    if (out != NULL) {
        out[0] = prefix;
        memcpy(out + 1, s, n);
        out[1 + n] = '\r';
        out[2 + n] = '\n';
    }
    return n + 3;
}

static size_t
put_raw(uint8_t *out, const char *s, size_t n)
{
    if (out != NULL)
        memcpy(out, s, n);
    return n;
}

size_t resp_put_simple(uint8_t *out, const void *s, size_t n)
{
    return put_line(out, '+', s, n);
}

size_t resp_put_error(uint8_t *out, const void *s, size_t n)
{
    return put_line(out, '-', s, n);
}

size_t resp_put_int(uint8_t *out, long long v)
{
    return put_num(out, ':', v);
}

size_t resp_put_bulk_header(uint8_t *out, size_t n)
{
    return put_count(out, '$', n);
}

size_t
resp_put_bulk(uint8_t *out, const void *s, size_t n)
{
    size_t h = resp_put_bulk_header(out, n);
    if (out != NULL) {
        memcpy(out + h, s, n);
        out[h + n] = '\r';
        out[h + n + 1] = '\n';
    }
    return h + n + 2;
}

size_t resp_put_null(uint8_t *out, int proto)
{
    return proto >= 3 ? put_raw(out, "_\r\n", 3) : put_raw(out, "$-1\r\n", 5);
}

size_t resp_put_null_array(uint8_t *out, int proto)
{
    return proto >= 3 ? put_raw(out, "_\r\n", 3) : put_raw(out, "*-1\r\n", 5);
}

size_t resp_put_array(uint8_t *out, size_t n)
{
    return put_count(out, '*', n);
}

size_t resp_put_map(uint8_t *out, size_t n, int proto)
{
    return proto >= 3 ? put_count(out, '%', n) : put_count(out, '*', 2 * n);
}

size_t resp_put_set(uint8_t *out, size_t n, int proto)
{
    return put_count(out, proto >= 3 ? '~' : '*', n);
}

size_t resp_put_push(uint8_t *out, size_t n)
{
    return put_count(out, '>', n);
}

size_t resp_put_bool(uint8_t *out, int b, int proto)
{
    if (proto >= 3)
        return put_raw(out, b ? "#t\r\n" : "#f\r\n", 4);
    return put_raw(out, b ? ":1\r\n" : ":0\r\n", 4);
}

/* The shortest "%.*g" text that reads back as d (as Redis's fpconv_dtoa
 * and Python's repr give), into tmp; returns its length.  snprintf and
 * strtod use the C locale's '.' unless the process changed LC_NUMERIC. */
static size_t
double_text(double d, char tmp[32])
{
    if (isnan(d)) {
        memcpy(tmp, "nan", 4);
        return 3;
    }
    if (isinf(d)) {
        memcpy(tmp, d > 0 ? "inf" : "-inf", d > 0 ? 4 : 5);
        return d > 0 ? 3 : 4;
    }
    int n = 0;
    for (int prec = 1; prec <= 17; prec++) {
        n = snprintf(tmp, 32, "%.*g", prec, d);
        if (strtod(tmp, NULL) == d)
            break;
    }
    return (size_t)n;
}

size_t
resp_put_double(uint8_t *out, double d, int proto)
{
    char tmp[32];
    size_t n = double_text(d, tmp);
    return proto >= 3 ? put_line(out, ',', tmp, n) : resp_put_bulk(out, tmp, n);
}

size_t
resp_put_bignum(uint8_t *out, const void *s, size_t n, int proto)
{
    return proto >= 3 ? put_line(out, '(', s, n) : resp_put_bulk(out, s, n);
}

int
resp_line_ok(const void *s, size_t n)
{
    return memchr(s, '\r', n) == NULL && memchr(s, '\n', n) == NULL;
}
