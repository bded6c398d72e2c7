/*
 * bitnet-tl-avx512.c — TL2 table lookups with AVX-512 VBMI + VNNI (`vpermb` on biased byte
 * planes of the LUT, `vpdpbusd` to apply the signs and accumulate), for Ice Lake, Sapphire
 * Rapids, Zen 4 and later.
 *
 * Same contract and results as tl2_tile_scalar in bitnet-tl.c (bit for bit: the integer sums are
 * exact). Sources: docs/formats.md "TL2" (byte orders), shared/spec/bitnet-formats.md §3.2;
 * shared/spec/fast-kernels.md §2 "LUT", "Reuse unpacked weights across tokens", "Accumulator
 * width".
 *
 * Why bytes and VNNI: `vpermw` (int16 entries, 32-word table) would fold the sign into the index,
 *   but it costs two port slots per 32 entries on this class of core and needs an add per
 *   lookup; `vpermb` takes one slot for 64 bytes and `vpdpbusd` applies the signs, adds 4 bytes
 *   and accumulates in int32 in one more. Measured against a `vpermw` version of this file
 *   (2B-4T shapes, one thread): 1.1-1.2x faster for 8-64 tokens, the same for one.
 *
 * Tables: LUT entries are int16 with |L| <= 3 * 128 = 384, so e = L + 384 is in 0..768 and splits
 *   into two unsigned bytes, lo = e & 255 and hi = e >> 8 (0..3). Per token and K-tile, every 4
 *   consecutive slots (a "quad", 4 x 16 entries) become two 64-byte tables, one per byte plane:
 *   byte 16s + n of a plane = that byte of entry n of slot s (`vpermt2b` picks the even or odd
 *   bytes of the 4 slots). `vpermb(idx, plane)` then looks up 64 bytes at once (idx = 16s + n).
 * Lookups: one 64-byte index vector covers 16 rows x the 4 groups of a quad (two stored 32-byte
 *   vectors v0, v1; groups 2q, 2q+1 in the high, low nibbles of v0, 2q+2, 2q+3 of v1). Bytes
 *   4r .. 4r+3 belong to row r and are one int32 lane of `vpdpbusd(acc, plane bytes (u8), signs
 *   (s8 +-1))`, which adds sum_k sign_k * byte_k to it: A collects the lo plane, B the hi plane,
 *   S = sum_k sign_k (token-independent), and A + 256 * B - 384 * S = sum_k sign_k * L_k, the
 *   exact dot product of the row's 12 weights with the token.
 * Index: `vpermb` copies the byte of row r of v0, v1, v0, v1 to bytes 4r .. 4r+3 (stored chunks
 *   hold rows 0-7, 16-23, 8-15, 24-31; rows 0-15 are "half" 0, rows 16-31 half 1); a 16-bit shift
 *   right by 4 of the even words brings the two high nibbles to bits 0-3 of their bytes (the odd
 *   words keep the low nibbles there), and `vpternlogd` keeps bits 0-3 and ors in 16 * slot, with
 *   slots 0, 2, 1, 3 for k = 0..3.
 * Signs: word j of a 32 x 24 sign block holds, at bit 15 - (2g + h), the sign of group g of row
 *   16h + j. `vpermb` copies byte 2r+1 (groups 0-3, bits 15..8) or 2r (groups 4-7) of the block to
 *   bytes 4r .. 4r+3, `vptestmb` with bit 7 - 2g - h of each byte gives the mask of negative
 *   groups, and a masked blend turns it into +-1 bytes.
 * Accumulation: int32 lanes, no int16 stage. Per row and K-tile |A| <= 64 * 255, |B| <= 64 * 3,
 *   |S| <= 64 (BK/3 <= 64 groups for BK <= 192, checked by bitnet_tl_tiling_valid), and acc holds
 *   |sum w*q| <= K * 128: nothing can overflow. A, B, S are folded into acc after each K-tile
 *   (the tables change). The two-part section uses the same lookups on pair slots (|L| <= 256)
 *   with sign +1, so S = 16 per row and 32 columns.
 * Tokens: for a chunk of nc <= 8 tokens each index/sign vector is decoded once and looked up in
 *   every token's tables: per 64 lookups and token 2 `vpermb` + 2 `vpdpbusd`, with the 2 * nc
 *   accumulators in registers (one specialised body per nc). Tables of two K-tiles for nc tokens
 *   (2 * nc * BK/12 * 128 B <= 32 KiB) live on the stack: those of the next K-tile are made
 *   before the current one is looked up, so that their loads overlap with the lookups. The
 *   weight streams are prefetched TL_PREFETCH bytes ahead (on the first half's pass only).
 */
