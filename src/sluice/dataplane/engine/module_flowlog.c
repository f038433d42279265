/* module_flowlog.c: the flow log methods of the Python Engine type (module.c): switch on, drain. */
#include "module.h"

#include "flowlog.h"

#define FLOWLOG_DRAIN_MAX 65536 /* records one drain call returns at most */

PyObject *Engine_flowlog_enable(EngineObject *self, PyObject *args)
{
    unsigned int id;
    int on;
    if (!PyArg_ParseTuple(args, "Ip", &id, &on) || check_open(self) < 0)
        return NULL;
    int err;
    Py_BEGIN_ALLOW_THREADS
    err = engine_flowlog_enable(self->eng, id, on != 0);
    Py_END_ALLOW_THREADS
    if (err == -ENOMEM)
        return PyErr_NoMemory();
    if (err < 0)
        return PyErr_Format(PyExc_KeyError, "no VIP %u", id);
    Py_RETURN_NONE;
}

/* One record as (start_us, duration_us, (client family, client ip bytes, port), (listen family, ip,
 * port), backend slot, udp, reason index, retries, bytes to, bytes from, datagrams to, datagrams from). */
static PyObject *record_to_python(const struct flow_record *r)
{
    int client_len = r->client_family == 6 ? 16 : 4, listen_len = r->listen_family == 6 ? 16 : 4;
    return Py_BuildValue("(KK(By#H)(By#H)iBBBKKKK)", (unsigned long long)r->start_us,
                         (unsigned long long)r->duration_us, r->client_family, (const char *)r->client,
                         (Py_ssize_t)client_len, r->client_port, r->listen_family, (const char *)r->listen,
                         (Py_ssize_t)listen_len, r->listen_port, (int)r->slot, r->udp, r->reason, r->retries,
                         (unsigned long long)r->bytes_to_backend, (unsigned long long)r->bytes_from_backend,
                         (unsigned long long)r->datagrams_to_backend,
                         (unsigned long long)r->datagrams_from_backend);
}

PyObject *Engine_flowlog_drain(EngineObject *self, PyObject *args)
{
    unsigned int id, cap = FLOWLOG_DRAIN_MAX;
    if (!PyArg_ParseTuple(args, "I|I", &id, &cap) || check_open(self) < 0)
        return NULL;
    if (cap == 0 || cap > FLOWLOG_DRAIN_MAX)
        cap = FLOWLOG_DRAIN_MAX;
    struct flow_record *out = PyMem_Malloc(sizeof(*out) * cap);
    if (out == NULL)
        return PyErr_NoMemory();
    PyObject *list = NULL, *result = NULL;
    uint64_t dropped;
    int n;
    Py_BEGIN_ALLOW_THREADS
    n = engine_flowlog_drain(self->eng, id, out, cap, &dropped);
    Py_END_ALLOW_THREADS
    if (n < 0) {
        PyErr_Format(PyExc_KeyError, "no VIP %u", id);
        goto out;
    }
    list = PyList_New(n);
    if (list == NULL)
        goto out;
    for (int i = 0; i < n; i++) {
        PyObject *item = record_to_python(&out[i]);
        if (item == NULL)
            goto out;
        PyList_SET_ITEM(list, i, item);
    }
    result = Py_BuildValue("(OK)", list, (unsigned long long)dropped);
out:
    Py_XDECREF(list);
    PyMem_Free(out);
    return result;
}
