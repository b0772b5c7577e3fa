/* common.c - what every engine does the same way: an immediate send
 * (send_now), and waking a wait through an eventfd. */
#include "io/backend.h"

#include <errno.h>
#include <stdint.h>
#include <sys/socket.h>
#include <unistd.h>

long
io_sock_send_now(struct backend *b, struct io_handle *h, const char *buf,
                 size_t len)
{
    (void)b;
    ssize_t n;
    do
        n = send(h->fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    return n < 0 ? -errno : n;   /* (EWOULDBLOCK is EAGAIN on Linux) */
}

void
io_eventfd_wake(int fd)
{
    uint64_t one = 1;
    /* EAGAIN means the counter is huge: a wake-up is pending anyway. */
    while (write(fd, &one, sizeof one) < 0 && errno == EINTR)
        ;
}

void
io_eventfd_drain(int fd)
{
    uint64_t v;
    /* EAGAIN: another wait already took it; fine. */
    while (read(fd, &v, sizeof v) < 0 && errno == EINTR)
        ;
}