#include "bitnet-tl-internal.h"

#ifdef BITNET_TL_HAVE_AVX512

#include <immintrin.h>

#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi,avx512vnni")))
#define INLINE static inline __attribute__((always_inline))

#define MAX_QUADS 16 /* BK / 12 <= 16 for BK <= 192; the two-part uses 4 per 32 columns */
#define BIAS 384     /* max |LUT entry| = 3 * 128: entry + BIAS >= 0 */
/* Bytes ahead of the weight streams that the lookups prefetch (the signs: a quarter of that).
 * Cold weights, thread CPU time, AMD EPYC Zen 5 VM: one token 1.38–1.43× faster on the 2B-4T
 * shapes (2560×2560 77–81 → 54–58 µs), 8 tokens 1.33–1.47×; 4 and 16 KB gave the same as 8.
 * llama-bench tg64 of the 2B-4T TL2 file: 1 thread 22.5 → 26.0 t/s, pp128 unchanged. */
#define TL_PREFETCH 8192

/* Byte 4r + k of the index of half h takes byte SPREAD_IDX[h][4r + k] of the 64 bytes of two
 * stored vectors v0, v1 (groups 2q, 2q+1 and 2q+2, 2q+3 in their high, low nibbles): bytes
 * 4r + 0..3 = v0, v1, v0, v1 (row r), so that one 16-bit shift by 4 of the even words puts
 * the high nibbles in place; k = 0..3 is then group 2q, 2q+2, 2q+1, 2q+3 (slot 0, 2, 1, 3 of
 * the quad). Row r of half h is at byte r, r+8 (h 0) or r+8, r+16 (h 1) for r < 8, r >= 8. */
#define SP(b) b, 32 + b, b, 32 + b
static const uint8_t SPREAD_IDX[2][64] __attribute__((aligned(64))) = {
    {SP(0), SP(1), SP(2), SP(3), SP(4), SP(5), SP(6), SP(7),
     SP(16), SP(17), SP(18), SP(19), SP(20), SP(21), SP(22), SP(23)},
    {SP(8), SP(9), SP(10), SP(11), SP(12), SP(13), SP(14), SP(15),
     SP(24), SP(25), SP(26), SP(27), SP(28), SP(29), SP(30), SP(31)},
};
#undef SP
/* table offsets 16 * slot of the byte positions k = 0..3 (slots 0, 2, 1, 3), little-endian */
#define SLOT_OFFSETS 0x30102000

/* Byte 4r + k of the sign vector of quad p (groups 4p..4p+3 of a block) takes byte 2r + 1 (p 0,
 * bits 15..8) or 2r (p 1, bits 7..0) of the block; bit 7 - 2g - h of it is the sign of group
 * 4p + g, g = 0, 2, 1, 3 for k = 0..3. */
#define SS(r, p) 2 * (r) + 1 - (p), 2 * (r) + 1 - (p), 2 * (r) + 1 - (p), 2 * (r) + 1 - (p)
#define SS16(p)                                                                              \
    SS(0, p), SS(1, p), SS(2, p), SS(3, p), SS(4, p), SS(5, p), SS(6, p), SS(7, p), SS(8, p), \
        SS(9, p), SS(10, p), SS(11, p), SS(12, p), SS(13, p), SS(14, p), SS(15, p)
static const uint8_t SPREAD_SIGN[2][64] __attribute__((aligned(64))) = {{SS16(0)}, {SS16(1)}};
#undef SS16
#undef SS
#define SB4(h) 1 << (7 - (h)), 1 << (3 - (h)), 1 << (5 - (h)), 1 << (1 - (h))
#define SB16(h) SB4(h), SB4(h), SB4(h), SB4(h)
static const uint8_t SIGN_BIT[2][64] __attribute__((aligned(64))) = {
    {SB16(0), SB16(0), SB16(0), SB16(0)}, {SB16(1), SB16(1), SB16(1), SB16(1)}};
