/* One-token (decode) kernels for CPUs: the 4-bit and int8 matrix-vector products, and a whole
 * decoder step of a Llama-shaped model over the ring cache. Plain C, loaded with ctypes
 * (kernels/cpu/__init__.py compiles it once per machine with the system's C compiler).
 *
 * Every product reads its weight once and does integer dot products on int8 activations:
 * AVX512-VNNI (vpdpbusd) or AVX2 (vpmaddubsw) where the compiler targets them, plain loops
 * elsewhere. The pure-torch
 * references are in kernels/cpu/reference.py.
 *
 * 4-bit weights ("q4"): per output row, per group of 32 inputs, w = min + code * step, codes
 * 0..15 (a GGUF Q4_1 block). Stored as codes [out][in/2], the groups of a row in pairs: byte j
 * of a pair holds code j of the first group in its low nibble and code j of the second in its
 * high one (so in must be a multiple of 64); step and min [out][in/32] as fp16.
 * Activations are quantised per group of 32: x ~ dx * q, q in -127..127; then
 *   sum_j w_j x_j = sum_g dx_g * (step_g * sum_j code_j q_j + min_g * sum_j q_j).
 *
 * int8 weights (the LM head): w_oj = scale_o * W_oj, W int8 [out][in]; the activation (after
 * SmoothQuant's per-channel division) is quantised with one scale per token, as torch's path
 * does: y_o = (sum_j q_j W_oj) * dx * scale_o (+ bias_o).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__) && defined(__AVX512VNNI__) && defined(__AVX512VL__) && defined(__F16C__)
#define SEP_ISA 2 /* AVX512-VNNI */
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define SEP_ISA 1 /* AVX2 */
#else
#define SEP_ISA 0 /* plain C */
#endif
#define SEP_VNNI (SEP_ISA == 2)
#define SEP_AVX2 (SEP_ISA == 1)
#if SEP_ISA
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#define GROUP 32

#if SEP_AVX2
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
#endif
#define PREFETCH 1024 /* bytes of codes ahead: measured best of 512..4096 */

int sep_isa(void) { return SEP_ISA; } /* 2: AVX512-VNNI, 1: AVX2, 0: plain C */

#if SEP_ISA == 0
static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: renormalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) {
                man <<= 1;
                exp--;
            }
            bits = sign | (exp << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000 | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}
#endif

/* x [n] (n % 32 == 0) -> q [n], dx [n/32], dsum [n/32] = dx * sum(q of the group). */
void sep_quant_groups(const float *x, int n, int8_t *q, float *dx, float *dsum) {
    for (int g = 0; g < n / GROUP; g++) {
        const float *xg = x + g * GROUP;
#if SEP_VNNI
        const __m512 a = _mm512_loadu_ps(xg), b = _mm512_loadu_ps(xg + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
        const float inv = amax > 1e-30f ? 127.f / amax : 0.f; /* a zero group: zeros */
        const __m512 iv = _mm512_set1_ps(inv);
        const __m512i qa = _mm512_cvtps_epi32(_mm512_mul_ps(a, iv)); /* nearest, ties to even */
        const __m512i qb = _mm512_cvtps_epi32(_mm512_mul_ps(b, iv));
        _mm_storeu_si128((__m128i *)(q + g * GROUP), _mm512_cvtsepi32_epi8(qa));
        _mm_storeu_si128((__m128i *)(q + g * GROUP + 16), _mm512_cvtsepi32_epi8(qb));
        const int sum = _mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb));
#elif SEP_AVX2
        const __m256 sign = _mm256_set1_ps(-0.f);
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
#else
        float amax = 0.f;
        for (int j = 0; j < GROUP; j++) amax = fmaxf(amax, fabsf(xg[j]));
        const float inv = amax > 1e-30f ? 127.f / amax : 0.f; /* a zero group: zeros */
        int sum = 0;
        for (int j = 0; j < GROUP; j++) {
            int v = (int)nearbyintf(xg[j] * inv);
            q[g * GROUP + j] = (int8_t)v;
            sum += v;
        }
#endif
        dx[g] = amax / 127.f;
        dsum[g] = dx[g] * (float)sum;
    }
}

typedef struct {
    const uint8_t *codes; /* [out][in/2] */
    const uint16_t *step; /* [out][in/32] fp16 */
    const uint16_t *min;  /* [out][in/32] fp16 */
    const float *bias;    /* [out] or NULL */
    int out, in;
} Q4;

