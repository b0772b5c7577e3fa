/* c_echo_tls: the C baseline of the TLS benchmark: c_echo_epoll.c's
 * single-threaded epoll echo server, with OpenSSL on each socket.
 *
 * Level-triggered, nonblocking; OpenSSL reads and writes the sockets itself
 * (SSL_set_fd), with read-ahead on (a read takes what the socket has, not a
 * record header and then its body) and partial writes, and keeps its
 * record buffers (no SSL_MODE_RELEASE_BUFFERS, which Python's contexts set:
 * with it, this server did about 3% fewer messages per CPU-second at 64 B,
 * depth 16, in one short measurement; the baseline goes without).  Each
 * connection: SSL_accept until the handshake is done, then SSL_read while
 * OpenSSL has input read ahead (which epoll does not see), with no read that
 * would return EAGAIN (looping until SSL_ERROR_WANT_READ cost 10-15% at
 * depth 1: an extra read per wakeup), frames
 * the plaintext (len4: 4-byte big-endian payload length, header not counted;
 * line: '\n'-terminated) and echoes the whole frames of that batch with one
 * SSL_write.  A peer that stops reading is not read from while more than
 * 4 MiB of replies wait for it.  TLS 1.3 only, the server's certificate and
 * key from PEM files; the cipher suites are OpenSSL's defaults (the client
 * chooses: the benchmark's load generator offers TLS_AES_128_GCM_SHA256
 * alone), session tickets as OpenSSL's default (two per connection), as
 * Python's ssl module has them.
 *
 *   c_echo_tls --cert CERT.pem --key KEY.pem [--host 127.0.0.1] [--port 9000]
 *              [--framing len4|line]
 *
 * Prints "listening on HOST:PORT" when ready; SIGINT/SIGTERM exit 0.
 *
 * Build (needs OpenSSL's headers: apt-get install libssl-dev):
 *   gcc -O2 -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror c_echo_tls.c -o c_echo_tls -lssl -lcrypto
 */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#define MAX_FRAME (16u << 20)
#define MAX_UNSENT (4u << 20)
#define READ_CHUNK 65536

typedef struct {
    SSL *ssl;
    int handshaking;
    char *in;
    size_t in_len, in_cap;
    char *out;
    size_t out_off, out_len, out_cap;
    uint32_t events;
} conn_t;

static int framing_line;
static int epfd, lfd;
static SSL_CTX *ctx;
static conn_t **conns;
static size_t nconns;
static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

static void fail(const char *what)
{
    fprintf(stderr, "c_echo_tls: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void fail_ssl(const char *what)
{
    fprintf(stderr, "c_echo_tls: %s\n", what);
    ERR_print_errors_fp(stderr);
    exit(2);
}

static void close_conn(int fd)
{
    conn_t *c = conns[fd];
    epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL);
    SSL_free(c->ssl);
    close(fd);
    free(c->in);
    free(c->out);
    free(c);
    conns[fd] = NULL;
}

static int set_events(int fd, conn_t *c, uint32_t events)
{
    if (c->events == events)
        return 0;
    struct epoll_event ev = {.events = events, .data.fd = fd};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev) < 0)
        return -1;
    c->events = events;
    return 0;
}

static int reserve(char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : 4096;
    while (n < need)
        n *= 2;
    char *p = realloc(*buf, n);
    if (!p)
        return -1;
    *buf = p;
    *cap = n;
    return 0;
}

/* Length of the prefix of `p` made of whole frames; -1 on a bad frame. */
static long whole_prefix(const char *p, size_t len)
{
    size_t pos = 0;
    if (framing_line) {
        const char *nl = memrchr(p, '\n', len);
        return nl ? (long)(nl - p + 1) : 0;
    }
    while (len - pos >= 4) {
        const unsigned char *h = (const unsigned char *)p + pos;
        uint32_t n = ((uint32_t)h[0] << 24) | ((uint32_t)h[1] << 16) |
                     ((uint32_t)h[2] << 8) | h[3];
        if (n > MAX_FRAME)
            return -1;
        if (len - pos - 4 < n)
            break;
        pos += 4 + n;
    }
    return (long)pos;
}

