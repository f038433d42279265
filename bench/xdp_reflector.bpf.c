// SPDX-License-Identifier: GPL-2.0
/* xdp_reflector.bpf.c - bench/xdp.py's XDP programs, compiled by clang at bench time.
 *
 * reflect: the "bare XDP_TX reflector", the limit of the harness for anything in the LB position:
 *          for IPv4/UDP, pick a backend by source port (sport % 3: no table, no state, no counters),
 *          rewrite both MACs, XDP_TX. Everything else (ARP, ...) is passed.
 * pass:    XDP_PASS stub for the bridge side of the LB's veth during the native-XDP rounds (XDP_TX
 *          into a veth is delivered only if its peer runs an XDP program).
 *
 * The MACs come in as -D macros (LB_MAC, B0_MAC, B1_MAC, B2_MAC, each 0x02,0x..,..), folded into
 * immediate stores by clang: no map lookup per packet. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef LB_MAC
#error "compile with -DLB_MAC=0x02,0x00,0x00,0x00,0x00,0x01"
#endif
#if !defined(B0_MAC) || !defined(B1_MAC) || !defined(B2_MAC)
#error "compile with -DB0_MAC=... -DB1_MAC=... -DB2_MAC=..."
#endif

static __always_inline void set_macs(struct ethhdr *eth, __u32 pick)
{
	const __u8 src[ETH_ALEN] = {LB_MAC}, b0[ETH_ALEN] = {B0_MAC}, b1[ETH_ALEN] = {B1_MAC},
		   b2[ETH_ALEN] = {B2_MAC};

	if (pick == 0)
		__builtin_memcpy(eth->h_dest, b0, ETH_ALEN);
	else if (pick == 1)
		__builtin_memcpy(eth->h_dest, b1, ETH_ALEN);
	else
		__builtin_memcpy(eth->h_dest, b2, ETH_ALEN);
	__builtin_memcpy(eth->h_source, src, ETH_ALEN);
}

SEC("xdp")
int reflect(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp;

	if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->protocol != IPPROTO_UDP ||
	    ip->ihl != 5)
		return XDP_PASS;
	udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > end)
		return XDP_PASS;
	set_macs(eth, bpf_ntohs(udp->source) % 3);
	return XDP_TX;
}

SEC("xdp")
int pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