/* Row o of W times the quantised activation. */
static float q4_row(const Q4 *w, int o, const int8_t *q, const float *dx, const float *dsum) {
    const int groups = w->in / GROUP;
    const uint8_t *c = w->codes + (size_t)o * (w->in / 2);
    const uint16_t *st = w->step + (size_t)o * groups, *mn = w->min + (size_t)o * groups;
#if SEP_VNNI
    /* Two groups per 512-bit step: 32 bytes hold group A's codes in the low nibbles and group
     * B's in the high ones, so [bytes, bytes >> 4] & 15 is A's 32 codes then B's, in the order
     * of the activations. Steps for 16 groups are made at once, then spread to the lanes. The
     * codes are prefetched ahead: without it a row's first loads wait on memory. */
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
#elif SEP_AVX2
    /* The same pairs of groups, 32 codes a register: vpmaddubsw (codes x q -> int16 pairs,
     * at most 2 * 15 * 127: no saturation) then vpmaddwd by ones -> int32. */
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
#else
    float y = 0.f;
    for (int g = 0; g < groups; g += 2) {
        const uint8_t *cg = c + g * 16;
        const int8_t *qa = q + g * GROUP, *qb = qa + GROUP;
        int da = 0, db = 0;
        for (int j = 0; j < GROUP; j++) {
            da += (cg[j] & 0x0f) * qa[j];
            db += (cg[j] >> 4) * qb[j];
        }
        y += half_to_float(st[g]) * dx[g] * (float)da + half_to_float(mn[g]) * dsum[g];
        y += half_to_float(st[g + 1]) * dx[g + 1] * (float)db +
             half_to_float(mn[g + 1]) * dsum[g + 1];
    }
#endif
    return w->bias ? y + w->bias[o] : y;
}

static void q4_matvec(const Q4 *w, const int8_t *q, const float *dx, const float *dsum, float *y,
                      int threads) {
    (void)threads;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
#endif
    for (int o = 0; o < w->out; o++) y[o] = q4_row(w, o, q, dx, dsum);
}

/* y [out] = W x (+ bias) for a 4-bit weight and an fp32 x [in]. */
void sep_q4_matvec(const uint8_t *codes, const uint16_t *step, const uint16_t *min,
                   const float *bias, int out, int in, const float *x, float *y, int threads) {
    Q4 w = {codes, step, min, bias, out, in};
    int8_t *q = malloc((size_t)in);
    float *dx = malloc(sizeof(float) * (size_t)(in / GROUP) * 2);
    sep_quant_groups(x, in, q, dx, dx + in / GROUP);
    q4_matvec(&w, q, dx, dx + in / GROUP, y, threads);
    free(q);
    free(dx);
}

/* The int8 LM head for one token: x [in] fp32 -> y [out]; see the top of this file. */
void sep_int8_matvec(const int8_t *w, const int32_t *row_sums, const float *scale,
                     const float *inv_smooth, const float *bias, int out, int in, const float *x,
                     float *y, int threads) {
    (void)row_sums; /* the AVX2 path multiplies signed q and needs no correction */
    float *xs = malloc(sizeof(float) * (size_t)in);
    uint8_t *xu = malloc((size_t)in + 64);
    float amax = 0.f;
    for (int j = 0; j < in; j++) {
        xs[j] = x[j] * inv_smooth[j];
        amax = fmaxf(amax, fabsf(xs[j]));
    }
    float row = fmaxf(amax, 1e-12f) / 127.f; /* torch: amax.clamp_min(1e-12) / 127 */
    int8_t *xq = malloc((size_t)in); /* q itself: the AVX2 path's operand */
    for (int j = 0; j < in; j++) {
        const int v = (int)nearbyintf(xs[j] / row);
        xu[j] = (uint8_t)(v + 128);
        xq[j] = (int8_t)v;
    }
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
#endif
    for (int o = 0; o < out; o++) {
        const int8_t *wo = w + (size_t)o * in;
        int32_t dot = 0;
        int j = 0;
#if SEP_VNNI
        __m512i acc = _mm512_setzero_si512();
        for (; j + 64 <= in; j += 64)
            acc = _mm512_dpbusd_epi32(acc, _mm512_loadu_si512(xu + j), _mm512_loadu_si512(wo + j));
        dot = _mm512_reduce_add_epi32(acc);
        for (; j < in; j++) dot += (int32_t)xu[j] * wo[j];
        dot -= 128 * row_sums[o]; /* xu = q + 128 */
#elif SEP_AVX2
        /* |q| * (w with q's sign): pairs of at most 2 * 127 * 127, no int16 saturation */
        __m256i acc = _mm256_setzero_si256();
        const __m256i ones = _mm256_set1_epi16(1);
        for (; j + 32 <= in; j += 32) {
            const __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + j));
            const __m256i wv = _mm256_loadu_si256((const __m256i *)(wo + j));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(
                _mm256_abs_epi8(xv), _mm256_sign_epi8(wv, xv)), ones));
        }
        dot = hsum8_epi32(acc);
        for (; j < in; j++) dot += (int32_t)xq[j] * wo[j];
