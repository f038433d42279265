/* xdp_structs.h - every struct shared between the XDP programs and Python (sluice/dataplane/xdp/maps.py). */
/* One source of truth: maps.py mirrors these with ctypes, and tests/dataplane/xdp/test_layout.py
 * compares sizes and offsets against the BTF of the compiled object. Addresses are always 16 bytes;
 * IPv4 is stored IPv4-mapped (::ffff:a.b.c.d), the same form core/flow.py hashes.
 */
#ifndef SLUICE_XDP_STRUCTS_H
#define SLUICE_XDP_STRUCTS_H

#include <linux/types.h>

/* Connection-table key and flow-hash input: byte for byte the 40-byte key of core/flow.py. */
struct flow_key {
	__u8 src[16];  /* client address, network order, IPv4-mapped */
	__u8 dst[16];  /* VIP address, network order, IPv4-mapped */
	__be16 sport;  /* network order */
	__be16 dport;  /* network order */
	__u8 proto;    /* PROTO_TCP / PROTO_UDP */
	__u8 pad[3];   /* zero */
};

/* Connection-table value (one for all CPUs). */
struct ct_entry {
	__u32 backend;      /* index into `backends` */
	__u32 hash;         /* host order: the flow hash (flow_hash.h), kept so a hit needs no hashing */
	__u64 last_seen_ns; /* CLOCK_MONOTONIC ns of the last packet, to the coarse clock's period */
};

/* VIP key: what a packet is addressed to. */
struct vip_key {
	__u8 addr[16]; /* network order, IPv4-mapped */
	__be16 port;   /* network order */
	__u8 proto;    /* PROTO_TCP / PROTO_UDP */
	__u8 pad;
};

/* VIP value: how to balance and forward its packets. */
struct vip_meta {
	__u32 index;           /* 0..MAX_VIPS-1: row of the Maglev array and of vip_stats */
	__u32 maglev_size;     /* this VIP's prime M (<= MAGLEV_SIZE) */
	__u64 idle_ns;         /* connection entries (TCP and UDP) idle longer than this are re-hashed */
	__u8 fwd;              /* FWD_L2 / FWD_IPIP */
	__u8 flags;            /* VIP_F_HASH_KEYED, else 0 */
	__u8 src_mac[6];       /* source MAC of forwarded frames: the LB interface's */
	__u8 outer_src[16];    /* ipip: outer source prefix, network order, IPv4-mapped for IPv4 */
	__u32 outer_hash_mask; /* ipip: host order; these bits of the prefix's last 32-bit word come from the flow hash */
	__u32 quic_bits;       /* QUIC connection-ID routing: server ID bits (1..30), 0 = off (quic.h) */
	__u64 hash_key[2];     /* VIP_F_HASH_KEYED: the secret SipHash key k0, k1 (host order: hash_key bytes
	                        * 0..7 and 8..15 read little-endian); zero otherwise */
};

/* quic_ids key: one server ID of one VIP. */
struct quic_id_key {
	__u32 vip_index; /* vip_meta.index */
	__u32 server_id; /* host order, 1 .. 2^quic_bits - 1 */
};

/* One backend slot. */
struct backend {
	__u8 addr[16];   /* network order, IPv4-mapped: the ipip outer destination */
	__u8 mac[6];     /* destination MAC: the backend's (l2) or the next hop's (ipip) */
	__u8 family;     /* FAMILY_V4 / FAMILY_V6 */
	__u8 flags;      /* BACKEND_F_ACTIVE */
	__u32 vip_index; /* the VIP this slot belongs to */
	__be16 port;     /* network order; informational (DSR cannot remap ports) */
	__u16 pad;
};

/* Global counters (per CPU): one field per reason a packet was passed or dropped before a VIP
 * was found. The program counts by field index (offsetof / 8), so the order here is free. */
struct global_stats {
	__u64 rx_packets;          /* every packet the program saw */
	__u64 pass_not_ip;         /* ARP, LLDP, QinQ, ... */
	__u64 pass_other_proto;    /* IP but not TCP/UDP/ICMP */
	__u64 pass_not_vip;        /* TCP/UDP (or ICMP about a flow) not addressed to a VIP */
	__u64 pass_ipv4_fragment;  /* IPv4 fragments (MF set or offset != 0) */
	__u64 pass_ipv4_options;   /* IPv4 header with options (ihl > 5) */
	__u64 pass_ipv6_ext;       /* IPv6 with extension headers (incl. fragment header) */
	__u64 pass_icmp_other;     /* ICMP that is not "fragmentation needed"/"packet too big" about TCP/UDP */
	__u64 drop_truncated_l2;   /* Ethernet or 802.1Q header cut short */
	__u64 drop_truncated_l3;   /* IPv4/IPv6 header cut short, or total length beyond the frame */
	__u64 drop_bad_l3;         /* wrong IP version, ihl < 5, total length < IP header */
	__u64 drop_truncated_l4;   /* TCP/UDP/ICMP header (or ICMP's quoted header) cut short by the frame or
	                            * the IP length (IPv4 total length / IPv6 payload length) */
	__u64 drop_bad_l4;         /* TCP data offset < 5 or beyond the IP packet, UDP length < 8 or beyond it */
};

/* Per VIP counters (per CPU). */
struct vip_stats {
	__u64 packets;          /* forwarded to a backend */
	__u64 bytes;            /* frame bytes as received (before encapsulation) */
	__u64 new_flows;        /* TCP SYNs and new/expired UDP flows */
	__u64 ct_hits;          /* packets that used their connection entry */
	__u64 ct_misses;        /* TCP non-SYN without a usable entry (none, expired, removed backend): Maglev */
	__u64 expired;          /* entries ignored because idle longer than idle_ns (TCP and UDP) */
	__u64 icmp_forwarded;   /* "too big" ICMP sent to the flow's backend */
	__u64 drop_no_backend;  /* the Maglev slot is empty (no backend with weight) */
	__u64 drop_encap;       /* encapsulation impossible (adjust_head failed, oversize) */
	__u64 quic_routed;      /* QUIC short-header packets sent to the backend their CID names */
	__u64 quic_fallback;    /* QUIC short-header packets whose CID named no usable backend: hashed */
};

/* Per backend counters (per CPU). */
struct backend_stats {
	__u64 packets;   /* forwarded to this backend */
	__u64 bytes;     /* frame bytes as received */
	__u64 new_flows; /* flows assigned to it by Maglev */
};

/* Decap program counters (per CPU). */
struct decap_stats {
	__u64 decapsulated; /* outer header stripped, inner packet passed up */
	__u64 passed;       /* not IP-in-IP: passed unchanged */
	__u64 dropped;      /* IP-in-IP but truncated */
};

#endif
