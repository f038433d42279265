/* proxy_header_fuzz.c: libFuzzer target for the native engine's PROXY parser (proxy_header.c).
 *
 * Built by tests/fuzz/test_engine_proxy_header_fuzz.py with
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
 * ASan catches any read past the input (libFuzzer hands over an exactly sized copy); the invariants
 * below abort on a wrong answer. Agreement with core/proxy_protocol.py is checked afterwards by
 * replaying the corpus through both parsers.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy_header.h"

/* the v2 fixed part, IPv6 v2, one under the v1 limit, the engine's limit */
static const size_t MAX_LENGTHS[] = {16, 52, 106, PROXY_HEADER_MAX};

#define CHECK(cond)                                                                                    \
    do {                                                                                               \
        if (!(cond))                                                                                   \
            abort();                                                                                   \
    } while (0)

static int same_addrs(const struct proxy_addrs *a, const struct proxy_addrs *b)
{
    size_t ip = a->family == 4 ? 4 : 16;
    return a->family == b->family && a->src_port == b->src_port && a->dst_port == b->dst_port &&
           memcmp(a->src, b->src, ip) == 0 && memcmp(a->dst, b->dst, ip) == 0;
}

/* What a built header parses back to: the same addresses. */
static void check_round_trip(const struct proxy_addrs *a)
{
    for (int version = 1; version <= 2; version++) {
        uint8_t header[PROXY_HEADER_BUILD_MAX];
        int n = proxy_header_build(header, sizeof(header), version, 0, a);
        CHECK(n > 0 && (size_t)n <= sizeof(header));
        struct proxy_addrs back;
        CHECK(proxy_header_parse(header, (size_t)n, PROXY_HEADER_MAX, &back) == n);
        CHECK(same_addrs(a, &back));
    }
}

static void check_one(const uint8_t *data, size_t len, size_t max_length)
{
    struct proxy_addrs a, b;
    memset(&a, 0xA5, sizeof(a));
    int r = proxy_header_parse(data, len, max_length, &a);
    CHECK(r >= PROXY_PARSE_INVALID);
    if (r > 0) {
        /* a header fits both the bytes received and the limit; it alone gives the same answer, and
         * one byte less is still a valid prefix */
        CHECK((size_t)r <= len && (size_t)r <= max_length);
        CHECK(a.family == 0 || a.family == 4 || a.family == 6);
        CHECK(proxy_header_parse(data, (size_t)r, max_length, &b) == r && same_addrs(&a, &b));
        CHECK(proxy_header_parse(data, (size_t)r - 1, max_length, &b) == PROXY_PARSE_INCOMPLETE);
        if (a.family != 0)
            check_round_trip(&a);
    } else if (r == PROXY_PARSE_INCOMPLETE) {
        /* waiting for more is only possible below the limit */
        CHECK(len < max_length);
    }
    /* An error is final and a complete header stays complete: what a prefix answered, the whole
     * input answers too (with the same header). */
    const size_t prefixes[] = {len / 2, len > 0 ? len - 1 : 0, 16};
    for (size_t k = 0; k < sizeof(prefixes) / sizeof(prefixes[0]); k++) {
        if (prefixes[k] > len)
            continue;
        int p = proxy_header_parse(data, prefixes[k], max_length, &b);
        if (p == PROXY_PARSE_INVALID)
            CHECK(r == PROXY_PARSE_INVALID);
        else if (p > 0)
            CHECK(r == p && same_addrs(&a, &b));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    for (size_t i = 0; i < sizeof(MAX_LENGTHS) / sizeof(MAX_LENGTHS[0]); i++)
        check_one(data, len, MAX_LENGTHS[i]);
    /* below the v2 fixed part no header fits: always an error */
    CHECK(proxy_header_parse(data, len, 15, NULL) == PROXY_PARSE_INVALID);
    return 0;
}
