/* encap.h - forwarding to the chosen backend: MAC rewrite (l2) or IP-in-IP encapsulation (ipip). */
#ifndef SLUICE_ENCAP_H
#define SLUICE_ENCAP_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "checksum.h"
#include "xdp_consts.h"
#include "xdp_structs.h"
#include "parse.h"

/* Rewrite the MACs: destination = backend (or next hop), source = the LB interface. */
static __always_inline void set_macs(struct ethhdr *eth, const struct vip_meta *vip, const struct backend *be)
{
	__builtin_memcpy(eth->h_dest, be->mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, vip->src_mac, ETH_ALEN);
}

static __always_inline int forward_l2(struct xdp_md *ctx, const struct vip_meta *vip, const struct backend *be)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end)
		return XDP_DROP;
	set_macs(eth, vip, be);
	return XDP_TX;
}

/* The outer source: the configured prefix with the flow hash in its host bits (last 32-bit word). */
static __always_inline __be32 outer_source_word(const struct vip_meta *vip, __u32 hash)
{
	__be32 word;

	__builtin_memcpy(&word, vip->outer_src + 12, 4);
	return bpf_htonl(bpf_ntohl(word) | (hash & vip->outer_hash_mask));
}

/* After bpf_xdp_adjust_head(-outer_len) the old frame starts outer_len bytes in, so the inner IP
 * packet already sits at l2_len + outer_len: write a fresh L2 header (keeping the 802.1Q tag)
 * and the outer header in front of it. Returns the outer header's start or NULL. */
static __always_inline void *write_l2(struct xdp_md *ctx, const struct packet *pkt, const struct vip_meta *vip,
				      const struct backend *be, __u16 ethtype, __u32 outer_len)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if (pkt->l2_len == sizeof(*eth)) {
		if ((void *)(eth + 1) + outer_len > end)
			return 0;
		set_macs(eth, vip, be);
		eth->h_proto = bpf_htons(ethtype);
		return eth + 1;
	}
	__be16 *tag = (void *)(eth + 1);
	if ((void *)(tag + 2) + outer_len > end)
		return 0;
	set_macs(eth, vip, be);
	eth->h_proto = bpf_htons(ETHTYPE_VLAN);
	tag[0] = pkt->vlan_tci;
	tag[1] = bpf_htons(ethtype);
	return tag + 2;
}

static __always_inline int encap_ipv4(struct xdp_md *ctx, const struct packet *pkt, const struct vip_meta *vip,
				      const struct backend *be, __u32 hash)
{
	struct iphdr *ip;

	if (pkt->ip_len + sizeof(*ip) > 0xffff)
		return XDP_ABORTED;
	if (bpf_xdp_adjust_head(ctx, -(int)sizeof(*ip)))
		return XDP_ABORTED;
	ip = write_l2(ctx, pkt, vip, be, ETHTYPE_IPV4, sizeof(*ip));
	if (!ip)
		return XDP_ABORTED;
	ip->version = 4;
	ip->ihl = 5;
	ip->tos = 0;
	ip->tot_len = bpf_htons(pkt->ip_len + sizeof(*ip));
	ip->id = 0;
	ip->frag_off = 0;
	ip->ttl = OUTER_TTL;
	ip->protocol = pkt->family == FAMILY_V4 ? PROTO_IPIP : PROTO_IPV6;
	ip->check = 0;
	ip->saddr = outer_source_word(vip, hash);
	__builtin_memcpy(&ip->daddr, be->addr + 12, 4);
	ip->check = ipv4_checksum(ip);
	return XDP_TX;
}

static __always_inline int encap_ipv6(struct xdp_md *ctx, const struct packet *pkt, const struct vip_meta *vip,
				      const struct backend *be, __u32 hash)
{
	struct ipv6hdr *ip6;
	__u8 *first;
	__be32 last;

	if (pkt->ip_len > 0xffff)
		return XDP_ABORTED;
	if (bpf_xdp_adjust_head(ctx, -(int)sizeof(*ip6)))
		return XDP_ABORTED;
	ip6 = write_l2(ctx, pkt, vip, be, ETHTYPE_IPV6, sizeof(*ip6));
	if (!ip6)
		return XDP_ABORTED;
	first = (__u8 *)ip6;
	first[0] = 0x60; /* version 6, traffic class 0 */
	first[1] = (hash >> 16) & 0x0f; /* flow label = low 20 bits of the flow hash */
	first[2] = (hash >> 8) & 0xff;
	first[3] = hash & 0xff;
	ip6->payload_len = bpf_htons(pkt->ip_len);
	ip6->nexthdr = pkt->family == FAMILY_V4 ? PROTO_IPIP : PROTO_IPV6;
	ip6->hop_limit = OUTER_TTL;
	__builtin_memcpy(&ip6->saddr, vip->outer_src, 12);
	last = outer_source_word(vip, hash);
	__builtin_memcpy((__u8 *)&ip6->saddr + 12, &last, 4);
	__builtin_memcpy(&ip6->daddr, be->addr, 16);
	return XDP_TX;
}

/* Send the packet to `be`: XDP_TX, or XDP_ABORTED when encapsulation was impossible. */
static __always_inline int forward(struct xdp_md *ctx, const struct packet *pkt, const struct vip_meta *vip,
				   const struct backend *be, __u32 hash)
{
	if (vip->fwd != FWD_IPIP)
		return forward_l2(ctx, vip, be);
	if (be->family == FAMILY_V4)
		return encap_ipv4(ctx, pkt, vip, be, hash);
	return encap_ipv6(ctx, pkt, vip, be, hash);
}

#endif