/* Seal and write what is queued; returns -1 if the connection must close. */
static int flush_conn(int fd, conn_t *c)
{
    while (c->out_off < c->out_len) {
        ERR_clear_error();
        int n = SSL_write(c->ssl, c->out + c->out_off, (int)(c->out_len - c->out_off));
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        int e = SSL_get_error(c->ssl, n);
        if (e == SSL_ERROR_WANT_WRITE) {
            size_t unsent = c->out_len - c->out_off;
            return set_events(fd, c, EPOLLOUT | (unsent > MAX_UNSENT ? 0 : EPOLLIN));
        }
        if (e == SSL_ERROR_WANT_READ)   /* a key update: wait for the peer */
            return set_events(fd, c, EPOLLIN);
        return -1;
    }
    c->out_off = c->out_len = 0;
    return set_events(fd, c, EPOLLIN);
}

static int on_handshake(int fd, conn_t *c)
{
    ERR_clear_error();
    int r = SSL_accept(c->ssl);
    if (r == 1) {
        c->handshaking = 0;
        return set_events(fd, c, EPOLLIN);
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ)
        return set_events(fd, c, EPOLLIN);
    if (e == SSL_ERROR_WANT_WRITE)
        return set_events(fd, c, EPOLLOUT);
    return -1;
}

/* Read all the plaintext OpenSSL can give without waiting, echo the whole
 * frames of it with one SSL_write.  -1: close the connection. */
static int on_read(int fd, conn_t *c)
{
    int eof = 0;
    for (;;) {
        if (reserve(&c->in, &c->in_cap, c->in_len + READ_CHUNK) < 0)
            return -1;
        ERR_clear_error();
        int n = SSL_read(c->ssl, c->in + c->in_len, (int)(c->in_cap - c->in_len));
        if (n > 0) {
            c->in_len += (size_t)n;
            /* nothing read ahead: level-triggered epoll says when the
             * socket has more (no read that would return EAGAIN) */
            if (!SSL_has_pending(c->ssl))
                break;
            continue;
        }
        int e = SSL_get_error(c->ssl, n);
        if (e == SSL_ERROR_WANT_READ)
            break;
        if (e == SSL_ERROR_WANT_WRITE) {      /* a key update's reply */
            set_events(fd, c, c->events | EPOLLOUT);
            break;
        }
        eof = 1;    /* close_notify, a FIN, or an error */
        break;
    }
    long whole = whole_prefix(c->in, c->in_len);
    if (whole < 0)
        return -1;
    if (whole > 0) {
        size_t w = (size_t)whole;
        if (c->out_off == c->out_len)
            c->out_off = c->out_len = 0;
        if (reserve(&c->out, &c->out_cap, c->out_len + w) < 0)
            return -1;
        memcpy(c->out + c->out_len, c->in, w);
        c->out_len += w;
        memmove(c->in, c->in + w, c->in_len - w);
        c->in_len -= w;
        if (flush_conn(fd, c) < 0)
            return -1;
    }
    if (eof) {
        if (c->out_len > c->out_off)
            return -1;
        SSL_shutdown(c->ssl);   /* our close_notify, best effort */
        return -1;
    }
    return 0;
}

