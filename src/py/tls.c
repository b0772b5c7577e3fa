/* tls.c - TLS in the binding: an ssl.SSLContext turned into the SSL_CTX it
 * wraps, OpenSSL reached through the ssl module's own copy (lib/ossl.h,
 * loaded once per module), the contexts refused, and ssl's exceptions for
 * failed handshakes. */
#include "py/objects.h"

#include "lib/ktls.h"
#include "lib/ossl.h"

#include <stdlib.h>

/* _ssl.c's PySSLContext begins so, in CPython 3.10 to 3.13; checked
 * against what the context reports through Python (context_ctx). */
typedef struct {
    PyObject_HEAD
    SSL_CTX *ctx;
} SSLContextHead;

/* The module's OpenSSL and ssl's types, loaded at the first TLS use.  0,
 * or -1 with an exception that says why TLS cannot be had. */
static int
tls_load(iocp_state *st)
{
    if (st->ossl != NULL)
        return 0;
    PyObject *ssl = PyImport_ImportModule("ssl");
    if (ssl == NULL) {
        PyErr_Clear();
        PyErr_SetString(PyExc_RuntimeError, "TLS needs Python's ssl module, "
                        "which this Python does not have");
        return -1;
    }
    PyObject *_ssl = PyImport_ImportModule("_ssl");
    PyObject *file = _ssl ? PyObject_GetAttrString(_ssl, "__file__") : NULL;
    const char *path = NULL;   /* built into the interpreter */
    if (file == NULL)
        PyErr_Clear();
    else if ((path = PyUnicode_AsUTF8(file)) == NULL)
        goto fail;
    struct ossl *o = calloc(1, sizeof(*o));
    if (o == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    char err[256];
    if (ossl_load(o, path, err, sizeof(err)) < 0) {
        free(o);
        PyErr_Format(PyExc_RuntimeError, "TLS is not available: %s", err);
        goto fail;
    }
    st->SSLContextType = PyObject_GetAttrString(_ssl, "_SSLContext");
    st->SSLError = PyObject_GetAttrString(ssl, "SSLError");
    st->SSLCertVerificationError = PyObject_GetAttrString(ssl, "SSLCertVerificationError");
    st->ossl = o;
    Py_XDECREF(file);
    Py_DECREF(_ssl);
    Py_DECREF(ssl);
    if (st->SSLContextType == NULL || st->SSLError == NULL ||
        st->SSLCertVerificationError == NULL)
        return -1;
    return 0;
fail:
    Py_XDECREF(file);
    Py_XDECREF(_ssl);
    Py_DECREF(ssl);
    return -1;
}

void
iocp_tls_free(iocp_state *st)
{
    if (st->ossl != NULL) {
        ossl_unload(st->ossl);
        free(st->ossl);
        st->ossl = NULL;
    }
}

/* An attribute of ctx that must be None (a Python callback the native
 * core could not honour: it assumes Python's own SSL sockets). */
static int
refuse_set(PyObject *ctx, const char *attr, const char *what)
{
    PyObject *v = PyObject_GetAttrString(ctx, attr);
    if (v == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError))
            return -1;
        PyErr_Clear();   /* (an older ssl without it) */
    }
    int set = v != NULL && v != Py_None;
    Py_XDECREF(v);
    if (set)
        PyErr_Format(PyExc_ValueError, "this ssl.SSLContext has %s set (%s), "
                     "which iocport's native TLS cannot run: use a context "
                     "without it", attr, what);
    return set ? -1 : 0;
}

/* An int attribute of ctx. */
static int
int_attr(PyObject *ctx, const char *attr, long long *out)
{
    PyObject *v = PyObject_GetAttrString(ctx, attr);
    if (v == NULL)
        return -1;
    *out = PyLong_AsLongLong(v);
    Py_DECREF(v);
    return *out == -1 && PyErr_Occurred() ? -1 : 0;
}

/* The SSL_CTX inside ctx, after checking that it is one (Python's options
 * and verify mode, read through OpenSSL, must be what Python says). */
static SSL_CTX *
context_ctx(iocp_state *st, PyObject *ctx)
{
    SSL_CTX *sc = ((SSLContextHead *)ctx)->ctx;
    long long options, verify;
    if (int_attr(ctx, "options", &options) < 0 || int_attr(ctx, "verify_mode", &verify) < 0)
        return NULL;
    static const int mode_of[3] = {0, 1, 3};   /* CERT_NONE, _OPTIONAL, _REQUIRED */
    if (sc == NULL || verify < 0 || verify > 2 ||
        (long long)st->ossl->SSL_CTX_get_options(sc) != options ||
        (st->ossl->SSL_CTX_get_verify_mode(sc) & 3) != mode_of[verify]) {
        PyErr_SetString(PyExc_RuntimeError, "cannot reach the OpenSSL context of "
                        "this ssl.SSLContext (an ssl module iocport does not know)");
        return NULL;
    }
    return sc;
}

