/* module_udp.c: the UDP VIP methods of the Python Engine type (module.c): counters, held sockets, GRO. */
#include "module.h"

#include <string.h>

#include "udp.h"

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

PyObject *Engine_udp_counters(EngineObject *self, PyObject *args)
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
    result = Py_BuildValue("(LKKOOOKK)", (long long)out.sessions, (unsigned long long)out.evictions,
                           (unsigned long long)out.rebalanced, dropped, errnos, datagrams,
                           (unsigned long long)out.quic[QUIC_ROUTED], (unsigned long long)out.quic[QUIC_FALLBACK]);
out:
    Py_XDECREF(dropped);
    Py_XDECREF(errnos);
    Py_XDECREF(datagrams);
    PyMem_Free(out.datagrams_to);
    PyMem_Free(out.datagrams_from);
    return result;
}

PyObject *Engine_udp_held(EngineObject *self, PyObject *args)
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

PyObject *Engine_udp_gro(EngineObject *self, PyObject *args)
{
    unsigned int id;
    struct vip *v = udp_vip_arg(self, args, &id);
    if (v == NULL)
        return NULL;
    return PyBool_FromLong(v->gro);
}
