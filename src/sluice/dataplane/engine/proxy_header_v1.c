/* proxy_header_v1.c: PROXY protocol v1, the text line: parsed and built as core/proxy_protocol.py does. */
#include <stdio.h>
#include <string.h>

#include "proxy_header_formats.h"

#define V1_FIELDS 5        /* protocol, source, destination, source port, destination port */
#define IPV4_TEXT_MAX 15
#define IPV6_TEXT_MAX 39

const uint8_t V1_PREFIX[V1_PREFIX_LENGTH] = {'P', 'R', 'O', 'X', 'Y', ' '};

enum v1_protocol { V1_TCP4, V1_TCP6, V1_UNKNOWN, V1_OTHER };

struct field {
    const uint8_t *p;
    size_t len;
};

static int field_is(struct field f, const char *text)
{
    size_t n = strlen(text);
    return f.len == n && memcmp(f.p, text, n) == 0;
}

static int is_digit(uint8_t c)
{
    return c >= '0' && c <= '9';
}

static int hex_value(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* ------------------------------------------------------------------------------- address text */

/* _format_ipv6: RFC 5952 (lower case, no leading zeros, "::" for the first longest run of >= 2
 * zero hextets). `text` holds at least IPV6_TEXT_MAX + 1 bytes; returns the length. */
static size_t format_ipv6(const uint8_t packed[16], char *text)
{
    unsigned hextets[9];
    for (int i = 0; i < 8; i++)
        hextets[i] = (unsigned)be16(packed + 2 * i);
    hextets[8] = 1; /* sentinel: closes a trailing run */
    int best_start = -1, best_len = 1, run_start = -1;
    for (int i = 0; i < 9; i++) {
        if (hextets[i] == 0) {
            if (run_start < 0)
                run_start = i;
        } else if (run_start >= 0) {
            if (i - run_start > best_len) {
                best_start = run_start;
                best_len = i - run_start;
            }
            run_start = -1;
        }
    }
    size_t n = 0;
    for (int i = 0; i < 8; i++) {
        if (i == best_start) {
            text[n++] = ':';
            text[n++] = ':';
            i += best_len - 1;
            continue;
        }
        if (n > 0 && text[n - 1] != ':')
            text[n++] = ':';
        n += (size_t)snprintf(text + n, 5, "%x", hextets[i]);
    }
    text[n] = '\0';
    return n;
}

static size_t format_ipv4(const uint8_t packed[4], char *text)
{
    return (size_t)snprintf(text, IPV4_TEXT_MAX + 1, "%u.%u.%u.%u", packed[0], packed[1], packed[2],
                            packed[3]);
}

/* One run of ':'-separated groups of 1 to 4 hex digits (may be empty); returns the group count or
 * -1. */
static int parse_hextets(const uint8_t *s, size_t n, uint16_t *out, int room)
{
    int count = 0;
    size_t i = 0;
    if (n == 0)
        return 0;
    for (;;) {
        unsigned value = 0;
        size_t digits = 0;
        while (i < n && s[i] != ':') {
            int v = hex_value(s[i]);
            if (v < 0 || ++digits > 4)
                return -1;
            value = value << 4 | (unsigned)v;
            i++;
        }
        if (digits == 0 || count == room)
            return -1;
        out[count++] = (uint16_t)value;
        if (i == n)
            return count;
        i++; /* ':' */
        if (i == n)
            return -1; /* trailing ':' */
    }
}

/* Hex IPv6 text with at most one "::" (no dotted tail: the canonical form never has one). */
static int parse_ipv6(const uint8_t *s, size_t n, uint8_t packed[16])
{
    uint16_t head[8], tail[8];
    int n_head, n_tail = 0;
    size_t gap = n;
    for (size_t i = 0; i + 1 < n; i++) {
        if (s[i] == ':' && s[i + 1] == ':') {
            gap = i;
            break;
        }
    }
    if (gap == n) {
        n_head = parse_hextets(s, n, head, 8);
        if (n_head != 8)
            return -1;
    } else {
        n_head = parse_hextets(s, gap, head, 7);
        if (n_head < 0)
            return -1;
        n_tail = parse_hextets(s + gap + 2, n - gap - 2, tail, 7 - n_head);
        if (n_tail < 0)
            return -1;
    }
    memset(packed, 0, 16);
    for (int i = 0; i < n_head; i++) {
        packed[2 * i] = (uint8_t)(head[i] >> 8);
        packed[2 * i + 1] = (uint8_t)head[i];
    }
    for (int i = 0; i < n_tail; i++) {
        int at = 8 - n_tail + i;
        packed[2 * at] = (uint8_t)(tail[i] >> 8);
        packed[2 * at + 1] = (uint8_t)tail[i];
    }
    return 0;
}

/* Dotted decimal without leading zeros: the only IPv4 text whose canonical form is itself. */
static int parse_ipv4_canonical(const uint8_t *s, size_t n, uint8_t packed[4])
{
    size_t i = 0;
    for (int octet = 0; octet < 4; octet++) {
        if (octet > 0) {
            if (i == n || s[i] != '.')
                return -1;
            i++;
        }
        size_t start = i;
        unsigned value = 0;
        while (i < n && is_digit(s[i]) && i - start < 3)
            value = value * 10 + (unsigned)(s[i++] - '0');
        size_t digits = i - start;
        if (digits == 0 || value > 255 || (digits > 1 && s[start] == '0'))
            return -1;
        packed[octet] = (uint8_t)value;
    }
    return i == n ? 0 : -1;
}

/* ------------------------------------------------------------------------------------------- v1 */

static enum v1_protocol v1_protocol_of(struct field f)
{
    if (field_is(f, "TCP4"))
        return V1_TCP4;
    if (field_is(f, "TCP6"))
        return V1_TCP6;
    if (field_is(f, "UNKNOWN"))
        return V1_UNKNOWN;
    return V1_OTHER;
}

/* body.split(b" "): the first `room` fields, and the count of all of them. */
static size_t split_fields(const uint8_t *body, size_t len, struct field *fields, size_t room)
{
    size_t count = 0, start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i == len || body[i] == ' ') {
            if (count < room) {
                fields[count].p = body + start;
                fields[count].len = i - start;
            }
            count++;
            start = i + 1;
        }
    }
    return count;
}

