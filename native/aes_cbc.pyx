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
    #include <string.h>
    #include "aes_ni.h"

    /* CBC (SP 800-38A, 6.2) over `blocks` whole blocks of `in`, into `out`. */
    __attribute__((target("aes,sse2")))
    static void gw_cbc_encrypt(const uint8_t *key, const uint8_t *iv, const uint8_t *in, size_t blocks,
                               uint8_t *out) {
        __m128i rk[15], x = _mm_loadu_si128((const __m128i *)iv);
        size_t i;
        gw_expand(key, rk);
        for (i = 0; i < blocks; i++) {
            x = _mm_xor_si128(x, _mm_loadu_si128((const __m128i *)(in + 16 * i)));
            x = gw_aes_block(rk, x);
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
