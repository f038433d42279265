/* counters.c: the reason name tables and the cross-worker sum of the counter blocks. */
#include "counters.h"

#include <string.h>

#define REASON_NAME(name, str) str,
const char *const refused_names[REFUSED__COUNT] = {REFUSED_REASONS(REASON_NAME)};
const char *const closed_names[CLOSED__COUNT] = {CLOSED_REASONS(REASON_NAME)};
const char *const connect_error_names[CONNECT_ERROR__COUNT] = {CONNECT_ERRORS(REASON_NAME)};

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
        }
    }
}
