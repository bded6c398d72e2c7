/*
 * bitnet-tl-avx2.c — TL2 table lookups with AVX2 (`vpshufb` on LUT byte planes), for x86.
 *
 * Same contract and results as tl2_tile_scalar in bitnet-tl.c (bit for bit: the integer sums are
 * exact). Sources: docs/formats.md "TL2" (byte orders), shared/spec/bitnet-formats.md §3.2.
 *
 * LUT planes: a slot is 16 int16 entries; per K-tile its slots are split into a low-byte plane
 *   and a high-byte plane (16 bytes each, copied to both 128-bit lanes), so one `vpshufb` of 32
 *   nibbles fetches the low (or high) bytes of 32 rows' entries. `vpunpcklbw`/`vpunpckhbw` of
 *   the two results rebuild int16 entries; because of the stored chunk order (rows 0-7, 16-23,
 *   8-15, 24-31) unpacklo gives rows 0-15 in order and unpackhi rows 16-31.
 * Signs: word j of a 32 x 24 block holds, at bit 15 - (2g + h), the sign of group g of row
 *   16h + j; shifting the 16 words left brings that bit to bit 15, and `vpsignw(x, operand)`
 *   negates exactly the entries whose bit is set, given a non-zero operand (sign_operands).
 * Accumulation: |entry| <= 3 * 128 = 384 per group, so one BK-column tile (BK <= 192, checked by
 *   bitnet_tl_tiling_valid) sums to at most 128 * 192 = 24576 < 32767 in int16; the two-part
 *   section is widened after every 32 columns (<= 4096). Then int16 -> int32 into acc.
 * Tokens: one token runs tl2_token, which loads and decodes each weight vector as it goes.
 *   Several (a chunk of nc <= 8) run tl2_tokens: per K-tile the planes of all nc tokens are made
 *   (nc x 2 x BK/3 ymm <= 32 KiB on the stack), then per 32-row sub-tile every vector is loaded
 *   and decoded once (nibbles and the four vpsignw operands, <= 6 KiB) and each token does its
 *   lookups on the decoded copies. The int16 sums per token are the same as tl2_token's (one
 *   K-tile or 32 two-part columns between widenings), so the bounds above hold unchanged.
 *   Measured against running tl2_token per token (2B-4T shapes, one thread): 1.1-1.25x for
 *   8-64 tokens; the lookups, not the decode, are most of the work.
 *   One token prefetches its weight streams TL_PREFETCH bytes ahead (the lookups leave the core
 *   too busy for the hardware prefetcher alone to keep a single stream from DRAM in flight).
 */
#include "bitnet-act.h"
#include "bitnet-tl-internal.h"

#ifdef BITNET_TL_HAVE_AVX2

#include <immintrin.h>

#define TARGET __attribute__((target("avx2")))
#define INLINE static inline __attribute__((always_inline))

#define MAX_SLOTS 64 /* BK / 3 <= 64 for BK <= 192; the two-part uses 16 per 32 columns */
/* Bytes ahead of the index stream (and a quarter of that ahead of the signs, which are a quarter
 * as long) that one token prefetches. Cold weights, one token, thread CPU time, AMD EPYC Zen 5 VM
 * on this path: 2560×2560 from 102 to 77 µs, 6912×2560 from 231–274 to 196–204 µs, 2560×6912
 * from 254–257 to 192–194 µs (1.18–1.35×); 4 and 16 KB gave the same as 8; several tokens are
 * unchanged (lookup-bound). llama-bench tg64 of the 2B-4T TL2 file: 1 thread 20.0 → 23.0 t/s. */
#define TL_PREFETCH 8192

/* Slots s0 .. s0+n of one token's LUT -> planes[2*i] (low bytes), planes[2*i+1] (high bytes). */
TARGET INLINE void make_planes(const int16_t *lut, int64_t s0, int n, __m256i *planes) {
    const __m256i split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
                                           0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    for (int i = 0; i < n; i++) {
        __m256i x = _mm256_loadu_si256((const __m256i *)(lut + (s0 + i) * 16));
        x = _mm256_shuffle_epi8(x, split);         /* per lane: 8 low bytes, 8 high bytes */
        x = _mm256_permute4x64_epi64(x, 0xD8);     /* low plane | high plane */
        planes[2 * i] = _mm256_permute2x128_si256(x, x, 0x00);
        planes[2 * i + 1] = _mm256_permute2x128_si256(x, x, 0x11);
    }
}

/* int16 entries of one slot for the 32 rows of nibbles `nib`: *r0 rows 0-15, *r1 rows 16-31. */
TARGET INLINE void lookup(const __m256i *pl, __m256i nib, __m256i *r0, __m256i *r1) {
    const __m256i lo = _mm256_shuffle_epi8(pl[0], nib), hi = _mm256_shuffle_epi8(pl[1], nib);
    *r0 = _mm256_unpacklo_epi8(lo, hi);
    *r1 = _mm256_unpackhi_epi8(lo, hi);
}

