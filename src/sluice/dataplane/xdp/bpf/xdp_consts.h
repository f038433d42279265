/* xdp_consts.h - sizes, flags and protocol numbers of the sluice XDP program. */
#ifndef SLUICE_XDP_CONSTS_H
#define SLUICE_XDP_CONSTS_H

/* Sizes: the loader passes every one of these with -D from the config, so C and Python cannot
 * drift. The defaults only serve a bare `clang` run. */
#ifndef MAX_VIPS
#define MAX_VIPS 64 /* VIP slots (vip_meta.index < MAX_VIPS) */
#endif
#ifndef MAX_BACKENDS
#define MAX_BACKENDS 1024 /* backend slots shared by all VIPs */
#endif
#ifndef MAGLEV_SIZE
#define MAGLEV_SIZE 65537 /* largest Maglev table size M of any VIP (a prime) */
#endif
#ifndef CT_SIZE
#define CT_SIZE 65536 /* connection table entries (one table for all CPUs, LRU) */
#endif

/* Maglev slot and connection entries use this for "no backend". */
#define NO_BACKEND 0xffffffffu

/* vip_meta.fwd: how packets reach the backend. */
#define FWD_L2 0   /* rewrite MACs, XDP_TX on the same segment */
#define FWD_IPIP 1 /* IPv4-in-IPv4 / IPv6-in-IPv6 (by backend family), XDP_TX to the next hop */

/* vip_meta.flags */
#define VIP_F_HASH_KEYED 0x1 /* the VIP has a hash_key: new flows hash with SipHash-1-3 (flow_hash.h) */

/* QUIC connection-ID routing (quic.h, core/quic.py): a short-header packet's payload must hold the
 * flags byte and QUIC_MIN_CID_LEN bytes of destination CID; 2 bits of CID version, then vip_meta.quic_bits. */
#define QUIC_MIN_CID_LEN 8
#define QUIC_MIN_PAYLOAD (1 + QUIC_MIN_CID_LEN)
#define QUIC_CID_VERSION 1
#define QUIC_MAX_SERVER_ID_BITS 30

/* backend.flags */
#define BACKEND_F_ACTIVE 0x1 /* slot in use; connection entries to an inactive slot are ignored */

/* Address families as stored in struct backend.family. */
#define FAMILY_V4 4
#define FAMILY_V6 6

/* Outer header of IP-in-IP. */
#define OUTER_TTL 64

/* Protocol numbers (IANA) and Ethernet types (host order; compare with bpf_htons()). */
#define PROTO_ICMP 1
#define PROTO_IPIP 4
#define PROTO_TCP 6
#define PROTO_UDP 17
#define PROTO_IPV6 41
#define PROTO_ICMPV6 58
#define ETHTYPE_IPV4 0x0800
#define ETHTYPE_IPV6 0x86dd
#define ETHTYPE_VLAN 0x8100

#define ICMP_DEST_UNREACH 3
#define ICMP_FRAG_NEEDED 4
#define ICMPV6_PKT_TOOBIG 2

#define IPV4_MF 0x2000
#define IPV4_OFFSET 0x1fff

#endif