/* _v1_address: the text must be the canonical form of an address of the line's family (IPv6 hex in
 * either case). */
static int v1_address(enum v1_protocol protocol, struct field f, uint8_t out[16])
{
    memset(out, 0, 16);
    if (protocol == V1_TCP4)
        return parse_ipv4_canonical(f.p, f.len, out);
    if (f.len > IPV6_TEXT_MAX || parse_ipv6(f.p, f.len, out) < 0)
        return -1;
    char canonical[IPV6_TEXT_MAX + 1];
    size_t n = format_ipv6(out, canonical);
    if (n != f.len)
        return -1;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = f.p[i];
        if (c >= 'A' && c <= 'F')
            c = (uint8_t)(c - 'A' + 'a');
        if (c != (uint8_t)canonical[i])
            return -1;
    }
    return 0;
}

/* A decimal port: digits only, at most 5, no leading zero, <= 65535. `prefix`: the field may still
 * grow (empty allowed). */
static int v1_port(struct field f, int prefix, uint16_t *out)
{
    if (f.len == 0)
        return prefix ? 0 : -1;
    if (f.len > 5)
        return -1;
    unsigned value = 0;
    for (size_t i = 0; i < f.len; i++) {
        if (!is_digit(f.p[i]))
            return -1;
        value = value * 10 + (unsigned)(f.p[i] - '0');
    }
    if ((f.len > 1 && f.p[0] == '0') || value > 0xFFFF)
        return -1;
    if (out)
        *out = (uint16_t)value;
    return 0;
}

/* _check_v1_field: a complete field (index 1..4) of a TCP4/TCP6 line. */
static int v1_field(enum v1_protocol protocol, size_t index, struct field f, struct proxy_addrs *a)
{
    if (f.len == 0)
        return -1;
    switch (index) {
    case 1:
        return v1_address(protocol, f, a->src);
    case 2:
        return v1_address(protocol, f, a->dst);
    case 3:
        return v1_port(f, 0, &a->src_port);
    default:
        return v1_port(f, 0, &a->dst_port);
    }
}

/* _check_v1_field_prefix: the field still being received (index 1..4). */
static int v1_field_prefix(enum v1_protocol protocol, size_t index, struct field f)
{
    if (index >= 3)
        return v1_port(f, 1, NULL);
    size_t max = protocol == V1_TCP4 ? IPV4_TEXT_MAX : IPV6_TEXT_MAX;
    if (f.len > max)
        return -1;
    for (size_t i = 0; i < f.len; i++) {
        uint8_t c = f.p[i];
        int ok = protocol == V1_TCP4 ? (is_digit(c) || c == '.') : (hex_value(c) >= 0 || c == ':');
        if (!ok)
            return -1;
    }
    return 0;
}

