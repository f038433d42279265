/* module.h: what the files of the Python module share: module.c (the module and its Engine type),
 * module_convert.c (Python values <-> the engine's structs) and module_udp.c (the UDP methods).
 *
 * Python.h is included here and nowhere else; only module*.c include this header (engine.h). */
#ifndef SLUICE_ENGINE_MODULE_H
#define SLUICE_ENGINE_MODULE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "engine.h"

typedef struct {
    PyObject_HEAD struct engine *eng;
    unsigned workers;
} EngineObject;

/* module_convert.c */
/* host string + port -> sockaddr; 0, or -1 with a Python exception set. */
int parse_sockaddr(const char *host, int port, struct sockaddr_storage *ss, socklen_t *len);
/* A table spec (the tuple module_convert.c describes) -> a new table (refs 1); NULL with an exception set. */
struct eng_table *table_from(EngineObject *self, PyObject *spec, uint32_t backend_slots);
/* The VIP's counters as Python values: every reason, and the first `used` backend slots (< 0: all). */
PyObject *read_counters(EngineObject *self, uint32_t id, int worker, int used);
/* A tuple of the strings names[0 .. n - 1] (a reason table), NULL with an exception set. */
PyObject *names_tuple(const char *const *names, int n);
PyObject *bounds_tuple(const uint64_t *bounds);

/* module.c */
int check_open(EngineObject *self); /* 0, or -1 with RuntimeError set when the engine was closed */
/* (VIP id, worker or -1 for the sum, backend slots in use or -1 for all) of a counters call. */
int counter_args(EngineObject *self, PyObject *args, unsigned int *id, int *worker, int *used);

/* module_udp.c: the UDP VIP methods of Engine */
PyObject *Engine_udp_counters(EngineObject *self, PyObject *args);
PyObject *Engine_udp_held(EngineObject *self, PyObject *args);
PyObject *Engine_udp_gro(EngineObject *self, PyObject *args);

/* module_flowlog.c: the flow log methods of Engine */
PyObject *Engine_flowlog_enable(EngineObject *self, PyObject *args);
PyObject *Engine_flowlog_drain(EngineObject *self, PyObject *args);

#endif
