/*
 * bitnet-tl-neon.c — TL1 and TL2 table lookups with aarch64 NEON (`tbl` on LUT byte planes).
 *
 * Same contract and results as tl1_tile / tl2_tile_scalar in bitnet-tl.c (bit for bit: every
 * sum is an exact integer). Plain ARMv8.0 Advanced SIMD, no dot product. Sources:
 * docs/formats.md "TL1" / "TL2" (byte orders), shared/spec/bitnet-formats.md §3.1 / §3.2 (LUTs,
 * tile orders), shared/spec/fast-kernels.md §2 (table lookups with `tbl`); the technique follows
 * bitnet-tl-avx2.c.
 *
 * LUT planes: a slot holds 16 int16 entries (32 bytes). `make_planes` splits it into a 16-byte
 *   plane of low bytes and one of high bytes (`uzp1`/`uzp2`), so one `vqtbl1q_u8` of 16 nibbles
 *   fetches the low (or high) bytes of 16 rows' entries; `zip1`/`zip2` of the two results give
 *   the int16 entries of lanes 0-7 and 8-15. Nibbles 9..15 (TL1) / 14..15 (TL2) fetch the
 *   zero entries the LUT builder stores there, exactly like the scalar code.
 * Tokens: a chunk has nc <= BITNET_TL_NT_CHUNK tokens. Each weight vector is loaded and split
 *   into nibbles (and, for TL2, its sign masks made) ONCE, then looked up in every token's
 *   planes; the nc = 1..8 bodies are separate inlined copies so the per-token int16
 *   accumulators (2 vectors per token) stay in registers.
 * TL1 layout (per BK tile): [BM/bm][BK/by][bm/16][by/4][16 rows], byte = idx(pair 2q) << 4 |
 *   idx(pair 2q+1), so one 16-byte vector is 16 rows x 4 columns (pairs 2q, 2q+1).
 * TL2 layout: 32-byte vectors of 32 rows stored as row chunks 0-7, 16-23, 8-15, 24-31. Its
 *   first 16 bytes are rows 0-7 | 16-23 and the last 16 rows 8-15 | 24-31: each half is done as
 *   its own 16-row pass (zip1 -> the first 8 rows, zip2 -> the second 8).
 */
#include "bitnet-tl-internal.h"

#ifdef BITNET_TL_HAVE_NEON

#include <arm_neon.h>

#define INLINE static inline __attribute__((always_inline))
#define UNROLL_NC _Pragma("GCC unroll 8")

/* LUT slots whose planes are built at a time: TL1 128 columns (see the bound below), TL2 one
 * BK tile (BK / 3 <= 64 groups) or one 32-column two-part tile (16 pairs). Per token 2 KiB,
 * 16 KiB for a full chunk of 8 tokens (on the stack, next to the caller's 32 KiB acc). */
#define MAX_SLOTS 64
#define TL1_CHUNK_K (2 * MAX_SLOTS)

typedef uint8x16_t tl_planes[2 * MAX_SLOTS];

/* Slots s0 .. s0+n of one token's LUT -> pl[2*i] (low bytes), pl[2*i+1] (high bytes).
 * Little-endian: byte 2e of a slot is the low byte of entry e (the macro guard checks it). */
INLINE void make_planes(const int16_t *lut, int64_t s0, int64_t n, uint8x16_t *pl) {
    const uint8_t *p = (const uint8_t *)(lut + s0 * 16);
    for (int64_t i = 0; i < n; i++, p += 32) {
        const uint8x16_t a = vld1q_u8(p), b = vld1q_u8(p + 16);
        pl[2 * i] = vuzp1q_u8(a, b);
        pl[2 * i + 1] = vuzp2q_u8(a, b);
    }
}

/* int16 entries of the slot with planes pl[0..1] for 16 nibbles: *r0 lanes 0-7, *r1 lanes 8-15
 * (zip puts the high byte of each entry right after its low byte: one little-endian int16). */
INLINE void lookup(const uint8x16_t *pl, uint8x16_t nib, int16x8_t *r0, int16x8_t *r1) {
    const uint8x16_t lo = vqtbl1q_u8(pl[0], nib), hi = vqtbl1q_u8(pl[1], nib);
    *r0 = vreinterpretq_s16_u8(vzip1q_u8(lo, hi));
    *r1 = vreinterpretq_s16_u8(vzip2q_u8(lo, hi));
}

