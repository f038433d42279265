/* proxy_header_formats.h: the PROXY header's two formats as proxy_header.c calls them: v1 text
 * (proxy_header_v1.c) and v2 binary with its TLVs (proxy_header_v2.c). Only the proxy_header*.c
 * files include it; everyone else uses proxy_header.h.
 *
 * Every rule of those files is core/proxy_protocol.py's; the Python function each block mirrors is
 * named. The parsers read only buf[0 .. len - 1] and allocate nothing. */
#ifndef SLUICE_ENGINE_PROXY_HEADER_FORMATS_H
#define SLUICE_ENGINE_PROXY_HEADER_FORMATS_H

#include <stddef.h>
#include <stdint.h>

#include "proxy_header.h"

#define V1_MAX_LENGTH 107  /* bytes, CRLF included */
#define V1_PREFIX_LENGTH 6 /* "PROXY " */
#define V2_SIGNATURE_LENGTH 12
#define V2_FIXED_LENGTH 16 /* signature, ver_cmd, fam, len */

_Static_assert(PROXY_HEADER_BUILD_MAX >= V1_MAX_LENGTH, "a v1 line fits the build buffer");

extern const uint8_t V1_PREFIX[V1_PREFIX_LENGTH];
extern const uint8_t V2_SIGNATURE[V2_SIGNATURE_LENGTH];

static inline uint16_t be16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

/* _parse_v1: `len` already capped at max(max_length, 107); `limit` = min(107, max_length). */
int proxy_v1_parse(const uint8_t *buf, size_t len, size_t limit, struct proxy_addrs *out);
/* _parse_v2: `len` already capped at max(max_length, 107). */
int proxy_v2_parse(const uint8_t *buf, size_t len, size_t max_length, struct proxy_addrs *out);

/* proxy_header_build's line or block for `family` (0, 4, 6; `a` may be NULL for 0) into `header`:
 * the length, or -1 (v1 with udp and addresses). */
int proxy_v1_build(uint8_t header[PROXY_HEADER_BUILD_MAX], int udp, int family, const struct proxy_addrs *a);
int proxy_v2_build(uint8_t header[PROXY_HEADER_BUILD_MAX], int udp, int family, const struct proxy_addrs *a);

#endif
