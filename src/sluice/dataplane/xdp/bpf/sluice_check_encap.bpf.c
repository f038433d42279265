// SPDX-License-Identifier: GPL-2.0
/* sluice_check_encap.bpf.c - tc egress: wrap marked health checks in IPv4 (ipip), as the XDP program does. */
/* A DSR health check of an ipip VIP is a packet to the VIP that the LB's stack sends with the
 * path's mark (checkpath.py); policy routing sends it out of the dsr interface, and this program
 * (clsact egress there) pushes the outer IPv4 header to the backend and the next hop's MAC, like
 * encap.h's encap_ipv4. Packets without a known mark pass untouched. Like Katran's healthchecking
 * program. The backend's decap program strips the header; its reply goes to the LB directly. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "checksum.h"
#include "xdp_consts.h"

#ifndef MAX_CHECK_PATHS
#define MAX_CHECK_PATHS 4096 /* checkpath.py MAX_CHECK_PATHS */
#endif

/* Where a marked check goes. Mirrored by checkroutes.py CheckTargetC. */
struct check_target {
	__be32 backend;   /* network order: outer destination */
	__be32 source;    /* network order: outer source (from dsr.outer_source) */
	__u8 mac[6];      /* destination MAC (dsr.next_hop_mac) */
	__u8 pad[2];
};

/* Per CPU: checks encapsulated, and marked packets that could not be (not IPv4, no room). */
struct check_stats {
	__u64 encapsulated;
	__u64 failed;
};

/* check_targets: key __u32 skb->mark (host order), value struct check_target; MAX_CHECK_PATHS entries. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_CHECK_PATHS);
	__type(key, __u32);
	__type(value, struct check_target);
} check_targets SEC(".maps");

/* check_stats: key __u32 0, value struct check_stats; 1 entry, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct check_stats);
} check_stats SEC(".maps");

static __always_inline int count(int ok)
{
	__u32 zero = 0;
	struct check_stats *cs = bpf_map_lookup_elem(&check_stats, &zero);

	if (cs) {
		if (ok)
			cs->encapsulated++;
		else
			cs->failed++;
	}
	return ok ? TC_ACT_OK : TC_ACT_SHOT;
}

SEC("tc")
int sluice_check_encap(struct __sk_buff *skb)
{
	__u32 mark = skb->mark;
	struct check_target *t = bpf_map_lookup_elem(&check_targets, &mark);
	struct iphdr inner, outer = {};

	if (!t)
		return TC_ACT_OK;
	/* a marked check is never sent out as is: it would reach the VIP on whatever holds it */
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return count(0);
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &inner, sizeof(inner)))
		return count(0);
	if (bpf_ntohs(inner.tot_len) + sizeof(outer) > 0xffff)
		return count(0);
	if (bpf_skb_adjust_room(skb, sizeof(outer), BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4))
		return count(0);
	outer.version = 4;
	outer.ihl = 5;
	outer.tot_len = bpf_htons(bpf_ntohs(inner.tot_len) + sizeof(outer));
	outer.ttl = OUTER_TTL;
	outer.protocol = PROTO_IPIP;
	outer.saddr = t->source;
	outer.daddr = t->backend;
	outer.check = ipv4_checksum(&outer);
	if (bpf_skb_store_bytes(skb, ETH_HLEN, &outer, sizeof(outer), 0))
		return count(0);
	if (bpf_skb_store_bytes(skb, 0, t->mac, ETH_ALEN, 0))
		return count(0);
	return count(1);
}

char LICENSE[] SEC("license") = "GPL";