/* acc[0..7] (int32) += s (int16, sign-extended). */
INLINE void widen_add8(int32_t *acc, int16x8_t s) {
    vst1q_s32(acc, vaddw_s16(vld1q_s32(acc), vget_low_s16(s)));
    vst1q_s32(acc + 4, vaddw_high_s16(vld1q_s32(acc + 4), s));
}

/* After token c's adds (nc > 4 only, folded away otherwise): GCC's pre-RA scheduler hoists the
 * plane loads of later tokens above earlier tokens' adds and runs out of the 32 vector registers
 * (GCC 12 -O2, nc = 8: 31 stack loads/stores in a 181-instruction TL1 loop). An empty asm that
 * "changes" the two sums and clobbers memory keeps each token's loads after the previous
 * token's adds: no spills (the 4 loads + 4 `tbl` of one token still overlap each other). */
INLINE void token_fence(const int nc, int16x8_t *s0, int16x8_t *s1) {
    if (nc > 4) __asm__ volatile("" : "+w"(*s0), "+w"(*s1) : : "memory");
}

/* ============================================================================================
 * TL1 (ref: spec §3.1; scalar model tl1_tile)
 *
 * int16 bound: a pair entry is w0*b0 + w1*b1 with w in {-1, 0, 1} and b in [-128, 127], so
 * |entry| <= 256, and a vector adds two entries per row (pairs 2q, 2q+1: |.| <= 512). The
 * per-row int16 sums run over at most TL1_CHUNK_K = 128 columns = 64 pairs: |s| <= 64 * 256 =
 * 16384 < 32767. BK itself may reach 256 (bitnet_tl_tiling_valid), where 128 pairs of
 * b = -128 would give exactly 32768 and wrap, so a BK tile is split into 128-column chunks and
 * each chunk is widened into the int32 acc.
 * ============================================================================================ */

/* One BK tile i1 of BM-tile i0 for nc tokens (nc a constant after inlining). */
INLINE void tl1_ktile(const bitnet_tl_tiling *t, int64_t i0, int64_t i1, const int nc,
                      const uint8_t *w, const int16_t *lut, int64_t lut_stride, int32_t *acc,
                      tl_planes *planes) {
    const int64_t BM = t->BM, BK = t->BK, bm = t->bm, by = 256 / bm, nkt = t->K / BK;
    const int64_t nby = BK / by, nv = by / 4; /* column groups per tile, vectors per group */
    const uint8_t *tile = w + (i0 * nkt + i1) * (BM * BK / 4);
    const uint8x16_t m4 = vdupq_n_u8(0x0f);
    /* chunks of <= 128 columns; 128 and BK are multiples of by, so chunks hold whole groups */
    for (int64_t k0 = 0; k0 < BK; k0 += TL1_CHUNK_K) {
        const int64_t kn = BK - k0 < TL1_CHUNK_K ? BK - k0 : TL1_CHUNK_K;
        UNROLL_NC
        for (int c = 0; c < nc; c++)
            make_planes(lut + c * lut_stride, (i1 * BK + k0) / 2, kn / 2, planes[c]);
        for (int64_t i2 = 0; i2 < BM / bm; i2++)
            for (int64_t i4 = 0; i4 < bm / 16; i4++) {
                /* rows i2*bm + i4*16 .. +15: s[c][0] rows 0-7, s[c][1] rows 8-15 */
                int16x8_t s[BITNET_TL_NT_CHUNK][2];
                UNROLL_NC
                for (int c = 0; c < nc; c++) s[c][0] = s[c][1] = vdupq_n_s16(0);
                for (int64_t i3 = k0 / by; i3 < (k0 + kn) / by; i3++) {
                    /* [BM/bm][BK/by][bm/16][by/4][16]: a (i2, i3) block is bm*by/4 = 64 B */
                    const uint8_t *p = tile + (i2 * nby + i3) * 64 + i4 * nv * 16;
                    for (int64_t i5 = 0; i5 < nv; i5++, p += 16) {
                        const uint8x16_t v = vld1q_u8(p);
                        const uint8x16_t nh = vshrq_n_u8(v, 4), nl = vandq_u8(v, m4);
                        /* chunk-local slot of the high nibble; the low nibble's is slot + 1 */
                        const int64_t slot = (i3 * by + i5 * 4 - k0) / 2;
                        UNROLL_NC
                        for (int c = 0; c < nc; c++) {
                            const uint8x16_t *pl = planes[c] + 2 * slot;
                            int16x8_t a0, a1, b0, b1;
                            lookup(pl, nh, &a0, &a1);
                            lookup(pl + 2, nl, &b0, &b1);
                            s[c][0] = vaddq_s16(s[c][0], vaddq_s16(a0, b0));
                            s[c][1] = vaddq_s16(s[c][1], vaddq_s16(a1, b1));
                            token_fence(nc, &s[c][0], &s[c][1]);
                        }
                    }
                }
                UNROLL_NC
                for (int c = 0; c < nc; c++) {
                    int32_t *a = acc + c * BM + i2 * bm + i4 * 16;
                    widen_add8(a, s[c][0]);
                    widen_add8(a + 8, s[c][1]);
                }
            }
    }
}