static void on_accept(void)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return; /* EAGAIN, or EMFILE and friends: try again later */
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if ((size_t)fd >= nconns) {
            size_t n = nconns ? nconns : 1024;
            while (n <= (size_t)fd)
                n *= 2;
            conn_t **p = realloc(conns, n * sizeof *p);
            if (!p) {
                close(fd);
                continue;
            }
            memset(p + nconns, 0, (n - nconns) * sizeof *p);
            conns = p;
            nconns = n;
        }
        conn_t *c = calloc(1, sizeof *c);
        SSL *ssl = c ? SSL_new(ctx) : NULL;
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
        if (!ssl || !SSL_set_fd(ssl, fd) || epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
            SSL_free(ssl);
            free(c);
            close(fd);
            continue;
        }
        SSL_set_accept_state(ssl);
        c->ssl = ssl;
        c->handshaking = 1;
        c->events = EPOLLIN;
        conns[fd] = c;
        /* the ClientHello is usually there already */
        if (on_handshake(fd, c) < 0)
            close_conn(fd);
    }
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1", *port = "9000", *cert = NULL, *key = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--host")) host = argv[i + 1];
        else if (!strcmp(argv[i], "--port")) port = argv[i + 1];
        else if (!strcmp(argv[i], "--cert")) cert = argv[i + 1];
        else if (!strcmp(argv[i], "--key")) key = argv[i + 1];
        else if (!strcmp(argv[i], "--framing")) {
            if (!strcmp(argv[i + 1], "line")) framing_line = 1;
            else if (strcmp(argv[i + 1], "len4")) goto usage;
        } else
            goto usage;
    }
    if (argc % 2 == 0 || !cert || !key) {
    usage:
        fprintf(stderr, "usage: c_echo_tls --cert CERT.pem --key KEY.pem [--host H] "
                "[--port P] [--framing len4|line]\n");
        return 2;
    }

    ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx)
        fail_ssl("SSL_CTX_new failed");
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
                     SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_read_ahead(ctx, 1);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1)
        fail_ssl("cannot use the certificate");
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1)
        fail_ssl("cannot use the key");

    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal}; /* no SA_RESTART */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE};
    struct addrinfo *ai;
    int rc = getaddrinfo(host, port, &hints, &ai);
    if (rc) {
        fprintf(stderr, "c_echo_tls: %s: %s\n", host, gai_strerror(rc));
        return 2;
    }
    lfd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0)
        fail("socket");
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, ai->ai_addr, ai->ai_addrlen) < 0)
        fail("bind");
    freeaddrinfo(ai);
    if (listen(lfd, 1024) < 0)
        fail("listen");
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    getsockname(lfd, (struct sockaddr *)&ss, &sl);
    char hbuf[NI_MAXHOST], pbuf[NI_MAXSERV];
    getnameinfo((struct sockaddr *)&ss, sl, hbuf, sizeof hbuf, pbuf, sizeof pbuf,
                NI_NUMERICHOST | NI_NUMERICSERV);

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        fail("epoll_create1");
    struct epoll_event lev = {.events = EPOLLIN, .data.fd = lfd};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &lev) < 0)
        fail("epoll_ctl");
    printf("listening on %s:%s (OpenSSL %s, TLS 1.3)\n", hbuf, pbuf,
           OpenSSL_version(OPENSSL_VERSION_STRING));
    fflush(stdout);

    struct epoll_event evs[256];
    while (!stop) {
        int n = epoll_wait(epfd, evs, 256, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            fail("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == lfd) {
                on_accept();
                continue;
            }
            conn_t *c = (size_t)fd < nconns ? conns[fd] : NULL;
            if (!c)
                continue;
            uint32_t e = evs[i].events;
            if (c->handshaking) {
                if (on_handshake(fd, c) < 0 || (!c->handshaking && on_read(fd, c) < 0))
                    close_conn(fd);
                continue;
            }
            if ((e & EPOLLOUT) && flush_conn(fd, c) < 0) {
                close_conn(fd);
                continue;
            }
            if ((e & (EPOLLIN | EPOLLHUP | EPOLLERR)) && on_read(fd, c) < 0)
                close_conn(fd);
        }
    }
    for (size_t fd = 0; fd < nconns; fd++)
        if (conns[fd])
            close_conn((int)fd);
    close(lfd);
    close(epfd);
    SSL_CTX_free(ctx);
    return 0;
}
