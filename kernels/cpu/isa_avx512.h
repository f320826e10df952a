/* The AVX512-VNNI primitives (see isa.h): 16 lanes, vpdpbusd (unsigned x signed bytes, summed in
 * fours into int32). Included by isa.h only. */
#define Q8_SIGNED 0 /* tile_dot multiplies unsigned weight bytes: Q8_0 is stored + 128 */

static inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

static void quant_groups(const float *x, int n, int8_t *q, float *dx, float *dsum) {
    for (int g = 0; g < n / GROUP; g++) {
        const float *xg = x + g * GROUP;
        const __m512 a = _mm512_loadu_ps(xg), b = _mm512_loadu_ps(xg + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
        const float inv = amax > 1e-30f ? 127.f / amax : 0.f; /* a zero group: zeros */
        const __m512 iv = _mm512_set1_ps(inv);
        const __m512i qa = _mm512_cvtps_epi32(_mm512_mul_ps(a, iv)); /* nearest, ties to even */
        const __m512i qb = _mm512_cvtps_epi32(_mm512_mul_ps(b, iv));
        _mm_storeu_si128((__m128i *)(q + g * GROUP), _mm512_cvtsepi32_epi8(qa));
        _mm_storeu_si128((__m128i *)(q + g * GROUP + 16), _mm512_cvtsepi32_epi8(qb));
        const int sum = _mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb));
        dx[g] = amax / 127.f;
        dsum[g] = dx[g] * (float)sum;
    }
}

/* Row o of W times the quantised activation. Two groups per 512-bit step: 32 bytes hold group
 * A's codes in the low nibbles and group B's in the high ones, so [bytes, bytes >> 4] & 15 is
 * A's 32 codes then B's, in the order of the activations. Steps for 16 groups are made at once,
 * then spread to the lanes. The codes are prefetched ahead: without it a row's first loads wait
 * on memory. */
static float q4_row(const Q4 *w, int o, const int8_t *q, const float *dx, const float *dsum) {
    const int groups = w->in / GROUP;
    const uint8_t *c = w->codes + (size_t)o * (w->in / 2);
    const uint16_t *st = w->step + (size_t)o * groups, *mn = w->min + (size_t)o * groups;
    const __m512i shifts = _mm512_set_epi64(4, 4, 4, 4, 0, 0, 0, 0);
    const __m512i low4 = _mm512_set1_epi8(0x0f);
    __m512 acc = _mm512_setzero_ps(), accm = _mm512_setzero_ps();
    for (int g0 = 0; g0 < groups; g0 += 16) {
        const int n = groups - g0 < 16 ? groups - g0 : 16;
        const __mmask16 m = (__mmask16)((1u << n) - 1);
        const __m512 s = _mm512_mul_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, st + g0)),
                                       _mm512_maskz_loadu_ps(m, dx + g0));
        accm = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, mn + g0)),
                               _mm512_maskz_loadu_ps(m, dsum + g0), accm);
        for (int k = 0; k < n; k += 2) {
            const int g = g0 + k;
            _mm_prefetch((const char *)(c + g * 16 + PREFETCH), _MM_HINT_T0);
            const __m512i raw =
                _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(c + g * 16)));
            const __m512i codes = _mm512_and_si512(_mm512_srlv_epi64(raw, shifts), low4);
            const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), codes,
                                                    _mm512_loadu_si512(q + g * GROUP));
            const __m512i idx = _mm512_set_epi32(k + 1, k + 1, k + 1, k + 1, k + 1, k + 1, k + 1,
                                                 k + 1, k, k, k, k, k, k, k, k);
            acc = _mm512_fmadd_ps(_mm512_permutexvar_ps(idx, s), _mm512_cvtepi32_ps(dot), acc);
        }
    }
    const float y = _mm512_reduce_add_ps(_mm512_add_ps(acc, accm));
    return w->bias ? y + w->bias[o] : y;
}

/* sum_j q_j w_j for the int8 head: xu = q + 128 (unsigned), so subtract 128 * sum(w). */
static int32_t int8_dot(const uint8_t *xu, const int8_t *xq, const int8_t *w, int in,
                        int32_t row_sum) {
    (void)xq;
    __m512i acc = _mm512_setzero_si512();
    int j = 0;
    for (; j + 64 <= in; j += 64)
        acc = _mm512_dpbusd_epi32(acc, _mm512_loadu_si512(xu + j), _mm512_loadu_si512(w + j));
    int32_t dot = _mm512_reduce_add_epi32(acc);
    for (; j < in; j++) dot += (int32_t)xu[j] * w[j];
    return dot - 128 * row_sum;
}

