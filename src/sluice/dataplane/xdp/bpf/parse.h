/* parse.h - bounds-checked parsing of Ethernet (+ one 802.1Q tag), IPv4/IPv6, TCP/UDP and ICMP "too big". */
#ifndef SLUICE_PARSE_H
#define SLUICE_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include "xdp_consts.h"
#include "xdp_structs.h"

/* ICMP and ICMPv6 share this 8-byte header layout (linux/icmp.h pulls in libc headers). */
struct icmp_header {
	__u8 type;
	__u8 code;
	__be16 checksum;
	__be32 rest; /* MTU for "fragmentation needed" / "packet too big" */
};

/* Why parsing stopped short of a flow (*reason of the parse functions). Parsing only says why;
 * counters.h counts each reason under the struct global_stats field of the same name. */
enum parse_reason {
	REASON_PASS_NOT_IP = 1,
	REASON_PASS_OTHER_PROTO,
	REASON_PASS_IPV4_FRAGMENT,
	REASON_PASS_IPV4_OPTIONS,
	REASON_PASS_IPV6_EXT,
	REASON_PASS_ICMP_OTHER,
	REASON_PASS_NOT_VIP,
	REASON_DROP_TRUNCATED_L2,
	REASON_DROP_TRUNCATED_L3,
	REASON_DROP_BAD_L3,
	REASON_DROP_TRUNCATED_L4,
	REASON_DROP_BAD_L4,
};

/* What parsing found (internal to the program, never shared with Python). */
struct packet {
	struct flow_key flow; /* client -> VIP; for ICMP "too big" the quoted header reversed */
	__u32 l2_len;         /* 14, or 18 with an 802.1Q tag */
	__u32 ip_len;         /* length of the IP packet (header + payload) from its header */
	__u32 frame_len;      /* bytes received */
	__u16 vlan_tci;       /* network order, valid when l2_len == 18 */
	__u8 family;          /* FAMILY_V4 / FAMILY_V6 */
	__u8 tcp_flags;       /* TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10) */
	__u8 is_icmp;         /* an ICMP "too big" about `flow`: look up only, never create entries */
	__u8 udp_head_len;    /* UDP payload bytes copied to udp_head: 0 (empty), 1, or 5 (payload >= 9) */
	__u8 udp_head[5];     /* first bytes of the UDP payload (QUIC: flags byte, first 4 CID bytes) */
};

#define TCP_FLAG_SYN_ 0x02
#define TCP_FLAG_ACK_ 0x10

/* Outcome of the parse functions: PARSE_OK, or an XDP verdict with *reason set (enum parse_reason). */
#define PARSE_OK (-1)

static __always_inline void ipv4_mapped(__u8 *dst16, __be32 addr)
{
	__builtin_memset(dst16, 0, 10);
	dst16[10] = 0xff;
	dst16[11] = 0xff;
	__builtin_memcpy(dst16 + 12, &addr, 4);
}

static __always_inline int ipv6_ext_header(__u8 nexthdr)
{
	switch (nexthdr) {
	case 0:   /* hop-by-hop */
	case 43:  /* routing */
	case 44:  /* fragment */
	case 50:  /* ESP */
	case 51:  /* AH */
	case 60:  /* destination options */
	case 135: /* mobility */
	case 139: /* HIP */
	case 140: /* shim6 */
		return 1;
	}
	return 0;
}

/* The first bytes of a UDP payload of `len` bytes at `p`, for QUIC connection-ID routing (quic.h):
 * 5 when the payload has QUIC_MIN_PAYLOAD bytes (a short header with a full CID), else 1 or 0. */
static __always_inline void parse_udp_head(__u8 *p, void *end, __u32 len, struct packet *pkt)
{
	if (len >= QUIC_MIN_PAYLOAD && (void *)(p + QUIC_MIN_PAYLOAD) <= end) {
		__builtin_memcpy(pkt->udp_head, p, 5);
		pkt->udp_head_len = 5;
	} else if (len >= 1 && (void *)(p + 1) <= end) {
		pkt->udp_head[0] = p[0];
		pkt->udp_head_len = 1;
	}
}

/* Ports of a TCP/UDP header at `l4`; fills flow ports and (TCP) flags. `l4_len` is what the IP header
 * says follows it (IPv4 total length or IPv6 payload length, minus the IP header; the caller checked
 * it lies within the frame): every header is checked against it too, so bytes past the IP packet
 * (Ethernet padding, garbage) are never read as a header. */
