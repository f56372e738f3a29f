# cython: language_level=3
"""Native AES-256-CBC encryption for the Double Ratchet's messages, on the CPU's AES instructions.

It owns only `cbc_encrypt(key, iv, data)` of whole blocks (the caller pads) and must never give other
bytes than the pure twin in gateway.crypto.aes_cbc (cryptography's AES-256-CBC): the tests compare
the two on random inputs and check the NIST SP 800-38A vector. Why: with a fresh key for every
message, the cipher context that cryptography builds per call (Python objects, ABC checks) cost ~6 µs
of a ~100 µs delivery; the key expansion and the 2-3 blocks of a message take ~0.2 µs here. Without
AES-NI (`AESNI` false) it refuses to run and the twin is used; the code is constant-time by
construction (no table lookups).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize

cdef extern from "cpu_features.h":
    int gw_has_aesni()

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #include <immintrin.h>

    /* w0 ^ w1 ^ ... up to each word: (w0, w0^w1, w0^w1^w2, w0^w1^w2^w3), low word first */
    __attribute__((target("aes,sse2")))
    static inline __m128i gw_running_xor(__m128i t) {
        t = _mm_xor_si128(t, _mm_slli_si128(t, 4));
        return _mm_xor_si128(t, _mm_slli_si128(t, 8));
    }

    /* The next round key of an even position (from the assist of the previous odd one, RotWord and
       SubWord with the round constant) and of an odd position (SubWord alone). */
    __attribute__((target("aes,sse2")))
    static inline __m128i gw_next_even(__m128i prev, __m128i assist) {
        return _mm_xor_si128(gw_running_xor(prev), _mm_shuffle_epi32(assist, 0xff));
    }

    __attribute__((target("aes,sse2")))
    static inline __m128i gw_next_odd(__m128i even, __m128i prev) {
        __m128i assist = _mm_aeskeygenassist_si128(even, 0x00);
        return _mm_xor_si128(gw_running_xor(prev), _mm_shuffle_epi32(assist, 0xaa));
    }

    /* AES-256 encryption key schedule (FIPS 197, 5.2): 15 round keys. */
    __attribute__((target("aes,sse2")))
    static void gw_expand(const uint8_t *key, __m128i rk[15]) {
        __m128i t1 = _mm_loadu_si128((const __m128i *)key);
        __m128i t3 = _mm_loadu_si128((const __m128i *)(key + 16));
        rk[0] = t1;
        rk[1] = t3;
        /* two round keys per round constant (an immediate operand: hence the macro, not a loop) */
    #define GW_PAIR(n, rcon) \
        t1 = gw_next_even(t1, _mm_aeskeygenassist_si128(t3, rcon)); rk[n] = t1; \
        t3 = gw_next_odd(t1, t3); rk[n + 1] = t3;
        GW_PAIR(2, 0x01) GW_PAIR(4, 0x02) GW_PAIR(6, 0x04) GW_PAIR(8, 0x08) GW_PAIR(10, 0x10) GW_PAIR(12, 0x20)
    #undef GW_PAIR
        t1 = gw_next_even(t1, _mm_aeskeygenassist_si128(t3, 0x40)); rk[14] = t1;
    }

    /* CBC (SP 800-38A, 6.2) over `blocks` whole blocks of `in`, into `out`. */
    __attribute__((target("aes,sse2")))
    static void gw_cbc_encrypt(const uint8_t *key, const uint8_t *iv, const uint8_t *in, size_t blocks,
                               uint8_t *out) {
        __m128i rk[15], x = _mm_loadu_si128((const __m128i *)iv);
        size_t i;
        int r;
        gw_expand(key, rk);
        for (i = 0; i < blocks; i++) {
            x = _mm_xor_si128(x, _mm_loadu_si128((const __m128i *)(in + 16 * i)));
            x = _mm_xor_si128(x, rk[0]);
            for (r = 1; r < 14; r++)
                x = _mm_aesenc_si128(x, rk[r]);
            x = _mm_aesenclast_si128(x, rk[14]);
            _mm_storeu_si128((__m128i *)(out + 16 * i), x);
        }
        memset(rk, 0, sizeof rk);  /* no round keys left on the stack */
    }
    """
    void gw_cbc_encrypt(const unsigned char *key, const unsigned char *iv, const unsigned char *data,
                        size_t blocks, unsigned char *out) nogil

AESNI = bool(gw_has_aesni())


def cbc_encrypt(bytes key not None, bytes iv not None, bytes data not None) -> bytes:
    """AES-256-CBC of `data` (whole 16-byte blocks, padded by the caller) under a 32-byte key and a
    16-byte IV; RuntimeError on a CPU without AES-NI."""
    if not AESNI:
        raise RuntimeError("this CPU has no AES-NI: use the pure twin")
    if len(key) != 32 or len(iv) != 16:
        raise ValueError(f"AES-256-CBC takes a 32-byte key and a 16-byte IV, got {len(key)} and {len(iv)}")
    cdef Py_ssize_t n = len(data)
    if n == 0 or n % 16:
        raise ValueError(f"AES-256-CBC encrypts whole 16-byte blocks, got {n} bytes")
    out = PyBytes_FromStringAndSize(<const char *>NULL, n)
    gw_cbc_encrypt(<const unsigned char *>PyBytes_AS_STRING(key), <const unsigned char *>PyBytes_AS_STRING(iv),
                   <const unsigned char *>PyBytes_AS_STRING(data), <size_t>(n // 16),
                   <unsigned char *>PyBytes_AS_STRING(out))
    return out