#undef SB16
#undef SB4

/* Even and odd bytes of 128 bytes (two zmm of words): the low and high byte planes. */
#define EV4(i) 2 * (i), 2 * (i) + 2, 2 * (i) + 4, 2 * (i) + 6
#define EV16(i) EV4(i), EV4(i + 4), EV4(i + 8), EV4(i + 12)
static const uint8_t EVEN_BYTES[64] __attribute__((aligned(64))) = {
    EV16(0), EV16(16), EV16(32), EV16(48)};
#undef EV16
#undef EV4

/* Tables of the n quads from LUT slot slot0 on (quad q = slots slot0 + 4q .. +3) of NC tokens:
 * tab[(2q + 0)*NC + c] = lo plane, tab[(2q + 1)*NC + c] = hi plane of token c. */
TARGET INLINE void make_tables(const int16_t *lut, int64_t lut_stride, int64_t slot0, int n,
                               __m512i *tab, const int NC) {
    const __m512i even = _mm512_load_si512(EVEN_BYTES), one = _mm512_set1_epi8(1);
    const __m512i odd = _mm512_add_epi8(even, one), bias = _mm512_set1_epi16(BIAS);
    for (int c = 0; c < NC; c++) {
        const int16_t *l = lut + c * lut_stride + slot0 * 16;
        for (int q = 0; q < n; q++) {
            /* 4 slots = 64 int16 entries, biased into 0..768 */
            const __m512i x0 = _mm512_add_epi16(_mm512_loadu_si512(l + q * 64), bias);
            const __m512i x1 = _mm512_add_epi16(_mm512_loadu_si512(l + q * 64 + 32), bias);
            tab[2 * q * NC + c] = _mm512_permutex2var_epi8(x0, even, x1);
            tab[(2 * q + 1) * NC + c] = _mm512_permutex2var_epi8(x0, odd, x1);
        }
    }
}

/* The index vector of quad lookups for half h of the two stored vectors at p (64 bytes):
 * spread, shift the even words right by 4 (high nibbles), keep bits 0-3, or in 16 * slot. */
TARGET INLINE __m512i quad_index(const uint8_t *p, __m512i spread, __m512i shift, __m512i m4,
                                 __m512i slots) {
    const __m512i y = _mm512_permutexvar_epi8(spread, _mm512_loadu_si512(p));
    const __m512i z = _mm512_srlv_epi16(y, shift);
    return _mm512_ternarylogic_epi32(z, m4, slots, 0xEA); /* (z & 0x0f) | slots */
}

/* acc[0..15] += A + 256 * B - 384 * S (int32; rows in order). */
TARGET INLINE void fold(int32_t *acc, __m512i a, __m512i b, __m512i corr) {
    const __m512i t = _mm512_add_epi32(a, _mm512_slli_epi32(b, 8));
    _mm512_storeu_si512(acc, _mm512_add_epi32(_mm512_loadu_si512(acc), _mm512_sub_epi32(t, corr)));
}

/* An empty asm that "changes" x: keeps the compiler from reassociating the accumulator sums
 * across loop iterations, which makes it hoist every lookup of an unrolled block and spill. */
#define KEEP(x) __asm__("" : "+v"(x))

/* acc[c*BM + row] += the TL2 dot products of BM-tile i0 for NC tokens (NC a constant).
 * Steps: the nkt three-part K-tiles, then the nk2 two-part 32-column tiles. The tables of step
 * s + 1 are made (into the other half of a double buffer) before step s is looked up, so that
 * their loads and shuffles overlap with the lookups instead of stalling them. */
