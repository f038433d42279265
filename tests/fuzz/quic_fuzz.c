/* quic_fuzz.c: libFuzzer target for the native engine's QUIC server-ID reader (engine/quic.c).
 *
 * Built by tests/fuzz/test_engine_quic_fuzz.py with the sanitizers of proxy_header_fuzz.c. ASan
 * catches a read past the datagram (libFuzzer hands over an exactly sized copy); the invariants below
 * abort on an answer outside the contract of quic.h. Agreement with core/quic.py is checked
 * afterwards by replaying the corpus through both.
 */
#include <stdint.h>
#include <stdlib.h>

#include "quic.h"

#define CHECK(cond)                                                                                    \
    do {                                                                                               \
        if (!(cond))                                                                                   \
            abort();                                                                                   \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    for (unsigned bits = 1; bits <= QUIC_MAX_SERVER_ID_BITS; bits++) {
        int64_t r = quic_server_id(data, len, bits);
        int long_header = len == 0 || (data[0] & 0x80) != 0;
        CHECK((r == QUIC_LONG_HEADER) == long_header);
        CHECK(r >= QUIC_LONG_HEADER && r < ((int64_t)1 << bits));
        if (r > 0)
            CHECK(len >= 1 + QUIC_MIN_CID_LEN && data[1] >> 6 == QUIC_CID_VERSION);
    }
    return 0;
}