INLINE void tl1_tile_nc(const bitnet_tl_tiling *t, int64_t i0, const int nc, const uint8_t *w,
                        const int16_t *lut, int64_t lut_stride, int32_t *acc) {
    tl_planes planes[BITNET_TL_NT_CHUNK];
    for (int64_t i1 = 0; i1 < t->K / t->BK; i1++)
        tl1_ktile(t, i0, i1, nc, w, lut, lut_stride, acc, planes);
}

/* ============================================================================================
 * TL2 (ref: spec §3.2; scalar model tl2_tile_scalar)
 *
 * Signs: word j of a 32 x 24 sign block holds, at bit 15 - (2g + h), the sign of group g of
 *   row 16h + j. In a 16-row pass over words j0..j0+7, zip1 lanes are rows j (h = 0) and zip2
 *   lanes rows 16 + j (h = 1); shifting the word left by 2g + h and arithmetic-shifting right
 *   by 15 gives m = 0 or -1 per lane. (x ^ m) - m negates x where m = -1. The "- m" part does
 *   not depend on the token: the pass adds only x ^ m per token, and at the flush adds the
 *   number of negated groups of each row (a popcount of its sign bits, `sign_counts`), so the
 *   hot loop carries no extra accumulator.
 * int16 bound: |entry| <= 3 * 128 = 384 and |x ^ m| <= 385, one BK tile has BK / 3 <= 64
 *   groups per row (BK <= 192, bitnet_tl_tiling_valid): |s| <= 64 * 385 = 24640, the count is
 *   <= 64, and s + count is the exact sum, |.| <= 64 * 384. The two-part section (pairs,
 *   |entry| <= 256) is widened after every 32 columns: 16 pairs -> |s| <= 4096.
 * ============================================================================================ */

/* acc rows r .. r+7 and r+16 .. r+23 of each token += s[c][0] + cnt0, s[c][1] + cnt1. */
INLINE void tl2_flush(int32_t *acc, int64_t BM, const int nc, int16x8_t (*s)[2], int16x8_t cnt0,
                      int16x8_t cnt1) {
    UNROLL_NC
    for (int c = 0; c < nc; c++) {
        widen_add8(acc + c * BM, vaddq_s16(s[c][0], cnt0));
        widen_add8(acc + c * BM + 16, vaddq_s16(s[c][1], cnt1));
    }
}

/* Negated groups per row of a 16-row pass: *cnt0 (rows j, h = 0: odd bits 15, 13, .., 1 of word
 * j) and *cnt1 (rows 16 + j, h = 1: even bits) summed over the n sign blocks at ps, 32 B apart. */