#else
        for (; j < in; j++) dot += (int32_t)xu[j] * wo[j];
        dot -= 128 * row_sums[o]; /* xu = q + 128 */
#endif
        float v = (float)dot * row * scale[o];
        y[o] = bias ? v + bias[o] : v;
    }
    free(xs);
    free(xu);
    free(xq);
}

/* ---------------------------------------------------------------- vector helpers */

static float dot_f32(const float *a, const float *b, int n) {
    int j = 0;
    float s = 0.f;
#if SEP_VNNI
    __m512 acc = _mm512_setzero_ps();
    for (; j + 16 <= n; j += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + j), _mm512_loadu_ps(b + j), acc);
    s = _mm512_reduce_add_ps(acc);
#elif SEP_AVX2
    __m256 acc = _mm256_setzero_ps();
    for (; j + 8 <= n; j += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j), acc);
    s = hsum8_ps(acc);
#endif
    for (; j < n; j++) s += a[j] * b[j];
    return s;
}

static void axpy_f32(float *y, float a, const float *x, int n) {
    int j = 0;
#if SEP_VNNI
    const __m512 av = _mm512_set1_ps(a);
    for (; j + 16 <= n; j += 16)
        _mm512_storeu_ps(y + j, _mm512_fmadd_ps(av, _mm512_loadu_ps(x + j), _mm512_loadu_ps(y + j)));
#endif
    for (; j < n; j++) y[j] += a * x[j];
}

/* out = x * rsqrt(mean(x^2) + eps) * w */
static void rms_norm(const float *x, const float *w, int n, float eps, float *out) {
    float ss = dot_f32(x, x, n);
    float r = 1.f / sqrtf(ss / (float)n + eps);
    for (int j = 0; j < n; j++) out[j] = x[j] * r * w[j];
}

/* RoPE of one head x [d] at a table row (cos, sin [rot], halves repeated); dims past rot pass. */
static void rope(const float *x, const float *c, const float *s, int rot, int d, float *out) {
    const int half = rot / 2;
    for (int j = 0; j < half; j++) {
        out[j] = x[j] * c[j] - x[j + half] * s[j];
        out[j + half] = x[j + half] * c[j] + x[j] * s[j];
    }
    for (int j = rot; j < d; j++) out[j] = x[j];
}

#if SEP_ISA
/* exp(x) for x <= 0 (softmax after subtracting the max): 2^n * 2^f with n = round(x log2 e),
 * 2^f by its Taylor series to degree 7 (error < 1e-8 on |f| <= 1/2), highest term first; x
 * below -87 gives 2^-126 ~ 1e-38. */
static const float EXP2_TAYLOR[8] = {1.5252734e-5f, 1.5403530e-4f, 1.3333558e-3f,
                                     9.6181291e-3f, 5.5504109e-2f, 2.4022651e-1f,
                                     6.9314718e-1f, 1.f};
#endif

#if SEP_VNNI
static inline __m512 exp_ps(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.f));
    const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
    const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(t, n);
    __m512 p = _mm512_set1_ps(EXP2_TAYLOR[0]);
    for (int k = 1; k < 8; k++) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(EXP2_TAYLOR[k]));
    return _mm512_scalef_ps(p, n);
}
#elif SEP_AVX2
/* The same exp, 8 lanes; 2^n built in the exponent bits (n >= -126 after the clamp). */
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
#endif

/* The q heads of one kv head (``group`` of them, q [group][d], rotated) over the slots
 * 0..span-1 of that kv head: scores from the rotated keys kt (blocks of 16 slots), masked by
 * ``ok`` [S], softmax, then the values v [S][d] of the slots in ``seen`` -> out [group][d]. */
