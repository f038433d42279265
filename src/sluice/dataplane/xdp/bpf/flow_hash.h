/* flow_hash.h - sluice's flow hash: MurmurHash3 x86_32 over the 40-byte struct flow_key. */
/* Exactly core/flow.py's flow_hash (see its docstring); tests/dataplane/xdp checks both agree. */
#ifndef SLUICE_FLOW_HASH_H
#define SLUICE_FLOW_HASH_H

#include <linux/types.h>
#include "xdp_structs.h"

#define FLOW_HASH_SEED 0x51cef10eu
#define FLOW_KEY_WORDS 10

_Static_assert(sizeof(struct flow_key) == FLOW_KEY_WORDS * 4, "flow_key must be the 40-byte hash key");

static __always_inline __u32 rotl32(__u32 x, __u32 r)
{
	return (x << r) | (x >> (32 - r));
}

/* The key is read as little-endian 32-bit words. */
static __always_inline __u32 load_le32(const __u8 *p)
{
	return (__u32)p[0] | ((__u32)p[1] << 8) | ((__u32)p[2] << 16) | ((__u32)p[3] << 24);
}

static __always_inline __u32 flow_hash(const struct flow_key *key)
{
	const __u8 *bytes = (const __u8 *)key;
	__u32 h = FLOW_HASH_SEED;

#pragma unroll
	for (int i = 0; i < FLOW_KEY_WORDS; i++) {
		__u32 k = load_le32(bytes + 4 * i);
		k *= 0xcc9e2d51u;
		k = rotl32(k, 15);
		k *= 0x1b873593u;
		h ^= k;
		h = rotl32(h, 13);
		h = h * 5 + 0xe6546b64u;
	}
	h ^= FLOW_KEY_WORDS * 4;
	h ^= h >> 16;
	h *= 0x85ebca6bu;
	h ^= h >> 13;
	h *= 0xc2b2ae35u;
	h ^= h >> 16;
	return h;
}

#endif
