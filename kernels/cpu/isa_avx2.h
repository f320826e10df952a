/* The AVX2 primitives (see isa.h): 8 lanes, vpmaddubsw (unsigned x signed bytes -> int16 pairs)
 * then vpmaddwd by ones -> int32. Included by isa.h only. */
#define Q8_SIGNED 1 /* tile_dot multiplies signed weight bytes (|w| x sign(q, w)): Q8_0 as is */

static inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

static inline float hsum8_ps(__m256 v) {
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_hadd_ps(a, a);
    return _mm_cvtss_f32(_mm_hadd_ps(a, a));
}

static inline int hsum8_epi32(__m256i v) {
    __m128i a = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    a = _mm_hadd_epi32(a, a);
    return _mm_cvtsi128_si32(_mm_hadd_epi32(a, a));
}

static void quant_groups(const float *x, int n, int8_t *q, float *dx, float *dsum) {
    const __m256 sign = _mm256_set1_ps(-0.f);
    for (int g = 0; g < n / GROUP; g++) {
        const float *xg = x + g * GROUP;
        __m256 v[4], m = _mm256_setzero_ps();
        for (int k = 0; k < 4; k++) {
            v[k] = _mm256_loadu_ps(xg + 8 * k);
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[k]));
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
        const float amax = _mm_cvtss_f32(m4);
        const float inv = amax > 1e-30f ? 127.f / amax : 0.f; /* a zero group: zeros */
        const __m256 iv = _mm256_set1_ps(inv);
        __m256i i[4], total = _mm256_setzero_si256();
        for (int k = 0; k < 4; k++) { /* nearest, ties to even */
            i[k] = _mm256_cvtps_epi32(_mm256_mul_ps(v[k], iv));
            total = _mm256_add_epi32(total, i[k]);
        }
        /* pack 32 int32 to int8: the packs work per 128-bit lane, a permute restores order */
        const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]),
                                             _mm256_packs_epi32(i[2], i[3]));
        _mm256_storeu_si256((__m256i *)(q + g * GROUP),
                            _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
        const int sum = hsum8_epi32(total);
        dx[g] = amax / 127.f;
        dsum[g] = dx[g] * (float)sum;
    }
}

/* The pairs of groups of the AVX512 path, 32 codes a register: vpmaddubsw (codes x q -> int16
 * pairs, at most 2 * 15 * 127: no saturation) then vpmaddwd by ones -> int32. */
static float q4_row(const Q4 *w, int o, const int8_t *q, const float *dx, const float *dsum) {
    const int groups = w->in / GROUP;
    const uint8_t *c = w->codes + (size_t)o * (w->in / 2);
    const uint16_t *st = w->step + (size_t)o * groups, *mn = w->min + (size_t)o * groups;
    const __m256i low4 = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
    __m256 acc = _mm256_setzero_ps(), accm = _mm256_setzero_ps();
    for (int g0 = 0; g0 < groups; g0 += 8) {
        const int n = groups - g0 < 8 ? groups - g0 : 8;
        uint16_t sh[8] = {0}, mh[8] = {0};
        float dxs[8] = {0}, dss[8] = {0}, sv[8];
        memcpy(sh, st + g0, 2 * n), memcpy(mh, mn + g0, 2 * n);
        memcpy(dxs, dx + g0, 4 * n), memcpy(dss, dsum + g0, 4 * n);
        _mm256_storeu_ps(sv, _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)sh)),
                                           _mm256_loadu_ps(dxs)));
        accm = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)mh)),
                               _mm256_loadu_ps(dss), accm);
        for (int k = 0; k < n; k += 2) {
            const int g = g0 + k;
            _mm_prefetch((const char *)(c + g * 16 + PREFETCH), _MM_HINT_T0);
            const __m256i raw = _mm256_loadu_si256((const __m256i *)(c + g * 16));
            const __m256i ca = _mm256_and_si256(raw, low4);
            const __m256i cb = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4);
            const __m256i da = _mm256_madd_epi16(
                _mm256_maddubs_epi16(ca, _mm256_loadu_si256((const __m256i *)(q + g * GROUP))), ones);
            const __m256i db = _mm256_madd_epi16(
                _mm256_maddubs_epi16(cb, _mm256_loadu_si256((const __m256i *)(q + g * GROUP + GROUP))),
                ones);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(sv[k]), _mm256_cvtepi32_ps(da), acc);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(sv[k + 1]), _mm256_cvtepi32_ps(db), acc);
        }
    }
    const float y = hsum8_ps(_mm256_add_ps(acc, accm));
    return w->bias ? y + w->bias[o] : y;
}