static float dot_f32(const float *a, const float *b, int n) {
    int j = 0;
    __m512 acc = _mm512_setzero_ps();
    for (; j + 16 <= n; j += 16)
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + j), _mm512_loadu_ps(b + j), acc);
    float s = _mm512_reduce_add_ps(acc);
    for (; j < n; j++) s += a[j] * b[j];
    return s;
}

static void axpy_f32(float *y, float a, const float *x, int n) {
    int j = 0;
    const __m512 av = _mm512_set1_ps(a);
    for (; j + 16 <= n; j += 16)
        _mm512_storeu_ps(y + j, _mm512_fmadd_ps(av, _mm512_loadu_ps(x + j), _mm512_loadu_ps(y + j)));
    for (; j < n; j++) y[j] += a * x[j];
}

static inline __m512 exp_ps(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.f));
    const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
    const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(t, n);
    __m512 p = _mm512_set1_ps(EXP2_TAYLOR[0]);
    for (int k = 1; k < 8; k++) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(EXP2_TAYLOR[k]));
    return _mm512_scalef_ps(p, n);
}

/* scores [group][S] for slots 0..span-1: q [group][d] against kt, blocks of 16 slots [d][16];
 * four heads at a time, in registers. */
static void head_scores(const float *q, int group, const float *kt, int S, int span, int d,
                        float *scores) {
    for (int h0 = 0; h0 < group; h0 += 4) {
        const int nh = group - h0 < 4 ? group - h0 : 4;
        const float *q0 = q + h0 * d, *q1 = nh > 1 ? q0 + d : q0, *q2 = nh > 2 ? q0 + 2 * d : q0,
                    *q3 = nh > 3 ? q0 + 3 * d : q0;
        for (int s0 = 0; s0 < span; s0 += 16) {
            const __mmask16 m = span - s0 >= 16 ? 0xffff : (__mmask16)((1u << (span - s0)) - 1);
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            const float *col = kt + (size_t)s0 * d; /* block s0 / 16: [d][16] */
            for (int j = 0; j < d; j++, col += 16) {
                const __m512 k = _mm512_maskz_loadu_ps(m, col);
                a0 = _mm512_fmadd_ps(_mm512_set1_ps(q0[j]), k, a0);
                a1 = _mm512_fmadd_ps(_mm512_set1_ps(q1[j]), k, a1);
                a2 = _mm512_fmadd_ps(_mm512_set1_ps(q2[j]), k, a2);
                a3 = _mm512_fmadd_ps(_mm512_set1_ps(q3[j]), k, a3);
            }
            float *out_s = scores + h0 * S + s0;
            _mm512_mask_storeu_ps(out_s, m, a0);
            if (nh > 1) _mm512_mask_storeu_ps(out_s + S, m, a1);
            if (nh > 2) _mm512_mask_storeu_ps(out_s + 2 * S, m, a2);
            if (nh > 3) _mm512_mask_storeu_ps(out_s + 3 * S, m, a3);
        }
    }
}

static float exp_sum(float *sc, int n, float mx) {
    const __m512 mv = _mm512_set1_ps(mx);
    __m512 sv = _mm512_setzero_ps();
    int s = 0;
    for (; s + 16 <= n; s += 16) {
        const __m512 e = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(sc + s), mv));
        _mm512_storeu_ps(sc + s, e);
        sv = _mm512_add_ps(sv, e);
    }
    float sum = _mm512_reduce_add_ps(sv);
    for (; s < n; s++) {
        sc[s] = expf(sc[s] - mx);
        sum += sc[s];
    }
    return sum;
}

/* acc[16] += one tile (256 weights, blocks.h) times a token's activations: per 64 weights one
 * vpdpbusd (lane i: weights 4i..4i+3), scaled by A (the weights' scale per lane) times dxl (the
 * activation's), plus the tile's offsets B against s16 (per 16). */
static inline void tile_dot(const uint8_t *u, const float *A, const float *B, const int8_t *q,
                            const float *dxl, const float *s16, float *acc) {
    __m512 a = _mm512_fmadd_ps(_mm512_loadu_ps(B), _mm512_loadu_ps(s16), _mm512_loadu_ps(acc));
    for (int c = 0; c < 4; c++) {
        const __m512i d = _mm512_dpbusd_epi32(_mm512_setzero_si512(),
                                              _mm512_loadu_si512(u + 64 * c),
                                              _mm512_loadu_si512(q + 64 * c));
        a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d),
                            _mm512_mul_ps(_mm512_loadu_ps(A + 16 * c), _mm512_loadu_ps(dxl + 16 * c)),
                            a);
    }
    _mm512_storeu_ps(acc, a);
}