static __always_inline int parse_l4(void *l4, void *end, __u32 l4_len, __u8 proto, struct packet *pkt,
				    __u32 *reason)
{
	if (proto == PROTO_TCP) {
		struct tcphdr *tcp = l4;
		if ((void *)(tcp + 1) > end || l4_len < sizeof(*tcp)) {
			*reason = REASON_DROP_TRUNCATED_L4;
			return XDP_DROP;
		}
		if (tcp->doff < 5 || (__u32)tcp->doff * 4 > l4_len) {
			*reason = REASON_DROP_BAD_L4;
			return XDP_DROP;
		}
		pkt->flow.sport = tcp->source;
		pkt->flow.dport = tcp->dest;
		pkt->tcp_flags = ((__u8 *)tcp)[13];
	} else {
		struct udphdr *udp = l4;
		__u32 udp_len;
		if ((void *)(udp + 1) > end || l4_len < sizeof(*udp)) {
			*reason = REASON_DROP_TRUNCATED_L4;
			return XDP_DROP;
		}
		udp_len = bpf_ntohs(udp->len);
		if (udp_len < sizeof(*udp) || udp_len > l4_len) {
			*reason = REASON_DROP_BAD_L4;
			return XDP_DROP;
		}
		pkt->flow.sport = udp->source;
		pkt->flow.dport = udp->dest;
		parse_udp_head((__u8 *)(udp + 1), end, udp_len - sizeof(*udp), pkt);
	}
	pkt->flow.proto = proto;
	return PARSE_OK;
}

/* The quoted header of an ICMP error is the backend's reply (VIP -> client): reverse it so the
 * flow reads client -> VIP. Only the first 8 bytes of the quoted L4 header exist: ports only.
 * `avail` is what the IP length leaves from `l4` on. */
static __always_inline int parse_quoted_ports(void *l4, void *end, __u32 avail, __u8 proto, struct packet *pkt,
					      __u32 *reason)
{
	__be16 *ports = l4;
	if (proto != PROTO_TCP && proto != PROTO_UDP) {
		*reason = REASON_PASS_ICMP_OTHER;
		return XDP_PASS;
	}
	if ((void *)(ports + 2) > end || avail < 4) {
		*reason = REASON_DROP_TRUNCATED_L4;
		return XDP_DROP;
	}
	pkt->flow.sport = ports[1];
	pkt->flow.dport = ports[0];
	pkt->flow.proto = proto;
	pkt->is_icmp = 1;
	return PARSE_OK;
}

/* ICMP "fragmentation needed" about a VIP flow. Only one addressed to the VIP itself (outer
 * destination == the quoted packet's source, which is the VIP of the flow) is taken: one addressed to
 * the LB's own address or to another host passes untouched (REASON_PASS_NOT_VIP). */
static __always_inline int parse_icmp4(void *l4, void *end, __u32 l4_len, __be32 outer_dst, struct packet *pkt,
				       __u32 *reason)
{
	struct icmp_header *icmp = l4;
	struct iphdr *inner;

	if ((void *)(icmp + 1) > end || l4_len < sizeof(*icmp)) {
		*reason = REASON_DROP_TRUNCATED_L4;
		return XDP_DROP;
	}
	if (icmp->type != ICMP_DEST_UNREACH || icmp->code != ICMP_FRAG_NEEDED) {
		*reason = REASON_PASS_ICMP_OTHER;
		return XDP_PASS;
	}
	inner = (void *)(icmp + 1);
	if ((void *)(inner + 1) > end || l4_len < sizeof(*icmp) + sizeof(*inner)) {
		*reason = REASON_DROP_TRUNCATED_L4;
		return XDP_DROP;
	}
	if (inner->version != 4 || inner->ihl != 5) {
		*reason = REASON_PASS_ICMP_OTHER;
		return XDP_PASS;
	}
	if (inner->saddr != outer_dst) {
		*reason = REASON_PASS_NOT_VIP;
		return XDP_PASS;
	}
	ipv4_mapped(pkt->flow.src, inner->daddr);
	ipv4_mapped(pkt->flow.dst, inner->saddr);
	return parse_quoted_ports(inner + 1, end, l4_len - sizeof(*icmp) - sizeof(*inner), inner->protocol, pkt,
				  reason);
}

