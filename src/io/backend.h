/* backend.h - the one internal interface between the core and the I/O engines.
 *
 * A backend turns "start this operation on this handle" into completion events
 * that the owning worker reaps with wait().  Two engines implement it:
 * io_uring (uring.c, raw syscalls, no liburing) and epoll (epoll.c, which does
 * the nonblocking call when the fd is ready and reports it as a completion).
 *
 * Threading: a backend instance belongs to exactly one worker thread.  Every
 * function here except wake() is called only from that thread.
 *
 * Completion contract (the core relies on it, both engines must keep it):
 *  - every started operation ends with exactly one *final* event (more == 0);
 *    multishot operations (accept, recv) may deliver any number of events
 *    with more == 1 first;
 *  - cancel(h) makes every operation in flight on h end soon, each with its
 *    final event (res == -ECANCELED, or the real result if it won the race);
 *  - an engine that has to restart a multishot operation for its own reasons
 *    (provided buffers ran out, the kernel ended the multishot) does so
 *    silently: the core only sees a final recv/accept event on error, EOF,
 *    cancel or stop;
 *  - a recv event with res > 0 carries a buffer (buf, buf_id) that belongs to
 *    the core until it calls release_buf(); the engine never reuses it before;
 *    a direct receive (recv_into) instead fills the core's own buffer and
 *    says so with buf_id IO_NO_BUF;
 *  - buffers passed to send()/sendv()/connect()/recv_into() (and sendv's
 *    msghdr and iovec) belong to the engine until the final event of that
 *    operation is reaped.
 */
#ifndef IOCPORT_BACKEND_H
#define IOCPORT_BACKEND_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

enum io_op {
    IO_NONE = 0,
    IO_ACCEPT,   /* res: new fd (cloexec; nonblocking or not as the engine
                    needs: the core's own calls on it pass MSG_DONTWAIT)
                    or -errno; an error
                    may come with more == 1 (io_uring's multishot accept
                    survives EMFILE): the core then cancels and re-arms */
    IO_RECV,     /* res: bytes in buf, 0 = EOF, or -errno */
    IO_SEND,     /* res: bytes sent (may be short) or -errno */
    IO_CONNECT,  /* res: 0 or -errno */
    IO_FILE,     /* res: bytes read or written (may be short), 0 for a
                    sync, or -errno */
    IO_OP_COUNT
};

/* Regular-file operations for file_op(). */
enum file_opcode { FILE_READ = 1, FILE_WRITE, FILE_FSYNC, FILE_FDATASYNC };

/* The longest read or write one call makes (Linux's MAX_RW_COUNT); a
 * result always fits an int32. */
#define IO_FILE_MAX_LEN 0x7ffff000u

/* What each engine keeps in a handle: its own member of the union below,
 * which nothing else reads or writes. */
struct io_epoll_state {
    uint32_t active;              /* bit per enum io_op in flight */
    uint32_t pending;             /* H_* readiness bits (epoll.c) */
    uint8_t registered;           /* in the epoll set */
    unsigned rv_index;            /* slot on the revisit list (H_LISTED) */
    const char *send_buf;         /* send in progress... */
    size_t send_len;
    const struct msghdr *send_msg;  /* ...or sendv */
    char *recv_buf;               /* recv_into() in progress */
    uint32_t recv_len;
    int32_t recv_err;             /* an error that followed its bytes */
};

struct io_uring_state {
    uint32_t active;              /* bit per enum io_op in flight */
    uint32_t pending;             /* P_* bits (uring.c) */
    struct io_handle *next_idle;  /* on the engine's idle list */
    char *recv_buf;               /* recv_into() in progress */
};

/* A file operation in the thread pool (pool.c). */
struct io_pool_req {
    struct io_handle *next;       /* the pool's queue, then its done list */
    int op;                       /* enum file_opcode */
    void *buf;
    size_t len;
    uint64_t off;
    long res;                     /* bytes, 0, or -errno */
    uint8_t busy;                 /* submitted, its event not yet taken */
};

/* One registered file descriptor.  Embedded in the core's connection and
 * listener structs and file requests: `fd` and `tag` are the core's, the
 * union the engine's, or the pool's once it ran a file operation on the
 * handle (`pooled`: the engine's cancel() and forget() then leave it be). */
struct io_handle {
    int fd;
    uint8_t tag;                  /* what embeds this handle (the engines
                                     never touch it) */
    uint8_t pooled;               /* the union is the pool's (pool.c) */
    union {
        struct io_epoll_state ep;
        struct io_uring_state ur;
        struct io_pool_req pool;
    };
};

#define IO_NO_BUF 0xFFFFu     /* io_event.buf_id of a direct receive */

