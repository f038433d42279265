/* module_convert.c: Python values <-> the engine's structs: addresses, table specs, counters, names.
 *
 * Tables are built here from Python values (on the calling thread) and handed to the engine, which
 * owns them from then on. */
#include "module.h"
#include "quic.h"

#include <arpa/inet.h>
#include <string.h>

/* host string + port -> sockaddr; 0, or -1 with a Python exception set. */
int parse_sockaddr(const char *host, int port, struct sockaddr_storage *ss, socklen_t *len)
{
    memset(ss, 0, sizeof(*ss));
    if (port < 0 || port > 65535) {
        PyErr_Format(PyExc_ValueError, "port out of range: %d", port);
        return -1;
    }
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        *len = sizeof(*a4);
        return 0;
    }
    if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        *len = sizeof(*a6);
        return 0;
    }
    PyErr_Format(PyExc_ValueError, "not an IP address: %s", host);
    return -1;
}

/* (kind, backends[(host, port, weight, slot)], maglev slots (int32 bytes), connect_timeout s,
 *  idle_timeout s, max_connections, proxy_out 0/1/2, accept_proxy (False, or bytes: the prefixes whose
 *  peers may send a PROXY header, ACCEPT_PREFIX_BYTES each), hash_key (b"": unkeyed, or the 16 secret
 *  bytes)[, udp max_sessions, udp responses (0: no limit), udp per_packet, udp hash source_ip, udp
 *  max_queue_delay s (0: none), udp quic server_id_bits (0: off), quic server ids (n uint32 in config
 *  order, native order; 0: not routable)]) -> a new table (refs 1). */
