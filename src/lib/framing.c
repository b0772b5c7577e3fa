/* framing.c - message boundaries in a byte stream (the API in framing.h):
 * length-prefixed, delimited and fixed-size messages, for receiving
 * (framing_next) and sending (framing_wrap).  Pure C: no Python, no system
 * calls, no allocation. */
#include "lib/framing.h"

#include <endian.h>
#include <string.h>

#define FRAMING_NAME(name, str) str,
const char *const framing_kind_name[FRAMING_KIND_COUNT] = {
    NULL, FRAMING_KINDS(FRAMING_NAME)
};
#undef FRAMING_NAME

const char *
framing_check(const struct framing *f)
{
    if (f->max_size == 0)
        return "max_size must be positive";
    switch (f->kind) {
    case FRAMING_LENGTH:
        if (f->hdr_size != 1 && f->hdr_size != 2 && f->hdr_size != 4 &&
            f->hdr_size != 8)
            return "length header size must be 1, 2, 4 or 8 bytes";
        return NULL;
    case FRAMING_DELIM:
        if (f->delim_len < 1 || f->delim_len > 8)
            return "delimiter must be 1 to 8 bytes";
        return NULL;
    case FRAMING_FIXED:
        if (f->size == 0)
            return "fixed message size must be positive";
        if (f->size > SIZE_MAX)
            return "fixed message size is too large";
        if (f->size > f->max_size)
            return "fixed message size exceeds max_size";
        return NULL;
    case FRAMING_HTTP:
        return http_limits_check(&f->http);
    case FRAMING_RESP:
        return resp_limits_check(&f->resp);
    default:
        return "unknown framing kind";
    }
}

/* Header sizes are 1, 2, 4 or 8 (framing_check): one load or store and a
 * byte swap each, not a loop per byte. */
static uint64_t
read_uint(const uint8_t *p, unsigned n, int big_endian)
{
    uint16_t v16;
    uint32_t v32;
    uint64_t v64;
    switch (n) {
    case 1:
        return p[0];
    case 2:
        memcpy(&v16, p, 2);
        return big_endian ? be16toh(v16) : le16toh(v16);
    case 4:
        memcpy(&v32, p, 4);
        return big_endian ? be32toh(v32) : le32toh(v32);
    case 8:
        memcpy(&v64, p, 8);
        return big_endian ? be64toh(v64) : le64toh(v64);
    default:   /* refused by framing_check */
        return UINT64_MAX;
    }
}

static void
write_uint(uint8_t *p, unsigned n, int big_endian, uint64_t v)
{
    uint16_t v16;
    uint32_t v32;
    switch (n) {
    case 1:
        p[0] = (uint8_t)v;
        return;
    case 2:
        v16 = big_endian ? htobe16((uint16_t)v) : htole16((uint16_t)v);
        memcpy(p, &v16, 2);
        return;
    case 4:
        v32 = big_endian ? htobe32((uint32_t)v) : htole32((uint32_t)v);
        memcpy(p, &v32, 4);
        return;
    case 8:
        v = big_endian ? htobe64(v) : htole64(v);
        memcpy(p, &v, 8);
        return;
    default:   /* refused by framing_check */
        return;
    }
}

static int
next_length(const struct framing *f, const uint8_t *buf, size_t len,
            struct frame *out)
{
    size_t hs = f->hdr_size;
    if (len < hs) {
        out->need = hs;
        return FRAME_NEED;
    }
    uint64_t payload = read_uint(buf, (unsigned)hs, f->big_endian);
    if (f->hdr_included) {
        if (payload < hs)
            return FRAME_BAD_HEADER;
        payload -= hs;
    }
    if (payload > f->max_size || payload > SIZE_MAX - hs)
        return FRAME_TOO_BIG;
    size_t total = hs + (size_t)payload;
    if (len < total) {
        out->need = total;
        return FRAME_NEED;
    }
    out->off = hs;
    out->len = (size_t)payload;
    out->consumed = total;
    return FRAME_OK;
}

static int
next_delim(const struct framing *f, const uint8_t *buf, size_t len,
           size_t scan_from, struct frame *out)
{
    size_t dl = f->delim_len;
    /* A delimiter may straddle the end of the previous scan: back up. */
    if (scan_from > len)
        scan_from = len;
    size_t pos = scan_from >= dl - 1 ? scan_from - (dl - 1) : 0;
    while (pos < len) {
        const uint8_t *hit = memchr(buf + pos, f->delim[0], len - pos);
        if (hit == NULL)
            break;
        pos = (size_t)(hit - buf);
        if (len - pos < dl)
            break;   /* a possible delimiter cut short by the buffer end */
        if (memcmp(hit, f->delim, dl) == 0) {
            if (pos > f->max_size)
                return FRAME_TOO_BIG;
            out->off = 0;
            out->len = pos;
            out->consumed = pos + dl;
            return FRAME_OK;
        }
        pos++;
    }
    /* No delimiter starts at or before max_size: the payload is too big. */
    if (len >= dl && len - dl >= f->max_size)
        return FRAME_TOO_BIG;
    out->scanned = len;
    return FRAME_NEED;
}

int
framing_next(const struct framing *f, const uint8_t *buf, size_t len,
             size_t scan_from, struct frame *out)
{
    out->off = out->len = out->consumed = out->need = out->scanned = 0;
    switch (f->kind) {
    case FRAMING_LENGTH:
        return next_length(f, buf, len, out);
    case FRAMING_DELIM:
        return next_delim(f, buf, len, scan_from, out);
    case FRAMING_FIXED:
        if (len < f->size) {
            out->need = (size_t)f->size;
            return FRAME_NEED;
        }
        out->len = out->consumed = (size_t)f->size;
        return FRAME_OK;
    default:
        return FRAME_BAD_HEADER;
    }
}

int
framing_wrap(const struct framing *f, size_t len, uint8_t hdr[8],
             size_t *hdr_len, uint8_t trl[8], size_t *trl_len)
{
    *hdr_len = *trl_len = 0;
    switch (f->kind) {
    case FRAMING_LENGTH: {
        unsigned hs = f->hdr_size;
        uint64_t v = (uint64_t)len;
        if (f->hdr_included) {
            if (v > UINT64_MAX - hs)
                return FRAME_TOO_BIG;
            v += hs;
        }
        if (hs < 8 && (v >> (8 * hs)) != 0)
            return FRAME_TOO_BIG;
        write_uint(hdr, hs, f->big_endian, v);
        *hdr_len = hs;
        return 0;
    }
    case FRAMING_DELIM:
        memcpy(trl, f->delim, f->delim_len);
        *trl_len = f->delim_len;
        return 0;
    case FRAMING_FIXED:
        return (uint64_t)len == f->size ? 0 : FRAME_TOO_BIG;
    case FRAMING_HTTP:
    case FRAMING_RESP:
        return 0;   /* answers are written whole by their writers */
    default:
        return FRAME_BAD_HEADER;
    }
}

const char *
framing_strerror(int status)
{
    switch (status) {
    case FRAME_OK:
        return "whole message";
    case FRAME_NEED:
        return "incomplete message";
    case FRAME_TOO_BIG:
        return "message exceeds the maximum size";
    case FRAME_BAD_HEADER:
        return "bad length header: length is smaller than the header";
    case FRAME_REFUSED:
        return "request refused";
    default:
        return "unknown framing status";
    }
}
