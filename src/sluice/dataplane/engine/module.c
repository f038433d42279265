/* module.c: the Python face of the native engine (`_engine`); the only file that includes Python.h.
 *
 * Every call that waits for the workers releases the GIL. Tables are built here from Python values
 * (on the calling thread) and handed to the engine, which owns them from then on. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <string.h>

#include "engine.h"
#include "udp.h"

typedef struct {
    PyObject_HEAD struct engine *eng;
    unsigned workers;
} EngineObject;

/* host string + port -> sockaddr; 0, or -1 with a Python exception set. */
static int parse_sockaddr(const char *host, int port, struct sockaddr_storage *ss, socklen_t *len)
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
 *  peers may send a PROXY header, ACCEPT_PREFIX_BYTES each)[, udp max_sessions, udp responses
 *  (0: no limit), udp per_packet, udp hash source_ip]) -> a new table (refs 1). */
static struct eng_table *table_from(EngineObject *self, PyObject *spec, uint32_t backend_slots)
{
    int kind, max_conns, proxy_out, per_packet = 0, source_ip = 0;
    unsigned int udp_max_sessions = 65536, udp_responses = 0;
    PyObject *backends, *accept_from;
    Py_buffer slots;
    double connect_s, idle_s;
    if (!PyArg_ParseTuple(spec, "iO!y*ddiiO|IIpp", &kind, &PyList_Type, &backends, &slots, &connect_s, &idle_s,
                          &max_conns, &proxy_out, &accept_from, &udp_max_sessions, &udp_responses, &per_packet,
                          &source_ip))
        return NULL;
    struct eng_table *t = NULL;
    Py_ssize_t n = PyList_GET_SIZE(backends);
    if (kind < SCHED_MAGLEV || kind > SCHED_RANDOM_TWO || slots.len % 4 != 0 || max_conns < 1 ||
        proxy_out < 0 || proxy_out > 2 || connect_s < 0 || idle_s < 0 || n < 0 || n > (Py_ssize_t)backend_slots ||
        udp_max_sessions < 1) {
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
    goto out;
fail:
    table_unref(t);
    t = NULL;
out:
    PyBuffer_Release(&slots);
    return t;
}

static int check_open(EngineObject *self)
{
    if (self->eng == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "engine closed");
        return -1;
    }
    return 0;
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
        PyObject *one = Py_BuildValue("(LKKKNKK)", (long long)b->active, (unsigned long long)b->flows_total,
                                      (unsigned long long)b->connect_attempts, (unsigned long long)b->connect_ok,
                                      errors, (unsigned long long)b->bytes_to_backend,
                                      (unsigned long long)b->bytes_from_backend);
        if (one == NULL)
            goto fail;
        PyTuple_SET_ITEM(backends, s, one);
    }
    return Py_BuildValue("(LKNNLLN)", (long long)c->active, (unsigned long long)c->flows_total, refused, closed,
                         (long long)c->buffered, (long long)c->peak, backends);
fail:
    Py_XDECREF(refused);
    Py_XDECREF(closed);
    Py_XDECREF(backends);
    return NULL;
}

/* The VIP's counters as Python values: every reason, and the first `used` backend slots (< 0: all). */
static PyObject *read_counters(EngineObject *self, uint32_t id, int worker, int used)
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

/* ------------------------------------------------------------------ methods */

static int Engine_init(EngineObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"workers", "conns_per_worker", "max_vips", NULL};
    unsigned int workers, conns = 32768, max_vips = 256;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "I|II", kwlist, &workers, &conns, &max_vips))
        return -1;
    if (self->eng != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "already initialized");
        return -1;
    }
    if (workers < 1 || workers > 1024 || conns < 1 || max_vips < 1) {
        PyErr_SetString(PyExc_ValueError, "workers 1..1024, conns_per_worker and max_vips >= 1");
        return -1;
    }
    int err = 0;
    struct engine *eng;
    Py_BEGIN_ALLOW_THREADS
    eng = engine_new(workers, conns, max_vips, &err);
    Py_END_ALLOW_THREADS
    if (eng == NULL) {
        errno = -err;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    self->eng = eng;
    self->workers = workers;
    return 0;
}

