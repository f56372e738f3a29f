/* AES-256 on the CPU's AES instructions, shared by native/aes_cbc.pyx and native/aes_gcm.pyx: the
   key schedule (FIPS 197, 5.2) and the encryption of one block. Constant-time by construction (no
   table lookups). Callers check `gw_has_aesni()` (cpu_features.h) before calling any of this. */
#ifndef GW_AES_NI_H
#define GW_AES_NI_H

#include <stdint.h>
#include <string.h>
#include <immintrin.h>

/* Zero key material in a local buffer. A plain memset of a buffer never read again is a dead store
   the compiler removes; the empty asm that "reads" the buffer keeps it (best effort: copies the
   compiler spilled to registers or elsewhere are beyond C's reach). */
static inline void gw_wipe(void *p, size_t n) {
    memset(p, 0, n);
    __asm__ __volatile__("" : : "r"(p) : "memory");
}

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

/* AES-256 encryption key schedule: 15 round keys. */
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

/* One block through the 14 rounds. */
__attribute__((target("aes,sse2")))
static inline __m128i gw_aes_block(const __m128i rk[15], __m128i x) {
    int r;
    x = _mm_xor_si128(x, rk[0]);
    for (r = 1; r < 14; r++)
        x = _mm_aesenc_si128(x, rk[r]);
    return _mm_aesenclast_si128(x, rk[14]);
}

#endif
