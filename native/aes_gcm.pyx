# cython: language_level=3
"""Native AES-256-GCM (NIST SP 800-38D) with 96-bit nonces, for sealing records at rest
(gateway.crypto.seal), on the CPU's AES and carry-less multiply instructions.

`AESGCM(key)` has the `encrypt(nonce, data, associated_data)` and `decrypt(...)` of cryptography's
class of that name (ciphertext with its 16-byte tag appended; a wrong tag raises
cryptography.exceptions.InvalidTag and gives no plaintext), limited to 12-byte nonces, and must never
give other bytes than it: the tests compare the two on random inputs and on the GCM paper's vectors,
and gateway.crypto.aes_gcm refuses this module if a self-test disagrees. Why: cryptography builds an
OpenSSL cipher context on every call, ~1 µs in a tight loop but 4-10 µs between the other work of an
accepted message here (cold caches); the key schedule and H are computed once per key here, and a
short record costs well under a microsecond. Without AES-NI, PCLMULQDQ and SSSE3 (`AVAILABLE` false)
it refuses to run and cryptography's class is used. No table lookups: constant-time by construction,
and the tag is compared in constant time.

GHASH works on byte-reversed blocks, where the coefficient of x^k sits at bit 127 - k: a carry-less
product of two such values holds x^k of the product at bit 254 - k, so it is shifted left one bit and
its upper 128 terms are folded back with x^128 = x^7 + x^2 + x + 1.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize

from cryptography.exceptions import InvalidTag

cdef extern from "cpu_features.h":
    int gw_has_aes_clmul()

cdef extern from *:
    """
    #include <string.h>
    #include "aes_ni.h"

    #define GW_GCM_TARGET __attribute__((target("aes,sse2,ssse3,pclmul")))

    GW_GCM_TARGET static inline __m128i gw_reverse_bytes(__m128i v) {
        return _mm_shuffle_epi8(v, _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    }

    /* 128-bit logical shifts by 0 < m < 64 */
    GW_GCM_TARGET static inline __m128i gw_shr128(__m128i v, int m) {
        return _mm_or_si128(_mm_srli_epi64(v, m), _mm_slli_epi64(_mm_srli_si128(v, 8), 64 - m));
    }

    GW_GCM_TARGET static inline __m128i gw_shl128_1(__m128i v) {
        return _mm_or_si128(_mm_slli_epi64(v, 1), _mm_srli_epi64(_mm_slli_si128(v, 8), 63));
    }

    /* The carry-less product of a and b (both byte-reversed: x^k at bit 127 - k), not reduced: hi:lo
       holds x^k at bit 254 - k. Products are summed (xor) unreduced and reduced once (gw_reduce). */
    GW_GCM_TARGET static inline void gw_clmul(__m128i a, __m128i b, __m128i *hi, __m128i *lo) {
        __m128i mid = _mm_xor_si128(_mm_clmulepi64_si128(a, b, 0x01), _mm_clmulepi64_si128(a, b, 0x10));
        *lo = _mm_xor_si128(_mm_clmulepi64_si128(a, b, 0x00), _mm_slli_si128(mid, 8));
        *hi = _mm_xor_si128(_mm_clmulepi64_si128(a, b, 0x11), _mm_srli_si128(mid, 8));
    }

    /* hi:lo (as gw_clmul leaves it) mod x^128 + x^7 + x^2 + x + 1 */
    GW_GCM_TARGET static inline __m128i gw_reduce(__m128i hi, __m128i lo) {
        __m128i carry, over, fold;
        /* one bit left puts x^0..x^127 in hi and x^128..x^255 in lo */
        carry = _mm_srli_si128(_mm_srli_epi64(lo, 63), 8);
        hi = _mm_or_si128(gw_shl128_1(hi), carry);
        lo = gw_shl128_1(lo);
        /* lo * x^128 = lo * (1 + x + x^2 + x^7): a shift right by m multiplies by x^m, and what it
           pushes past x^127 (lo's lowest 1, 2 and 7 bits, moved to the top by 127, 126 and 121) is
           x^128 times that again: folded in first, it reaches no further than x^13. */
        over = _mm_slli_si128(lo, 8);
        over = _mm_xor_si128(_mm_xor_si128(_mm_slli_epi64(over, 63), _mm_slli_epi64(over, 62)),
                             _mm_slli_epi64(over, 57));
        fold = _mm_xor_si128(lo, over);
        hi = _mm_xor_si128(hi, fold);
        hi = _mm_xor_si128(hi, gw_shr128(fold, 1));
        hi = _mm_xor_si128(hi, gw_shr128(fold, 2));
        return _mm_xor_si128(hi, gw_shr128(fold, 7));
    }

    GW_GCM_TARGET static inline __m128i gw_gf_mul(__m128i a, __m128i b) {
        __m128i hi, lo;
        gw_clmul(a, b, &hi, &lo);
        return gw_reduce(hi, lo);
    }

    GW_GCM_TARGET static inline __m128i gw_block_at(const uint8_t *p) {
        return gw_reverse_bytes(_mm_loadu_si128((const __m128i *)p));
    }

    /* GHASH state y after absorbing n bytes of p, the last block padded with zeros; h[i] = H^(i+1).
       Four blocks at a time: (y + X1)H^4 + X2 H^3 + X3 H^2 + X4 H, one reduction. */
    GW_GCM_TARGET static __m128i gw_ghash(__m128i y, const __m128i h[4], const uint8_t *p, size_t n) {
        uint8_t last[16];
        __m128i hi, lo, phi, plo;
        int i;
        for (; n >= 64; p += 64, n -= 64) {
            gw_clmul(_mm_xor_si128(y, gw_block_at(p)), h[3], &hi, &lo);
            for (i = 1; i < 4; i++) {
                gw_clmul(gw_block_at(p + 16 * i), h[3 - i], &phi, &plo);
                hi = _mm_xor_si128(hi, phi);
                lo = _mm_xor_si128(lo, plo);
            }
            y = gw_reduce(hi, lo);
        }
        for (; n >= 16; p += 16, n -= 16)
            y = gw_gf_mul(_mm_xor_si128(y, gw_block_at(p)), h[0]);
        if (n) {
            memset(last, 0, 16);
            memcpy(last, p, n);
            y = gw_gf_mul(_mm_xor_si128(y, gw_block_at(last)), h[0]);
        }
        return y;
    }

    static inline void gw_put_be32(uint8_t *p, uint32_t v) {
        p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
    }

    static inline void gw_put_be64(uint8_t *p, uint64_t v) {
        gw_put_be32(p, (uint32_t)(v >> 32));
        gw_put_be32(p + 4, (uint32_t)v);
    }

    /* `state` (304 bytes): the 15 round keys, then H, H^2, H^3, H^4 byte-reversed */
    #define GW_GCM_H_AT 240

    GW_GCM_TARGET static void gw_gcm_init(const uint8_t *key, uint8_t *state) {
        __m128i rk[15], h, power;
        int i;
        gw_expand(key, rk);
        for (i = 0; i < 15; i++)
            _mm_storeu_si128((__m128i *)(state + 16 * i), rk[i]);
        h = power = gw_reverse_bytes(gw_aes_block(rk, _mm_setzero_si128()));
        for (i = 0; i < 4; i++) {
            _mm_storeu_si128((__m128i *)(state + GW_GCM_H_AT + 16 * i), power);
            power = gw_gf_mul(power, h);
        }
        gw_wipe(rk, sizeof rk);
    }

    /* CTR from counter block 2 (GCTR of inc32(J0)) over n bytes of `in`, into `out`; four blocks at
       a time, so that the AES rounds of independent blocks overlap in the pipeline */
    GW_GCM_TARGET static void gw_gcm_ctr(const __m128i rk[15], const uint8_t *nonce, const uint8_t *in,
                                         size_t n, uint8_t *out) {
        uint8_t block[64], pad[16];
        uint32_t counter = 2;
        __m128i x[4];
        size_t i;
        int b, r;
        for (b = 0; b < 4; b++)
            memcpy(block + 16 * b, nonce, 12);
        for (; n >= 64; in += 64, out += 64, n -= 64, counter += 4) {
            for (b = 0; b < 4; b++) {
                gw_put_be32(block + 16 * b + 12, counter + (uint32_t)b);
                x[b] = _mm_xor_si128(_mm_loadu_si128((const __m128i *)(block + 16 * b)), rk[0]);
            }
            for (r = 1; r < 14; r++)
                for (b = 0; b < 4; b++)
                    x[b] = _mm_aesenc_si128(x[b], rk[r]);
            for (b = 0; b < 4; b++) {
                x[b] = _mm_aesenclast_si128(x[b], rk[14]);
                _mm_storeu_si128((__m128i *)(out + 16 * b),
                                 _mm_xor_si128(x[b], _mm_loadu_si128((const __m128i *)(in + 16 * b))));
            }
        }
        for (; n >= 16; in += 16, out += 16, n -= 16, counter++) {
            gw_put_be32(block + 12, counter);
            x[0] = gw_aes_block(rk, _mm_loadu_si128((const __m128i *)block));
            _mm_storeu_si128((__m128i *)out, _mm_xor_si128(x[0], _mm_loadu_si128((const __m128i *)in)));
        }
        if (n) {
            gw_put_be32(block + 12, counter);
            _mm_storeu_si128((__m128i *)pad, gw_aes_block(rk, _mm_loadu_si128((const __m128i *)block)));
            for (i = 0; i < n; i++)
                out[i] = in[i] ^ pad[i];
            gw_wipe(pad, sizeof pad);
        }
        gw_wipe(x, sizeof x);
    }

    /* The tag: E_K(J0) xor GHASH(A, C, lengths) */
    GW_GCM_TARGET static void gw_gcm_tag(const __m128i rk[15], const __m128i h[4], const uint8_t *nonce,
                                         const uint8_t *aad, size_t alen, const uint8_t *c, size_t clen,
                                         uint8_t *tag) {
        uint8_t lengths[16], j0[16];
        __m128i y = gw_ghash(_mm_setzero_si128(), h, aad, alen);
        y = gw_ghash(y, h, c, clen);
        gw_put_be64(lengths, (uint64_t)alen * 8);
        gw_put_be64(lengths + 8, (uint64_t)clen * 8);
        y = gw_ghash(y, h, lengths, 16);
        memcpy(j0, nonce, 12);
        gw_put_be32(j0 + 12, 1);
        _mm_storeu_si128((__m128i *)tag, _mm_xor_si128(gw_aes_block(rk, _mm_loadu_si128((const __m128i *)j0)),
                                                        gw_reverse_bytes(y)));
    }

    GW_GCM_TARGET static void gw_load_state(const uint8_t *state, __m128i rk[15], __m128i h[4]) {
        int i;
        for (i = 0; i < 15; i++)
            rk[i] = _mm_loadu_si128((const __m128i *)(state + 16 * i));
        for (i = 0; i < 4; i++)
            h[i] = _mm_loadu_si128((const __m128i *)(state + GW_GCM_H_AT + 16 * i));
    }

    /* ciphertext (n bytes) and tag (16) into out */
    GW_GCM_TARGET static void gw_gcm_seal(const uint8_t *state, const uint8_t *nonce, const uint8_t *aad,
                                          size_t alen, const uint8_t *in, size_t n, uint8_t *out) {
        __m128i rk[15], h[4];
        gw_load_state(state, rk, h);
        gw_gcm_ctr(rk, nonce, in, n, out);
        gw_gcm_tag(rk, h, nonce, aad, alen, out, n, out + n);
        gw_wipe(rk, sizeof rk);
        gw_wipe(h, sizeof h);
    }

    /* 1 and the plaintext of n bytes (in holds n + 16) in out if the tag is right; 0 and nothing
       written otherwise */
    GW_GCM_TARGET static int gw_gcm_open(const uint8_t *state, const uint8_t *nonce, const uint8_t *aad,
                                         size_t alen, const uint8_t *in, size_t n, uint8_t *out) {
        __m128i rk[15], h[4];
        uint8_t tag[16], diff = 0;
        int i;
        gw_load_state(state, rk, h);
        gw_gcm_tag(rk, h, nonce, aad, alen, in, n, tag);
        for (i = 0; i < 16; i++)
            diff |= tag[i] ^ in[n + i];
        if (diff == 0)
            gw_gcm_ctr(rk, nonce, in, n, out);
        gw_wipe(rk, sizeof rk);
        gw_wipe(h, sizeof h);
        gw_wipe(tag, sizeof tag);  /* the right tag for this ciphertext: a forgery if it leaked */
        return diff == 0;
    }
    """
    void gw_wipe(void *p, size_t n) nogil
    void gw_gcm_init(const unsigned char *key, unsigned char *state) nogil
    void gw_gcm_seal(const unsigned char *state, const unsigned char *nonce, const unsigned char *aad,
                     size_t alen, const unsigned char *data, size_t n, unsigned char *out) nogil
    int gw_gcm_open(const unsigned char *state, const unsigned char *nonce, const unsigned char *aad,
                    size_t alen, const unsigned char *data, size_t n, unsigned char *out) nogil

AVAILABLE = bool(gw_has_aes_clmul())

cdef enum:
    STATE_BYTES = 304  # 15 round keys, H, H^2, H^3, H^4
# Data and associated data of at most 2**31 - 1 bytes, as cryptography takes (SP 800-38D allows
# 2**36 - 32 bytes of text): a record sealed here must open under the twin.
cdef Py_ssize_t MAX_BYTES = (1 << 31) - 1


cdef inline int _check_sizes(Py_ssize_t data, Py_ssize_t aad) except -1:
    if data > MAX_BYTES or aad > MAX_BYTES:
        raise OverflowError("data and associated data must each be at most 2**31 - 1 bytes")
    return 0


cdef inline bytes _bytes(object value):
    """bytes as they are; another bytes-like object (memoryview, bytearray) copied, as cryptography
    takes those too."""
    if type(value) is bytes:
        return <bytes>value
    return bytes(memoryview(value))


cdef class AESGCM:
    """AES-256-GCM under one key, with 12-byte nonces (see the module's docstring)."""

    cdef unsigned char _state[STATE_BYTES]

    def __cinit__(self, bytes key not None):
        if not AVAILABLE:
            raise RuntimeError("this CPU lacks AES-NI, PCLMULQDQ or SSSE3: use cryptography's AESGCM")
        if len(key) != 32:
            raise ValueError(f"this AES-GCM takes a 32-byte key, got {len(key)}")
        gw_gcm_init(<const unsigned char *>PyBytes_AS_STRING(key), self._state)

    def __dealloc__(self):
        gw_wipe(self._state, STATE_BYTES)

    def encrypt(self, nonce_, data_, associated_data) -> bytes:
        """The ciphertext of `data` with its 16-byte tag appended."""
        cdef bytes nonce = _bytes(nonce_), data = _bytes(data_)
        cdef bytes aad = b"" if associated_data is None else _bytes(associated_data)
        if len(nonce) != 12:
            raise ValueError(f"this AES-GCM takes a 12-byte nonce, got {len(nonce)}")
        cdef Py_ssize_t n = len(data)
        _check_sizes(n, len(aad))
        out = PyBytes_FromStringAndSize(<const char *>NULL, n + 16)
        gw_gcm_seal(self._state, <const unsigned char *>PyBytes_AS_STRING(nonce),
                    <const unsigned char *>PyBytes_AS_STRING(aad), <size_t>len(aad),
                    <const unsigned char *>PyBytes_AS_STRING(data), <size_t>n,
                    <unsigned char *>PyBytes_AS_STRING(out))
        return out

    def decrypt(self, nonce_, data_, associated_data) -> bytes:
        """The plaintext of `data` (ciphertext and tag); InvalidTag if they were not sealed under this
        key, nonce and associated data."""
        cdef bytes nonce = _bytes(nonce_), data = _bytes(data_)
        cdef bytes aad = b"" if associated_data is None else _bytes(associated_data)
        if len(nonce) != 12:
            raise ValueError(f"this AES-GCM takes a 12-byte nonce, got {len(nonce)}")
        _check_sizes(len(data), len(aad))
        cdef Py_ssize_t n = len(data) - 16
        if n < 0:
            raise InvalidTag()
        out = PyBytes_FromStringAndSize(<const char *>NULL, n)
        if not gw_gcm_open(self._state, <const unsigned char *>PyBytes_AS_STRING(nonce),
                           <const unsigned char *>PyBytes_AS_STRING(aad), <size_t>len(aad),
                           <const unsigned char *>PyBytes_AS_STRING(data), <size_t>n,
                           <unsigned char *>PyBytes_AS_STRING(out)):
            raise InvalidTag()
        return out