/* sum_j q_j w_j for the int8 head: |q| * (w with q's sign), pairs of at most 2 * 127 * 127, no
 * int16 saturation. */
static int32_t int8_dot(const uint8_t *xu, const int8_t *xq, const int8_t *w, int in,
                        int32_t row_sum) {
    (void)xu, (void)row_sum;
    __m256i acc = _mm256_setzero_si256();
    const __m256i ones = _mm256_set1_epi16(1);
    int j = 0;
    for (; j + 32 <= in; j += 32) {
        const __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + j));
        const __m256i wv = _mm256_loadu_si256((const __m256i *)(w + j));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(
            _mm256_abs_epi8(xv), _mm256_sign_epi8(wv, xv)), ones));
    }
    int32_t dot = hsum8_epi32(acc);
    for (; j < in; j++) dot += (int32_t)xq[j] * w[j];
    return dot;
}

static float dot_f32(const float *a, const float *b, int n) {
    int j = 0;
    __m256 acc = _mm256_setzero_ps();
    for (; j + 8 <= n; j += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j), acc);
    float s = hsum8_ps(acc);
    for (; j < n; j++) s += a[j] * b[j];
    return s;
}

static void axpy_f32(float *y, float a, const float *x, int n) {
    for (int j = 0; j < n; j++) y[j] += a * x[j];
}

/* The AVX512 path's exp, 8 lanes; 2^n built in the exponent bits (n >= -126 after the clamp). */
static inline __m256 exp_ps(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.f));
    const __m256 t = _mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f));
    const __m256 n = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 f = _mm256_sub_ps(t, n);
    __m256 p = _mm256_set1_ps(EXP2_TAYLOR[0]);
    for (int k = 1; k < 8; k++) p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(EXP2_TAYLOR[k]));
    const __m256i e = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* scores [group][S]: two heads x 16 slots in registers (see isa_avx512.h). */
static void head_scores(const float *q, int group, const float *kt, int S, int span, int d,
                        float *scores) {
    for (int h0 = 0; h0 < group; h0 += 2) {
        const int nh = group - h0 < 2 ? group - h0 : 2;
        const float *q0 = q + h0 * d, *q1 = nh > 1 ? q0 + d : q0;
        for (int s0 = 0; s0 < span; s0 += 16) {
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, b0 = a0, b1 = a0;
            const float *col = kt + (size_t)s0 * d; /* a whole block: the buffer is padded */
            for (int j = 0; j < d; j++, col += 16) {
                const __m256 k0 = _mm256_loadu_ps(col), k1 = _mm256_loadu_ps(col + 8);
                const __m256 x0 = _mm256_set1_ps(q0[j]), x1 = _mm256_set1_ps(q1[j]);
                a0 = _mm256_fmadd_ps(x0, k0, a0);
                a1 = _mm256_fmadd_ps(x0, k1, a1);
                b0 = _mm256_fmadd_ps(x1, k0, b0);
                b1 = _mm256_fmadd_ps(x1, k1, b1);
            }
            float blk[32];
            const int n = span - s0 < 16 ? span - s0 : 16;
            _mm256_storeu_ps(blk, a0), _mm256_storeu_ps(blk + 8, a1);
            _mm256_storeu_ps(blk + 16, b0), _mm256_storeu_ps(blk + 24, b1);
            memcpy(scores + h0 * S + s0, blk, sizeof(float) * n);
            if (nh > 1) memcpy(scores + (h0 + 1) * S + s0, blk + 16, sizeof(float) * n);
        }
    }
}

