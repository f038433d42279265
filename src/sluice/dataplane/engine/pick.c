/* pick.c: the flow hash of core/flow.py and the scheduler picks of core/scheduler.py, in C. */
#include "pick.h"

#include <string.h>

/* core/flow.py FLOW_HASH_SEED */
#define FLOW_HASH_SEED 0x51CEF10Eu

void flow_key_build(uint8_t key[FLOW_KEY_LEN], const uint8_t src_ip[16], const uint8_t dst_ip[16],
                    uint16_t src_port, uint16_t dst_port, uint8_t proto)
{
    memcpy(key, src_ip, 16);
    memcpy(key + 16, dst_ip, 16);
    key[32] = (uint8_t)(src_port >> 8);
    key[33] = (uint8_t)(src_port & 0xFF);
    key[34] = (uint8_t)(dst_port >> 8);
    key[35] = (uint8_t)(dst_port & 0xFF);
    key[36] = proto;
    key[37] = key[38] = key[39] = 0;
}

static inline uint32_t rotl32(uint32_t x, int r)
{
    return (x << r) | (x >> (32 - r));
}

/* MurmurHash3 x86_32 over the ten little-endian words of the key (no tail: 40 = 10 * 4). */
uint32_t flow_hash(const uint8_t key[FLOW_KEY_LEN])
{
    uint32_t h = FLOW_HASH_SEED;
    for (int i = 0; i < FLOW_KEY_LEN; i += 4) {
        uint32_t k = (uint32_t)key[i] | (uint32_t)key[i + 1] << 8 | (uint32_t)key[i + 2] << 16 |
                     (uint32_t)key[i + 3] << 24;
        k *= 0xCC9E2D51u;
        k = rotl32(k, 15);
        k *= 0x1B873593u;
        h ^= k;
        h = rotl32(h, 13);
        h = h * 5 + 0xE6546B64u;
    }
    h ^= FLOW_KEY_LEN;
    h ^= h >> 16;
    h *= 0x85EBCA6Bu;
    h ^= h >> 13;
    h *= 0xC2B2AE35u;
    h ^= h >> 16;
    return h;
}

static inline uint64_t rotl64(uint64_t x, int r)
{
    return (x << r) | (x >> (64 - r));
}

static inline uint64_t load_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* SipHash's state: four 64-bit words. */
struct sip {
    uint64_t v0, v1, v2, v3;
};

static inline void sip_round(struct sip *s)
{
    s->v0 += s->v1;
    s->v1 = rotl64(s->v1, 13) ^ s->v0;
    s->v0 = rotl64(s->v0, 32);
    s->v2 += s->v3;
    s->v3 = rotl64(s->v3, 16) ^ s->v2;
    s->v0 += s->v3;
    s->v3 = rotl64(s->v3, 21) ^ s->v0;
    s->v2 += s->v1;
    s->v1 = rotl64(s->v1, 17) ^ s->v2;
    s->v2 = rotl64(s->v2, 32);
}

/* One message word, one compression round (the "1" of SipHash-1-3). */
static inline void sip_word(struct sip *s, uint64_t m)
{
    s->v3 ^= m;
    sip_round(s);
    s->v0 ^= m;
}

/* SipHash-1-3 over the five little-endian 64-bit words of the key, then the last word (no tail bytes,
 * the length 40 in its top byte), three finalisation rounds, truncated to 32 bits (core/siphash.py). */
uint32_t flow_hash_keyed(const struct flow_hash_key *k, const uint8_t key[FLOW_KEY_LEN])
{
    struct sip s = {k->k0 ^ 0x736f6d6570736575ull, k->k1 ^ 0x646f72616e646f6dull, k->k0 ^ 0x6c7967656e657261ull,
                    k->k1 ^ 0x7465646279746573ull};
    for (int i = 0; i < FLOW_KEY_LEN; i += 8)
        sip_word(&s, load_le64(key + i));
    sip_word(&s, (uint64_t)FLOW_KEY_LEN << 56);
    s.v2 ^= 0xff;
    sip_round(&s);
    sip_round(&s);
    sip_round(&s);
    return (uint32_t)(s.v0 ^ s.v1 ^ s.v2 ^ s.v3);
}

uint32_t sched_flow_hash(const struct sched_table *t, const uint8_t key[FLOW_KEY_LEN])
{
    return t->keyed ? flow_hash_keyed(&t->hash_key, key) : flow_hash(key);
}

/* ------------------------------------------------------------------------------------ schedulers */

static int is_excluded(uint32_t i, const uint32_t *exclude, size_t n_exclude)
{
    for (size_t k = 0; k < n_exclude; k++)
        if (exclude[k] == i)
            return 1;
    return 0;
}

/* core/scheduler.py eligible(): weight > 0 and not excluded. */
static int is_candidate(const struct sched_table *t, uint32_t i, const uint32_t *exclude, size_t n_exclude)
{
    return t->weights[i] > 0 && !is_excluded(i, exclude, n_exclude);
}

static uint64_t active_of(const int64_t *active, uint32_t i)
{
    return active && active[i] > 0 ? (uint64_t)active[i] : 0; /* counts are never negative */
}

/* a * w as a 96-bit number (hi, lo): exact for any 64-bit count and 32-bit weight. */
struct u96 {
    uint64_t hi, lo;
};

static struct u96 mul_u64_u32(uint64_t a, uint32_t w)
{
    uint64_t low = (a & 0xFFFFFFFFu) * w, high = (a >> 32) * w;
    struct u96 r = {high >> 32, low + (high << 32)};
    r.hi += r.lo < low; /* carry */
    return r;
}

