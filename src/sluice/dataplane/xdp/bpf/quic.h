/* quic.h - QUIC connection-ID routing: the server ID in a short-header packet's CID (core/quic.py). */
#ifndef SLUICE_QUIC_H
#define SLUICE_QUIC_H

#include <linux/types.h>
#include "xdp_consts.h"
#include "parse.h"

#define QUIC_LONG_HEADER (-1) /* not a short-header packet (or an empty payload): hash, count nothing */
#define QUIC_NOT_ROUTABLE 0   /* short header without a usable server ID: hash, count quic_fallback */

/* core.quic.read_server_id over the payload bytes parse.h copied: QUIC_LONG_HEADER, QUIC_NOT_ROUTABLE
 * or the server ID. `bits` is vip_meta.quic_bits (1..QUIC_MAX_SERVER_ID_BITS, checked here). */
static __always_inline __s64 quic_server_id(const struct packet *pkt, __u32 bits)
{
	__u32 word;

	if (pkt->udp_head_len == 0 || (pkt->udp_head[0] & 0x80))
		return QUIC_LONG_HEADER;
	if (pkt->udp_head_len < 5 || bits == 0 || bits > QUIC_MAX_SERVER_ID_BITS)
		return QUIC_NOT_ROUTABLE;
	word = (__u32)pkt->udp_head[1] << 24 | (__u32)pkt->udp_head[2] << 16 | (__u32)pkt->udp_head[3] << 8 |
	       pkt->udp_head[4];
	if (word >> 30 != QUIC_CID_VERSION)
		return QUIC_NOT_ROUTABLE;
	return (word >> (30 - bits)) & ((1u << bits) - 1);
}

#endif
