# cython: language_level=3
"""Native AES-256-CBC for the Double Ratchet's messages, on the CPU's AES instructions.

It owns only `cbc_encrypt(key, iv, data)` and `cbc_decrypt(key, iv, data)` of whole blocks (the
caller pads and unpads) and must never give other bytes than the pure twins in gateway.crypto.aes_cbc
(cryptography's AES-256-CBC): the tests compare the two on random inputs and check the NIST SP
800-38A vectors. Decryption serves the gateway's inbound messages and netsim, which decrypts every
message the gateway sends. Why: with a fresh key for every
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
        gw_wipe(rk, sizeof rk);  /* no round keys left on the stack */
    }

    /* CBC decryption (SP 800-38A, 6.2) with the equivalent inverse cipher (FIPS 197, 5.3.5): the
       round keys in reverse order, InvMixColumns applied to the middle ones. */
    __attribute__((target("aes,sse2")))
    static void gw_cbc_decrypt(const uint8_t *key, const uint8_t *iv, const uint8_t *in, size_t blocks,
                               uint8_t *out) {
        __m128i rk[15], dk[15], prev = _mm_loadu_si128((const __m128i *)iv), c, x;
        size_t i;
        int r;
        gw_expand(key, rk);
        dk[0] = rk[14];
        for (r = 1; r < 14; r++)
            dk[r] = _mm_aesimc_si128(rk[14 - r]);
        dk[14] = rk[0];
        for (i = 0; i < blocks; i++) {
            c = _mm_loadu_si128((const __m128i *)(in + 16 * i));
            x = _mm_xor_si128(c, dk[0]);
            for (r = 1; r < 14; r++)
                x = _mm_aesdec_si128(x, dk[r]);
            x = _mm_aesdeclast_si128(x, dk[14]);
            _mm_storeu_si128((__m128i *)(out + 16 * i), _mm_xor_si128(x, prev));
            prev = c;
        }
        gw_wipe(rk, sizeof rk);
        gw_wipe(dk, sizeof dk);
    }
    """
    void gw_cbc_decrypt(const unsigned char *key, const unsigned char *iv, const unsigned char *data,
                        size_t blocks, unsigned char *out) noexcept nogil
    void gw_cbc_encrypt(const unsigned char *key, const unsigned char *iv, const unsigned char *data,
                        size_t blocks, unsigned char *out) noexcept nogil

AESNI = bool(gw_has_aesni())


ctypedef void (*_cbc_fn)(const unsigned char *, const unsigned char *, const unsigned char *, size_t,
                        unsigned char *) noexcept nogil


cdef bytes _cbc(_cbc_fn fn, bytes key, bytes iv, bytes data, str what):
    """fn over `data` after the checks both directions share."""
    if not AESNI:
        raise RuntimeError("this CPU has no AES-NI: use the pure twin")
    if len(key) != 32 or len(iv) != 16:
        raise ValueError(f"AES-256-CBC takes a 32-byte key and a 16-byte IV, got {len(key)} and {len(iv)}")
    cdef Py_ssize_t n = len(data)
    if n == 0 or n % 16:
        raise ValueError(f"AES-256-CBC {what} whole 16-byte blocks, got {n} bytes")
    out = PyBytes_FromStringAndSize(<const char *>NULL, n)
    fn(<const unsigned char *>PyBytes_AS_STRING(key), <const unsigned char *>PyBytes_AS_STRING(iv),
       <const unsigned char *>PyBytes_AS_STRING(data), <size_t>(n // 16), <unsigned char *>PyBytes_AS_STRING(out))
    return out


def cbc_encrypt(bytes key not None, bytes iv not None, bytes data not None) -> bytes:
    """AES-256-CBC of `data` (whole 16-byte blocks, padded by the caller) under a 32-byte key and a
    16-byte IV; RuntimeError on a CPU without AES-NI."""
    return _cbc(gw_cbc_encrypt, key, iv, data, "encrypts")


def cbc_decrypt(bytes key not None, bytes iv not None, bytes data not None) -> bytes:
    """The inverse of cbc_encrypt (the padding stays for the caller to check and remove)."""
    return _cbc(gw_cbc_decrypt, key, iv, data, "decrypts")