int
iocp_tls_config(iocp_state *st, PyObject *ctx, int server_side,
                struct tls_config *out)
{
    if (tls_load(st) < 0)
        return -1;
    int ok = PyObject_IsInstance(ctx, st->SSLContextType);
    if (ok < 0)
        return -1;
    if (!ok) {
        PyErr_Format(PyExc_TypeError, "ssl must be an ssl.SSLContext or None, "
                     "got %.100s", Py_TYPE(ctx)->tp_name);
        return -1;
    }
    if (refuse_set(ctx, "sni_callback", "a Python callback per handshake") < 0 ||
        refuse_set(ctx, "keylog_filename", "key logging through Python") < 0 ||
        refuse_set(ctx, "_msg_callback", "a Python callback per TLS message") < 0)
        return -1;
    PyObject *side = PyObject_GetAttrString(ctx, "protocol");
    if (side == NULL)
        return -1;
    long long protocol = PyLong_AsLongLong(side);
    Py_DECREF(side);
    if (protocol == -1 && PyErr_Occurred())
        return -1;
    /* ssl.PROTOCOL_TLS_CLIENT is 16, PROTOCOL_TLS_SERVER 17 */
    if (protocol == (server_side ? 16 : 17)) {
        PyErr_Format(PyExc_ValueError, "this ssl.SSLContext is for the %s side "
                     "(%s); %s", server_side ? "client" : "server",
                     server_side ? "PROTOCOL_TLS_CLIENT" : "PROTOCOL_TLS_SERVER",
                     server_side ? "serve with ssl.create_default_context("
                                   "ssl.Purpose.CLIENT_AUTH) or PROTOCOL_TLS_SERVER"
                                 : "connect with ssl.create_default_context() or "
                                   "PROTOCOL_TLS_CLIENT");
        return -1;
    }
    memset(out, 0, sizeof(*out));
    out->o = st->ossl;
    if ((out->ctx = context_ctx(st, ctx)) == NULL)
        return -1;
    /* kTLS is tried after each handshake (the first "no tls ULP" from the
     * kernel ends that); its TLS 1.3 keys need our keylog callback on the
     * context, which leaves every SSL but ours alone. */
    out->ktls = ktls_prepare_ctx(st->ossl, out->ctx) == 0;
    if (!server_side) {
        PyObject *v = PyObject_GetAttrString(ctx, "check_hostname");
        if (v == NULL || (out->check_host = PyObject_IsTrue(v)) < 0) {
            Py_XDECREF(v);
            return -1;
        }
        Py_DECREF(v);
    }
    return 0;
}

PyObject *
iocp_tls_error(iocp_state *st, const char *why, long verify)
{
    PyObject *type = verify ? st->SSLCertVerificationError : st->SSLError;
    PyObject *exc = PyObject_CallFunction(type, "s", why);
    if (exc == NULL)
        return NULL;
    if (verify) {
        const char *msg = st->ossl->X509_verify_cert_error_string(verify);
        PyObject *code = PyLong_FromLong(verify);
        PyObject *text = PyUnicode_FromString(msg);
        int rc = code && text &&
                 PyObject_SetAttrString(exc, "verify_code", code) == 0 &&
                 PyObject_SetAttrString(exc, "verify_message", text) == 0 ? 0 : -1;
        Py_XDECREF(code);
        Py_XDECREF(text);
        if (rc < 0) {
            Py_DECREF(exc);
            return NULL;
        }
    }
    return exc;
}

PyObject *
iocp_tls_info(const struct tls_info *i)
{
    PyObject *cipher = Py_None;
    if (i->cipher != NULL)
        cipher = Py_BuildValue("(ssi)", i->cipher, i->cipher_version ? i->cipher_version : "",
                               i->bits);
    else
        Py_INCREF(cipher);
    if (cipher == NULL)
        return NULL;
    PyObject *alpn = i->alpn_len
        ? PyUnicode_DecodeLatin1((const char *)i->alpn, i->alpn_len, NULL)
        : Py_NewRef(Py_None);
    PyObject *cert = i->peer_der
        ? PyBytes_FromStringAndSize((const char *)i->peer_der, (Py_ssize_t)i->peer_len)
        : Py_NewRef(Py_None);
    PyObject *r = NULL;
    if (alpn != NULL && cert != NULL)
        r = Py_BuildValue("(sOOO)", i->version, cipher, alpn, cert);
    Py_DECREF(cipher);
    Py_XDECREF(alpn);
    Py_XDECREF(cert);
    return r;
}

PyObject *
iocp_tls_check(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2)
        return PyErr_Format(PyExc_TypeError, "tls_check() takes 2 arguments "
                            "(ctx, server_side), got %zd", nargs);
    int server_side = PyObject_IsTrue(args[1]);
    struct tls_config cfg;
    if (server_side < 0 ||
        iocp_tls_config(iocp_get_state(module), args[0], server_side, &cfg) < 0)
        return NULL;
    Py_RETURN_NONE;
}
