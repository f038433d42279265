/* quic.h: the server ID in a QUIC short-header packet's connection ID (core/quic.py, in C). */
#ifndef SLUICE_ENGINE_QUIC_H
#define SLUICE_ENGINE_QUIC_H

#include <stddef.h>
#include <stdint.h>

#define QUIC_LONG_HEADER (-1)    /* not a short-header packet (or empty): hash it */
#define QUIC_NOT_ROUTABLE 0      /* short header without a usable server ID: hash, count quic_fallback */
#define QUIC_CID_VERSION 1       /* top 2 bits of the CID's first byte */
#define QUIC_MIN_CID_LEN 8       /* bytes of destination CID a short-header packet must have room for */
#define QUIC_MAX_SERVER_ID_BITS 30

/* core.quic.read_server_id: QUIC_LONG_HEADER, QUIC_NOT_ROUTABLE or the server ID (1 .. 2^bits - 1)
 * in the first 32 bits of the destination CID: 2 bits of CID version (1), then `bits` of server ID.
 * `bits` is 1..QUIC_MAX_SERVER_ID_BITS (checked by the caller). Reads at most 5 bytes of `data`. */
int64_t quic_server_id(const uint8_t *data, size_t len, unsigned bits);

#endif