static __always_inline int same_addr6(const struct in6_addr *a, const struct in6_addr *b)
{
	const __u64 *x = (const void *)a, *y = (const void *)b;
	return x[0] == y[0] && x[1] == y[1];
}

/* ICMPv6 "packet too big" about a VIP flow; as parse_icmp4, only one addressed to the VIP. */
static __always_inline int parse_icmp6(void *l4, void *end, __u32 l4_len, const struct in6_addr *outer_dst,
				       struct packet *pkt, __u32 *reason)
{
	struct icmp_header *icmp = l4;
	struct ipv6hdr *inner;

	if ((void *)(icmp + 1) > end || l4_len < sizeof(*icmp)) {
		*reason = REASON_DROP_TRUNCATED_L4;
		return XDP_DROP;
	}
	if (icmp->type != ICMPV6_PKT_TOOBIG) {
		*reason = REASON_PASS_ICMP_OTHER;
		return XDP_PASS;
	}
	inner = (void *)(icmp + 1);
	if ((void *)(inner + 1) > end || l4_len < sizeof(*icmp) + sizeof(*inner)) {
		*reason = REASON_DROP_TRUNCATED_L4;
		return XDP_DROP;
	}
	if (!same_addr6(&inner->saddr, outer_dst)) {
		*reason = REASON_PASS_NOT_VIP;
		return XDP_PASS;
	}
	__builtin_memcpy(pkt->flow.src, &inner->daddr, 16);
	__builtin_memcpy(pkt->flow.dst, &inner->saddr, 16);
	return parse_quoted_ports(inner + 1, end, l4_len - sizeof(*icmp) - sizeof(*inner), inner->nexthdr, pkt,
				  reason);
}

/* The IPv4 header at `l3`, if sluice handles it: PARSE_OK with *out set. Truncated or malformed ->
 * XDP_DROP; fragments and options -> XDP_PASS (both with *reason). Shared with sluice_decap.bpf.c. */
static __always_inline int parse_ipv4_header(void *l3, void *end, struct iphdr **out, __u32 *reason)
{
	struct iphdr *ip = l3;
	__u32 tot_len;

	if ((void *)(ip + 1) > end) {
		*reason = REASON_DROP_TRUNCATED_L3;
		return XDP_DROP;
	}
	tot_len = bpf_ntohs(ip->tot_len);
	if (ip->version != 4 || ip->ihl < 5 || tot_len < (__u32)ip->ihl * 4) {
		*reason = REASON_DROP_BAD_L3;
		return XDP_DROP;
	}
	if (l3 + tot_len > end) {
		*reason = REASON_DROP_TRUNCATED_L3;
		return XDP_DROP;
	}
	if (ip->frag_off & bpf_htons(IPV4_MF | IPV4_OFFSET)) {
		*reason = REASON_PASS_IPV4_FRAGMENT;
		return XDP_PASS;
	}
	if (ip->ihl != 5) {
		*reason = REASON_PASS_IPV4_OPTIONS;
		return XDP_PASS;
	}
	*out = ip;
	return PARSE_OK;
}

/* The IPv6 header at `l3`: PARSE_OK with *out set, or XDP_DROP with *reason (truncated, malformed).
 * Shared with sluice_decap.bpf.c. */
static __always_inline int parse_ipv6_header(void *l3, void *end, struct ipv6hdr **out, __u32 *reason)
{
	struct ipv6hdr *ip6 = l3;

	if ((void *)(ip6 + 1) > end) {
		*reason = REASON_DROP_TRUNCATED_L3;
		return XDP_DROP;
	}
	if (ip6->version != 6) {
		*reason = REASON_DROP_BAD_L3;
		return XDP_DROP;
	}
	if (l3 + sizeof(*ip6) + bpf_ntohs(ip6->payload_len) > end) {
		*reason = REASON_DROP_TRUNCATED_L3;
		return XDP_DROP;
	}
	*out = ip6;
	return PARSE_OK;
}

