/* proxy_header.h: PROXY protocol v1/v2, parsed and built as core/proxy_protocol.py does. */
#ifndef SLUICE_ENGINE_PROXY_HEADER_H
#define SLUICE_ENGINE_PROXY_HEADER_H

#include <stddef.h>
#include <stdint.h>

/* The most bytes a client may send while the engine looks for its PROXY header (the one source:
 * core/proxy_protocol.py DEFAULT_MAX_LENGTH equals it; a test checks). */
#define PROXY_HEADER_MAX 536

/* Room for any header proxy_header_build writes: a v1 line is at most 107 bytes (the longest it
 * writes, TCP6, is 104); v2 with IPv6 is 52. */
#define PROXY_HEADER_BUILD_MAX 107

enum proxy_parse_result {
    PROXY_PARSE_INCOMPLETE = 0, /* a valid prefix: read more (up to max_length bytes) */
    PROXY_PARSE_INVALID = -1,   /* not, and never can become, a valid header */
};

/* A parsed header's addresses. family 0: no addresses (v1 UNKNOWN, v2 LOCAL / AF_UNSPEC / AF_UNIX):
 * the connection's real endpoints apply. Otherwise 4 or 6; IPv4 in the first 4 bytes of src/dst. */
struct proxy_addrs {
    int family;
    uint8_t src[16];
    uint8_t dst[16];
    uint16_t src_port; /* host byte order */
    uint16_t dst_port; /* host byte order */
};

/* Parse the start of `buf` (`len` bytes) as core.proxy_protocol.parse_proxy_header(buf, max_length)
 * would: returns the header length (> 0) and fills `out` when a whole valid header is there,
 * PROXY_PARSE_INCOMPLETE when more bytes are needed, PROXY_PARSE_INVALID when Python raises
 * ProxyHeaderError (also for max_length < 16, where Python raises ValueError). Never reads past
 * buf[len - 1]; `out` may be NULL when only the answer matters. */
int proxy_header_parse(const uint8_t *buf, size_t len, size_t max_length, struct proxy_addrs *out);

/* Write the header core.proxy_protocol.build_proxy_header(version, src, dst, transport) returns:
 * version 1 or 2, udp 0 (tcp) or 1, `a->family` 4 or 6 (0: v1 "PROXY UNKNOWN", v2 LOCAL).
 * Returns the length written, or -1 when `cap` is too small or the arguments are invalid
 * (v1 with udp and addresses; v1 with udp and family 0 writes "PROXY UNKNOWN" as Python does). */
int proxy_header_build(uint8_t *out, size_t cap, int version, int udp, const struct proxy_addrs *a);

#endif
