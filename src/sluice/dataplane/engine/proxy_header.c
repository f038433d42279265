/* proxy_header.c: PROXY protocol v1/v2, parsed and built as core/proxy_protocol.py does: which
 * format, then proxy_header_v1.c (text) or proxy_header_v2.c (binary, TLVs). */
#include <string.h>

#include "proxy_header_formats.h"

int proxy_header_parse(const uint8_t *buf, size_t len, size_t max_length, struct proxy_addrs *out)
{
    if (max_length < V2_FIXED_LENGTH)
        return PROXY_PARSE_INVALID; /* Python raises ValueError: a caller's bug, never valid */
    /* Neither format can use more than max(max_length, 107) bytes. */
    size_t cap = max_length > V1_MAX_LENGTH ? max_length : V1_MAX_LENGTH;
    if (len > cap)
        len = cap;
    if (len == 0)
        return PROXY_PARSE_INCOMPLETE;
    if (buf[0] == V1_PREFIX[0])
        return proxy_v1_parse(buf, len, max_length < V1_MAX_LENGTH ? max_length : V1_MAX_LENGTH, out);
    if (buf[0] == V2_SIGNATURE[0])
        return proxy_v2_parse(buf, len, max_length, out);
    return PROXY_PARSE_INVALID;
}

int proxy_header_build(uint8_t *out, size_t cap, int version, int udp, const struct proxy_addrs *a)
{
    uint8_t header[PROXY_HEADER_BUILD_MAX];
    int n;
    int family = a ? a->family : 0;
    if ((udp != 0 && udp != 1) || (family != 0 && family != 4 && family != 6))
        return -1;
    if (version == 1)
        n = proxy_v1_build(header, udp, family, a);
    else if (version == 2)
        n = proxy_v2_build(header, udp, family, a);
    else
        return -1;
    if (n < 0 || (size_t)n > cap)
        return -1;
    memcpy(out, header, (size_t)n);
    return n;
}
