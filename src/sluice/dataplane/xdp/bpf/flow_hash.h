/* flow_hash.h - sluice's flow hash: MurmurHash3 x86_32 over the 40-byte struct flow_key, or for a
 * keyed VIP (hash_key) SipHash-1-3 with the VIP's key (core/siphash.py says why SipHash-1-3). */
/* Exactly core/flow.py's flow_hash (see its docstring); tests/dataplane/xdp checks both agree. */
#ifndef SLUICE_FLOW_HASH_H
#define SLUICE_FLOW_HASH_H

#include <linux/types.h>
#include "xdp_consts.h"
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

static __always_inline __u64 rotl64(__u64 x, __u32 r)
{
	return (x << r) | (x >> (64 - r));
}

/* SipHash's state: four 64-bit words (native in eBPF). */
struct sip_state {
	__u64 v0, v1, v2, v3;
};

static __always_inline void sip_round(struct sip_state *s)
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
static __always_inline void sip_word(struct sip_state *s, __u64 m)
{
	s->v3 ^= m;
	sip_round(s);
	s->v0 ^= m;
}

/* core.flow.keyed_flow_hash: SipHash-1-3 of the key under (k0, k1), low 32 bits. The key's five
 * little-endian 64-bit words, then the last word (no tail bytes, the length 40 in its top byte). */
static __always_inline __u32 flow_hash_keyed(const struct flow_key *key, __u64 k0, __u64 k1)
{
	const __u8 *bytes = (const __u8 *)key;
	struct sip_state s = {
		k0 ^ 0x736f6d6570736575ull,
		k1 ^ 0x646f72616e646f6dull,
		k0 ^ 0x6c7967656e657261ull,
		k1 ^ 0x7465646279746573ull,
	};

#pragma unroll
	for (int i = 0; i < FLOW_KEY_WORDS; i += 2)
		sip_word(&s, (__u64)load_le32(bytes + 4 * i) | (__u64)load_le32(bytes + 4 * i + 4) << 32);
	sip_word(&s, (__u64)(FLOW_KEY_WORDS * 4) << 56);
	s.v2 ^= 0xff;
	sip_round(&s);
	sip_round(&s);
	sip_round(&s);
	return (__u32)(s.v0 ^ s.v1 ^ s.v2 ^ s.v3);
}

/* The flow hash of a new flow of `vip` (one flag test more than an unkeyed hash). */
static __always_inline __u32 vip_flow_hash(const struct flow_key *key, const struct vip_meta *vip)
{
	if (vip->flags & VIP_F_HASH_KEYED)
		return flow_hash_keyed(key, vip->hash_key[0], vip->hash_key[1]);
	return flow_hash(key);
}

#endif