static __always_inline int parse_ipv4(void *l3, void *end, struct packet *pkt, __u32 *reason)
{
	struct iphdr *ip = 0;
	int verdict = parse_ipv4_header(l3, end, &ip, reason);

	if (verdict != PARSE_OK)
		return verdict;
	pkt->family = FAMILY_V4;
	pkt->ip_len = bpf_ntohs(ip->tot_len);
	ipv4_mapped(pkt->flow.src, ip->saddr);
	ipv4_mapped(pkt->flow.dst, ip->daddr);
	switch (ip->protocol) {
	case PROTO_TCP:
	case PROTO_UDP:
		return parse_l4(ip + 1, end, pkt->ip_len - sizeof(*ip), ip->protocol, pkt, reason);
	case PROTO_ICMP:
		return parse_icmp4(ip + 1, end, pkt->ip_len - sizeof(*ip), ip->daddr, pkt, reason);
	}
	*reason = REASON_PASS_OTHER_PROTO;
	return XDP_PASS;
}

static __always_inline int parse_ipv6(void *l3, void *end, struct packet *pkt, __u32 *reason)
{
	struct ipv6hdr *ip6 = 0;
	int verdict = parse_ipv6_header(l3, end, &ip6, reason);

	if (verdict != PARSE_OK)
		return verdict;
	pkt->family = FAMILY_V6;
	pkt->ip_len = sizeof(*ip6) + bpf_ntohs(ip6->payload_len);
	__builtin_memcpy(pkt->flow.src, &ip6->saddr, 16);
	__builtin_memcpy(pkt->flow.dst, &ip6->daddr, 16);
	switch (ip6->nexthdr) {
	case PROTO_TCP:
	case PROTO_UDP:
		return parse_l4(ip6 + 1, end, pkt->ip_len - sizeof(*ip6), ip6->nexthdr, pkt, reason);
	case PROTO_ICMPV6:
		return parse_icmp6(ip6 + 1, end, pkt->ip_len - sizeof(*ip6), &ip6->daddr, pkt, reason);
	}
	*reason = ipv6_ext_header(ip6->nexthdr) ? REASON_PASS_IPV6_EXT : REASON_PASS_OTHER_PROTO;
	return XDP_PASS;
}

/* The Ethernet header and at most one 802.1Q tag. */
struct l2_header {
	void *l3;        /* where the L3 header starts */
	__be16 proto;    /* its ethertype, network order (a second tag, QinQ, is not parsed) */
	__be16 vlan_tci; /* network order, valid when len == 18 */
	__u32 len;       /* 14, or 18 with an 802.1Q tag */
};

/* PARSE_OK with *l2 filled, or XDP_DROP with *reason (header cut short). Shared with sluice_decap.bpf.c. */
static __always_inline int parse_eth(void *data, void *end, struct l2_header *l2, __u32 *reason)
{
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end) {
		*reason = REASON_DROP_TRUNCATED_L2;
		return XDP_DROP;
	}
	l2->proto = eth->h_proto;
	l2->l3 = (void *)(eth + 1);
	l2->len = sizeof(*eth);
	if (l2->proto == bpf_htons(ETHTYPE_VLAN)) {
		__be16 *tag = (void *)(eth + 1); /* TCI, then the encapsulated type */
		if ((void *)(tag + 2) > end) {
			*reason = REASON_DROP_TRUNCATED_L2;
			return XDP_DROP;
		}
		l2->vlan_tci = tag[0];
		l2->proto = tag[1];
		l2->len += 4;
		l2->l3 = tag + 2;
	}
	return PARSE_OK;
}

/* Parse one frame. Malformed or truncated headers -> XDP_DROP (the kernel would discard them too);
 * anything sluice does not balance (not IP, fragments, options, extension headers) -> XDP_PASS. */
static __always_inline int parse_packet(struct xdp_md *ctx, struct packet *pkt, __u32 *reason)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct l2_header l2 = {};
	int verdict;

	pkt->frame_len = end - data;
	verdict = parse_eth(data, end, &l2, reason);
	if (verdict != PARSE_OK)
		return verdict;
	pkt->l2_len = l2.len;
	pkt->vlan_tci = l2.vlan_tci;
	if (l2.proto == bpf_htons(ETHTYPE_IPV4))
		return parse_ipv4(l2.l3, end, pkt, reason);
	if (l2.proto == bpf_htons(ETHTYPE_IPV6))
		return parse_ipv6(l2.l3, end, pkt, reason);
	*reason = REASON_PASS_NOT_IP;
	return XDP_PASS;
}

#endif
