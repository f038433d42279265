// SPDX-License-Identifier: GPL-2.0
/* sluice_decap.bpf.c - DSR backends in ipip mode: strip the outer IPv4/IPv6 header, pass the inner packet. */
/* For backends whose kernel has no ipip/ip6_tunnel module. The outer headers are parsed by parse.h, as
 * the LB program parses them; anything that is not well-formed IP-in-IP is passed unchanged. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "xdp_consts.h"
#include "xdp_structs.h"
#include "parse.h"

/* decap_stats: key __u32 0, value struct decap_stats; 1 entry, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct decap_stats);
} decap_stats SEC(".maps");

enum decap_result { DECAP_PASSED, DECAP_DONE, DECAP_DROPPED };

static __always_inline int count(enum decap_result result, int verdict)
{
	__u32 zero = 0;
	struct decap_stats *ds = bpf_map_lookup_elem(&decap_stats, &zero);

	if (ds) {
		if (result == DECAP_DONE)
			ds->decapsulated++;
		else if (result == DECAP_DROPPED)
			ds->dropped++;
		else
			ds->passed++;
	}
	return verdict;
}

/* Move the L2 header `outer_len` bytes forward over the outer IP header and drop the gap. */
static __always_inline int strip(struct xdp_md *ctx, __u32 l2_len, __u32 outer_len, __u8 inner_proto)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u8 l2[ETH_HLEN + 4];
	__u16 inner_type = inner_proto == PROTO_IPIP ? ETHTYPE_IPV4 : ETHTYPE_IPV6;

	if (data + sizeof(l2) > end)
		return count(DECAP_DROPPED, XDP_DROP);
	__builtin_memcpy(l2, data, sizeof(l2));
	if (bpf_xdp_adjust_head(ctx, (int)outer_len))
		return count(DECAP_DROPPED, XDP_DROP);
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	if (l2_len == ETH_HLEN) {
		if (data + ETH_HLEN > end)
			return count(DECAP_DROPPED, XDP_DROP);
		__builtin_memcpy(data, l2, ETH_HLEN - 2);
		*(__be16 *)(data + ETH_HLEN - 2) = bpf_htons(inner_type);
	} else {
		if (data + ETH_HLEN + 4 > end)
			return count(DECAP_DROPPED, XDP_DROP);
		__builtin_memcpy(data, l2, ETH_HLEN + 2);
		*(__be16 *)(data + ETH_HLEN + 2) = bpf_htons(inner_type);
	}
	return count(DECAP_DONE, XDP_PASS);
}

SEC("xdp")
int sluice_decap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct l2_header l2 = {};
	struct iphdr *ip = 0;
	struct ipv6hdr *ip6 = 0;
	__u32 reason = 0;

	if (parse_eth(data, end, &l2, &reason) != PARSE_OK)
		return count(DECAP_PASSED, XDP_PASS);
	if (l2.proto == bpf_htons(ETHTYPE_IPV4)) {
		/* options, fragments or a malformed header: leave to the stack */
		if (parse_ipv4_header(l2.l3, end, &ip, &reason) != PARSE_OK)
			return count(DECAP_PASSED, XDP_PASS);
		if (ip->protocol != PROTO_IPIP && ip->protocol != PROTO_IPV6)
			return count(DECAP_PASSED, XDP_PASS);
		return strip(ctx, l2.len, sizeof(*ip), ip->protocol);
	}
	if (l2.proto == bpf_htons(ETHTYPE_IPV6)) {
		if (parse_ipv6_header(l2.l3, end, &ip6, &reason) != PARSE_OK)
			return count(DECAP_PASSED, XDP_PASS);
		if (ip6->nexthdr != PROTO_IPIP && ip6->nexthdr != PROTO_IPV6)
			return count(DECAP_PASSED, XDP_PASS);
		return strip(ctx, l2.len, sizeof(*ip6), ip6->nexthdr);
	}
	return count(DECAP_PASSED, XDP_PASS);
}

char LICENSE[] SEC("license") = "GPL";
