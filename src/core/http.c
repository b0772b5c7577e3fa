/* http.c - HTTP framing of a connection's input (cfg.framing.kind
 * FRAMING_HTTP): the connection's parser, whole requests into the batch
 * with their parsed fields (struct http_msg, entry.aux), refusals answered
 * in their turn, 100-continue, and the native replies of --native.  The
 * parser is lib/http.c; the receive path that calls this is recv.c. */
#include "core/internal.h"
#include "lib/http_out.h"

#include <stdio.h>

/* A connection's HTTP state. */
struct http_state {
    struct http_parser p;
    int last;                    /* http_parse()'s return for the request
                                    framed last */
    unsigned flags;              /* its flags */
    uint8_t continued;           /* 100 Continue sent for this request */
    int64_t started;             /* when the request's first bytes came,
                                    until its header section is whole (ms;
                                    0: none pending) */
};

static const char CONTINUE[] = "HTTP/1.1 100 Continue\r\n\r\n";

int
http_conn_init(struct conn *c)
{
    struct http_state *h = calloc(1, sizeof *h);
    if (h == NULL)
        return -ENOMEM;
    http_parser_init(&h->p, &c->w->srv->cfg.framing.http);
    h->last = HTTP_NEED;
    c->http = h;
    return 0;
}

void
http_conn_free(struct conn *c)
{
    free(c->http);
    c->http = NULL;
}

/* Room for one more request and its fields at the batch's tail. */
static int
room(struct worker *w)
{
    const struct http_limits *lim = &w->srv->cfg.framing.http;
    if (grow_array(&w->hmsgs, &w->hmsgs_cap, w->nhmsgs + 1,
                   sizeof(*w->hmsgs)) < 0 ||
        grow_array(&w->hfields, &w->hfields_cap,
                   w->nhfields + (unsigned)lim->max_headers,
                   sizeof(*w->hfields)) < 0)
        return -ENOMEM;
    return 0;
}

/* Expect: 100-continue, headers whole, the body not: ask for it, unless
 * earlier requests still wait for their answers (the interim answer would
 * overtake them; the client then sends the body after its own wait). */
static void
maybe_continue(struct conn *c, struct http_state *h)
{
    if (h->continued || !(h->p.flags & HTTP_HEADERS_DONE) ||
        !(h->p.flags & HTTP_EXPECT_CONTINUE))
        return;
    h->continued = 1;
    if (c->queued == 0 && atomic_load_explicit(&c->holds, memory_order_acquire) == 0)
        (void)conn_send(c, CONTINUE, sizeof CONTINUE - 1, 0, NULL);
}

int
http_frame(struct conn *c, uint8_t *p, size_t len, struct frame *fr)
{
    struct worker *w = c->w;
    struct http_state *h = c->http;
    fr->off = fr->len = fr->consumed = fr->need = fr->scanned = 0;
    if (room(w) < 0) {
        h->last = -HTTP_E_BAD_REQUEST_LINE;   /* (unreachable in practice) */
        return FRAME_REFUSED;
    }
    struct http_msg *m = &w->hmsgs[w->nhmsgs];
    int rc = http_parse(&h->p, p, len, &w->hfields[w->nhfields], &m->r);
    h->last = rc;
    if (rc == HTTP_NEED) {
        fr->need = m->r.need;
        if (h->p.flags & HTTP_HEADERS_DONE)
            h->started = 0;   /* the header timeout is over; the body
                                 may take its time (idle_timeout) */
        else if (h->started == 0)
            h->started = w->now;
        maybe_continue(c, h);
        return FRAME_NEED;
    }
    h->started = 0;
    if (rc < 0)
        return FRAME_REFUSED;
    h->flags = m->r.flags;
    h->continued = 0;
    fr->len = fr->consumed = m->r.consumed;
    return FRAME_OK;
}

int
http_header_expired(struct conn *c, int64_t now)
{
    struct http_state *h = c->http;
    int64_t limit = c->w->srv->cfg.framing.http_header_ms;
    if (h->started == 0 || limit == 0 || now - h->started < limit ||
        c->bad_input || c->state != CONN_OPEN)
        return 0;
    h->started = 0;
    h->last = -HTTP_E_HEADER_TIMEOUT;
    http_refuse(c);
    return 1;
}

int
http_keep_alive(const struct conn *c)
{
    return (c->http->flags & HTTP_KEEP_ALIVE) != 0;
}

int
http_emit(struct conn *c, const uint8_t *ptr, size_t off, size_t len)
{
    struct worker *w = c->w;
    struct http_msg *m = &w->hmsgs[w->nhmsgs];
    m->field0 = w->nhfields;
    m->status = 0;
    m->error = 0;
    stat_add(&w->srv->stats.msgs_in, 1);
    if (push_entry(w, c, ENTRY_MSG, ptr, off, len) < 0)
        return -ENOMEM;
    w->batch[w->nbatch - 1].aux = w->nhmsgs++;
    w->nhfields += (unsigned)(m->r.nheaders + m->r.ntrailers);
    return 0;
}

/* The Date line, formatted once a second per worker. */
static const char *
date_line(struct worker *w)
{
    int64_t t = (int64_t)time(NULL);
    if (t != w->date_sec) {
        http_date_line(t, w->date);
        w->date_sec = t;
    }
    return w->date;
}

void
http_refuse(struct conn *c)
{
    struct worker *w = c->w;
    int rc = c->http->last;
    if (w->srv->cfg.native_echo) {
        /* Every answer before it was native, so already queued. */
        char out[HTTP_REFUSAL_MAX];
        size_t n = http_refusal(rc, date_line(w), out);
        (void)conn_send(c, out, n, 0, NULL);   /* (closing: nothing to do) */
    } else if (room(w) == 0 && push_entry(w, c, ENTRY_MSG, NULL, 0, 0) == 0) {
        struct http_msg *m = &w->hmsgs[w->nhmsgs];
        memset(&m->r, 0, sizeof m->r);
        m->field0 = w->nhfields;
        m->status = (uint16_t)http_error_status(rc);
        m->error = (int16_t)rc;
        w->batch[w->nbatch - 1].aux = w->nhmsgs++;
    }
    recv_end_input(c, CLOSE_HTTP);
}

/* The fixed answer of --native: what the Python handler of `python -m
 * iocport http` answers, written here. */
static const char HELLO_BODY[] = "hello, world";

int
http_native_reply(struct conn *c, const uint8_t *req)
{
    struct worker *w = c->w;
    const struct http_request *r = &w->hmsgs[w->nhmsgs].r;
    unsigned flags = c->http->flags;
    int head = r->method.len == 4 && memcmp(req + r->method.off, "HEAD", 4) == 0;
    char out[256];
    int n = snprintf(out, sizeof out,
                     "HTTP/1.1 200 OK\r\n%scontent-type: text/plain\r\n"
                     "content-length: %zu\r\n%s\r\n%s",
                     date_line(w), sizeof HELLO_BODY - 1,
                     !(flags & HTTP_KEEP_ALIVE) ? "connection: close\r\n"
                     : r->minor == 0 ? "connection: keep-alive\r\n" : "",
                     head ? "" : HELLO_BODY);
    stat_add(&w->srv->stats.msgs_in, 1);
    int rc = conn_send(c, out, (size_t)n, 0, NULL);
    return rc == -EPIPE ? 0 : rc;   /* (closing: nothing more to answer) */
}
