/*
 * bitnet-i2s-neon.c — I2_S × I8_S for aarch64 NEON, with and without the dot-product extension.
 *
 * Sources: shared/spec/bitnet-formats.md §2.1 (layout), §2.5 (NEON kernel shape, formula);
 * shared/spec/fast-kernels.md §2 (unpack, offset trick), §4 (layout drift between x86 and ARM).
 * The kernel body is in bitnet-i2s-neon-tile.h; this file instantiates it twice.
 */
#include "bitnet-i2s-internal.h"

#ifdef BITNET_HAVE_NEON

#include <arm_neon.h>

/* --- plain NEON (ARMv8.0): widening multiply, pairwise add-accumulate into int32 -----------
 * vmull_s8 / vmlal_high_s8 give int16 lanes c0·q0 + c1·q1 with |·| ≤ 2·2·128 = 512, and
 * vpadalq_s16 widens every pair into the int32 accumulator at once: no input can overflow. */
static inline __attribute__((always_inline)) int32x4_t mac_neon(int32x4_t acc, int8x16_t c,
                                                                int8x16_t q) {
    int16x8_t p = vmull_s8(vget_low_s8(c), vget_low_s8(q));
    p = vmlal_high_s8(p, c, q);
    return vpadalq_s16(acc, p);
}

#define NEON_SUFFIX neon
#define NEON_TARGET
#define NEON_MAC mac_neon
#include "bitnet-i2s-neon-tile.h"
#undef NEON_SUFFIX
#undef NEON_TARGET
#undef NEON_MAC

#ifdef BITNET_HAVE_NEON_DOTPROD
/* --- ARMv8.2 dot product: `sdot` adds four s8×s8 products into each int32 lane -------------
 * The codes 0..2 are valid signed bytes, so raw = Σ code·q directly (spec §2.5 NEON path).
 * (Subtracting 1 from the codes would drop the Σq term, up PR #27589; we keep one formula for
 * every path so all agree bit for bit.) */
BITNET_TARGET_DOTPROD static inline __attribute__((always_inline)) int32x4_t mac_dotprod(
    int32x4_t acc, int8x16_t c, int8x16_t q) {
    return vdotq_s32(acc, c, q);
}

#define NEON_SUFFIX neon_dotprod
#define NEON_TARGET BITNET_TARGET_DOTPROD
#define NEON_MAC mac_dotprod
#include "bitnet-i2s-neon-tile.h"
#undef NEON_SUFFIX
#undef NEON_TARGET
#undef NEON_MAC
#endif

#endif /* BITNET_HAVE_NEON */