/* Whole rows of the formats most files hold (Q4_K, Q6_K: a Q4_K_M file), unpacked in registers
 * instead of through blocks.h's tiles: 64 weights per vpdpbusd, their nibbles (and Q6_K's high
 * bits) spread with shifts and masks. q, dxl, s16, dsum: one token's activations (blocks.h's
 * Act). Returns 1 with the row's dot product in *y, or 0 for a type without a row kernel (the
 * tiles then run). */
static const int32_t Q6K_LANE_SCALE[4][16] = {
    {0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3},
    {4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7},
    {8, 8, 8, 8, 9, 9, 9, 9, 10, 10, 10, 10, 11, 11, 11, 11},
    {12, 12, 12, 12, 13, 13, 13, 13, 14, 14, 14, 14, 15, 15, 15, 15}};

static float row_q4_k(const uint8_t *row, int in, const int8_t *q, const float *dxl,
                      const float *dsum) {
    const __m512i shifts = _mm512_set_epi64(4, 4, 4, 4, 0, 0, 0, 0), low4 = _mm512_set1_epi8(15);
    __m512 acc = _mm512_setzero_ps();
    __m256 accm = _mm256_setzero_ps();
    for (int sb = 0; sb < in / 256; sb++) {
        const uint8_t *bl = row + (size_t)sb * 144;
        _mm_prefetch((const char *)(bl + PREFETCH), _MM_HINT_T0);
        _mm_prefetch((const char *)(bl + PREFETCH + 64), _MM_HINT_T0);
        _mm_prefetch((const char *)(bl + PREFETCH + 128), _MM_HINT_T0);
        const float d = h2f((uint16_t)(bl[0] | bl[1] << 8)), dmin = h2f((uint16_t)(bl[2] | bl[3] << 8));
        /* the 6-bit scales and mins (kernels/quant/layout.py: k_scales), built in registers:
         * bytes 0-3 | 8-11 low nibbles (scales) and 4-7 | 8-11 high nibbles (mins) */
        uint32_t w0, w1, w2;
        memcpy(&w0, bl + 4, 4), memcpy(&w1, bl + 8, 4), memcpy(&w2, bl + 12, 4);
        const __m128i a = _mm_cvtsi32_si128((int)w0), b = _mm_cvtsi32_si128((int)w1);
        const __m128i c = _mm_cvtsi32_si128((int)w2), m63 = _mm_set1_epi8(63), m15 = _mm_set1_epi8(15);
        const __m128i top = _mm_set1_epi8(3);
        /* scales j < 4: a & 63; j >= 4: (c & 15) | (a >> 6) << 4 */
        const __m128i sc_hi = _mm_or_si128(_mm_and_si128(c, m15),
                                           _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(a, 6), top), 4));
        const __m128i mn_hi = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(c, 4), m15),
                                           _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(b, 6), top), 4));
        const __m128i sc8 = _mm_unpacklo_epi32(_mm_and_si128(a, m63), sc_hi);
        const __m128i mn8 = _mm_unpacklo_epi32(_mm_and_si128(b, m63), mn_hi);
        /* the 8 sub-blocks' offsets: -dmin * mn * dx * sum(q) */
        accm = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(mn8)),
                                             _mm256_set1_ps(dmin)),
                               _mm256_loadu_ps(dsum + 8 * sb), accm);
        const __m512 scf = _mm512_castps256_ps512(
            _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(sc8)), _mm256_set1_ps(d)));
        const uint8_t *qs = bl + 16;
        const int8_t *qa = q + 256 * sb;
        const float *dl = dxl + 64 * sb;
        for (int c = 0; c < 4; c++) {
            const __m512i raw = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(qs + 32 * c)));
            const __m512i codes = _mm512_and_si512(_mm512_srlv_epi64(raw, shifts), low4);
            const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), codes,
                                                    _mm512_loadu_si512(qa + 64 * c));
            /* lanes 0-7: sub-block 2c, 8-15: 2c + 1 */
            const __m512i idx = _mm512_set_epi32(2 * c + 1, 2 * c + 1, 2 * c + 1, 2 * c + 1, 2 * c + 1,
                                                 2 * c + 1, 2 * c + 1, 2 * c + 1, 2 * c, 2 * c, 2 * c,
                                                 2 * c, 2 * c, 2 * c, 2 * c, 2 * c);
            const __m512 scale = _mm512_mul_ps(_mm512_permutexvar_ps(idx, scf),
                                               _mm512_loadu_ps(dl + 16 * c));
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc);
        }
    }
    const __m128 m4 = _mm_add_ps(_mm256_castps256_ps128(accm), _mm256_extractf128_ps(accm, 1));
    const __m128 m2 = _mm_add_ps(m4, _mm_movehl_ps(m4, m4));
    return _mm512_reduce_add_ps(acc) - _mm_cvtss_f32(_mm_add_ss(m2, _mm_movehdup_ps(m2)));
}