static void attend_group(const float *q, int group, const float *kt, const float *v, int S,
                         int span, const uint8_t *ok, const int *seen, int n_seen, int d,
                         float scale, float *scores, float *out) {
#if SEP_VNNI
    for (int h0 = 0; h0 < group; h0 += 4) { /* four heads at a time, in registers */
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
#elif SEP_AVX2
    for (int h0 = 0; h0 < group; h0 += 2) { /* two heads x 16 slots in registers */
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
#else
    for (int h = 0; h < group; h++)
        for (int s = 0; s < span; s++) scores[h * S + s] = 0.f;
    for (int j = 0; j < d; j++)
        for (int h = 0; h < group; h++) {
            const float qj = q[h * d + j];
            for (int s = 0; s < span; s++)
                scores[h * S + s] += qj * kt[((size_t)(s / 16) * d + j) * 16 + s % 16];
        }
#endif
    for (int h = 0; h < group; h++) {
        float *sc = scores + h * S, mx = -INFINITY, sum = 0.f;
        for (int s = 0; s < span; s++) {
            sc[s] = ok[s] ? sc[s] * scale : -INFINITY;
            mx = fmaxf(mx, sc[s]);
        }
        int s = 0;
#if SEP_VNNI
        const __m512 mv = _mm512_set1_ps(mx);
        __m512 sv = _mm512_setzero_ps();
        for (; s + 16 <= span; s += 16) {
            const __m512 e = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(sc + s), mv));
            _mm512_storeu_ps(sc + s, e);
            sv = _mm512_add_ps(sv, e);
        }
        sum = _mm512_reduce_add_ps(sv);
#elif SEP_AVX2
        const __m256 mv = _mm256_set1_ps(mx);
        __m256 sv = _mm256_setzero_ps();
        for (; s + 8 <= span; s += 8) {
            const __m256 e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(sc + s), mv));
            _mm256_storeu_ps(sc + s, e);
            sv = _mm256_add_ps(sv, e);
        }
        sum = hsum8_ps(sv);
#endif
        for (; s < span; s++) {
            sc[s] = expf(sc[s] - mx);
            sum += sc[s];
        }
        const float inv = 1.f / sum;
        for (s = 0; s < span; s++) sc[s] = ok[s] ? sc[s] * inv : 0.f;
    }
    memset(out, 0, sizeof(float) * (size_t)group * d);
    for (int i = 0; i < n_seen; i++) {
        const int s = seen[i];
        const float *vs = v + (size_t)s * d;
        for (int h = 0; h < group; h++) axpy_f32(out + h * d, scores[h * S + s], vs, d);
    }
}

/* RoPE of one key into slot s of the rotated keys kt, stored in blocks of 16 slots, each
 * block [d][16]: a query's scores for 16 slots are then 16-wide sums down the block, read in
 * order, with no sum across lanes. */
static void rope_into_slot(const float *k, const float *c, const float *sn, int rot, int d,
                           float *kt, int s) {
    float tmp[512];
    rope(k, c, sn, rot, d, tmp);
    float *col = kt + (size_t)(s / 16) * d * 16 + s % 16;
    for (int j = 0; j < d; j++) col[j * 16] = tmp[j];
}

/* ---------------------------------------------------------------- the decode step */

enum { P_LN1, P_LN2, P_PROJ }; /* then 7 projections x (codes, step, min, bias) */
#define PTRS_PER_LAYER (P_PROJ + 7 * 4)

static Q4 proj(const int64_t *p, int which, int out, int in) {
    const int64_t *b = p + P_PROJ + 4 * which;
    Q4 w = {(const uint8_t *)b[0], (const uint16_t *)b[1], (const uint16_t *)b[2],
            (const float *)b[3], out, in};
    return w;
}

/* One token through every decoder layer of a Llama-shaped model (RMSNorm, 4-bit q/k/v/o and
 * SiLU-gated MLP), attending over the ring as the sepllm/full plans do: every slot with a cache
 * position 0 <= pos <= q_pos, keys rotated to their position.
 *
 * ptrs   : per layer PTRS_PER_LAYER addresses (ln1, ln2 fp32; then q, k, v, o, gate, up, down,
 *          each codes, step, min, bias-or-0).
 * h      : [hidden] the token's embedding in, the last layer's output out.
 * k_ring, v_ring : [layers][kv][S][d] pre-RoPE keys and values (the ring); the token's k, v
 *          are written into ``slot``.
 * k_rot  : [layers][kv][ceil(S/16)][d][16] the same keys rotated to their positions, in blocks
 *          of 16 slots (rope_into_slot). With ``rerotate`` every
 *          slot in use is rotated afresh (positions moved, or the slots were written elsewhere);
 *          else only the new slot is, and the others are read as they are.
 * slot_pos : [S] cache position of each slot, -1 if free; q_pos: the token's.
 * cos_t, sin_t : [positions][rot] RoPE tables.
 */