/* acc[0..31] += the int16 sums of rows 0-15 (a) and 16-31 (b). */
TARGET INLINE void widen_add(int32_t *acc, __m256i a, __m256i b) {
    __m256i *p = (__m256i *)acc;
    const __m256i v0 = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(a));
    const __m256i v1 = _mm256_cvtepi16_epi32(_mm256_extracti128_si256(a, 1));
    const __m256i v2 = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(b));
    const __m256i v3 = _mm256_cvtepi16_epi32(_mm256_extracti128_si256(b, 1));
    _mm256_storeu_si256(p, _mm256_add_epi32(_mm256_loadu_si256(p), v0));
    _mm256_storeu_si256(p + 1, _mm256_add_epi32(_mm256_loadu_si256(p + 1), v1));
    _mm256_storeu_si256(p + 2, _mm256_add_epi32(_mm256_loadu_si256(p + 2), v2));
    _mm256_storeu_si256(p + 3, _mm256_add_epi32(_mm256_loadu_si256(p + 3), v3));
}

/* The vpsignw operands of stored vector qq of a 32 x 24 sign block (wd: its words; y: wd | 1
 * shifted left by 4 * qq): the sign bits of groups 2qq, 2qq+1, halves 0, 1 moved to bit 15.
 * vpsignw zeroes where the operand is 0, so each must be non-zero: bit 0 set once does that for
 * every shift by fewer than 15; the shift by 15 (qq 3, group 7, half 1) takes wd's own bit 0 and
 * sets bit 0 after it. One or per 4 vectors where an or per operand took 16: 1.06-1.07x faster
 * for one token (AVX2 path, Zen 5, cold 2B-4T shapes). */
TARGET INLINE void sign_operands(__m256i y, __m256i wd, int qq, __m256i one, __m256i *op) {
    op[0] = y;
    op[1] = _mm256_slli_epi16(y, 1);
    op[2] = _mm256_slli_epi16(y, 2);
    op[3] = qq < 3 ? _mm256_slli_epi16(y, 3) : _mm256_or_si256(_mm256_slli_epi16(wd, 15), one);
}

/* One token: acc[row] (BM int32) += the TL2 dot products of BM-tile i0. */
TARGET static void tl2_token(const bitnet_tl_tiling *t, int64_t i0, const uint8_t *w,
                             const int16_t *lut, int32_t *acc) {
    const int64_t M = t->M, BM = t->BM, BK = t->BK, K = t->K;
    const int64_t nkt = K / BK, three_k = nkt * BK, two_k = K - three_k, n3 = three_k / 3;
    const uint8_t *idx = w, *sign = w + M * three_k / 6, *two = sign + M * three_k / 24;
    const __m256i m4 = _mm256_set1_epi8(0x0f), one = _mm256_set1_epi16(1);
    __m256i planes[2 * MAX_SLOTS];

    /* three-part: index bytes [BM/32][BK/6][32 rows], sign words per [BM/32][BK/24] block */
    for (int64_t i1 = 0; i1 < nkt; i1++) {
        make_planes(lut, i1 * BK / 3, (int)(BK / 3), planes);
        const uint8_t *pi = idx + (i0 * nkt + i1) * (BM * BK / 6);
        const uint8_t *ps = sign + (i0 * nkt + i1) * (BM * BK / 24);
        for (int64_t i2 = 0; i2 < BM / 32; i2++) {
            __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
            for (int64_t i4 = 0; i4 < BK / 24; i4++, ps += 32) {
                /* this step reads 128 index bytes and 32 sign bytes: fetch as far ahead */
                _mm_prefetch((const char *)(pi + TL_PREFETCH), _MM_HINT_T0);
                _mm_prefetch((const char *)(pi + TL_PREFETCH + 64), _MM_HINT_T0);
                if (i4 & 1)
                    _mm_prefetch((const char *)(ps + TL_PREFETCH / 4), _MM_HINT_T0);
                const __m256i wd = _mm256_loadu_si256((const __m256i *)ps); /* lane j = word j */
                const __m256i *pl = planes + 2 * 8 * i4;
                __m256i y = _mm256_or_si256(wd, one);
#pragma GCC unroll 4
                for (int qq = 0; qq < 4; qq++, pi += 32, pl += 4, y = _mm256_slli_epi16(y, 4)) {
                    const __m256i v = _mm256_loadu_si256((const __m256i *)pi);
                    const __m256i nh = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                    const __m256i nl = _mm256_and_si256(v, m4);
                    __m256i a0, a1, b0, b1, op[4];
                    lookup(pl, nh, &a0, &a1);     /* group 2qq: sign bits 15-4qq (h 0), -1 (h 1) */
                    lookup(pl + 2, nl, &b0, &b1); /* group 2qq+1: bits 15-4qq-2, -3 */
                    sign_operands(y, wd, qq, one, op);
                    a0 = _mm256_sign_epi16(a0, op[0]);
                    a1 = _mm256_sign_epi16(a1, op[1]);
                    b0 = _mm256_sign_epi16(b0, op[2]);
                    b1 = _mm256_sign_epi16(b1, op[3]);
                    s0 = _mm256_add_epi16(s0, _mm256_add_epi16(a0, b0));
                    s1 = _mm256_add_epi16(s1, _mm256_add_epi16(a1, b1));
                }
            }
            widen_add(acc + i2 * 32, s0, s1);
        }
    }
    /* two-part: TL1 pair codes, [two_k/32][BM/32][8][32 rows] per BM tile, no signs */
    const int64_t nk2 = two_k / 32;
    for (int64_t j1 = 0; j1 < nk2; j1++) {
        make_planes(lut, n3 + j1 * 16, 16, planes);
        const uint8_t *pt = two + (i0 * nk2 + j1) * (BM * 8);
        for (int64_t i2 = 0; i2 < BM / 32; i2++) {
            __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
            for (int qq = 0; qq < 8; qq++, pt += 32) {
                if (qq & 1)
                    _mm_prefetch((const char *)(pt + TL_PREFETCH), _MM_HINT_T0);
                const __m256i v = _mm256_loadu_si256((const __m256i *)pt);
                __m256i a0, a1, b0, b1;
                lookup(planes + 4 * qq, _mm256_and_si256(_mm256_srli_epi16(v, 4), m4), &a0, &a1);
                lookup(planes + 4 * qq + 2, _mm256_and_si256(v, m4), &b0, &b1);
                s0 = _mm256_add_epi16(s0, _mm256_add_epi16(a0, b0));
                s1 = _mm256_add_epi16(s1, _mm256_add_epi16(a1, b1));
            }
            widen_add(acc + i2 * 32, s0, s1);
        }
    }
}