struct io_event {
    struct io_handle *h;      /* NULL for a wake-up */
    int32_t res;
    uint8_t op;               /* enum io_op */
    uint8_t more;             /* 1: the operation goes on, more events follow */
    uint16_t buf_id;          /* recv only: give back with release_buf */
    char *buf;                /* recv only, res > 0 */
};

struct backend;

struct backend_ops {
    const char *name;
    /* Create an engine.  `bufsize` x `nbufs` receive buffers.  Returns NULL
     * with errno set when the engine is not available here. */
    struct backend *(*create)(unsigned nbufs, unsigned bufsize);
    void (*destroy)(struct backend *b);

    /* Start a multishot accept on a listening socket. 0 or -errno. */
    int (*accept_start)(struct backend *b, struct io_handle *h);
    /* Start receiving (continuous until stop/cancel/EOF/error). 0 or -errno */
    int (*recv_start)(struct backend *b, struct io_handle *h);
    /* Receive once, straight into buf[0..len) (len <= INT32_MAX): one final
     * IO_RECV event, buf_id IO_NO_BUF, res = bytes placed (1..len), 0 = EOF
     * or -errno.  For large messages, which would otherwise be copied out
     * of the engine's buffers.  At most one recv (of either kind) per
     * handle.  recv_stop()/cancel() end it early; its final event then
     * still counts the bytes that had arrived.  0 or -errno. */
    int (*recv_into)(struct backend *b, struct io_handle *h, char *buf,
                     size_t len);
    /* Stop receiving (backpressure); the recv ends with a final event. */
    int (*recv_stop)(struct backend *b, struct io_handle *h);
    /* Send buf[0..len).  At most one send in flight per handle (the core
     * guarantees it).  Returns bytes sent at once (>= 0, the operation is
     * over, no event follows), -EINPROGRESS (an IO_SEND event follows), or
     * another -errno (failed, no event follows). */
    long (*send)(struct backend *b, struct io_handle *h, const char *buf,
                 size_t len);
    /* One nonblocking attempt to send buf[0..len) now, whatever the
     * engine would do with send(): bytes taken (>= 0) or -errno (-EAGAIN:
     * the socket is full).  No operation starts, no event follows; not
     * while a send is in flight on h (the core checks). */
    long (*send_now)(struct backend *b, struct io_handle *h, const char *buf,
                     size_t len);
    /* send() of the bytes m->msg_iov describes, in order (a gathered send:
     * no copy into one buffer).  Same returns and events as send().
     * Every engine must provide it (the core calls it unchecked). */
    long (*sendv)(struct backend *b, struct io_handle *h,
                  const struct msghdr *m);
    /* Connect a nonblocking socket (the engine may make it blocking, see
     * IO_ACCEPT); an IO_CONNECT event follows. */
    int (*connect)(struct backend *b, struct io_handle *h,
                   const struct sockaddr *addr, socklen_t addrlen);
    /* A regular-file operation on h->fd: read into / write from
     * buf[0..len) at offset `off`, or sync.  io_uring does it in the ring;
     * epoll, which cannot wait on regular files, hands it to a small pool
     * of native threads inside the engine.  One operation per handle at a
     * time (the core gives each request its own handle).  0, then one
     * final IO_FILE event; or -errno and nothing started.  cancel() need
     * not stop a file operation: the core waits for its event. */
    int (*file_op)(struct backend *b, struct io_handle *h, int op, void *buf,
                   size_t len, uint64_t off);
    /* End every operation in flight on h (see the contract above). */
    int (*cancel)(struct backend *b, struct io_handle *h);
    /* Forget h: called after its last final event, before close(fd). */
    void (*forget)(struct backend *b, struct io_handle *h);

    /* Submit what was started and wait up to timeout_ms (-1 = forever) for
     * events; returns the number stored in out[0..max), 0 on timeout or
     * wake-up, or -errno (-EINTR is returned so signals can be handled). */
    int (*wait)(struct backend *b, struct io_event *out, int max,
                int timeout_ms);
    /* Give back a receive buffer handed out by an IO_RECV event. */
    void (*release_buf)(struct backend *b, uint16_t buf_id);
    /* Thread-safe: make a wait() in progress (or the next one) return. */
    void (*wake)(struct backend *b);
};

extern const struct backend_ops iocp_epoll_ops;

/* common.c: send_now for sockets, every engine's (the same system call
 * whatever waits for readiness); an eventfd's wake-up, written and taken. */
long io_sock_send_now(struct backend *b, struct io_handle *h, const char *buf,
                      size_t len);
void io_eventfd_wake(int fd);
void io_eventfd_drain(int fd);
extern const struct backend_ops iocp_uring_ops;

/* 0 if io_uring with every feature we need works on this host, else -errno
 * (ENOSYS, EPERM for seccomp or io_uring_disabled, EINVAL for old kernels). */
int iocp_uring_probe(void);

#endif
