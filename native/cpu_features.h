/* CPU features the crypto accelerators need, read with CPUID at import (native/aes_cbc.pyx,
   native/aes_gcm.pyx, native/ratchet_kdf.pyx): each module runs only where its instructions exist. */
#ifndef GW_CPU_FEATURES_H
#define GW_CPU_FEATURES_H

#include <cpuid.h>

/* CPUID.01H:ECX.AES */
static inline int gw_has_aesni(void) {
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return 0;
    return (c >> 25) & 1;
}

/* AES-NI with PCLMULQDQ and SSSE3 (CPUID.01H:ECX bits 25, 1 and 9): AES-GCM's counter mode and GHASH */
static inline int gw_has_aes_clmul(void) {
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return 0;
    return ((c >> 25) & 1) && ((c >> 1) & 1) && ((c >> 9) & 1);
}

/* CPUID.(EAX=07H,ECX=0):EBX.SHA, with SSSE3 and SSE4.1 (CPUID.01H:ECX bits 9 and 19) */
static inline int gw_has_shani(void) {
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return 0;
    if (!((c >> 19) & 1) || !((c >> 9) & 1))
        return 0;
    if (__get_cpuid_max(0, 0) < 7)
        return 0;
    __cpuid_count(7, 0, a, b, c, d);
    return (b >> 29) & 1;
}

#endif
