/* http_out.c - response pieces shared by native replies and respond() (the
 * API in http_out.h). */
#include "lib/http_out.h"
#include "lib/http.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

const char *
http_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 203: return "Non-Authoritative Information";
    case 204: return "No Content";
    case 205: return "Reset Content";
    case 206: return "Partial Content";
    case 300: return "Multiple Choices";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 402: return "Payment Required";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 407: return "Proxy Authentication Required";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 416: return "Range Not Satisfiable";
    case 417: return "Expectation Failed";
    case 421: return "Misdirected Request";
    case 422: return "Unprocessable Content";
    case 426: return "Upgrade Required";
    case 428: return "Precondition Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default:  return "";
    }
}

void
http_date_line(int64_t t, char out[HTTP_DATE_LINE + 1])
{
    static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    time_t tt = (time_t)t;
    struct tm tm;
    if (gmtime_r(&tt, &tm) == NULL || tm.tm_year + 1900 > 9999 ||
        tm.tm_year + 1900 < 0)
        memset(&tm, 0, sizeof tm);   /* (out of range: 1900-01-00) */
    snprintf(out, HTTP_DATE_LINE + 1, "date: %s, %02d %s %04d %02d:%02d:%02d GMT\r\n",
             days[tm.tm_wday % 7], tm.tm_mday, months[tm.tm_mon % 12],
             tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

size_t
http_status_line(int status, char *out)
{
    if (status < 100 || status > 999)
        status = 500;
    int n = snprintf(out, HTTP_STATUS_LINE_MAX, "HTTP/1.1 %d %s\r\n", status,
                     http_reason(status));
    return n < 0 ? 0 : (size_t)n < HTTP_STATUS_LINE_MAX ? (size_t)n
                                                       : HTTP_STATUS_LINE_MAX - 1;
}

size_t
http_refusal(int rc, const char *date_line, char *out)
{
    const char *why = http_error_reason(rc);
    size_t n = http_status_line(http_error_status(rc), out);
    int k = snprintf(out + n, HTTP_REFUSAL_MAX - n,
                     "%scontent-type: text/plain; charset=utf-8\r\n"
                     "content-length: %zu\r\nconnection: close\r\n\r\n%s\n",
                     date_line, strlen(why) + 1, why);
    if (k < 0)
        return n;
    return n + (size_t)k < HTTP_REFUSAL_MAX ? n + (size_t)k : HTTP_REFUSAL_MAX - 1;
}