INLINE void sign_counts(const uint8_t *ps, int64_t n, int16x8_t *cnt0, int16x8_t *cnt1) {
    const uint16x8_t odd = vdupq_n_u16(0xAAAA), even = vdupq_n_u16(0x5555);
    uint16x8_t c0 = vdupq_n_u16(0), c1 = vdupq_n_u16(0);
    for (int64_t i = 0; i < n; i++, ps += 32) {
        const uint16x8_t wd = vreinterpretq_u16_u8(vld1q_u8(ps));
        /* per-byte popcounts, then the two bytes of each word added (<= 8 per word) */
        c0 = vaddq_u16(c0, vpaddlq_u8(vcntq_u8(vreinterpretq_u8_u16(vandq_u16(wd, odd)))));
        c1 = vaddq_u16(c1, vpaddlq_u8(vcntq_u8(vreinterpretq_u8_u16(vandq_u16(wd, even)))));
    }
    *cnt0 = vreinterpretq_s16_u16(c0);
    *cnt1 = vreinterpretq_s16_u16(c1);
}

INLINE void tl2_tile_nc(const bitnet_tl_tiling *t, int64_t i0, const int nc, const uint8_t *w,
                        const int16_t *lut, int64_t lut_stride, int32_t *acc) {
    const int64_t M = t->M, BM = t->BM, BK = t->BK, K = t->K;
    const int64_t nkt = K / BK, three_k = nkt * BK, two_k = K - three_k, n3 = three_k / 3;
    const uint8_t *idx = w, *sign = w + M * three_k / 6, *two = sign + M * three_k / 24;
    const uint8x16_t m4 = vdupq_n_u8(0x0f);
    tl_planes planes[BITNET_TL_NT_CHUNK];
    int16x8_t s[BITNET_TL_NT_CHUNK][2];

    /* three-part: index bytes [BM/32][BK/6][32 rows], sign words per [BM/32][BK/24] block */
    for (int64_t i1 = 0; i1 < nkt; i1++) {
        UNROLL_NC
        for (int c = 0; c < nc; c++)
            make_planes(lut + c * lut_stride, i1 * BK / 3, BK / 3, planes[c]);
        const uint8_t *pi = idx + (i0 * nkt + i1) * (BM * BK / 6);
        const uint8_t *ps = sign + (i0 * nkt + i1) * (BM * BK / 24);
        for (int64_t i2 = 0; i2 < BM / 32; i2++)
            for (int half = 0; half < 2; half++) { /* rows 8h .. 8h+7 and 16+8h .. 16+8h+7 */
                UNROLL_NC
                for (int c = 0; c < nc; c++) s[c][0] = s[c][1] = vdupq_n_s16(0);
                /* the 32-byte sign blocks of this row block; this pass reads words 8h .. 8h+7 */
                const uint8_t *pw = ps + i2 * (BK / 24) * 32 + 16 * half;
                for (int64_t i4 = 0; i4 < BK / 24; i4++) {
                    int16x8_t wd = vreinterpretq_s16_u8(vld1q_u8(pw + i4 * 32)); /* LE words */
                    const uint8_t *pv = pi + (i2 * (BK / 6) + 4 * i4) * 32 + 16 * half;
                    for (int qq = 0; qq < 4; qq++, pv += 32, wd = vshlq_n_s16(wd, 4)) {
                        const uint8x16_t v = vld1q_u8(pv);
                        const uint8x16_t nh = vshrq_n_u8(v, 4), nl = vandq_u8(v, m4);
                        /* wd holds bit 15 - 4qq at bit 15: group 2qq (nh) h = 0, 1 at shifts
                         * 0, 1; group 2qq+1 (nl) at shifts 2, 3; m = 0 or -1 per lane */
                        const int16x8_t ma0 = vshrq_n_s16(wd, 15);
                        const int16x8_t ma1 = vshrq_n_s16(vshlq_n_s16(wd, 1), 15);
                        const int16x8_t mb0 = vshrq_n_s16(vshlq_n_s16(wd, 2), 15);
                        const int16x8_t mb1 = vshrq_n_s16(vshlq_n_s16(wd, 3), 15);
                        const int64_t g0 = i4 * 8 + 2 * qq; /* tile-local slot of group 2qq */
                        UNROLL_NC
                        for (int c = 0; c < nc; c++) {
                            const uint8x16_t *pl = planes[c] + 2 * g0;
                            int16x8_t a0, a1, b0, b1;
                            lookup(pl, nh, &a0, &a1);
                            lookup(pl + 2, nl, &b0, &b1);
                            a0 = veorq_s16(a0, ma0);
                            a1 = veorq_s16(a1, ma1);
                            b0 = veorq_s16(b0, mb0);
                            b1 = veorq_s16(b1, mb1);
                            s[c][0] = vaddq_s16(s[c][0], vaddq_s16(a0, b0));
                            s[c][1] = vaddq_s16(s[c][1], vaddq_s16(a1, b1));
                            token_fence(nc, &s[c][0], &s[c][1]);
                        }
                    }
                }
                int16x8_t cnt0, cnt1;
                sign_counts(pw, BK / 24, &cnt0, &cnt1);
                tl2_flush(acc + i2 * 32 + 8 * half, BM, nc, s, cnt0, cnt1);
            }
    }
    /* two-part: TL1 pair codes, [two_k/32][BM/32][8][32 rows] per BM tile, no signs */
    const int64_t nk2 = two_k / 32;
    const int16x8_t zero = vdupq_n_s16(0);
    for (int64_t j1 = 0; j1 < nk2; j1++) {
        UNROLL_NC
        for (int c = 0; c < nc; c++) make_planes(lut + c * lut_stride, n3 + j1 * 16, 16, planes[c]);
        const uint8_t *pt = two + (i0 * nk2 + j1) * (BM * 8);
        for (int64_t i2 = 0; i2 < BM / 32; i2++)
            for (int half = 0; half < 2; half++) {
                UNROLL_NC
                for (int c = 0; c < nc; c++) s[c][0] = s[c][1] = zero;
                const uint8_t *pv = pt + i2 * 8 * 32 + 16 * half;
                for (int qq = 0; qq < 8; qq++, pv += 32) {
                    const uint8x16_t v = vld1q_u8(pv);
                    const uint8x16_t nh = vshrq_n_u8(v, 4), nl = vandq_u8(v, m4);
                    UNROLL_NC
                    for (int c = 0; c < nc; c++) {
                        int16x8_t a0, a1, b0, b1;
                        lookup(planes[c] + 4 * qq, nh, &a0, &a1);
                        lookup(planes[c] + 4 * qq + 2, nl, &b0, &b1);
                        s[c][0] = vaddq_s16(s[c][0], vaddq_s16(a0, b0));
                        s[c][1] = vaddq_s16(s[c][1], vaddq_s16(a1, b1));
                        token_fence(nc, &s[c][0], &s[c][1]);
                    }
                }
                tl2_flush(acc + i2 * 32 + 8 * half, BM, nc, s, zero, zero);
            }
    }
}

