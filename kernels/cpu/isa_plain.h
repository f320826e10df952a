/* The plain-C primitives (see isa.h): scalar loops, for CPUs with neither AVX512-VNNI nor
 * AVX2 (the compiler may still vectorise them). Included by isa.h only. */
#define Q8_SIGNED 0 /* tile_dot multiplies unsigned weight bytes: Q8_0 is stored + 128 */

static float h2f(uint16_t h) {
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

static void quant_groups(const float *x, int n, int8_t *q, float *dx, float *dsum) {
    for (int g = 0; g < n / GROUP; g++) {
        const float *xg = x + g * GROUP;
        float amax = 0.f;
        for (int j = 0; j < GROUP; j++) amax = fmaxf(amax, fabsf(xg[j]));
        const float inv = amax > 1e-30f ? 127.f / amax : 0.f; /* a zero group: zeros */
        int sum = 0;
        for (int j = 0; j < GROUP; j++) {
            int v = (int)nearbyintf(xg[j] * inv);
            q[g * GROUP + j] = (int8_t)v;
            sum += v;
        }
        dx[g] = amax / 127.f;
        dsum[g] = dx[g] * (float)sum;
    }
}

static float q4_row(const Q4 *w, int o, const int8_t *q, const float *dx, const float *dsum) {
    const int groups = w->in / GROUP;
    const uint8_t *c = w->codes + (size_t)o * (w->in / 2);
    const uint16_t *st = w->step + (size_t)o * groups, *mn = w->min + (size_t)o * groups;
    float y = 0.f;
    for (int g = 0; g < groups; g += 2) {
        const uint8_t *cg = c + g * 16;
        const int8_t *qa = q + g * GROUP, *qb = qa + GROUP;
        int da = 0, db = 0;
        for (int j = 0; j < GROUP; j++) {
            da += (cg[j] & 0x0f) * qa[j];
            db += (cg[j] >> 4) * qb[j];
        }
        y += h2f(st[g]) * dx[g] * (float)da + h2f(mn[g]) * dsum[g];
        y += h2f(st[g + 1]) * dx[g + 1] * (float)db + h2f(mn[g + 1]) * dsum[g + 1];
    }
    return w->bias ? y + w->bias[o] : y;
}

static int32_t int8_dot(const uint8_t *xu, const int8_t *xq, const int8_t *w, int in,
                        int32_t row_sum) {
    (void)xq;
    int32_t dot = 0;
    for (int j = 0; j < in; j++) dot += (int32_t)xu[j] * w[j];
    return dot - 128 * row_sum; /* xu = q + 128 */
}

static float dot_f32(const float *a, const float *b, int n) {
    float s = 0.f;
    for (int j = 0; j < n; j++) s += a[j] * b[j];
    return s;
}

static void axpy_f32(float *y, float a, const float *x, int n) {
    for (int j = 0; j < n; j++) y[j] += a * x[j];
}

static void head_scores(const float *q, int group, const float *kt, int S, int span, int d,
                        float *scores) {
    for (int h = 0; h < group; h++)
        for (int s = 0; s < span; s++) scores[h * S + s] = 0.f;
    for (int j = 0; j < d; j++)
        for (int h = 0; h < group; h++) {
            const float qj = q[h * d + j];
            for (int s = 0; s < span; s++)
                scores[h * S + s] += qj * kt[((size_t)(s / 16) * d + j) * 16 + s % 16];
        }
}

static float exp_sum(float *sc, int n, float mx) {
    float sum = 0.f;
    for (int s = 0; s < n; s++) {
        sc[s] = expf(sc[s] - mx);
        sum += sc[s];
    }
    return sum;
}

/* acc[16] += one tile times a token: lane i of 64 holds weights 4i..4i+3 (as the SIMD paths). */
static inline void tile_dot(const uint8_t *u, const float *A, const float *B, const int8_t *q,
                            const float *dxl, const float *s16, float *acc) {
    for (int k = 0; k < 16; k++) acc[k] += B[k] * s16[k];
    for (int i = 0; i < 64; i++) {
        int s = 0;
        for (int j = 0; j < 4; j++) s += (int)u[4 * i + j] * q[4 * i + j];
        acc[i % 16] += (float)s * (A[i] * dxl[i]);
    }
}

/* Plain C: every type goes through blocks.h's tiles. */
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