TARGET INLINE void tile_n(const bitnet_tl_tiling *t, int64_t i0, const uint8_t *w,
                          const int16_t *lut, int64_t lut_stride, int32_t *acc, const int NC) {
    const int64_t M = t->M, BM = t->BM, BK = t->BK, K = t->K;
    const int64_t nkt = K / BK, three_k = nkt * BK, two_k = K - three_k, n3 = three_k / 3;
    const int64_t nk2 = two_k / 32, nsteps = nkt + nk2;
    const uint8_t *idx = w, *sign = w + M * three_k / 6, *two = sign + M * three_k / 24;
    const __m512i shift = _mm512_set1_epi32(4), m4 = _mm512_set1_epi8(0x0f);
    const __m512i k16 = _mm512_set1_epi32(SLOT_OFFSETS), one = _mm512_set1_epi8(1);
    const __m512i mone = _mm512_set1_epi8(-1), corr2 = _mm512_set1_epi32(BIAS * 16);
    __m512i tabs[2][2 * MAX_QUADS * BITNET_TL_NT_CHUNK];
    __m512i A[BITNET_TL_NT_CHUNK], B[BITNET_TL_NT_CHUNK];

    make_tables(lut, lut_stride, 0, nkt ? (int)(BK / 12) : 4, tabs[0], NC);
    for (int64_t st = 0; st < nsteps; st++) {
        const __m512i *tab = tabs[st & 1];
        if (st + 1 < nkt)
            make_tables(lut, lut_stride, (st + 1) * BK / 3, (int)(BK / 12), tabs[~st & 1], NC);
        else if (st + 1 < nsteps)
            make_tables(lut, lut_stride, n3 + (st + 1 - nkt) * 16, 4, tabs[~st & 1], NC);

        if (st < nkt) {
            /* three-part K-tile: index bytes [BM/32][BK/6][32 rows], sign words per [BM/32]
             * [BK/24] block */
            const uint8_t *pi = idx + (i0 * nkt + st) * (BM * BK / 6);
            const uint8_t *ps = sign + (i0 * nkt + st) * (BM * BK / 24);
            for (int64_t i2 = 0; i2 < BM / 32; i2++, pi += 32 * BK / 6, ps += 32 * BK / 24) {
                for (int h = 0; h < 2; h++) {
                    const __m512i spread = _mm512_load_si512(SPREAD_IDX[h]);
                    const __m512i sbit = _mm512_load_si512(SIGN_BIT[h]);
                    __m512i S = _mm512_setzero_si512();
#pragma GCC unroll 8
                    for (int c = 0; c < NC; c++) A[c] = B[c] = _mm512_setzero_si512();
                    for (int64_t i4 = 0; i4 < BK / 24; i4++) {
                        if (h == 0) { /* 128 index and 32 sign bytes per step: fetch ahead */
                            _mm_prefetch((const char *)(pi + 128 * i4 + TL_PREFETCH), _MM_HINT_T0);
                            _mm_prefetch((const char *)(pi + 128 * i4 + TL_PREFETCH + 64),
                                         _MM_HINT_T0);
                            if (i4 & 1)
                                _mm_prefetch((const char *)(ps + 32 * i4 + TL_PREFETCH / 4),
                                             _MM_HINT_T0);
                        }
                        /* the 32-byte sign block, in both halves of a zmm */
                        const __m512i sb = _mm512_broadcast_i64x4(
                            _mm256_loadu_si256((const __m256i *)(ps + 32 * i4)));
#pragma GCC unroll 2
                        for (int p = 0; p < 2; p++) {
                            /* quad 2*i4 + p: groups 8*i4 + 4p .. +3, vectors 4*i4 + 2p, +1 */
                            const __m512i ix =
                                quad_index(pi + 128 * i4 + 64 * p, spread, shift, m4, k16);
                            const __m512i sv =
                                _mm512_permutexvar_epi8(_mm512_load_si512(SPREAD_SIGN[p]), sb);
                            const __m512i sg = _mm512_mask_blend_epi8(
                                _mm512_test_epi8_mask(sv, sbit), one, mone); /* +1 / -1 */
                            S = _mm512_dpbusd_epi32(S, one, sg);
                            const __m512i *tq = tab + 2 * (2 * i4 + p) * NC;
#pragma GCC unroll 8
                            for (int c = 0; c < NC; c++) {
                                const __m512i lo = _mm512_permutexvar_epi8(ix, tq[c]);
                                const __m512i hi = _mm512_permutexvar_epi8(ix, tq[NC + c]);
                                A[c] = _mm512_dpbusd_epi32(A[c], lo, sg);
                                B[c] = _mm512_dpbusd_epi32(B[c], hi, sg);
                                KEEP(A[c]);
                                KEEP(B[c]);
                            }
                        }
                    }
                    /* 384 * S = (S << 8) + (S << 7) */
                    const __m512i corr =
                        _mm512_add_epi32(_mm512_slli_epi32(S, 8), _mm512_slli_epi32(S, 7));
#pragma GCC unroll 8
                    for (int c = 0; c < NC; c++)
                        fold(acc + c * BM + i2 * 32 + 16 * h, A[c], B[c], corr);
                }
            }
        } else {
            /* two-part 32 columns: TL1 pair codes, [two_k/32][BM/32][8][32 rows] per BM tile,
             * 16 pair slots = 4 quads, no signs (+1), so S = 16 per row */
            const uint8_t *pt = two + (i0 * nk2 + st - nkt) * (BM * 8);
            for (int64_t i2 = 0; i2 < BM / 32; i2++, pt += 256) {
                for (int h = 0; h < 2; h++) {
                    const __m512i spread = _mm512_load_si512(SPREAD_IDX[h]);
#pragma GCC unroll 8
                    for (int c = 0; c < NC; c++) A[c] = B[c] = _mm512_setzero_si512();
#pragma GCC unroll 2
                    for (int p = 0; p < 4; p++) {
                        if (h == 0)
                            _mm_prefetch((const char *)(pt + 64 * p + TL_PREFETCH), _MM_HINT_T0);
                        const __m512i ix = quad_index(pt + 64 * p, spread, shift, m4, k16);
                        const __m512i *tq = tab + 2 * p * NC;
#pragma GCC unroll 8
                        for (int c = 0; c < NC; c++) {
                            const __m512i lo = _mm512_permutexvar_epi8(ix, tq[c]);
                            const __m512i hi = _mm512_permutexvar_epi8(ix, tq[NC + c]);
                            A[c] = _mm512_dpbusd_epi32(A[c], lo, one);
                            B[c] = _mm512_dpbusd_epi32(B[c], hi, one);
                            KEEP(A[c]);
                            KEEP(B[c]);
                        }
                    }
#pragma GCC unroll 8
                    for (int c = 0; c < NC; c++)
                        fold(acc + c * BM + i2 * 32 + 16 * h, A[c], B[c], corr2);
                }
            }
        }
    }
}

