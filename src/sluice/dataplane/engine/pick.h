/* pick.h: the flow hash of core/flow.py and the scheduler picks of core/scheduler.py, in C. */
#ifndef SLUICE_ENGINE_PICK_H
#define SLUICE_ENGINE_PICK_H

#include <stddef.h>
#include <stdint.h>

/* The 40-byte flow key of core/flow.py: source IP (16 bytes, IPv4 mapped to ::ffff:a.b.c.d),
 * destination IP (16), source port (2, network order), destination port (2, network order),
 * protocol (1), 3 zero bytes. */
#define FLOW_KEY_LEN 40

/* Build the key. IPs are 16 bytes (IPv4 already mapped); ports in host byte order. */
void flow_key_build(uint8_t key[FLOW_KEY_LEN], const uint8_t src_ip[16], const uint8_t dst_ip[16],
                    uint16_t src_port, uint16_t dst_port, uint8_t proto);

/* core.flow.flow_hash of the flow whose key is `key` (same value for every input): MurmurHash3,
 * the hash of a VIP without hash_key. */
uint32_t flow_hash(const uint8_t key[FLOW_KEY_LEN]);

/* A keyed VIP's secret (config hash_key, core.flow.HashKey): SipHash's k0 = bytes 0..7 and k1 = bytes
 * 8..15 of the 16-byte key, read little-endian. */
struct flow_hash_key {
    uint64_t k0, k1;
};

/* core.flow.keyed_flow_hash: the low 32 bits of SipHash-1-3 of `key` under `k` (core/siphash.py says
 * why SipHash-1-3). */
uint32_t flow_hash_keyed(const struct flow_hash_key *k, const uint8_t key[FLOW_KEY_LEN]);

/* Scheduler kinds, named as core/scheduler.py's REGISTRY. */
enum sched_kind { SCHED_MAGLEV = 0, SCHED_ROUND_ROBIN = 1, SCHED_LEAST_CONN = 2, SCHED_RANDOM_TWO = 3 };

/* What a pick reads and never writes: immutable once built, shared by every worker.
 * Backends are indexed 0..n-1 in config order. */
struct sched_table {
    enum sched_kind kind;
    uint32_t n;              /* backends, config order */
    const uint32_t *weights; /* n weights; 0 = takes no new flow */
    uint32_t m;              /* Maglev table size (0 for the other kinds) */
    const int32_t *slots;    /* m entries: backend index (config order) or -1 for an empty table */
    uint32_t keyed;          /* 1: the VIP has a hash_key, flows hash with hash_key; 0: flow_hash */
    struct flow_hash_key hash_key; /* the secret (keyed only); never logged */
};

/* The flow hash of a new flow of `t`'s VIP: flow_hash_keyed with its key if keyed, else flow_hash. */
uint32_t sched_flow_hash(const struct sched_table *t, const uint8_t key[FLOW_KEY_LEN]);

/* One pick. Returns the backend index, or -1 when no backend is eligible (weight 0 or excluded).
 * - hash: flow_hash() of the flow (maglev).
 * - exclude / n_exclude: backend indexes already tried (connect retries).
 * - rr_current: n counters of smooth weighted round robin (state of one worker; updated).
 * - active: n open-flow counts (least_conn, random_two); may be NULL for the other kinds.
 * - r1, r2: two uniform draws in [0, 1) (random_two: the `random()` values that
 *   random.Random.choices would draw for the first and the second choice).
 * No allocation and no array on the stack, so no bound on n: a pick walks the backends, O(n * n_exclude)
 * (maglev with exclusions: at most m slots). Thread-safe for distinct rr_current arrays. */
int32_t sched_pick(const struct sched_table *t, uint32_t hash, const uint32_t *exclude, size_t n_exclude,
                   int64_t *rr_current, const int64_t *active, double r1, double r2);

#endif
