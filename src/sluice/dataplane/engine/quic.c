/* quic.c: the server ID in a QUIC short-header packet's connection ID (core/quic.py, in C). */
#include "quic.h"

int64_t quic_server_id(const uint8_t *data, size_t len, unsigned bits)
{
    if (len == 0 || (data[0] & 0x80) != 0)
        return QUIC_LONG_HEADER;
    if (len < 1 + QUIC_MIN_CID_LEN)
        return QUIC_NOT_ROUTABLE;
    uint32_t word = (uint32_t)data[1] << 24 | (uint32_t)data[2] << 16 | (uint32_t)data[3] << 8 | data[4];
    if (word >> 30 != QUIC_CID_VERSION)
        return QUIC_NOT_ROUTABLE;
    return (int64_t)((word >> (30 - bits)) & ((1u << bits) - 1));
}
