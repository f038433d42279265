/* lookup.h - choose the backend of a flow: connection table first, Maglev when needed. */
#ifndef SLUICE_LOOKUP_H
#define SLUICE_LOOKUP_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "xdp_maps.h"
#include "flow_hash.h"
#include "parse.h"
#include "counters.h"
#include "quic.h"

/* A backend slot usable by `vip`, or NULL. */
static __always_inline struct backend *usable_backend(__u32 index, const struct vip_meta *vip)
{
	struct backend *be;

	if (index == NO_BACKEND)
		return 0;
	be = bpf_map_lookup_elem(&backends, &index);
	if (!be || !(be->flags & BACKEND_F_ACTIVE) || be->vip_index != vip->index)
		return 0;
	return be;
}

/* QUIC (vip_meta.quic_bits set): the backend a UDP short-header packet's CID names (quic_ids), counted
 * quic_routed; NULL for any other packet, counted quic_fallback when it is a short-header one whose
 * server ID is 0, unknown, or names a slot that is not usable. Never touches the connection table. */
static __always_inline struct backend *quic_backend(const struct vip_meta *vip, const struct packet *pkt,
						     struct vip_stats *vs, __u32 *index)
{
	struct quic_id_key key = { .vip_index = vip->index };
	struct backend *be = 0;
	__u32 *slot;
	__s64 id;

	if (vip->quic_bits == 0 || pkt->flow.proto != PROTO_UDP || pkt->is_icmp)
		return 0;
	id = quic_server_id(pkt, vip->quic_bits);
	if (id == QUIC_LONG_HEADER)
		return 0;
	if (id != QUIC_NOT_ROUTABLE) {
		key.server_id = (__u32)id;
		slot = bpf_map_lookup_elem(&quic_ids, &key);
		if (slot) {
			be = usable_backend(*slot, vip);
			if (be)
				*index = *slot;
		}
	}
	count_quic(vs, be != 0);
	return be;
}

/* The Maglev slot's backend index for `hash` (NO_BACKEND if empty). */
static __always_inline __u32 maglev_pick(const struct vip_meta *vip, __u32 hash)
{
	__u32 size = vip->maglev_size;
	__u32 key, *slot;

	if (size == 0 || size > MAGLEV_SIZE || vip->index >= MAX_VIPS)
		return NO_BACKEND;
	key = vip->index * MAGLEV_SIZE + hash % size;
	slot = bpf_map_lookup_elem(&maglev, &key);
	return slot ? *slot : NO_BACKEND;
}

/* The time for connection entries: the control plane's coarse clock (no clock-source read), or
 * bpf_ktime_get_ns() until the control plane has written it. */
static __always_inline __u64 coarse_now(void)
{
	__u32 zero = 0;
	__u64 *now = bpf_map_lookup_elem(&coarse_clock, &zero);

	if (now && *now)
		return *now;
	return bpf_ktime_get_ns();
}

/* `entry` (the flow's connection entry) if usable for `pkt`, else NULL; sets *index, *hash. A hit
 * costs the table lookup the caller made: no hashing, and the stamp is written only when the coarse
 * clock moved (once per period per flow, so the shared entry's line is not bounced). */
static __always_inline struct backend *conntrack_hit(struct ct_entry *entry, const struct vip_meta *vip,
						      const struct packet *pkt, struct vip_stats *vs, __u32 *index,
						      __u32 *hash)
{
	struct backend *be;
	__u64 now = coarse_now();

	if (!pkt->is_icmp && now > entry->last_seen_ns &&
	    now - entry->last_seen_ns > vip->idle_ns) {
		count_expired(vs);
		return 0;
	}
	*index = entry->backend;
	*hash = entry->hash;
	be = usable_backend(*index, vip);
	if (!be)
		return 0;
	if (!pkt->is_icmp && entry->last_seen_ns != now)
		entry->last_seen_ns = now;
	count_ct_hit(vs);
	return be;
}

/* Pick the backend for `pkt` and keep the connection table current; *hash is the flow hash.
 * TCP SYN: always Maglev, (re)write the entry: a SYN never uses an entry, so a backend that is down
 * or at weight 0 (no Maglev slots) gets no new flow from an old entry. Other TCP: the entry if usable
 * (backend slot active, idle no longer than the VIP's timeout), else a counted miss and Maglev (the
 * entry is rewritten). UDP: the entry unless idle longer than the VIP's timeout.
 * ICMP "too big": the entry if usable, else Maglev; never writes.
 * QUIC (a VIP with quic_bits): a UDP short-header packet whose CID names a usable backend goes there
 * before anything else (quic_backend), without a connection entry; every other packet as above.
 * A SYN inserts (replacing any entry of the tuple); an entry a later packet found expired or
 * unusable is rewritten in place (an LRU update would take a free node and release the old one). */
static __always_inline struct backend *pick_backend(const struct vip_meta *vip, struct packet *pkt,
						     struct vip_stats *vs, __u32 *index, __u32 *hash,
						     int *new_flow)
{
	struct ct_entry *entry = 0;
	struct backend *be;
	int is_syn = pkt->flow.proto == PROTO_TCP &&
		     (pkt->tcp_flags & (TCP_FLAG_SYN_ | TCP_FLAG_ACK_)) == TCP_FLAG_SYN_;

	*new_flow = 0;
	be = quic_backend(vip, pkt, vs, index);
	if (be) {
		*hash = vip_flow_hash(&pkt->flow, vip); /* ipip: the outer source bits */
		return be;
	}
	if (!is_syn) /* a SYN is nearly always a new flow: inserted without a lookup first */
		entry = bpf_map_lookup_elem(&conntrack, &pkt->flow);

	if (!is_syn) {
		if (entry) {
			be = conntrack_hit(entry, vip, pkt, vs, index, hash);
			if (be)
				return be;
		}
		if (pkt->flow.proto == PROTO_TCP && !pkt->is_icmp)
			count_ct_miss(vs);
	}

	*hash = vip_flow_hash(&pkt->flow, vip);
	*index = maglev_pick(vip, *hash);
	be = usable_backend(*index, vip);
	if (!be || pkt->is_icmp)
		return be;
	*new_flow = is_syn || pkt->flow.proto == PROTO_UDP;
	if (entry) {
		entry->backend = *index;
		entry->hash = *hash;
		entry->last_seen_ns = coarse_now();
		return be;
	}
	struct ct_entry fresh = { .backend = *index, .hash = *hash, .last_seen_ns = coarse_now() };
	bpf_map_update_elem(&conntrack, &pkt->flow, &fresh, BPF_ANY);
	return be;
}

#endif
