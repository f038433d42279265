/* counters.h: per-worker counter blocks, written by one worker, read (summed) by the control thread. */
#ifndef SLUICE_ENGINE_COUNTERS_H
#define SLUICE_ENGINE_COUNTERS_H

#include <stdint.h>

#include "reasons.h"

/* One writer (the worker owning the block), any reader: relaxed atomic stores and loads, no RMW. */
#define CTR_LOAD(field) __atomic_load_n(&(field), __ATOMIC_RELAXED)
#define CTR_ADD(field, n) __atomic_store_n(&(field), CTR_LOAD(field) + (n), __ATOMIC_RELAXED)
#define CTR_SET(field, v) __atomic_store_n(&(field), (v), __ATOMIC_RELAXED)

/* Fixed-bucket histograms (the bounds of sluice/core/histogram.py in microseconds, checked by a
 * test): counts[i] holds the values in (bounds[i-1], bounds[i]], counts[HIST_BOUNDS] those above. */
#define HIST_BOUNDS 14
struct histogram {
    uint64_t counts[HIST_BOUNDS + 1];
    uint64_t sum_us;
};
extern const uint64_t connect_latency_bounds_us[HIST_BOUNDS]; /* 0.5 ms .. 10 s */
extern const uint64_t flow_duration_bounds_us[HIST_BOUNDS];   /* 1 ms .. 1 day */

/* Count `value_us` in `h` (one writer: the worker owning the block). */
static inline void histogram_observe(struct histogram *h, const uint64_t *bounds, uint64_t value_us)
{
    unsigned i = 0;
    while (i < HIST_BOUNDS && value_us > bounds[i])
        i++;
    CTR_ADD(h->counts[i], 1);
    CTR_ADD(h->sum_us, value_us);
}

/* One backend counter slot (the slot id is stable per backend Endpoint, assigned by Python). */
struct backend_counters {
    int64_t active;              /* flows open now */
    uint64_t flows_total;        /* flows ever established */
    uint64_t connect_attempts;   /* connects started */
    uint64_t connect_ok;         /* connects established (and the first bytes sent) */
    uint64_t connect_errors[CONNECT_ERROR__COUNT];
    uint64_t bytes_to_backend;   /* client bytes written to the backend */
    uint64_t bytes_from_backend; /* backend bytes read */
    struct histogram connect_latency; /* connect() to established (and the first bytes sent) */
};

/* One VIP's counters in one worker. `backends` has `slots` entries (the VIP's backend_slots). */
struct vip_counters {
    int64_t active;       /* established flows now */
    uint64_t flows_total; /* flows ever established: == active + sum(closed) */
    uint64_t refused[REFUSED__COUNT];
    uint64_t closed[CLOSED__COUNT];
    int64_t buffered;     /* bytes held in pipes/buffers now (gauge) */
    int64_t peak;         /* most bytes one direction held (gauge, max) */
    uint64_t retries;     /* backends tried for a client after its first one failed (TCP) */
    struct histogram flow_duration; /* closed flows: accept (TCP) or first datagram (UDP) to close */
    struct backend_counters *backends;
};

/* out = the sum of `n` blocks (relaxed loads); out->backends must hold `slots` entries.
 * buffered sums, peak is the max. */
void vip_counters_sum(const struct vip_counters *const *blocks, unsigned n, uint32_t slots, struct vip_counters *out);

#endif
