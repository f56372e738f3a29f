# cython: language_level=3
"""Native HMAC-SHA256 for the Double Ratchet's per-message key derivations, on the CPU's SHA
instructions: `hmac_sha256`, `kdf_ck` and `message_keys` of gateway.crypto.ratchet_kdf_py.

It owns only those three functions, for 32-byte keys, and must never differ from the pure twin by one
bit: the tests compare the two on random inputs and check both against hashlib's HMAC, RFC 4231 and
libsignal's vector. SHA-256 follows FIPS 180-4 (on SHA256MSG1/MSG2 and SHA256RNDS2);
HMAC RFC 2104, HKDF RFC 5869. Why: each message costs ~22 SHA-256 blocks over a dozen hashlib calls,
~7 µs of Python per message; here ~1.5 µs. Without SHA-NI (`SHANI` false) it refuses to run and the
twin is used.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint32_t

cdef extern from "cpu_features.h":
    int gw_has_shani()

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #include <immintrin.h>

    static const uint32_t GW_K256[64] __attribute__((aligned(16))) = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2
    };
    static const uint32_t GW_H256[8] = {
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19
    };

    /* One block into h[8] (FIPS 180-4, 6.2.2): the message schedule four words at a time with
       SHA256MSG1/MSG2, the 64 rounds two at a time with SHA256RNDS2. */
    __attribute__((target("sha,sse4.1,ssse3")))
    static void gw_compress(uint32_t h[8], const uint8_t *p) {
        const __m128i swap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
        __m128i s0, s1, t, msg, abef, cdgh, cur;
        __m128i x0 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)p), swap);
        __m128i x1 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16)), swap);
        __m128i x2 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 32)), swap);
        __m128i x3 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 48)), swap);
        int i;
        /* h0..h7 = a..h into the instructions' layout: s0 = (a, b, e, f), s1 = (c, d, g, h), high to low */
        t = _mm_loadu_si128((const __m128i *)h);             /* d c b a */
        s1 = _mm_loadu_si128((const __m128i *)(h + 4));      /* h g f e */
        t = _mm_shuffle_epi32(t, 0xB1);                      /* c d a b */
        s1 = _mm_shuffle_epi32(s1, 0x1B);                    /* e f g h */
        s0 = _mm_alignr_epi8(t, s1, 8);                      /* a b e f */
        s1 = _mm_blend_epi16(s1, t, 0xF0);                   /* c d g h */
        abef = s0;
        cdgh = s1;
        for (i = 0; i < 16; i++) {
            if (i < 4) {
                cur = i == 0 ? x0 : i == 1 ? x1 : i == 2 ? x2 : x3;
            } else {  /* W[t..t+3] from W[t-16..t-1] held in x0..x3 */
                cur = _mm_sha256msg2_epu32(_mm_add_epi32(_mm_sha256msg1_epu32(x0, x1), _mm_alignr_epi8(x3, x2, 4)), x3);
                x0 = x1;
                x1 = x2;
                x2 = x3;
                x3 = cur;
            }
            msg = _mm_add_epi32(cur, _mm_load_si128((const __m128i *)(GW_K256 + 4 * i)));
            s1 = _mm_sha256rnds2_epu32(s1, s0, msg);
            msg = _mm_shuffle_epi32(msg, 0x0E);
            s0 = _mm_sha256rnds2_epu32(s0, s1, msg);
        }
        s0 = _mm_add_epi32(s0, abef);
        s1 = _mm_add_epi32(s1, cdgh);
        t = _mm_shuffle_epi32(s0, 0x1B);                     /* f e b a */
        s1 = _mm_shuffle_epi32(s1, 0xB1);                    /* d c h g */
        s0 = _mm_blend_epi16(t, s1, 0xF0);                   /* d c b a */
        s1 = _mm_alignr_epi8(s1, t, 8);                      /* h g f e */
        _mm_storeu_si128((__m128i *)h, s0);
        _mm_storeu_si128((__m128i *)(h + 4), s1);
    }

    /* SHA-256 of (the `done` bytes already folded into `state`, a multiple of 64) + msg, into out. */
    static void gw_finish(const uint32_t state[8], uint64_t done, const uint8_t *msg, size_t len, uint8_t out[32]) {
        uint32_t h[8];
        uint8_t block[128];
        uint64_t bits = (done + len) * 8;
        size_t pad, i;
        memcpy(h, state, sizeof h);
        while (len >= 64) {
            gw_compress(h, msg);
            msg += 64;
            len -= 64;
        }
        memcpy(block, msg, len);
        block[len] = 0x80;
        pad = len < 56 ? 64 : 128;
        memset(block + len + 1, 0, pad - len - 1);
        for (i = 0; i < 8; i++)
            block[pad - 1 - i] = (uint8_t)(bits >> (8 * i));
        gw_compress(h, block);
        if (pad == 128)
            gw_compress(h, block + 64);
        for (i = 0; i < 8; i++) {
            out[4 * i] = (uint8_t)(h[i] >> 24);
            out[4 * i + 1] = (uint8_t)(h[i] >> 16);
            out[4 * i + 2] = (uint8_t)(h[i] >> 8);
            out[4 * i + 3] = (uint8_t)h[i];
        }
    }

    /* The HMAC states of a 32-byte key: SHA-256 after (key ^ ipad) and after (key ^ opad). */
    static void gw_hmac_key(const uint8_t *key, uint32_t inner[8], uint32_t outer[8]) {
        uint8_t block[64];
        int i;
        for (i = 0; i < 64; i++)
            block[i] = (uint8_t)((i < 32 ? key[i] : 0) ^ 0x36);
        memcpy(inner, GW_H256, 32);
        gw_compress(inner, block);
        for (i = 0; i < 64; i++)
            block[i] = (uint8_t)((i < 32 ? key[i] : 0) ^ 0x5c);
        memcpy(outer, GW_H256, 32);
        gw_compress(outer, block);
        memset(block, 0, sizeof block);
    }

    static void gw_hmac(const uint32_t inner[8], const uint32_t outer[8], const uint8_t *msg, size_t len,
                        uint8_t out[32]) {
        uint8_t digest[32];
        gw_finish(inner, 64, msg, len, digest);
        gw_finish(outer, 64, digest, 32, out);
    }

    /* KDF_CK: out = next chain key (HMAC(ck, 0x02)) || message key (HMAC(ck, 0x01)). */
    static void gw_kdf_ck(const uint8_t *ck, uint8_t out[64]) {
        uint32_t inner[8], outer[8];
        const uint8_t one = 1, two = 2;
        gw_hmac_key(ck, inner, outer);
        gw_hmac(inner, outer, &two, 1, out);
        gw_hmac(inner, outer, &one, 1, out + 32);
    }

    /* HKDF-SHA256(salt = 32 zero bytes, ikm = mk, info, 80 bytes) into out[96] (80 used). */
    static void gw_message_keys(const uint8_t *mk, const uint8_t *info, size_t ninfo, uint8_t out[96]) {
        static const uint8_t zero[32] = {0};
        uint32_t inner[8], outer[8];
        uint8_t prk[32], buf[32 + 64 + 1];
        int n;
        gw_hmac_key(zero, inner, outer);
        gw_hmac(inner, outer, mk, 32, prk);                      /* extract */
        gw_hmac_key(prk, inner, outer);
        memcpy(buf, info, ninfo);                                /* T(1) = HMAC(prk, info || 1) */
        buf[ninfo] = 1;
        gw_hmac(inner, outer, buf, ninfo + 1, out);
        for (n = 2; n <= 3; n++) {                               /* T(n) = HMAC(prk, T(n-1) || info || n) */
            memcpy(buf, out + 32 * (n - 2), 32);
            memcpy(buf + 32, info, ninfo);
            buf[32 + ninfo] = (uint8_t)n;
            gw_hmac(inner, outer, buf, 32 + ninfo + 1, out + 32 * (n - 1));
        }
        memset(prk, 0, sizeof prk);
        memset(inner, 0, sizeof inner);
        memset(outer, 0, sizeof outer);
    }
    """
    void gw_hmac_key(const uint8_t *key, uint32_t *inner, uint32_t *outer)
    void gw_hmac(const uint32_t *inner, const uint32_t *outer, const uint8_t *msg, size_t length, uint8_t *out)
    void gw_kdf_ck(const uint8_t *ck, uint8_t *out)
    void gw_message_keys(const uint8_t *mk, const uint8_t *info, size_t ninfo, uint8_t *out)