/* active[a] / weight[a] < active[b] / weight[b], exactly (cross-multiplied; weights > 0). */
static int less_loaded(const struct sched_table *t, const int64_t *active, uint32_t a, uint32_t b)
{
    struct u96 x = mul_u64_u32(active_of(active, a), t->weights[b]);
    struct u96 y = mul_u64_u32(active_of(active, b), t->weights[a]);
    return x.hi < y.hi || (x.hi == y.hi && x.lo < y.lo);
}

static int32_t pick_maglev(const struct sched_table *t, uint32_t hash, const uint32_t *exclude,
                           size_t n_exclude)
{
    if (t->m == 0 || t->slots == NULL)
        return -1;
    uint32_t slot = hash % t->m;
    int32_t index = t->slots[slot];
    if (index < 0 || (uint32_t)index >= t->n)
        return -1;
    if (n_exclude == 0)
        return index;
    uint32_t i;
    for (i = 0; i < t->n; i++)
        if (is_candidate(t, i, exclude, n_exclude))
            break;
    if (i == t->n)
        return -1; /* every eligible backend is excluded */
    /* Walk slot, slot + 1, ... (bounded by m) to the first backend not excluded. */
    for (uint32_t step = 0; step < t->m; step++) {
        index = t->slots[(uint32_t)(((uint64_t)slot + step) % t->m)];
        if (index >= 0 && (uint32_t)index < t->n && !is_excluded((uint32_t)index, exclude, n_exclude))
            return index;
    }
    return -1; /* unreachable with a table built by core/maglev.py */
}

/* Smooth weighted round robin (nginx): every candidate gains its weight, the first with the most
 * current weight wins and loses the total. */
static int32_t pick_round_robin(const struct sched_table *t, const uint32_t *exclude, size_t n_exclude,
                                int64_t *current)
{
    int64_t total = 0;
    int32_t best = -1;
    for (uint32_t i = 0; i < t->n; i++) {
        if (!is_candidate(t, i, exclude, n_exclude))
            continue;
        current[i] += t->weights[i];
        total += t->weights[i];
        if (best < 0 || current[i] > current[best])
            best = (int32_t)i;
    }
    if (best >= 0)
        current[best] -= total;
    return best;
}

/* Fewest active / weight; a tie goes to the heavier backend, then to the first. */
static int32_t pick_least_conn(const struct sched_table *t, const uint32_t *exclude, size_t n_exclude,
                               const int64_t *active)
{
    int32_t best = -1;
    for (uint32_t i = 0; i < t->n; i++) {
        if (!is_candidate(t, i, exclude, n_exclude))
            continue;
        if (best < 0) {
            best = (int32_t)i;
            continue;
        }
        uint32_t b = (uint32_t)best;
        if (less_loaded(t, active, i, b) || (!less_loaded(t, active, b, i) && t->weights[i] > t->weights[b]))
            best = (int32_t)i;
    }
    return best;
}

/* One draw of random.Random.choices(range(k), weights)[0] over the candidates (the one at `skip`
 * weighing 0): bisect_right(cum_weights, r * total, 0, k - 1), as a backend index. */
static uint32_t draw_weighted(const struct sched_table *t, const uint32_t *exclude, size_t n_exclude,
                              double r, int64_t total, int64_t skip, uint32_t last)
{
    double x = r * (double)total;
    int64_t cum = 0;
    for (uint32_t i = 0; i < last; i++) {
        if (!is_candidate(t, i, exclude, n_exclude))
            continue;
        if ((int64_t)i != skip)
            cum += t->weights[i];
        if (x < (double)cum)
            return i;
    }
    return last; /* bisect's hi = k - 1: the last candidate */
}

/* Power of two choices: two different candidates drawn in proportion to weight, the one with fewer
 * active / weight wins, the first drawn on a tie. */
static int32_t pick_random_two(const struct sched_table *t, const uint32_t *exclude, size_t n_exclude,
                               const int64_t *active, double r1, double r2)
{
    int64_t total = 0;
    uint32_t count = 0, last = 0;
    for (uint32_t i = 0; i < t->n; i++) {
        if (!is_candidate(t, i, exclude, n_exclude))
            continue;
        total += t->weights[i];
        count++;
        last = i;
    }
    if (count == 0)
        return -1;
    if (count == 1)
        return (int32_t)last;
    uint32_t first = draw_weighted(t, exclude, n_exclude, r1, total, -1, last);
    uint32_t second = draw_weighted(t, exclude, n_exclude, r2, total - t->weights[first], first, last);
    return (int32_t)(less_loaded(t, active, second, first) ? second : first);
}

int32_t sched_pick(const struct sched_table *t, uint32_t hash, const uint32_t *exclude, size_t n_exclude,
                   int64_t *rr_current, const int64_t *active, double r1, double r2)
{
    if (exclude == NULL)
        n_exclude = 0;
    switch (t->kind) {
    case SCHED_MAGLEV:
        return pick_maglev(t, hash, exclude, n_exclude);
    case SCHED_ROUND_ROBIN:
        return rr_current ? pick_round_robin(t, exclude, n_exclude, rr_current) : -1;
    case SCHED_LEAST_CONN:
        return pick_least_conn(t, exclude, n_exclude, active);
    case SCHED_RANDOM_TWO:
        return pick_random_two(t, exclude, n_exclude, active, r1, r2);
    }
    return -1;
}