/* The decoded weights of one stored three-part vector: the high and low nibbles (groups 2qq,
 * 2qq+1) and the vpsignw operands of rows 0-15 and 16-31 of both groups. */
typedef struct {
    __m256i nh, nl, s[4]; /* s: group 2qq halves 0, 1, then group 2qq+1 halves 0, 1 */
} dec3;

/* Several tokens (nc >= 2): per K-tile, the planes of all nc tokens are made first; then per
 * 32-row sub-tile the K-tile's vectors are loaded and decoded once into dec (nibbles and sign
 * operands), and each token runs the lookups on the decoded copies (L1-resident). The lookup,
 * sign and add work per token is that of tl2_token; the ~12 decode instructions per vector are
 * shared, as are the weight loads. Bounds as in tl2_token (same int16 sums per K-tile). */
TARGET static void tl2_tokens(const bitnet_tl_tiling *t, int64_t i0, int64_t nc,
                              const uint8_t *w, const int16_t *lut, int64_t lut_stride,
                              int32_t *acc) {
    const int64_t M = t->M, BM = t->BM, BK = t->BK, K = t->K;
    const int64_t nkt = K / BK, three_k = nkt * BK, two_k = K - three_k, n3 = three_k / 3;
    const uint8_t *idx = w, *sign = w + M * three_k / 6, *two = sign + M * three_k / 24;
    const __m256i m4 = _mm256_set1_epi8(0x0f), one = _mm256_set1_epi16(1);
    /* planes of nc <= 8 tokens (<= 32 KiB) and the decoded vectors of one sub-tile (<= 6 KiB) */
    __m256i planes[BITNET_TL_NT_CHUNK][2 * MAX_SLOTS];
    dec3 dec[MAX_SLOTS / 2];

    /* three-part: index bytes [BM/32][BK/6][32 rows], sign words per [BM/32][BK/24] block */
    const int nv = (int)(BK / 6);
    for (int64_t i1 = 0; i1 < nkt; i1++) {
        for (int64_t c = 0; c < nc; c++)
            make_planes(lut + c * lut_stride, i1 * BK / 3, (int)(BK / 3), planes[c]);
        const uint8_t *pi = idx + (i0 * nkt + i1) * (BM * BK / 6);
        const uint8_t *ps = sign + (i0 * nkt + i1) * (BM * BK / 24);
        for (int64_t i2 = 0; i2 < BM / 32; i2++) {
            for (int k = 0; k < nv; k += 4, ps += 32) {
                const __m256i wd = _mm256_loadu_si256((const __m256i *)ps); /* lane j = word j */
                __m256i y = _mm256_or_si256(wd, one);
#pragma GCC unroll 4
                for (int qq = 0; qq < 4; qq++, pi += 32, y = _mm256_slli_epi16(y, 4)) {
                    const __m256i v = _mm256_loadu_si256((const __m256i *)pi);
                    dec3 *d = &dec[k + qq];
                    d->nh = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                    d->nl = _mm256_and_si256(v, m4);
                    sign_operands(y, wd, qq, one, d->s);
                }
            }
            for (int64_t c = 0; c < nc; c++) {
                __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
                const __m256i *pl = planes[c];
                for (int k = 0; k < nv; k++, pl += 4) { /* vector k: slots 2k, 2k+1 */
                    const dec3 *d = &dec[k];
                    __m256i a0, a1, b0, b1;
                    lookup(pl, d->nh, &a0, &a1);
                    lookup(pl + 2, d->nl, &b0, &b1);
                    a0 = _mm256_sign_epi16(a0, d->s[0]);
                    a1 = _mm256_sign_epi16(a1, d->s[1]);
                    b0 = _mm256_sign_epi16(b0, d->s[2]);
                    b1 = _mm256_sign_epi16(b1, d->s[3]);
                    s0 = _mm256_add_epi16(s0, _mm256_add_epi16(a0, b0));
                    s1 = _mm256_add_epi16(s1, _mm256_add_epi16(a1, b1));
                }
                widen_add(acc + c * BM + i2 * 32, s0, s1);
            }
        }
    }
    /* two-part: TL1 pair codes, [two_k/32][BM/32][8][32 rows] per BM tile, no signs; the
     * nibbles of the 8 vectors of a sub-tile are decoded into dec[0..7].nh/.nl */
    const int64_t nk2 = two_k / 32;
    for (int64_t j1 = 0; j1 < nk2; j1++) {
        for (int64_t c = 0; c < nc; c++)
            make_planes(lut + c * lut_stride, n3 + j1 * 16, 16, planes[c]);
        const uint8_t *pt = two + (i0 * nk2 + j1) * (BM * 8);
        for (int64_t i2 = 0; i2 < BM / 32; i2++) {
            for (int qq = 0; qq < 8; qq++, pt += 32) {
                const __m256i v = _mm256_loadu_si256((const __m256i *)pt);
                dec[qq].nh = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                dec[qq].nl = _mm256_and_si256(v, m4);
            }
            for (int64_t c = 0; c < nc; c++) {
                __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
                for (int qq = 0; qq < 8; qq++) {
                    __m256i a0, a1, b0, b1;
                    lookup(planes[c] + 4 * qq, dec[qq].nh, &a0, &a1);
                    lookup(planes[c] + 4 * qq + 2, dec[qq].nl, &b0, &b1);
                    s0 = _mm256_add_epi16(s0, _mm256_add_epi16(a0, b0));
                    s1 = _mm256_add_epi16(s1, _mm256_add_epi16(a1, b1));
                }
                widen_add(acc + c * BM + i2 * 32, s0, s1);
            }
        }
    }
}