static float row_q6_k(const uint8_t *row, int in, const int8_t *q, const float *dxl,
                      const float *s16) {
    const __m512i lo4 = _mm512_set1_epi8(15), two = _mm512_set1_epi8(3);
    const __m512i sh_a = _mm512_set_epi64(2, 2, 2, 2, 0, 0, 0, 0);
    const __m512i sh_b = _mm512_set_epi64(6, 6, 6, 6, 4, 4, 4, 4);
    __m512 acc = _mm512_setzero_ps(), accm = _mm512_setzero_ps();
    for (int sb = 0; sb < in / 256; sb++) {
        const uint8_t *bl = row + (size_t)sb * 210;
        for (int p = 0; p < 4; p++) _mm_prefetch((const char *)(bl + PREFETCH + 64 * p), _MM_HINT_T0);
        const float d = h2f((uint16_t)(bl[208] | bl[209] << 8));
        const __m512 scf = _mm512_mul_ps(
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(bl + 192)))),
            _mm512_set1_ps(d)); /* d * scale, per 16 weights */
        /* the -32 offset: -32 * d * scale * dx * sum(q) per 16 */
        accm = _mm512_fmadd_ps(scf, _mm512_loadu_ps(s16 + 16 * sb), accm);
        const int8_t *qa = q + 256 * sb;
        const float *dl = dxl + 64 * sb;
        for (int h = 0; h < 2; h++) {
            const __m512i L = _mm512_loadu_si512(bl + 64 * h);
            const __m512i H = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(bl + 128 + 32 * h)));
            const __m512i v0 = _mm512_or_si512(
                _mm512_and_si512(L, lo4),
                _mm512_slli_epi64(_mm512_and_si512(_mm512_srlv_epi64(H, sh_a), two), 4));
            const __m512i v1 = _mm512_or_si512(
                _mm512_and_si512(_mm512_srli_epi64(L, 4), lo4),
                _mm512_slli_epi64(_mm512_and_si512(_mm512_srlv_epi64(H, sh_b), two), 4));
            const int c0 = 2 * h, c1 = 2 * h + 1;
            const __m512i d0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), v0,
                                                   _mm512_loadu_si512(qa + 64 * c0));
            const __m512i d1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), v1,
                                                   _mm512_loadu_si512(qa + 64 * c1));
            const __m512 s0 = _mm512_permutexvar_ps(_mm512_loadu_si512(Q6K_LANE_SCALE[c0]), scf);
            const __m512 s1 = _mm512_permutexvar_ps(_mm512_loadu_si512(Q6K_LANE_SCALE[c1]), scf);
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d0), _mm512_mul_ps(s0, _mm512_loadu_ps(dl + 16 * c0)), acc);
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d1), _mm512_mul_ps(s1, _mm512_loadu_ps(dl + 16 * c1)), acc);
        }
    }
    return _mm512_reduce_add_ps(acc) - 32.f * _mm512_reduce_add_ps(accm);
}

/* Rows of 32-weight blocks (Q4_0, Q4_1, Q8_0), two blocks per vpdpbusd: lanes 0-7 hold block
 * A's 32 weights, lanes 8-15 block B's; an odd row's last block pairs with zeros. Q4: the 16
 * bytes' low nibbles are weights 0-15, high ones 16-31; Q8_0's signed codes are made unsigned
 * (+ 128) and the offset taken back with the activations' sums. */
