/* checksum.h - the IPv4 header checksum of an outer header sluice builds (XDP encap.h, tc check encap). */
#ifndef SLUICE_CHECKSUM_H
#define SLUICE_CHECKSUM_H

#include <linux/ip.h>
#include <bpf/bpf_helpers.h>

/* The header must be 20 bytes (no options) with its check field zeroed. */
static __always_inline __u16 ipv4_checksum(const struct iphdr *ip)
{
	const __u16 *w = (const __u16 *)ip;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < (int)(sizeof(*ip) / 2); i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

#endif