/* _parse_v1_line: the line between "PROXY " and CRLF (printable ASCII). */
static int v1_line(const uint8_t *body, size_t len, struct proxy_addrs *a)
{
    struct field fields[V1_FIELDS];
    size_t count = split_fields(body, len, fields, V1_FIELDS);
    enum v1_protocol protocol = v1_protocol_of(fields[0]);
    memset(a, 0, sizeof(*a));
    if (protocol == V1_UNKNOWN)
        return 0; /* the rest of the line is ignored */
    if (protocol == V1_OTHER || count != V1_FIELDS)
        return -1;
    for (size_t i = 1; i < V1_FIELDS; i++)
        if (v1_field(protocol, i, fields[i], a) < 0)
            return -1;
    a->family = protocol == V1_TCP4 ? 4 : 6;
    return 0;
}

/* _check_v1_partial: can this incomplete line body still become valid? */
static int v1_partial(const uint8_t *body, size_t len)
{
    struct field fields[V1_FIELDS + 1];
    size_t count = split_fields(body, len, fields, V1_FIELDS + 1);
    if (count == 1) {
        static const char *const protocols[] = {"TCP4", "TCP6", "UNKNOWN"};
        for (size_t k = 0; k < 3; k++)
            if (len <= strlen(protocols[k]) && memcmp(body, protocols[k], len) == 0)
                return 0;
        return -1;
    }
    enum v1_protocol protocol = v1_protocol_of(fields[0]);
    if (protocol == V1_UNKNOWN)
        return 0;
    if (protocol == V1_OTHER || count > V1_FIELDS)
        return -1;
    struct proxy_addrs scratch;
    for (size_t i = 1; i + 1 < count; i++)
        if (v1_field(protocol, i, fields[i], &scratch) < 0)
            return -1;
    return v1_field_prefix(protocol, count - 1, fields[count - 1]);
}

/* _parse_v1: `len` already capped at max(max_length, 107); `limit` = min(107, max_length). */
int proxy_v1_parse(const uint8_t *buf, size_t len, size_t limit, struct proxy_addrs *out)
{
    size_t head = len < V1_PREFIX_LENGTH ? len : V1_PREFIX_LENGTH;
    if (memcmp(buf, V1_PREFIX, head) != 0)
        return PROXY_PARSE_INVALID;
    size_t end = len < limit ? len : limit;
    struct proxy_addrs parsed;
    for (size_t i = V1_PREFIX_LENGTH; i < end; i++) {
        uint8_t byte = buf[i];
        if (byte == '\r') {
            if (i + 2 > limit)
                break; /* the LF could only come past the limit */
            if (i + 1 == len) /* the line is complete once the LF arrives: check it now */
                return v1_line(buf + V1_PREFIX_LENGTH, i - V1_PREFIX_LENGTH, &parsed) < 0
                           ? PROXY_PARSE_INVALID
                           : PROXY_PARSE_INCOMPLETE;
            if (buf[i + 1] != '\n')
                return PROXY_PARSE_INVALID;
            if (v1_line(buf + V1_PREFIX_LENGTH, i - V1_PREFIX_LENGTH, &parsed) < 0)
                return PROXY_PARSE_INVALID;
            if (out)
                *out = parsed;
            return (int)(i + 2);
        }
        if (byte == '\n' || byte < 0x20 || byte > 0x7E)
            return PROXY_PARSE_INVALID;
    }
    if (len >= limit)
        return PROXY_PARSE_INVALID; /* no CRLF within the limit */
    if (len <= V1_PREFIX_LENGTH)
        return PROXY_PARSE_INCOMPLETE;
    return v1_partial(buf + V1_PREFIX_LENGTH, len - V1_PREFIX_LENGTH) < 0 ? PROXY_PARSE_INVALID
                                                                          : PROXY_PARSE_INCOMPLETE;
}

static size_t format_ip(int family, const uint8_t ip[16], char *text)
{
    return family == 4 ? format_ipv4(ip, text) : format_ipv6(ip, text);
}

int proxy_v1_build(uint8_t header[PROXY_HEADER_BUILD_MAX], int udp, int family, const struct proxy_addrs *a)
{
    if (family == 0) {
        size_t n = strlen("PROXY UNKNOWN\r\n"); /* whatever the transport, as Python does */
        memcpy(header, "PROXY UNKNOWN\r\n", n);
        return (int)n;
    }
    if (udp)
        return -1; /* v1 carries only TCP */
    char src[IPV6_TEXT_MAX + 1], dst[IPV6_TEXT_MAX + 1];
    format_ip(family, a->src, src);
    format_ip(family, a->dst, dst);
    int written = snprintf((char *)header, PROXY_HEADER_BUILD_MAX, "PROXY TCP%d %s %s %u %u\r\n", family, src, dst,
                           (unsigned)a->src_port, (unsigned)a->dst_port);
    if (written < 0 || (size_t)written >= PROXY_HEADER_BUILD_MAX)
        return -1;
    return written;
}
