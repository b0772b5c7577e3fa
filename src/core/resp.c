/* resp.c - RESP framing of a connection's input (cfg.framing.kind
 * FRAMING_RESP): the connection's command framer, whole commands into the
 * batch with their arguments (struct resp_msg, entry.aux), and protocol
 * errors answered in their turn; or, for a client (framing.resp_client),
 * whole replies.  The framer is lib/resp.c; the receive
 * path that calls this is recv.c. */
#include "core/internal.h"

/* A connection's RESP state. */
struct resp_state {
    struct resp_cmd cmd;
    struct resp_reply rep;       /* a client's: the reply being framed */
    struct resp_arg *args;       /* the command's arguments so far */
    size_t cap;
    int last;                    /* resp_cmd_next()'s return, framed last */
};

#define RESP_ARGS_FIRST 8

int
resp_conn_init(struct conn *c)
{
    struct resp_state *r = calloc(1, sizeof *r);
    if (r == NULL || (r->args = malloc(RESP_ARGS_FIRST * sizeof *r->args)) == NULL) {
        free(r);
        return -ENOMEM;
    }
    r->cap = RESP_ARGS_FIRST;
    resp_cmd_reset(&r->cmd);
    resp_reply_reset(&r->rep);
    c->resp = r;
    return 0;
}

void
resp_conn_free(struct conn *c)
{
    if (c->resp != NULL)
        free(c->resp->args);
    free(c->resp);
    c->resp = NULL;
}

int
resp_frame(struct conn *c, const uint8_t *p, size_t len, struct frame *fr)
{
    struct resp_state *r = c->resp;
    const struct resp_limits *lim = &c->w->srv->cfg.framing.resp;
    fr->off = fr->len = fr->consumed = fr->need = fr->scanned = 0;
    if (c->w->srv->cfg.framing.resp_client) {
        int rc = resp_reply_next(lim, &r->rep, p, len);
        r->last = rc;
        if (rc == RESP_NEED) {
            fr->need = r->rep.need;
            return FRAME_NEED;
        }
        if (rc < 0)
            return FRAME_REFUSED;
        fr->len = fr->consumed = r->rep.consumed;
        return FRAME_OK;
    }
    for (;;) {
        int rc = resp_cmd_next(lim, &r->cmd, p, len, r->args, r->cap);
        r->last = rc;
        if (rc == RESP_GROW) {
            /* the whole count if the header gave it, else doubling */
            size_t want = r->cmd.want_args > r->cap ? (size_t)r->cmd.want_args
                                                    : r->cap * 2;
            struct resp_arg *na = realloc(r->args, want * sizeof *na);
            if (na == NULL)
                return -ENOMEM;
            r->args = na;
            r->cap = want;
            continue;
        }
        if (rc == RESP_NEED) {
            fr->need = r->cmd.need;
            return FRAME_NEED;
        }
        if (rc < 0)
            return FRAME_REFUSED;
        fr->len = fr->consumed = r->cmd.consumed;
        return FRAME_OK;
    }
}

/* Room for one more message and n arguments at the batch's tail. */
static int
room(struct worker *w, size_t n)
{
    if (grow_array(&w->rmsgs, &w->rmsgs_cap, w->nrmsgs + 1, sizeof(*w->rmsgs)) < 0 ||
        n > UINT32_MAX - w->nrargs ||
        grow_array(&w->rargs, &w->rargs_cap, w->nrargs + (unsigned)n,
                   sizeof(*w->rargs)) < 0)
        return -ENOMEM;
    return 0;
}

int
resp_emit(struct conn *c, const uint8_t *ptr, size_t off, size_t len)
{
    struct worker *w = c->w;
    struct resp_state *r = c->resp;
    int client = w->srv->cfg.framing.resp_client;
    size_t n = client ? 0 : r->cmd.nargs;
    if (n == 0 && !client)
        return 0;   /* an empty line, "*0", "*-1": Redis ignores them */
    if (room(w, n) < 0)
        return -ENOMEM;
    struct resp_msg *m = &w->rmsgs[w->nrmsgs];
    m->arg0 = w->nrargs;
    m->nargs = (uint32_t)n;
    m->error = 0;
    m->bad = 0;
    m->top = client ? r->rep.top : 0;
    if (n != 0)
        memcpy(&w->rargs[w->nrargs], r->args, n * sizeof *r->args);
    stat_add(&w->srv->stats.msgs_in, 1);
    if (push_entry(w, c, ENTRY_MSG, ptr, off, len) < 0)
        return -ENOMEM;
    w->batch[w->nbatch - 1].aux = w->nrmsgs++;
    w->nrargs += (unsigned)n;
    return 1;
}

void
resp_refuse(struct conn *c)
{
    struct worker *w = c->w;
    struct resp_state *r = c->resp;
    if (resp_error_sent(r->last) && room(w, 0) == 0 &&
        push_entry(w, c, ENTRY_MSG, NULL, 0, 0) == 0) {
        struct resp_msg *m = &w->rmsgs[w->nrmsgs];
        m->arg0 = w->nrargs;
        m->nargs = 0;
        m->error = (int16_t)r->last;
        m->bad = r->cmd.bad;
        m->top = 0;
        w->batch[w->nbatch - 1].aux = w->nrmsgs++;
    }
    recv_end_input(c, CLOSE_RESP);
}