static void engine_close_now(EngineObject *self)
{
    struct engine *eng = self->eng;
    self->eng = NULL;
    if (eng != NULL) {
        Py_BEGIN_ALLOW_THREADS
        engine_free(eng);
        Py_END_ALLOW_THREADS
    }
}

static void Engine_dealloc(EngineObject *self)
{
    engine_close_now(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Engine_close(EngineObject *self, PyObject *Py_UNUSED(ignored))
{
    engine_close_now(self);
    Py_RETURN_NONE;
}

static PyObject *Engine_vip_add(EngineObject *self, PyObject *args)
{
    const char *host;
    int port, use_splice, udp = 0;
    unsigned int buffer_size, backend_slots, receive_buffer = 0, held_max = 0;
    double quarantine_s = 2.0;
    PyObject *spec;
    if (!PyArg_ParseTuple(args, "sipIIO!|pIId", &host, &port, &use_splice, &buffer_size, &backend_slots,
                          &PyTuple_Type, &spec, &udp, &receive_buffer, &held_max, &quarantine_s))
        return NULL;
    if (!(quarantine_s >= 0 && quarantine_s <= 3600) || receive_buffer > (unsigned)INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "quarantine_s 0..3600, receive_buffer <= INT_MAX");
        return NULL;
    }
    if (check_open(self) < 0)
        return NULL;
    if (backend_slots < 1) {
        PyErr_SetString(PyExc_ValueError, "backend_slots must be >= 1");
        return NULL;
    }
    struct vip_params p = {.use_splice = use_splice, .buffer_size = buffer_size, .backend_slots = backend_slots,
                           .udp = udp, .receive_buffer = receive_buffer, .held_max = held_max,
                           .quarantine_us = (uint64_t)(quarantine_s * 1e6)};
    if (parse_sockaddr(host, port, &p.local, &p.local_len) < 0)
        return NULL;
    struct eng_table *t = table_from(self, spec, backend_slots);
    if (t == NULL)
        return NULL;
    uint32_t id = 0;
    int err;
    Py_BEGIN_ALLOW_THREADS
    err = engine_vip_add(self->eng, &p, t, &id);
    Py_END_ALLOW_THREADS
    if (err < 0) {
        errno = -err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    struct vip *v = engine_vip(self->eng, id);
    int bound = ntohs(v->family == AF_INET6 ? ((struct sockaddr_in6 *)&v->local)->sin6_port
                                            : ((struct sockaddr_in *)&v->local)->sin_port);
    return Py_BuildValue("(Ii)", id, bound);
}

static PyObject *Engine_vip_update(EngineObject *self, PyObject *args)
{
    unsigned int id;
    PyObject *spec;
    if (!PyArg_ParseTuple(args, "IO!", &id, &PyTuple_Type, &spec) || check_open(self) < 0)
        return NULL;
    struct vip *v = engine_vip(self->eng, id);
    if (v == NULL)
        return PyErr_Format(PyExc_KeyError, "no VIP %u", id);
    struct eng_table *t = table_from(self, spec, v->backend_slots);
    if (t == NULL)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    engine_vip_update(self->eng, id, t);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* The VIP id in `args`, then `op(engine, id)` with the GIL released (a control call that waits
 * for every worker); `must_exist`: KeyError for an unknown id. */
static PyObject *on_vip(EngineObject *self, PyObject *args, void (*op)(struct engine *, uint32_t),
                        bool must_exist)
{
    unsigned int id;
    if (!PyArg_ParseTuple(args, "I", &id) || check_open(self) < 0)
        return NULL;
    if (must_exist && engine_vip(self->eng, id) == NULL)
        return PyErr_Format(PyExc_KeyError, "no VIP %u", id);
    Py_BEGIN_ALLOW_THREADS
    op(self->eng, id);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *Engine_stop_accepting(EngineObject *self, PyObject *args)
{
    return on_vip(self, args, engine_stop_accepting, false);
}

static PyObject *Engine_close_backend_flows(EngineObject *self, PyObject *args)
{
    unsigned int id, slot;
    int reason;
    if (!PyArg_ParseTuple(args, "IIi", &id, &slot, &reason) || check_open(self) < 0)
        return NULL;
    if (reason < 0 || reason >= CLOSED__COUNT) {
        PyErr_SetString(PyExc_ValueError, "bad reason");
        return NULL;
    }
    unsigned long n;
    Py_BEGIN_ALLOW_THREADS
    n = engine_close_backend_flows(self->eng, id, slot, (enum closed_reason)reason);
    Py_END_ALLOW_THREADS
    return PyLong_FromUnsignedLong(n);
}

/* (VIP id, worker or -1 for the sum, backend slots in use or -1 for all) of a counters call. */
static int counter_args(EngineObject *self, PyObject *args, unsigned int *id, int *worker, int *used)
{
    if (!PyArg_ParseTuple(args, "I|ii", id, worker, used) || check_open(self) < 0)
        return -1;
    if (*worker >= (int)self->workers) {
        PyErr_SetString(PyExc_ValueError, "no such worker");
        return -1;
    }
    return 0;
}

static PyObject *Engine_counters(EngineObject *self, PyObject *args)
{
    unsigned int id;
    int worker = -1, used = -1;
    if (counter_args(self, args, &id, &worker, &used) < 0)
        return NULL;
    return read_counters(self, id, worker, used);
}

static PyObject *Engine_vip_remove(EngineObject *self, PyObject *args)
{
    unsigned int id;
    if (!PyArg_ParseTuple(args, "I", &id) || check_open(self) < 0)
        return NULL;
    if (engine_vip(self->eng, id) == NULL)
        return PyErr_Format(PyExc_KeyError, "no VIP %u", id);
    Py_BEGIN_ALLOW_THREADS
    engine_vip_remove(self->eng, id);
    Py_END_ALLOW_THREADS
    PyObject *final = read_counters(self, id, -1, -1);
    Py_BEGIN_ALLOW_THREADS
    engine_vip_free(self->eng, id);
    Py_END_ALLOW_THREADS
    return final;
}

/* ------------------------------------------------------------------ UDP VIPs */

static struct vip *udp_vip(EngineObject *self, unsigned int id)
{
    struct vip *v = engine_vip(self->eng, id);
    if (v == NULL || !v->udp) {
        PyErr_Format(PyExc_KeyError, "no UDP VIP %u", id);
        return NULL;
    }
    return v;
}

/* The UDP VIP whose id is the one argument in `args` (NULL with the exception set). */
static struct vip *udp_vip_arg(EngineObject *self, PyObject *args, unsigned int *id)
{
    if (!PyArg_ParseTuple(args, "I", id) || check_open(self) < 0)
        return NULL;
    return udp_vip(self, *id);
}

static PyObject *Engine_udp_counters(EngineObject *self, PyObject *args)
{
    unsigned int id;
    int worker = -1, used = -1;
    if (counter_args(self, args, &id, &worker, &used) < 0)
        return NULL;
    struct vip *v = udp_vip(self, id);
    if (v == NULL)
        return NULL;
    uint32_t slots = v->backend_slots;
    struct udp_counters out;
    memset(&out, 0, sizeof(out));
    out.datagrams_to = PyMem_Calloc(slots, sizeof(uint64_t));
    out.datagrams_from = PyMem_Calloc(slots, sizeof(uint64_t));
    PyObject *dropped = NULL, *errnos = NULL, *datagrams = NULL, *result = NULL;
    if (out.datagrams_to == NULL || out.datagrams_from == NULL) {
        PyErr_NoMemory();
        goto out;
    }
    int err;
    Py_BEGIN_ALLOW_THREADS
    err = engine_udp_counters(self->eng, id, worker, &out);
    Py_END_ALLOW_THREADS
    if (err < 0) {
        PyErr_Format(PyExc_KeyError, "no UDP VIP %u", id);
        goto out;
    }
    uint32_t n = used >= 0 && (uint32_t)used < slots ? (uint32_t)used : slots;
    dropped = PyTuple_New(DROPPED__COUNT);
    errnos = PyDict_New();
    datagrams = PyTuple_New(n);
    if (dropped == NULL || errnos == NULL || datagrams == NULL)
        goto out;
    for (int i = 0; i < DROPPED__COUNT; i++)
        PyTuple_SET_ITEM(dropped, i, PyLong_FromUnsignedLongLong(out.dropped[i]));
    for (int e = 0; e < UDP_ERRNO_MAX; e++) {
        if (out.dropped_errno[e] == 0)
            continue;
        PyObject *k = PyLong_FromLong(e), *c = PyLong_FromUnsignedLongLong(out.dropped_errno[e]);
        int rc = k && c ? PyDict_SetItem(errnos, k, c) : -1;
        Py_XDECREF(k);
        Py_XDECREF(c);
        if (rc < 0)
            goto out;
    }
    for (uint32_t s = 0; s < n; s++) {
        PyObject *pair = Py_BuildValue("(KK)", (unsigned long long)out.datagrams_to[s],
                                       (unsigned long long)out.datagrams_from[s]);
        if (pair == NULL)
            goto out;
        PyTuple_SET_ITEM(datagrams, s, pair);
    }
    result = Py_BuildValue("(LKKOOO)", (long long)out.sessions, (unsigned long long)out.evictions,
                           (unsigned long long)out.rebalanced, dropped, errnos, datagrams);
out:
    Py_XDECREF(dropped);
    Py_XDECREF(errnos);
    Py_XDECREF(datagrams);
    PyMem_Free(out.datagrams_to);
    PyMem_Free(out.datagrams_from);
    return result;
}

static PyObject *Engine_udp_held(EngineObject *self, PyObject *args)
{
    unsigned int id;
    struct vip *v = udp_vip_arg(self, args, &id);
    if (v == NULL)
        return NULL;
    uint32_t cap = v->held_max * self->workers;
    int *fds = PyMem_Calloc(cap ? cap : 1, sizeof(int));
    uint8_t *quarantined = PyMem_Calloc(cap ? cap : 1, 1);
    PyObject *list = NULL;
    if (fds == NULL || quarantined == NULL) {
        PyErr_NoMemory();
        goto out;
    }
    int n;
    Py_BEGIN_ALLOW_THREADS
    n = engine_udp_held(self->eng, id, fds, quarantined, cap);
    Py_END_ALLOW_THREADS
    if (n < 0) {
        PyErr_Format(PyExc_KeyError, "no UDP VIP %u", id);
        goto out;
    }
    if ((uint32_t)n > cap)
        n = (int)cap;
    list = PyList_New(n);
    for (int i = 0; list != NULL && i < n; i++) {
        PyObject *one = Py_BuildValue("(iO)", fds[i], quarantined[i] ? Py_True : Py_False);
        if (one == NULL) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, i, one);
    }
out:
    PyMem_Free(fds);
    PyMem_Free(quarantined);
    return list;
}

static PyObject *Engine_udp_gro(EngineObject *self, PyObject *args)
{
    unsigned int id;
    struct vip *v = udp_vip_arg(self, args, &id);
    if (v == NULL)
        return NULL;
    return PyBool_FromLong(v->gro);
}

/* vip_remove in two steps, so a UDP VIP's counters can be read in between. */
static PyObject *Engine_vip_detach(EngineObject *self, PyObject *args)
{
    return on_vip(self, args, engine_vip_remove, true);
}

static PyObject *Engine_vip_free(EngineObject *self, PyObject *args)
{
    return on_vip(self, args, engine_vip_free, false);
}

static PyObject *Engine_get_workers(EngineObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLong(self->workers);
}

static PyMethodDef Engine_methods[] = {
    {"vip_add", (PyCFunction)Engine_vip_add, METH_VARARGS,
     "vip_add(host, port, use_splice, buffer_size, backend_slots, table) -> (vip id, bound port)"},
    {"vip_update", (PyCFunction)Engine_vip_update, METH_VARARGS, "vip_update(id, table)"},
    {"stop_accepting", (PyCFunction)Engine_stop_accepting, METH_VARARGS, "stop_accepting(id)"},
    {"close_backend_flows", (PyCFunction)Engine_close_backend_flows, METH_VARARGS,
     "close_backend_flows(id, slot, reason index) -> flows closed"},
    {"counters", (PyCFunction)Engine_counters, METH_VARARGS, "counters(id, worker=-1, used=-1) -> the VIP's counters, summed over the workers (or one "
     "worker's), backend slots below `used` only (-1: all)"},
    {"vip_remove", (PyCFunction)Engine_vip_remove, METH_VARARGS,
     "vip_remove(id) -> final counters (every flow closed: shutdown)"},
    {"udp_counters", (PyCFunction)Engine_udp_counters, METH_VARARGS,
     "udp_counters(id, worker=-1, used=-1) -> (sessions, evictions, rebalanced, dropped, {errno: n}, "
     "((datagrams to, from) per backend slot below `used`))"},
    {"udp_held", (PyCFunction)Engine_udp_held, METH_VARARGS,
     "udp_held(id) -> [(fd, quarantined)] of the held upstream sockets, every worker"},
    {"vip_detach", (PyCFunction)Engine_vip_detach, METH_VARARGS,
     "vip_detach(id): vip_remove's first step (every flow closed: shutdown; counters stay readable)"},
    {"vip_free", (PyCFunction)Engine_vip_free, METH_VARARGS, "vip_free(id): vip_remove's last step"},
    {"udp_gro", (PyCFunction)Engine_udp_gro, METH_VARARGS, "udp_gro(id) -> the listen sockets read UDP_GRO"},
    {"close", (PyCFunction)Engine_close, METH_NOARGS, "stop the workers and free everything"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Engine_getset[] = {
    {"workers", (getter)Engine_get_workers, NULL, "worker threads", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sluice.dataplane.engine._engine.Engine",
    .tp_doc = "The native engine: worker threads with their epoll loops.",
    .tp_basicsize = sizeof(EngineObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Engine_init,
    .tp_dealloc = (destructor)Engine_dealloc,
    .tp_methods = Engine_methods,
    .tp_getset = Engine_getset,
};

static PyObject *names_tuple(const char *const *names, int n)
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

/* PyModule_AddObjectRef, stealing `obj` (PyModule_Add is 3.13+). */
static int add_owned(PyObject *m, const char *name, PyObject *obj)
{
    if (obj == NULL)
        return -1;
    int rc = PyModule_AddObjectRef(m, name, obj);
    Py_DECREF(obj);
    return rc;
}

static struct PyModuleDef engine_module = {
    PyModuleDef_HEAD_INIT, "_engine", "sluice's native engine (C): epoll workers and the TCP full proxy.", -1,
    NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__engine(void)
{
    static const char *const sched_names[] = {"maglev", "round_robin", "least_conn", "random_two"};
    if (PyType_Ready(&EngineType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&engine_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Engine", (PyObject *)&EngineType) < 0 ||
        add_owned(m, "REFUSED", names_tuple(refused_names, REFUSED__COUNT)) < 0 ||
        add_owned(m, "CLOSED", names_tuple(closed_names, CLOSED__COUNT)) < 0 ||
        add_owned(m, "CONNECT_ERRORS", names_tuple(connect_error_names, CONNECT_ERROR__COUNT)) < 0 ||
        add_owned(m, "DROPPED", names_tuple(dropped_names, DROPPED__COUNT)) < 0 ||
        add_owned(m, "SCHEDULERS", names_tuple(sched_names, 4)) < 0 ||
        PyModule_AddIntConstant(m, "PROXY_HEADER_MAX", PROXY_HEADER_MAX) < 0 ||
        PyModule_AddIntConstant(m, "PIPE_SIZE", PIPE_SIZE_DEFAULT) < 0 ||
        PyModule_AddIntConstant(m, "POOL_FREE_MAX", POOL_FREE_MAX) < 0 ||
        PyModule_AddIntConstant(m, "COPY_BUFFER_SIZE", COPY_BUFFER_SIZE_DEFAULT) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
