/* counters.c: the reason name tables and the cross-worker sum of the counter blocks. */
#include "counters.h"

#include <string.h>

#define REASON_NAME(name, str) str,
const char *const refused_names[REFUSED__COUNT] = {REFUSED_REASONS(REASON_NAME)};
const char *const closed_names[CLOSED__COUNT] = {CLOSED_REASONS(REASON_NAME)};
const char *const connect_error_names[CONNECT_ERROR__COUNT] = {CONNECT_ERRORS(REASON_NAME)};

const uint64_t connect_latency_bounds_us[HIST_BOUNDS] = {
    500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000,
};
const uint64_t flow_duration_bounds_us[HIST_BOUNDS] = {
    1000ULL,       10000ULL,       100000ULL,      500000ULL,      1000000ULL,
    5000000ULL,    10000000ULL,    30000000ULL,    60000000ULL,    300000000ULL,
    600000000ULL,  1800000000ULL,  3600000000ULL,  86400000000ULL,
};

static void histogram_add(struct histogram *out, const struct histogram *h)
{
    for (int i = 0; i <= HIST_BOUNDS; i++)
        out->counts[i] += CTR_LOAD(h->counts[i]);
    out->sum_us += CTR_LOAD(h->sum_us);
}

void vip_counters_sum(const struct vip_counters *const *blocks, unsigned n, uint32_t slots, struct vip_counters *out)
{
    struct backend_counters *ob = out->backends;
    memset(out, 0, sizeof(*out));
    memset(ob, 0, sizeof(*ob) * slots);
    out->backends = ob;
    for (unsigned w = 0; w < n; w++) {
        const struct vip_counters *c = blocks[w];
        out->active += CTR_LOAD(c->active);
        out->flows_total += CTR_LOAD(c->flows_total);
        for (int r = 0; r < REFUSED__COUNT; r++)
            out->refused[r] += CTR_LOAD(c->refused[r]);
        for (int r = 0; r < CLOSED__COUNT; r++)
            out->closed[r] += CTR_LOAD(c->closed[r]);
        out->buffered += CTR_LOAD(c->buffered);
        out->retries += CTR_LOAD(c->retries);
        histogram_add(&out->flow_duration, &c->flow_duration);
        int64_t peak = CTR_LOAD(c->peak);
        if (peak > out->peak)
            out->peak = peak;
        for (uint32_t s = 0; s < slots; s++) {
            const struct backend_counters *b = &c->backends[s];
            ob[s].active += CTR_LOAD(b->active);
            ob[s].flows_total += CTR_LOAD(b->flows_total);
            ob[s].connect_attempts += CTR_LOAD(b->connect_attempts);
            ob[s].connect_ok += CTR_LOAD(b->connect_ok);
            for (int e = 0; e < CONNECT_ERROR__COUNT; e++)
                ob[s].connect_errors[e] += CTR_LOAD(b->connect_errors[e]);
            ob[s].bytes_to_backend += CTR_LOAD(b->bytes_to_backend);
            ob[s].bytes_from_backend += CTR_LOAD(b->bytes_from_backend);
            histogram_add(&ob[s].connect_latency, &b->connect_latency);
        }
    }
}