static float row_b32(int type, const uint8_t *row, int in, const int8_t *q, const float *dxl,
                     const float *dsum) {
    const int nb = in / 32, bytes = type == T_Q4_0 ? 18 : type == T_Q4_1 ? 20 : 34;
    const int at = type == T_Q4_1 ? 4 : 2; /* where the codes start */
    const __m512i shifts = _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0), low4 = _mm512_set1_epi8(15);
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    __m512 acc = _mm512_setzero_ps();
    float off = 0.f;
    for (int b = 0; b < nb; b += 2) {
        const uint8_t *A = row + (size_t)b * bytes, *B = A + bytes;
        const int two = b + 1 < nb;
        _mm_prefetch((const char *)(A + PREFETCH), _MM_HINT_T0);
        const float dA = h2f((uint16_t)(A[0] | A[1] << 8));
        const float dB = two ? h2f((uint16_t)(B[0] | B[1] << 8)) : 0.f;
        __m512i codes;
        if (type == T_Q8_0) {
            const __m256i a = _mm256_loadu_si256((const __m256i *)(A + at));
            const __m256i bb = two ? _mm256_loadu_si256((const __m256i *)(B + at)) : _mm256_set1_epi8((char)0x80);
            codes = _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(a), bb, 1), flip);
            off -= 128.f * (dA * dsum[b] + (two ? dB * dsum[b + 1] : 0.f));
        } else {
            const __m128i a = _mm_loadu_si128((const __m128i *)(A + at));
            const __m128i bb = two ? _mm_loadu_si128((const __m128i *)(B + at)) : _mm_setzero_si128();
            const __m512i raw = _mm512_inserti64x4(
                _mm512_castsi256_si512(_mm256_broadcastsi128_si256(a)), _mm256_broadcastsi128_si256(bb), 1);
            codes = _mm512_and_si512(_mm512_srlv_epi64(raw, shifts), low4);
            if (type == T_Q4_0) {
                off -= 8.f * (dA * dsum[b] + (two ? dB * dsum[b + 1] : 0.f));
            } else {
                const float mA = h2f((uint16_t)(A[2] | A[3] << 8));
                const float mB = two ? h2f((uint16_t)(B[2] | B[3] << 8)) : 0.f;
                off += mA * dsum[b] + (two ? mB * dsum[b + 1] : 0.f);
            }
        }
        const __m512i qa = two ? _mm512_loadu_si512(q + 32 * b)
                               : _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(q + 32 * b)));
        const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), codes,
                                                two ? qa : _mm512_maskz_mov_epi32(0x00ff, qa));
        const __m512 scale = _mm512_mask_blend_ps(0xff00, _mm512_set1_ps(dA), _mm512_set1_ps(dB));
        const __m512 dl = two ? _mm512_loadu_ps(dxl + 8 * b) : _mm512_maskz_loadu_ps(0x00ff, dxl + 8 * b);
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(scale, dl), acc);
    }
    return _mm512_reduce_add_ps(acc) + off;
}

static int fast_row(int type, const uint8_t *row, int in, const int8_t *q, const float *dxl,
                    const float *dsum, const float *s16, float *y) {
    if (type == T_Q4_K && in % 256 == 0) {
        *y = row_q4_k(row, in, q, dxl, dsum);
        return 1;
    }
    if (type == T_Q4_0 || type == T_Q4_1 || type == T_Q8_0) {
        *y = row_b32(type, row, in, q, dxl, dsum);
        return 1;
    }
    if (type == T_Q6_K && in % 256 == 0) {
        *y = row_q6_k(row, in, q, dxl, s16);
        return 1;
    }
    return 0;
}

/* tile_dot for nr rows' tiles against one token (the GEMM's inner step): the token's
 * activations are loaded once for all the rows. */
static inline void tile_dot_rows(int nr, const uint8_t (*u)[TILE], const float (*A)[64],
                                 const float (*B)[16], const int8_t *q, const float *dxl,
                                 const float *s16, float (*acc)[16]) {
    __m512i qv[4];
    __m512 dv[4];
    for (int c = 0; c < 4; c++)
        qv[c] = _mm512_loadu_si512(q + 64 * c), dv[c] = _mm512_loadu_ps(dxl + 16 * c);
    const __m512 sv = _mm512_loadu_ps(s16);
    for (int r = 0; r < nr; r++) {
        __m512 a = _mm512_fmadd_ps(_mm512_loadu_ps(B[r]), sv, _mm512_loadu_ps(acc[r]));
        for (int c = 0; c < 4; c++) {
            const __m512i d = _mm512_dpbusd_epi32(_mm512_setzero_si512(),
                                                  _mm512_load_si512(u[r] + 64 * c), qv[c]);
            a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d),
                                _mm512_mul_ps(_mm512_load_ps(A[r] + 16 * c), dv[c]), a);
        }
        _mm512_storeu_ps(acc[r], a);
    }
}