struct eng_table *table_from(EngineObject *self, PyObject *spec, uint32_t backend_slots)
{
    int kind, max_conns, proxy_out, per_packet = 0, source_ip = 0;
    unsigned int udp_max_sessions = 65536, udp_responses = 0, quic_bits = 0;
    const char *quic_ids = NULL;
    Py_ssize_t quic_ids_len = 0;
    PyObject *backends, *accept_from;
    Py_buffer slots;
    double connect_s, idle_s, queue_delay_s = 0;
    const char *hash_key;
    Py_ssize_t hash_key_len;
    if (!PyArg_ParseTuple(spec, "iO!y*ddiiOy#|IIppdIy#", &kind, &PyList_Type, &backends, &slots, &connect_s, &idle_s,
                          &max_conns, &proxy_out, &accept_from, &hash_key, &hash_key_len, &udp_max_sessions,
                          &udp_responses, &per_packet, &source_ip, &queue_delay_s, &quic_bits, &quic_ids, &quic_ids_len))
        return NULL;
    struct eng_table *t = NULL;
    Py_ssize_t n = PyList_GET_SIZE(backends);
    if (kind < SCHED_MAGLEV || kind > SCHED_RANDOM_TWO || slots.len % 4 != 0 || max_conns < 1 ||
        proxy_out < 0 || proxy_out > 2 || connect_s < 0 || idle_s < 0 || n < 0 || n > (Py_ssize_t)backend_slots ||
        udp_max_sessions < 1 || (hash_key_len != 0 && hash_key_len != 16) ||
        !(queue_delay_s >= 0 && queue_delay_s <= 3600) || quic_bits > QUIC_MAX_SERVER_ID_BITS ||
        (quic_ids != NULL && quic_ids_len != n * (Py_ssize_t)sizeof(uint32_t))) {
        PyErr_SetString(PyExc_ValueError, "bad table");
        goto out;
    }
    uint32_t m = (uint32_t)(slots.len / 4);
    t = table_new((uint32_t)n, m, self->workers);
    if (t == NULL) {
        PyErr_NoMemory();
        goto out;
    }
    t->sched.kind = (enum sched_kind)kind;
    if (hash_key_len == 16) { /* pick.h: k0, k1 = bytes 0..7, 8..15 little-endian */
        t->sched.keyed = 1;
        for (int i = 7; i >= 0; i--) {
            t->sched.hash_key.k0 = t->sched.hash_key.k0 << 8 | (uint8_t)hash_key[i];
            t->sched.hash_key.k1 = t->sched.hash_key.k1 << 8 | (uint8_t)hash_key[8 + i];
        }
    }
    memcpy(t->slots, slots.buf, (size_t)slots.len);
    for (uint32_t i = 0; i < m; i++) {
        if (t->slots[i] < -1 || t->slots[i] >= (int32_t)n) {
            PyErr_SetString(PyExc_ValueError, "maglev slot out of range");
            goto fail;
        }
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *host;
        int port;
        unsigned int weight, slot;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(backends, i), "siII", &host, &port, &weight, &slot))
            goto fail;
        if (slot >= backend_slots) {
            PyErr_SetString(PyExc_ValueError, "backend slot out of range");
            goto fail;
        }
        if (parse_sockaddr(host, port, &t->backends[i].addr, &t->backends[i].addrlen) < 0)
            goto fail;
        t->backends[i].slot = slot;
        t->weights[i] = weight;
    }
    t->connect_timeout_us = (uint64_t)(connect_s * 1e6);
    t->idle_timeout_us = (uint64_t)(idle_s * 1e6);
    t->max_connections = (uint32_t)max_conns;
    t->proxy_out = proxy_out;
    if (PyBytes_Check(accept_from)) {
        Py_ssize_t len = PyBytes_GET_SIZE(accept_from);
        const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(accept_from);
        if (len % ACCEPT_PREFIX_BYTES != 0 || len / ACCEPT_PREFIX_BYTES > ACCEPT_FROM_MAX) {
            PyErr_SetString(PyExc_ValueError, "bad accept_proxy prefixes");
            goto fail;
        }
        for (Py_ssize_t i = 0; i < len / ACCEPT_PREFIX_BYTES; i++, p += ACCEPT_PREFIX_BYTES) {
            struct accept_prefix *a = &t->accept_from[i];
            a->family = p[0];
            a->len = p[1];
            memcpy(a->ip, p + 2, 16);
            if ((a->family != 4 && a->family != 6) || a->len > (a->family == 4 ? 32 : 128)) {
                PyErr_SetString(PyExc_ValueError, "bad accept_proxy prefix");
                goto fail;
            }
        }
        t->n_accept_from = (uint32_t)(len / ACCEPT_PREFIX_BYTES);
        t->accept_proxy = 1;
    } else if (PyObject_IsTrue(accept_from)) { /* (or -1: an error) a header from anyone is never believed */
        PyErr_SetString(PyExc_ValueError, "accept_proxy needs the prefixes allowed to send a header");
        goto fail;
    }
    t->udp_max_sessions = udp_max_sessions;
    t->udp_responses = udp_responses;
    t->udp_per_packet = per_packet;
    t->udp_source_ip = source_ip;
    t->udp_max_queue_delay_ns = (uint64_t)(queue_delay_s * 1e9);
    t->udp_quic_bits = quic_bits;
    for (Py_ssize_t i = 0; quic_ids != NULL && i < n; i++)
        memcpy(&t->backends[i].server_id, quic_ids + i * sizeof(uint32_t), sizeof(uint32_t));
    goto out;
fail:
    table_unref(t);
    t = NULL;
out:
    PyBuffer_Release(&slots);
    return t;
}

/* A histogram as ((count per bucket, ...), sum in microseconds). */
static PyObject *histogram_to_python(const struct histogram *h)
{
    PyObject *counts = PyTuple_New(HIST_BOUNDS + 1);
    if (counts == NULL)
        return NULL;
    for (int i = 0; i <= HIST_BOUNDS; i++)
        PyTuple_SET_ITEM(counts, i, PyLong_FromUnsignedLongLong(h->counts[i]));
    return Py_BuildValue("(NK)", counts, (unsigned long long)h->sum_us);
}

