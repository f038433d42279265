/* module.c: the Python face of the native engine (`_engine`): the module and its Engine type.
 *
 * Python.h only in the module's files (module.h, module*.c); the engine's core knows nothing of
 * Python. Every call that waits for the workers releases the GIL. Python values become engine
 * structs in module_convert.c; the UDP methods are in module_udp.c. */
#include "module.h"

#include <arpa/inet.h>

#include "flowlog.h"
#include "udp.h"

int check_open(EngineObject *self)
{
    if (self->eng == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "engine closed");
        return -1;
    }
    return 0;
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
int counter_args(EngineObject *self, PyObject *args, unsigned int *id, int *worker, int *used)
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
    {"flowlog_enable", (PyCFunction)Engine_flowlog_enable, METH_VARARGS, "flowlog_enable(id, on): the VIP's flow log"},
    {"flowlog_drain", (PyCFunction)Engine_flowlog_drain, METH_VARARGS,
     "flowlog_drain(id, max=65536) -> ([flow record tuple], records dropped by full rings so far)"},
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
        add_owned(m, "QUIC", names_tuple(quic_counter_names, QUIC__COUNT)) < 0 ||
        add_owned(m, "SCHEDULERS", names_tuple(sched_names, 4)) < 0 ||
        add_owned(m, "CONNECT_LATENCY_BOUNDS_US", bounds_tuple(connect_latency_bounds_us)) < 0 ||
        add_owned(m, "FLOW_DURATION_BOUNDS_US", bounds_tuple(flow_duration_bounds_us)) < 0 ||
        PyModule_AddIntConstant(m, "PROXY_HEADER_MAX", PROXY_HEADER_MAX) < 0 ||
        PyModule_AddIntConstant(m, "PIPE_SIZE", PIPE_SIZE_DEFAULT) < 0 ||
        PyModule_AddIntConstant(m, "POOL_FREE_MAX", POOL_FREE_MAX) < 0 ||
        PyModule_AddIntConstant(m, "COPY_BUFFER_SIZE", COPY_BUFFER_SIZE_DEFAULT) < 0 ||
        PyModule_AddIntConstant(m, "FLOWLOG_RING", FLOWLOG_RING) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