/* ============================================================================================
 * Entry points: one inlined body per token count, so nc is a constant inside
 * ============================================================================================ */

#define TL_NEON_ENTRY(name, body)                                                              \
    void name(const bitnet_tl_tiling *t, int64_t i0, int64_t nc, const uint8_t *w,             \
              const int16_t *lut, int64_t lut_stride, int32_t *acc) {                          \
        for (int64_t c0 = 0; c0 < nc; c0 += BITNET_TL_NT_CHUNK) {                              \
            const int64_t n = nc - c0 < BITNET_TL_NT_CHUNK ? nc - c0 : BITNET_TL_NT_CHUNK;     \
            const int16_t *l = lut + c0 * lut_stride;                                          \
            int32_t *a = acc + c0 * t->BM;                                                     \
            switch (n) {                                                                       \
            case 1: body(t, i0, 1, w, l, lut_stride, a); break;                                \
            case 2: body(t, i0, 2, w, l, lut_stride, a); break;                                \
            case 3: body(t, i0, 3, w, l, lut_stride, a); break;                                \
            case 4: body(t, i0, 4, w, l, lut_stride, a); break;                                \
            case 5: body(t, i0, 5, w, l, lut_stride, a); break;                                \
            case 6: body(t, i0, 6, w, l, lut_stride, a); break;                                \
            case 7: body(t, i0, 7, w, l, lut_stride, a); break;                                \
            default: body(t, i0, 8, w, l, lut_stride, a); break;                               \
            }                                                                                  \
        }                                                                                      \
    }

TL_NEON_ENTRY(bitnet_tl1_tile_neon, tl1_tile_nc)
TL_NEON_ENTRY(bitnet_tl2_tile_neon, tl2_tile_nc)

#else
typedef int bitnet_tl_neon_unused; /* ISO C: a translation unit is never empty */
#endif /* BITNET_TL_HAVE_NEON */