/* A table of bucket bounds (microseconds) as a tuple of ints. */
PyObject *bounds_tuple(const uint64_t *bounds)
{
    PyObject *t = PyTuple_New(HIST_BOUNDS);
    if (t == NULL)
        return NULL;
    for (int i = 0; i < HIST_BOUNDS; i++)
        PyTuple_SET_ITEM(t, i, PyLong_FromUnsignedLongLong(bounds[i]));
    return t;
}

static PyObject *counters_to_python(const struct vip_counters *c, uint32_t slots)
{
    PyObject *refused = PyTuple_New(REFUSED__COUNT), *closed = PyTuple_New(CLOSED__COUNT);
    PyObject *backends = PyTuple_New(slots);
    if (refused == NULL || closed == NULL || backends == NULL)
        goto fail;
    for (int i = 0; i < REFUSED__COUNT; i++)
        PyTuple_SET_ITEM(refused, i, PyLong_FromUnsignedLongLong(c->refused[i]));
    for (int i = 0; i < CLOSED__COUNT; i++)
        PyTuple_SET_ITEM(closed, i, PyLong_FromUnsignedLongLong(c->closed[i]));
    for (uint32_t s = 0; s < slots; s++) {
        const struct backend_counters *b = &c->backends[s];
        PyObject *errors = PyTuple_New(CONNECT_ERROR__COUNT);
        if (errors == NULL)
            goto fail;
        for (int e = 0; e < CONNECT_ERROR__COUNT; e++)
            PyTuple_SET_ITEM(errors, e, PyLong_FromUnsignedLongLong(b->connect_errors[e]));
        PyObject *latency = histogram_to_python(&b->connect_latency);
        if (latency == NULL) {
            Py_DECREF(errors);
            goto fail;
        }
        PyObject *one = Py_BuildValue("(LKKKNKKN)", (long long)b->active, (unsigned long long)b->flows_total,
                                      (unsigned long long)b->connect_attempts, (unsigned long long)b->connect_ok,
                                      errors, (unsigned long long)b->bytes_to_backend,
                                      (unsigned long long)b->bytes_from_backend, latency);
        if (one == NULL)
            goto fail;
        PyTuple_SET_ITEM(backends, s, one);
    }
    PyObject *duration = histogram_to_python(&c->flow_duration);
    if (duration == NULL)
        goto fail;
    return Py_BuildValue("(LKNNLLNKN)", (long long)c->active, (unsigned long long)c->flows_total, refused, closed,
                         (long long)c->buffered, (long long)c->peak, backends, (unsigned long long)c->retries,
                         duration);
fail:
    Py_XDECREF(refused);
    Py_XDECREF(closed);
    Py_XDECREF(backends);
    return NULL;
}

/* The VIP's counters as Python values: every reason, and the first `used` backend slots (< 0: all). */
PyObject *read_counters(EngineObject *self, uint32_t id, int worker, int used)
{
    struct vip *v = engine_vip(self->eng, id);
    if (v == NULL) {
        PyErr_Format(PyExc_KeyError, "no VIP %u", id);
        return NULL;
    }
    uint32_t slots = v->backend_slots;
    struct vip_counters out;
    out.backends = PyMem_Calloc(slots ? slots : 1, sizeof(*out.backends));
    if (out.backends == NULL)
        return PyErr_NoMemory();
    int err;
    Py_BEGIN_ALLOW_THREADS
    err = engine_vip_counters(self->eng, id, worker, slots, &out);
    Py_END_ALLOW_THREADS
    if (err < 0) {
        PyMem_Free(out.backends);
        return PyErr_Format(PyExc_KeyError, "no VIP %u", id);
    }
    PyObject *result = counters_to_python(&out, used >= 0 && (uint32_t)used < slots ? (uint32_t)used : slots);
    PyMem_Free(out.backends);
    return result;
}

PyObject *names_tuple(const char *const *names, int n)
{
    PyObject *t = PyTuple_New(n);
    if (t == NULL)
        return NULL;
    for (int i = 0; i < n; i++) {
        PyObject *s = PyUnicode_FromString(names[i]);
        if (s == NULL) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, i, s);
    }
    return t;
}
