/* sock.c - socket calls that every engine makes the same way. */
#include "io/backend.h"

#include <errno.h>
#include <sys/socket.h>

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