void sep_decode_layers(int layers, const int64_t *ptrs, int hidden, int n_q, int n_kv, int d,
                       int inter, int rot, float eps, float scale, float *h, float *k_ring,
                       float *v_ring, float *k_rot, int S, const int64_t *slot_pos, int slot,
                       int q_pos, int rerotate, const float *cos_t, const float *sin_t,
                       int threads) {
    const int qd = n_q * d, kvd = n_kv * d, group = n_q / n_kv, Sp = (S + 15) / 16 * 16;
    const int big = inter > qd ? (inter > hidden ? inter : hidden) : (qd > hidden ? qd : hidden);
    float *x = malloc(sizeof(float) * (size_t)big);
    float *qv = malloc(sizeof(float) * (size_t)qd), *att = malloc(sizeof(float) * (size_t)qd);
    float *kv = malloc(sizeof(float) * (size_t)kvd * 2), *vv = kv + kvd;
    float *gate = malloc(sizeof(float) * (size_t)inter * 2), *up = gate + inter;
    float *dx = malloc(sizeof(float) * (size_t)(big / GROUP) * 2), *ds = dx + big / GROUP;
    float *qr = malloc(sizeof(float) * (size_t)qd);
    float *p = malloc(sizeof(float) * (size_t)S * group);
    int8_t *qa = malloc((size_t)big);
    uint8_t *ok = malloc((size_t)S);
    int *seen = malloc(sizeof(int) * (size_t)S), n_seen = 0, span = 0;
    for (int s = 0; s < S; s++) {
        ok[s] = slot_pos[s] >= 0 && slot_pos[s] <= q_pos;
        if (ok[s]) seen[n_seen++] = s, span = s + 1;
    }
    const float *qc = cos_t + (size_t)q_pos * rot, *qs = sin_t + (size_t)q_pos * rot;

    for (int l = 0; l < layers; l++) {
        const int64_t *P = ptrs + (size_t)l * PTRS_PER_LAYER;
        Q4 wq = proj(P, 0, qd, hidden), wk = proj(P, 1, kvd, hidden), wv = proj(P, 2, kvd, hidden);
        Q4 wo = proj(P, 3, hidden, qd), wg = proj(P, 4, inter, hidden);
        Q4 wu = proj(P, 5, inter, hidden), wd = proj(P, 6, hidden, inter);
        const size_t lo = (size_t)l * n_kv * S * d, lr = (size_t)l * n_kv * Sp * d;

        /* attention */
        rms_norm(h, (const float *)P[P_LN1], hidden, eps, x);
        sep_quant_groups(x, hidden, qa, dx, ds);
        q4_matvec(&wq, qa, dx, ds, qv, threads);
        q4_matvec(&wk, qa, dx, ds, kv, threads);
        q4_matvec(&wv, qa, dx, ds, vv, threads);
        for (int g = 0; g < n_kv; g++) {
            const size_t at = lo + ((size_t)g * S + slot) * d;
            memcpy(k_ring + at, kv + g * d, sizeof(float) * d);
            memcpy(v_ring + at, vv + g * d, sizeof(float) * d);
            float *kt = k_rot + lr + (size_t)g * Sp * d;
            if (rerotate) {
                for (int i = 0; i < n_seen; i++) {
                    const int s = seen[i];
                    const size_t r = (size_t)slot_pos[s] * rot;
                    rope_into_slot(k_ring + lo + ((size_t)g * S + s) * d, cos_t + r, sin_t + r,
                                   rot, d, kt, s);
                }
            } else {
                rope_into_slot(kv + g * d, qc, qs, rot, d, kt, slot);
            }
        }
        for (int hq = 0; hq < n_q; hq++) rope(qv + hq * d, qc, qs, rot, d, qr + hq * d);
        for (int g = 0; g < n_kv; g++)
            attend_group(qr + g * group * d, group, k_rot + lr + (size_t)g * Sp * d,
                         v_ring + lo + (size_t)g * S * d, S, span, ok, seen, n_seen, d, scale,
                         p, att + g * group * d);
        sep_quant_groups(att, qd, qa, dx, ds);
        q4_matvec(&wo, qa, dx, ds, x, threads);
        for (int j = 0; j < hidden; j++) h[j] += x[j];

        /* MLP */
        rms_norm(h, (const float *)P[P_LN2], hidden, eps, x);
        sep_quant_groups(x, hidden, qa, dx, ds);
        q4_matvec(&wg, qa, dx, ds, gate, threads);
        q4_matvec(&wu, qa, dx, ds, up, threads);
        for (int j = 0; j < inter; j++) gate[j] = gate[j] / (1.f + expf(-gate[j])) * up[j];
        sep_quant_groups(gate, inter, qa, dx, ds);
        q4_matvec(&wd, qa, dx, ds, x, threads);
        for (int j = 0; j < hidden; j++) h[j] += x[j];
    }
    free(x), free(qv), free(att), free(kv), free(gate), free(dx), free(qr), free(p), free(qa);
    free(seen), free(ok);
}