TARGET void bitnet_tl2_tile_avx512(const bitnet_tl_tiling *t, int64_t i0, int64_t nc,
                                   const uint8_t *w, const int16_t *lut, int64_t lut_stride,
                                   int32_t *acc) {
    /* one specialised body per token count keeps the 2 * nc accumulators in registers */
    for (int64_t c0 = 0; c0 < nc; c0 += BITNET_TL_NT_CHUNK) {
        const int64_t n = nc - c0 < BITNET_TL_NT_CHUNK ? nc - c0 : BITNET_TL_NT_CHUNK;
        const int16_t *l = lut + c0 * lut_stride;
        int32_t *a = acc + c0 * t->BM;
        switch (n) {
        case 1: tile_n(t, i0, w, l, lut_stride, a, 1); break;
        case 2: tile_n(t, i0, w, l, lut_stride, a, 2); break;
        case 3: tile_n(t, i0, w, l, lut_stride, a, 3); break;
        case 4: tile_n(t, i0, w, l, lut_stride, a, 4); break;
        case 5: tile_n(t, i0, w, l, lut_stride, a, 5); break;
        case 6: tile_n(t, i0, w, l, lut_stride, a, 6); break;
        case 7: tile_n(t, i0, w, l, lut_stride, a, 7); break;
        default: tile_n(t, i0, w, l, lut_stride, a, 8); break;
        }
    }
}

#else
typedef int bitnet_tl_avx512_unused; /* ISO C: a translation unit is never empty */
#endif /* BITNET_TL_HAVE_AVX512 */
