/* proxy_header_v2.c: PROXY protocol v2, the binary block and its TLVs: parsed and built as
 * core/proxy_protocol.py does. */
#include <string.h>

#include "proxy_header_formats.h"

#define V2_VERSION 0x2
#define V2_CMD_LOCAL 0x0
#define V2_CMD_PROXY 0x1
#define TLV_HEAD_LENGTH 3 /* type, length (2 bytes, network order) */
#define PP2_TYPE_CRC32C 0x03
#define PP2_TYPE_UNIQUE_ID 0x05
#define PP2_TYPE_SSL 0x20
#define UNIQUE_ID_MAX_LENGTH 128
#define SSL_TLV_PREFIX_LENGTH 5

const uint8_t V2_SIGNATURE[V2_SIGNATURE_LENGTH] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                                   0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* CRC32c (Castagnoli, reflected polynomial 0x82F63B78), one entry per byte value. */
static const uint32_t CRC32C_TABLE[256] = {
    0x00000000, 0xf26b8303, 0xe13b70f7, 0x1350f3f4, 0xc79a971f, 0x35f1141c,
    0x26a1e7e8, 0xd4ca64eb, 0x8ad958cf, 0x78b2dbcc, 0x6be22838, 0x9989ab3b,
    0x4d43cfd0, 0xbf284cd3, 0xac78bf27, 0x5e133c24, 0x105ec76f, 0xe235446c,
    0xf165b798, 0x030e349b, 0xd7c45070, 0x25afd373, 0x36ff2087, 0xc494a384,
    0x9a879fa0, 0x68ec1ca3, 0x7bbcef57, 0x89d76c54, 0x5d1d08bf, 0xaf768bbc,
    0xbc267848, 0x4e4dfb4b, 0x20bd8ede, 0xd2d60ddd, 0xc186fe29, 0x33ed7d2a,
    0xe72719c1, 0x154c9ac2, 0x061c6936, 0xf477ea35, 0xaa64d611, 0x580f5512,
    0x4b5fa6e6, 0xb93425e5, 0x6dfe410e, 0x9f95c20d, 0x8cc531f9, 0x7eaeb2fa,
    0x30e349b1, 0xc288cab2, 0xd1d83946, 0x23b3ba45, 0xf779deae, 0x05125dad,
    0x1642ae59, 0xe4292d5a, 0xba3a117e, 0x4851927d, 0x5b016189, 0xa96ae28a,
    0x7da08661, 0x8fcb0562, 0x9c9bf696, 0x6ef07595, 0x417b1dbc, 0xb3109ebf,
    0xa0406d4b, 0x522bee48, 0x86e18aa3, 0x748a09a0, 0x67dafa54, 0x95b17957,
    0xcba24573, 0x39c9c670, 0x2a993584, 0xd8f2b687, 0x0c38d26c, 0xfe53516f,
    0xed03a29b, 0x1f682198, 0x5125dad3, 0xa34e59d0, 0xb01eaa24, 0x42752927,
    0x96bf4dcc, 0x64d4cecf, 0x77843d3b, 0x85efbe38, 0xdbfc821c, 0x2997011f,
    0x3ac7f2eb, 0xc8ac71e8, 0x1c661503, 0xee0d9600, 0xfd5d65f4, 0x0f36e6f7,
    0x61c69362, 0x93ad1061, 0x80fde395, 0x72966096, 0xa65c047d, 0x5437877e,
    0x4767748a, 0xb50cf789, 0xeb1fcbad, 0x197448ae, 0x0a24bb5a, 0xf84f3859,
    0x2c855cb2, 0xdeeedfb1, 0xcdbe2c45, 0x3fd5af46, 0x7198540d, 0x83f3d70e,
    0x90a324fa, 0x62c8a7f9, 0xb602c312, 0x44694011, 0x5739b3e5, 0xa55230e6,
    0xfb410cc2, 0x092a8fc1, 0x1a7a7c35, 0xe811ff36, 0x3cdb9bdd, 0xceb018de,
    0xdde0eb2a, 0x2f8b6829, 0x82f63b78, 0x709db87b, 0x63cd4b8f, 0x91a6c88c,
    0x456cac67, 0xb7072f64, 0xa457dc90, 0x563c5f93, 0x082f63b7, 0xfa44e0b4,
    0xe9141340, 0x1b7f9043, 0xcfb5f4a8, 0x3dde77ab, 0x2e8e845f, 0xdce5075c,
    0x92a8fc17, 0x60c37f14, 0x73938ce0, 0x81f80fe3, 0x55326b08, 0xa759e80b,
    0xb4091bff, 0x466298fc, 0x1871a4d8, 0xea1a27db, 0xf94ad42f, 0x0b21572c,
    0xdfeb33c7, 0x2d80b0c4, 0x3ed04330, 0xccbbc033, 0xa24bb5a6, 0x502036a5,
    0x4370c551, 0xb11b4652, 0x65d122b9, 0x97baa1ba, 0x84ea524e, 0x7681d14d,
    0x2892ed69, 0xdaf96e6a, 0xc9a99d9e, 0x3bc21e9d, 0xef087a76, 0x1d63f975,
    0x0e330a81, 0xfc588982, 0xb21572c9, 0x407ef1ca, 0x532e023e, 0xa145813d,
    0x758fe5d6, 0x87e466d5, 0x94b49521, 0x66df1622, 0x38cc2a06, 0xcaa7a905,
    0xd9f75af1, 0x2b9cd9f2, 0xff56bd19, 0x0d3d3e1a, 0x1e6dcdee, 0xec064eed,
    0xc38d26c4, 0x31e6a5c7, 0x22b65633, 0xd0ddd530, 0x0417b1db, 0xf67c32d8,
    0xe52cc12c, 0x1747422f, 0x49547e0b, 0xbb3ffd08, 0xa86f0efc, 0x5a048dff,
    0x8ecee914, 0x7ca56a17, 0x6ff599e3, 0x9d9e1ae0, 0xd3d3e1ab, 0x21b862a8,
    0x32e8915c, 0xc083125f, 0x144976b4, 0xe622f5b7, 0xf5720643, 0x07198540,
    0x590ab964, 0xab613a67, 0xb831c993, 0x4a5a4a90, 0x9e902e7b, 0x6cfbad78,
    0x7fab5e8c, 0x8dc0dd8f, 0xe330a81a, 0x115b2b19, 0x020bd8ed, 0xf0605bee,
    0x24aa3f05, 0xd6c1bc06, 0xc5914ff2, 0x37faccf1, 0x69e9f0d5, 0x9b8273d6,
    0x88d28022, 0x7ab90321, 0xae7367ca, 0x5c18e4c9, 0x4f48173d, 0xbd23943e,
    0xf36e6f75, 0x0105ec76, 0x12551f82, 0xe03e9c81, 0x34f4f86a, 0xc69f7b69,
    0xd5cf889d, 0x27a40b9e, 0x79b737ba, 0x8bdcb4b9, 0x988c474d, 0x6ae7c44e,
    0xbe2da0a5, 0x4c4623a6, 0x5f16d052, 0xad7d5351,
};