static float exp_sum(float *sc, int n, float mx) {
    const __m256 mv = _mm256_set1_ps(mx);
    __m256 sv = _mm256_setzero_ps();
    int s = 0;
    for (; s + 8 <= n; s += 8) {
        const __m256 e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(sc + s), mv));
        _mm256_storeu_ps(sc + s, e);
        sv = _mm256_add_ps(sv, e);
    }
    float sum = hsum8_ps(sv);
    for (; s < n; s++) {
        sc[s] = expf(sc[s] - mx);
        sum += sc[s];
    }
    return sum;
}

/* acc[16] += one tile times a token (see isa_avx512.h): per 32 weights |u| x sign(q, u) in
 * int16 pairs (at most 2 * 128 * 127: no saturation) -> int32 lanes of 4 weights. */
static inline void tile_dot(const uint8_t *u, const float *A, const float *B, const int8_t *q,
                            const float *dxl, const float *s16, float *acc) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 a0 = _mm256_fmadd_ps(_mm256_loadu_ps(B), _mm256_loadu_ps(s16), _mm256_loadu_ps(acc));
    __m256 a1 = _mm256_fmadd_ps(_mm256_loadu_ps(B + 8), _mm256_loadu_ps(s16 + 8),
                                _mm256_loadu_ps(acc + 8));
    for (int c = 0; c < 8; c += 2) {
        const __m256i w0 = _mm256_loadu_si256((const __m256i *)(u + 32 * c));
        const __m256i w1 = _mm256_loadu_si256((const __m256i *)(u + 32 * c + 32));
        const __m256i x0 = _mm256_loadu_si256((const __m256i *)(q + 32 * c));
        const __m256i x1 = _mm256_loadu_si256((const __m256i *)(q + 32 * c + 32));
        const __m256i d0 = _mm256_madd_epi16(
            _mm256_maddubs_epi16(_mm256_abs_epi8(w0), _mm256_sign_epi8(x0, w0)), ones);
        const __m256i d1 = _mm256_madd_epi16(
            _mm256_maddubs_epi16(_mm256_abs_epi8(w1), _mm256_sign_epi8(x1, w1)), ones);
        a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d0),
                             _mm256_mul_ps(_mm256_loadu_ps(A + 8 * c), _mm256_loadu_ps(dxl + 8 * c)),
                             a0);
        a1 = _mm256_fmadd_ps(
            _mm256_cvtepi32_ps(d1),
            _mm256_mul_ps(_mm256_loadu_ps(A + 8 * c + 8), _mm256_loadu_ps(dxl + 8 * c + 8)), a1);
    }
    _mm256_storeu_ps(acc, a0);
    _mm256_storeu_ps(acc + 8, a1);
}

/* No register-unpacked rows on AVX2 yet: every type goes through blocks.h's tiles. */
static int fast_row(int type, const uint8_t *row, int in, const int8_t *q, const float *dxl,
                    const float *dsum, const float *s16, float *y) {
    (void)type, (void)row, (void)in, (void)q, (void)dxl, (void)dsum, (void)s16, (void)y;
    return 0;
}

/* tile_dot for nr rows' tiles against one token (the GEMM's inner step). */
static inline void tile_dot_rows(int nr, const uint8_t (*u)[TILE], const float (*A)[64],
                                 const float (*B)[16], const int8_t *q, const float *dxl,
                                 const float *s16, float (*acc)[16]) {
    for (int r = 0; r < nr; r++) tile_dot(u[r], A[r], B[r], q, dxl, s16, acc[r]);
}
