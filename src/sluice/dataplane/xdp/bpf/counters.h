/* counters.h - every counter increment of sluice_xdp (global_stats, vip_stats, backend_stats of xdp_maps.h). */
#ifndef SLUICE_COUNTERS_H
#define SLUICE_COUNTERS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "xdp_structs.h"
#include "xdp_maps.h"
#include "parse.h"

/* A counter in struct global_stats, by field index. */
#define GSTAT(field) (__builtin_offsetof(struct global_stats, field) / sizeof(__u64))
#define GSTAT_COUNT (sizeof(struct global_stats) / sizeof(__u64))

_Static_assert(sizeof(struct global_stats) == GSTAT_COUNT * sizeof(__u64), "global_stats: u64 fields only");

/* This CPU's global counters, looked up once per packet (NULL counts nothing); counts the packet
 * under rx_packets. */
static __always_inline __u64 *count_rx(void)
{
	__u32 zero = 0;
	__u64 *stats = bpf_map_lookup_elem(&global_stats, &zero);

	if (stats)
		stats[GSTAT(rx_packets)]++;
	return stats;
}

/* Count one packet under a struct global_stats field index and return `verdict`. */
static __always_inline int count_global(__u64 *stats, __u32 field, int verdict)
{
	if (stats && field < GSTAT_COUNT)
		stats[field]++;
	return verdict;
}

/* The global_stats field that counts a parse_reason (parse.h). */
static __always_inline __u32 gstat_of(__u32 reason)
{
	switch (reason) {
	case REASON_PASS_NOT_IP:
		return GSTAT(pass_not_ip);
	case REASON_PASS_OTHER_PROTO:
		return GSTAT(pass_other_proto);
	case REASON_PASS_IPV4_FRAGMENT:
		return GSTAT(pass_ipv4_fragment);
	case REASON_PASS_IPV4_OPTIONS:
		return GSTAT(pass_ipv4_options);
	case REASON_PASS_IPV6_EXT:
		return GSTAT(pass_ipv6_ext);
	case REASON_PASS_ICMP_OTHER:
		return GSTAT(pass_icmp_other);
	case REASON_PASS_NOT_VIP:
		return GSTAT(pass_not_vip);
	case REASON_DROP_TRUNCATED_L2:
		return GSTAT(drop_truncated_l2);
	case REASON_DROP_TRUNCATED_L3:
		return GSTAT(drop_truncated_l3);
	case REASON_DROP_BAD_L3:
		return GSTAT(drop_bad_l3);
	case REASON_DROP_TRUNCATED_L4:
		return GSTAT(drop_truncated_l4);
	case REASON_DROP_BAD_L4:
		return GSTAT(drop_bad_l4);
	}
	return GSTAT_COUNT; /* not counted */
}

/* Count a packet parsing passed or dropped (enum parse_reason) and return `verdict`. */
static __always_inline int count_parse_stop(__u64 *stats, __u32 reason, int verdict)
{
	return count_global(stats, gstat_of(reason), verdict);
}

/* Per VIP: the caller looks the VIP's counters up once per packet; NULL counts nothing. */
static __always_inline struct vip_stats *vip_counters(__u32 vip_index)
{
	return bpf_map_lookup_elem(&vip_stats, &vip_index);
}

static __always_inline void count_ct_hit(struct vip_stats *vs)
{
	if (vs)
		vs->ct_hits++;
}

static __always_inline void count_ct_miss(struct vip_stats *vs)
{
	if (vs)
		vs->ct_misses++;
}

static __always_inline void count_expired(struct vip_stats *vs)
{
	if (vs)
		vs->expired++;
}

/* The VIP's Maglev slot was empty: count, return XDP_DROP. */
static __always_inline int count_drop_no_backend(struct vip_stats *vs)
{
	if (vs)
		vs->drop_no_backend++;
	return XDP_DROP;
}

/* Encapsulation was impossible: count, return XDP_DROP. */
static __always_inline int count_drop_encap(struct vip_stats *vs)
{
	if (vs)
		vs->drop_encap++;
	return XDP_DROP;
}

/* QUIC connection-ID routing: a short-header packet went by its CID (1) or fell back to the hash (0). */
static __always_inline void count_quic(struct vip_stats *vs, int routed)
{
	if (!vs)
		return;
	if (routed)
		vs->quic_routed++;
	else
		vs->quic_fallback++;
}

/* A packet forwarded to backend slot `index`: count it for the VIP and the backend, return XDP_TX. */
static __always_inline int count_forwarded(struct vip_stats *vs, __u32 index, const struct packet *pkt,
					   int new_flow)
{
	struct backend_stats *bs = bpf_map_lookup_elem(&backend_stats, &index);

	if (vs) {
		vs->packets++;
		vs->bytes += pkt->frame_len;
		vs->new_flows += new_flow;
		vs->icmp_forwarded += pkt->is_icmp;
	}
	if (bs) {
		bs->packets++;
		bs->bytes += pkt->frame_len;
		if (new_flow)
			bs->new_flows++;
	}
	return XDP_TX;
}

#endif
