/* order.h - the order of answers, for protocols whose messages each owe
 * one answer (HTTP requests, RESP commands): a connection's answers leave
 * in the order of the messages, whichever is answered first and from
 * whichever thread.  Each message owed an answer has a slot; an early
 * answer waits in it, whole, until those before it are out; a streamed
 * answer (begun, not ended) goes out live once it is at the head; a file
 * body (send_file) holds the answers after it until it is all sent.
 * Everything here runs under the GIL.  Nothing outside src/py/ includes
 * it. */
#ifndef IOCPORT_PY_ORDER_H
#define IOCPORT_PY_ORDER_H

#include "py/objects.h"

/* Slot flags; a protocol's own start at ORDER_PROTO. */
enum {
    ORDER_DONE = 1 << 0,         /* answered: `resp` waits its turn */
    ORDER_STREAM = 1 << 1,       /* an answer begun, not ended: `resp` (a
                                    bytearray) gathers what waits */
    ORDER_THEN_CLOSE = 1 << 2,   /* close once the answer is sent */
    ORDER_PROTO = 1 << 3,
};

struct slot {
    PyObject *resp;              /* the answer's bytes (bytes or bytearray) */
    PyObject *file, *cb;         /* ORDER_DONE: a File whose range follows
                                    them, and the caller's callback */
    uint64_t foff, fcount;
    uint64_t left;               /* a stream with a length: bytes owed */
    uint8_t flags;
};

/* The messages of a connection owed an answer: sequence numbers [first,
 * first + n), in a ring. */
struct answer_queue {
    struct slot *s;
    uint32_t cap, head, n;
    uint64_t first;
    uint8_t xfer;                /* a file body is on its way: the answers
                                    after it wait for its end */
    uint8_t xfer_close;          /* ... then the connection closes */
    PyObject *xfer_cb;           /* ... then the caller's callback */
};

static inline struct slot *
slot_at(struct answer_queue *q, uint32_t i)
{
    return &q->s[(q->head + i) & (q->cap - 1)];
}

/* A new message of o (c) owes an answer: its sequence number, or -1 (no
 * memory, nothing changed).  c is held until the answer is sent. */
int64_t order_push(ConnObject *o, struct conn *c, uint8_t flags);
/* Message `seq`'s slot while its answer is owed, else NULL. */
struct slot *order_owed(ConnObject *o, uint64_t seq);
/* Whether `seq` has its answer (or its answer begun), or was dropped. */
int order_answered(ConnObject *o, uint64_t seq);
/* The head's answer was sent: pop its slot. */
void order_pop(ConnObject *o);
/* Send the answers whose turn has come.  0, or -1 with an exception. */
int order_flush(ConnObject *o);
/* A stream's bytes: out now if it is live at the head, else gathered in
 * its slot.  0, or -1 with an exception. */
int order_put(ConnObject *o, struct slot *s, const void *p, size_t n);
/* conn_send's result as 0 (sent or queued; or the connection is closing
 * and the answer is lost with it), or -1 with MemoryError. */
int order_sent(int rc);
/* The connection closed: what waited is dropped, the holds given back
 * (c: the closed connection, still held). */
void order_drop(ConnObject *o, struct conn *c);
/* The Connection object goes: its queue too. */
void order_free(ConnObject *o);

#endif
