/* http_out.h - the pieces of HTTP/1.1 responses that both the core's native
 * replies and the binding's respond() write: reason phrases, the Date
 * line, status lines and whole refusals.  Pure C: no Python, no system
 * calls, no allocation. */
#ifndef IOCPORT_HTTP_OUT_H
#define IOCPORT_HTTP_OUT_H

#include <stddef.h>
#include <stdint.h>

/* The reason phrase of a status (RFC 9110 section 15), or "" if it has
 * none registered. */
const char *http_reason(int status);

/* "date: Sun, 06 Nov 1994 08:49:37 GMT\r\n" for t (seconds since the
 * epoch): HTTP_DATE_LINE bytes and a NUL into out. */
#define HTTP_DATE_LINE 37
void http_date_line(int64_t t, char out[HTTP_DATE_LINE + 1]);

/* "HTTP/1.1 200 OK\r\n" (status 100..999) into out: its length, at most
 * HTTP_STATUS_LINE_MAX. */
#define HTTP_STATUS_LINE_MAX 64
size_t http_status_line(int status, char *out);

/* The whole answer to a request the parser refused (rc: http_parse()'s
 * negative return): status line, the Date line given, a plain-text body
 * saying why, and connection: close.  Its length, at most
 * HTTP_REFUSAL_MAX. */
#define HTTP_REFUSAL_MAX 256
size_t http_refusal(int rc, const char *date_line, char *out);

#endif
