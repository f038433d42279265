/* The Maglev population loop (NSDI'16, section 3.4) in C: sluice.core._maglev.populate.
 *
 * Exactly the algorithm of _populate_reference in maglev.py (tests check that both give the same
 * table): rounds r = 0, 1, ...; in each round the backends with a turn (weight as turn frequency:
 * backend i plays in round r iff floor((r+1)*w_i/W) > floor(r*w_i/W)) take, in index order, their
 * next preferred empty slot, until the table is full. A backend's preferences are
 * offset_i, offset_i + skip_i, offset_i + 2*skip_i, ... (mod M), walked incrementally.
 * Pure computation: no I/O, the GIL is released while it runs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>

static int fill(const int64_t *offsets, const int64_t *skips, const int64_t *weights, Py_ssize_t n,
                int64_t size, int32_t *slots)
{
    int64_t wmax = 0, filled = 0, r = 0;
    int64_t *next = malloc(sizeof(int64_t) * (n ? n : 1));
    if (!next)
        return -1;
    for (int64_t s = 0; s < size; s++)
        slots[s] = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        next[i] = offsets[i];
        if (weights[i] > wmax)
            wmax = weights[i];
    }
    while (wmax > 0 && filled < size) {
        for (Py_ssize_t i = 0; i < n && filled < size; i++) {
            int64_t w = weights[i];
            if ((r + 1) * w / wmax == r * w / wmax)
                continue; /* no turn for backend i in round r */
            int64_t c = next[i], skip = skips[i];
            while (slots[c] >= 0) {
                c += skip;
                if (c >= size)
                    c -= size;
            }
            slots[c] = (int32_t)i;
            filled++;
            c += skip;
            next[i] = c >= size ? c - size : c;
        }
        r++;
    }
    free(next);
    return 0;
}

static PyObject *populate(PyObject *self, PyObject *args)
{
    Py_buffer off, skip, weight, out;
    Py_ssize_t size;
    PyObject *result = NULL;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*y*nw*", &off, &skip, &weight, &size, &out))
        return NULL;
    Py_ssize_t n = off.len / (Py_ssize_t)sizeof(int64_t);
    if (off.len != skip.len || off.len != weight.len || off.len % (Py_ssize_t)sizeof(int64_t) ||
        out.len != size * (Py_ssize_t)sizeof(int32_t) || size < 2 || n > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "populate: buffers of mismatched size");
        goto done;
    }
    const int64_t *o = off.buf, *k = skip.buf, *w = weight.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (o[i] < 0 || o[i] >= size || k[i] < 1 || k[i] >= size || w[i] < 0) {
            PyErr_SetString(PyExc_ValueError, "populate: offset, skip or weight out of range");
            goto done;
        }
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = fill(o, k, w, n, size, out.buf);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        PyErr_NoMemory();
        goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&off);
    PyBuffer_Release(&skip);
    PyBuffer_Release(&weight);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"populate", populate, METH_VARARGS,
     "populate(offsets: int64[n], skips: int64[n], weights: int64[n], size, out: int32[size])"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_maglev", "Maglev population loop in C.", -1, methods};

PyMODINIT_FUNC PyInit__maglev(void) { return PyModule_Create(&module); }