SHANI = bool(gw_has_shani())
_INFO = b"WhisperMessageKeys"  # at most 64 bytes (the buffer in gw_message_keys)


cdef inline const uint8_t *_key32(bytes key, str what) except NULL:
    if not SHANI:
        raise RuntimeError("this CPU has no SHA-NI: use the pure twin")
    if len(key) != 32:
        raise ValueError(f"{what} must be 32 bytes, got {len(key)}")
    return <const uint8_t *>PyBytes_AS_STRING(key)


def hmac_sha256(bytes key not None, bytes msg not None) -> bytes:
    """HMAC-SHA256(key, msg) for a 32-byte key."""
    cdef uint32_t inner[8]
    cdef uint32_t outer[8]
    cdef uint8_t out[32]
    gw_hmac_key(_key32(key, "key"), inner, outer)
    gw_hmac(inner, outer, <const uint8_t *>PyBytes_AS_STRING(msg), <size_t>len(msg), out)
    return PyBytes_FromStringAndSize(<const char *>out, 32)


def kdf_ck(bytes ck not None) -> tuple:
    """KDF_CK: (HMAC-SHA256(ck, 0x02) = next chain key, HMAC-SHA256(ck, 0x01) = message key)."""
    cdef uint8_t out[64]
    gw_kdf_ck(_key32(ck, "chain key"), out)
    return (PyBytes_FromStringAndSize(<const char *>out, 32),
            PyBytes_FromStringAndSize(<const char *>out + 32, 32))


def message_keys(bytes mk not None) -> tuple:
    """HKDF-SHA256(salt=32 zero bytes, ikm=mk, info="WhisperMessageKeys", 80) -> (AES key, MAC key, IV)."""
    cdef uint8_t out[96]
    gw_message_keys(_key32(mk, "message key"), <const uint8_t *>PyBytes_AS_STRING(_INFO), <size_t>len(_INFO), out)
    return (PyBytes_FromStringAndSize(<const char *>out, 32),
            PyBytes_FromStringAndSize(<const char *>out + 32, 32),
            PyBytes_FromStringAndSize(<const char *>out + 64, 16))