static uint32_t crc32c_update(uint32_t crc, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        crc = CRC32C_TABLE[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
    return crc;
}

/* crc32c of the header with the 4 checksum bytes at `at` read as zeros. */
static uint32_t crc32c_zeroed(const uint8_t *header, size_t total, size_t at)
{
    static const uint8_t zeros[4];
    uint32_t crc = 0xFFFFFFFFu;
    crc = crc32c_update(crc, header, at);
    crc = crc32c_update(crc, zeros, 4);
    crc = crc32c_update(crc, header + at + 4, total - at - 4);
    return crc ^ 0xFFFFFFFFu;
}

/* _parse_tlvs: TLVs must tile buf[start .. end - 1] exactly. */
static int tlvs_tile(const uint8_t *buf, size_t start, size_t end)
{
    size_t off = start;
    while (off < end) {
        if (end - off < TLV_HEAD_LENGTH)
            return -1;
        size_t value_end = off + TLV_HEAD_LENGTH + be16(buf + off + 1);
        if (value_end > end)
            return -1;
        off = value_end;
    }
    return 0;
}

/* _parse_tlvs + _check_tlvs over the header's TLV region [start, total). */
static int v2_tlvs(const uint8_t *header, size_t start, size_t total)
{
    if (tlvs_tile(header, start, total) < 0)
        return -1;
    size_t crc_at = 0;
    for (size_t off = start; off < total;) {
        uint8_t kind = header[off];
        size_t length = be16(header + off + 1);
        size_t value = off + TLV_HEAD_LENGTH;
        if (kind == PP2_TYPE_CRC32C) {
            if (length != 4 || crc_at != 0)
                return -1; /* wrong size, or a second CRC32C */
            crc_at = value;
        } else if (kind == PP2_TYPE_UNIQUE_ID && length > UNIQUE_ID_MAX_LENGTH) {
            return -1;
        } else if (kind == PP2_TYPE_SSL) {
            if (length < SSL_TLV_PREFIX_LENGTH ||
                tlvs_tile(header, value + SSL_TLV_PREFIX_LENGTH, value + length) < 0)
                return -1;
        }
        off = value + length;
    }
    if (crc_at != 0 && be32(header + crc_at) != crc32c_zeroed(header, total, crc_at))
        return -1;
    return 0;
}

/* Bytes of address block a fam byte needs, or -1 for a fam byte the parser rejects. */
static int v2_address_length(uint8_t fam)
{
    switch (fam) {
    case 0x00:
        return 0; /* AF_UNSPEC: ignored */
    case 0x11:
    case 0x12:
        return 12;
    case 0x21:
    case 0x22:
        return 36;
    case 0x31:
    case 0x32:
        return 216; /* AF_UNIX: not supported, falls back to UNSPEC */
    default:
        return -1;
    }
}

/* _parse_v2: `len` already capped at max(max_length, 107). */
int proxy_v2_parse(const uint8_t *buf, size_t len, size_t max_length, struct proxy_addrs *out)
{
    size_t head = len < V2_SIGNATURE_LENGTH ? len : V2_SIGNATURE_LENGTH;
    if (memcmp(buf, V2_SIGNATURE, head) != 0)
        return PROXY_PARSE_INVALID;
    if (len <= V2_SIGNATURE_LENGTH)
        return PROXY_PARSE_INCOMPLETE;
    uint8_t ver_cmd = buf[12];
    uint8_t command = ver_cmd & 0x0F;
    if (ver_cmd >> 4 != V2_VERSION || (command != V2_CMD_LOCAL && command != V2_CMD_PROXY))
        return PROXY_PARSE_INVALID;
    if (len < 14)
        return PROXY_PARSE_INCOMPLETE;
    uint8_t fam = buf[13];
    int address_length = v2_address_length(fam);
    if (address_length < 0)
        return PROXY_PARSE_INVALID;
    if (len < V2_FIXED_LENGTH)
        return PROXY_PARSE_INCOMPLETE;
    size_t length = be16(buf + 14);
    size_t total = V2_FIXED_LENGTH + length;
    if (total > max_length)
        return PROXY_PARSE_INVALID;
    if (command == V2_CMD_PROXY && length < (size_t)address_length)
        return PROXY_PARSE_INVALID;
    if (len < total)
        return PROXY_PARSE_INCOMPLETE;
    struct proxy_addrs parsed;
    memset(&parsed, 0, sizeof(parsed));
    if (command == V2_CMD_PROXY && fam != 0x00) { /* LOCAL and AF_UNSPEC ignore the block */
        if (v2_tlvs(buf, V2_FIXED_LENGTH + (size_t)address_length, total) < 0)
            return PROXY_PARSE_INVALID;
        const uint8_t *block = buf + V2_FIXED_LENGTH;
        if (address_length == 12) {
            parsed.family = 4;
            memcpy(parsed.src, block, 4);
            memcpy(parsed.dst, block + 4, 4);
            parsed.src_port = be16(block + 8);
            parsed.dst_port = be16(block + 10);
        } else if (address_length == 36) {
            parsed.family = 6;
            memcpy(parsed.src, block, 16);
            memcpy(parsed.dst, block + 16, 16);
            parsed.src_port = be16(block + 32);
            parsed.dst_port = be16(block + 34);
        }
    }
    if (out)
        *out = parsed;
    return (int)total;
}

int proxy_v2_build(uint8_t header[PROXY_HEADER_BUILD_MAX], int udp, int family, const struct proxy_addrs *a)
{
    memcpy(header, V2_SIGNATURE, V2_SIGNATURE_LENGTH);
    size_t ip_length = family == 4 ? 4 : family == 6 ? 16 : 0;
    size_t block = family == 0 ? 0 : 2 * ip_length + 4;
    header[12] = (uint8_t)(V2_VERSION << 4 | (family == 0 ? V2_CMD_LOCAL : V2_CMD_PROXY));
    header[13] = (uint8_t)(family == 0 ? 0x00 : (family == 4 ? 0x10 : 0x20) | (udp ? 0x02 : 0x01));
    header[14] = (uint8_t)(block >> 8);
    header[15] = (uint8_t)block;
    size_t n = V2_FIXED_LENGTH;
    if (family != 0) {
        memcpy(header + n, a->src, ip_length);
        memcpy(header + n + ip_length, a->dst, ip_length);
        n += 2 * ip_length;
        header[n++] = (uint8_t)(a->src_port >> 8);
        header[n++] = (uint8_t)a->src_port;
        header[n++] = (uint8_t)(a->dst_port >> 8);
        header[n++] = (uint8_t)a->dst_port;
    }
    return (int)n;
}
