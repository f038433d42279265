/* counters.h: per-worker counter blocks, written by one worker, read (summed) by the control thread. */
#ifndef SLUICE_ENGINE_COUNTERS_H
#define SLUICE_ENGINE_COUNTERS_H

#include <stdint.h>

#include "reasons.h"

/* One writer (the worker owning the block), any reader: relaxed atomic stores and loads, no RMW. */
#define CTR_LOAD(field) __atomic_load_n(&(field), __ATOMIC_RELAXED)
#define CTR_ADD(field, n) __atomic_store_n(&(field), CTR_LOAD(field) + (n), __ATOMIC_RELAXED)
#define CTR_SET(field, v) __atomic_store_n(&(field), (v), __ATOMIC_RELAXED)

/* One backend counter slot (the slot id is stable per backend Endpoint, assigned by Python). */
struct backend_counters {
    int64_t active;              /* flows open now */
    uint64_t flows_total;        /* flows ever established */
    uint64_t connect_attempts;   /* connects started */
    uint64_t connect_ok;         /* connects established (and the first bytes sent) */
    uint64_t connect_errors[CONNECT_ERROR__COUNT];
    uint64_t bytes_to_backend;   /* client bytes written to the backend */
    uint64_t bytes_from_backend; /* backend bytes read */
};

/* One VIP's counters in one worker. `backends` has `slots` entries (the VIP's backend_slots). */
struct vip_counters {
    int64_t active;       /* established flows now */
    uint64_t flows_total; /* flows ever established: == active + sum(closed) */
    uint64_t refused[REFUSED__COUNT];
    uint64_t closed[CLOSED__COUNT];
    int64_t buffered;     /* bytes held in pipes/buffers now (gauge) */
    int64_t peak;         /* most bytes one direction held (gauge, max) */
    struct backend_counters *backends;
};

/* out = the sum of `n` blocks (relaxed loads); out->backends must hold `slots` entries.
 * buffered sums, peak is the max. */
void vip_counters_sum(const struct vip_counters *const *blocks, unsigned n, uint32_t slots, struct vip_counters *out);

#endif