void bitnet_tl2_tile_avx2(const bitnet_tl_tiling *t, int64_t i0, int64_t nc, const uint8_t *w,
                          const int16_t *lut, int64_t lut_stride, int32_t *acc) {
    /* one token: the direct loop (nothing to share); several: decode once, chunks of <= 8 */
    if (nc == 1) {
        tl2_token(t, i0, w, lut, acc);
        return;
    }
    for (int64_t c0 = 0; c0 < nc; c0 += BITNET_TL_NT_CHUNK) {
        const int64_t n = nc - c0 < BITNET_TL_NT_CHUNK ? nc - c0 : BITNET_TL_NT_CHUNK;
        tl2_tokens(t, i0, n, w, lut + c0 * lut_stride, lut_stride, acc + c0 * t->BM);
    }
}

/* The per-token quantizer of bitnet_tl_quantize_row_scalar, 32 values per step (bitnet-act.h:
 * the same float32 operations in the same order, so the same bits); the k % 32 tail runs the
 * scalar formula. */
TARGET float bitnet_tl_quantize_row_avx2(const float *x, int8_t *q, int64_t k) {
    const float d = bitnet_act_scale(bitnet_act_absmax_avx2(x, k));
    const __m256 vd = _mm256_set1_ps(d);
    const int64_t kv = k / 32 * 32;
    for (int64_t i = 0; i < kv; i += 32) (void)bitnet_act_q32_avx2(x + i, vd, q + i);
    for (int64_t i = kv; i < k; i++) q[i] = bitnet_act_q(x[i], d);
    return d;
}

#else
typedef int bitnet_tl_avx2_unused; /* ISO C: a translation unit is never empty */
#endif /* BITNET_TL_HAVE_AVX2 */
