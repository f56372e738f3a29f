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

cdef extern from "Python.h":
    bytes PyBytes_FromStringAndSize(const char *v, Py_ssize_t size)
    char *PyBytes_AS_STRING(object)

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #include <cpuid.h>
    #include <immintrin.h>

    static int gw_has_aesni(void) {
        unsigned int a, b, c, d;
        if (!__get_cpuid(1, &a, &b, &c, &d))
            return 0;
        return (c >> 25) & 1;  /* CPUID.01H:ECX.AES */
    }

    __attribute__((target("aes,sse2")))
    static inline __m128i gw_next_even(__m128i t1, __m128i assist) {
        __m128i t4;
        assist = _mm_shuffle_epi32(assist, 0xff);
        t4 = _mm_slli_si128(t1, 4);
        t1 = _mm_xor_si128(t1, t4);
        t4 = _mm_slli_si128(t4, 4);
        t1 = _mm_xor_si128(t1, t4);
        t4 = _mm_slli_si128(t4, 4);
        t1 = _mm_xor_si128(t1, t4);
        return _mm_xor_si128(t1, assist);
    }

    __attribute__((target("aes,sse2")))
    static inline __m128i gw_next_odd(__m128i even, __m128i t3) {
        __m128i t4, assist = _mm_shuffle_epi32(_mm_aeskeygenassist_si128(even, 0x00), 0xaa);
        t4 = _mm_slli_si128(t3, 4);
        t3 = _mm_xor_si128(t3, t4);
        t4 = _mm_slli_si128(t4, 4);
        t3 = _mm_xor_si128(t3, t4);
        t4 = _mm_slli_si128(t4, 4);
        t3 = _mm_xor_si128(t3, t4);
        return _mm_xor_si128(t3, assist);
    }

    /* AES-256 encryption key schedule (FIPS 197, 5.2): 15 round keys. */
    __attribute__((target("aes,sse2")))
    static void gw_expand(const uint8_t *key, __m128i rk[15]) {
        __m128i t1 = _mm_loadu_si128((const __m128i *)key);
        __m128i t3 = _mm_loadu_si128((const __m128i *)(key + 16));
        rk[0] = t1;
        rk[1] = t3;
        t1 = gw_next_even(t1, _mm_aeskeygenassist_si128(t3, 0x01)); rk[2] = t1;
        t3 = gw_next_odd(t1, t3); rk[3] = t3;
        t1 = gw_next_even(t1, _mm_aeskeygenassist_si128(t3, 0x02)); rk[4] = t1;
        t3 = gw_next_odd(t1, t3); rk[5] = t3;
        t1 = gw_next_even(t1, _mm_aeskeygenassist_si128(t3, 0x04)); rk[6] = t1;
        t3 = gw_next_odd(t1, t3); rk[7] = t3;
        t1 = gw_next_even(t1, _mm_aeskeygenassist_si128(t3, 0x08)); rk[8] = t1;
        t3 = gw_next_odd(t1, t3); rk[9] = t3;
        t1 = gw_next_even(t1, _mm_aeskeygenassist_si128(t3, 0x10)); rk[10] = t1;
        t3 = gw_next_odd(t1, t3); rk[11] = t3;
        t1 = gw_next_even(t1, _mm_aeskeygenassist_si128(t3, 0x20)); rk[12] = t1;
        t3 = gw_next_odd(t1, t3); rk[13] = t3;
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
    int gw_has_aesni()
    void gw_cbc_encrypt(const unsigned char *key, const unsigned char *iv, const unsigned char *data,
                        size_t blocks, unsigned char *out) nogil

AESNI = bool(gw_has_aesni())


def cbc_encrypt(bytes key, bytes iv, bytes data) -> bytes:
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
