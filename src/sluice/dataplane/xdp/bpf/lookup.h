/* lookup.h - choose the backend of a flow: connection table first, Maglev when needed. */
#ifndef SLUICE_LOOKUP_H
#define SLUICE_LOOKUP_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "xdp_maps.h"
#include "flow_hash.h"
#include "parse.h"
#include "counters.h"

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

/* Pick the backend for `pkt` and keep the connection table current.
 * TCP SYN: always Maglev, (re)write the entry. Other TCP: the entry if usable, else a counted miss
 * and Maglev (the entry is rewritten). UDP: the entry unless idle longer than the VIP's timeout.
 * ICMP "too big": the entry if usable, else Maglev; never writes. */
static __always_inline struct backend *pick_backend(const struct vip_meta *vip, struct packet *pkt,
						     struct vip_stats *vs, __u32 hash, __u32 *index,
						     int *new_flow)
{
	__u64 now = bpf_ktime_get_ns();
	struct ct_entry *entry = 0;
	struct backend *be;
	int is_syn = pkt->flow.proto == PROTO_TCP &&
		     (pkt->tcp_flags & (TCP_FLAG_SYN_ | TCP_FLAG_ACK_)) == TCP_FLAG_SYN_;

	*new_flow = 0;
	if (!is_syn) {
		entry = bpf_map_lookup_elem(&conntrack, &pkt->flow);
		if (entry && entry->last_seen_ns == 0)
			entry = 0; /* written on another CPU: zeroed here */
		if (entry && pkt->flow.proto == PROTO_UDP && !pkt->is_icmp &&
		    now - entry->last_seen_ns > vip->udp_idle_ns) {
			count_udp_expired(vs);
			entry = 0;
		}
		if (entry) {
			be = usable_backend(entry->backend, vip);
			if (be) {
				*index = entry->backend;
				if (!pkt->is_icmp)
					entry->last_seen_ns = now;
				count_ct_hit(vs);
				return be;
			}
		}
		if (pkt->flow.proto == PROTO_TCP && !pkt->is_icmp)
			count_ct_miss(vs);
	}

	*index = maglev_pick(vip, hash);
	be = usable_backend(*index, vip);
	if (!be || pkt->is_icmp)
		return be;
	struct ct_entry fresh = { .backend = *index, .last_seen_ns = now };
	bpf_map_update_elem(&conntrack, &pkt->flow, &fresh, BPF_ANY);
	*new_flow = is_syn || pkt->flow.proto == PROTO_UDP;
	return be;
}

#endif
