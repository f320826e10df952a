/* Products on GGUF blocks as stored: the formats' numbers (c_type in the kernels/quant modules), their
 * unpacking into tiles, the activations' quantisation for tiles, and the matrix-vector product
 * (one token) and blocked GEMM (several) built on isa.h's tile_dot. Included by decode.c.
 *
 * A tile is 256 weights of a row (one K-quant super-block, or 8 blocks of 32; a row's last
 * tile is padded with zero weights) unpacked into
 *   u [256]  unsigned bytes (Q8_0 on AVX2: signed, see Q8_SIGNED),
 *   a, b [16] per 16 weights: w = a * u + b,
 *   A [64]   a spread to the 4-weight lanes of tile_dot (A[i] = a[i / 4]), B = b.
 * The activations are quantised per group of 32 (x ~ dx * q, as quant_groups), so a row is
 *   sum_tiles sum_16 (dx * a * (u . q) + b * s16),  s16 = dx * sum(q) over the 16,
 * integer dot products on bytes, a few float operations per 16 weights. A tile is unpacked once
 * into L1 and used against every token of a chunk (sep_block_matmul with T > 1).
 */
static const int TYPE_WEIGHTS[N_TYPES] = {32, 32, 32, 32, 32, 256, 256, 256};
static const int TYPE_BYTES[N_TYPES] = {18, 20, 22, 24, 34, 144, 176, 210};

/* weights per block and bytes per block of a type (0, 0 if unknown): Python checks its table. */
void sep_block_type(int type, int *weights, int *bytes) {
    const int ok = type >= 0 && type < N_TYPES;
    *weights = ok ? TYPE_WEIGHTS[type] : 0;
    *bytes = ok ? TYPE_BYTES[type] : 0;
}

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* Each unpack_*: one block -> u [weights], a, b [weights / 16]. */
static void unpack_q4_0(const uint8_t *bl, uint8_t *u, float *a, float *b) {
    const float d = h2f(rd16(bl));
    for (int j = 0; j < 16; j++) u[j] = bl[2 + j] & 15, u[j + 16] = bl[2 + j] >> 4;
    a[0] = a[1] = d, b[0] = b[1] = -8.f * d;
}

static void unpack_q4_1(const uint8_t *bl, uint8_t *u, float *a, float *b) {
    const float d = h2f(rd16(bl)), m = h2f(rd16(bl + 2));
    for (int j = 0; j < 16; j++) u[j] = bl[4 + j] & 15, u[j + 16] = bl[4 + j] >> 4;
    a[0] = a[1] = d, b[0] = b[1] = m;
}

static void unpack_q5_0(const uint8_t *bl, uint8_t *u, float *a, float *b) {
    const float d = h2f(rd16(bl));
    const uint32_t qh = rd32(bl + 2);
    for (int j = 0; j < 16; j++) {
        u[j] = (bl[6 + j] & 15) | (((qh >> j) & 1) << 4);
        u[j + 16] = (bl[6 + j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
    }
    a[0] = a[1] = d, b[0] = b[1] = -16.f * d;
}

static void unpack_q5_1(const uint8_t *bl, uint8_t *u, float *a, float *b) {
    const float d = h2f(rd16(bl)), m = h2f(rd16(bl + 2));
    const uint32_t qh = rd32(bl + 4);
    for (int j = 0; j < 16; j++) {
        u[j] = (bl[8 + j] & 15) | (((qh >> j) & 1) << 4);
        u[j + 16] = (bl[8 + j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
    }
    a[0] = a[1] = d, b[0] = b[1] = m;
}

static void unpack_q8_0(const uint8_t *bl, uint8_t *u, float *a, float *b) {
    const float d = h2f(rd16(bl));
    for (int j = 0; j < 32; j++) u[j] = Q8_SIGNED ? bl[2 + j] : (uint8_t)(bl[2 + j] ^ 0x80);
    a[0] = a[1] = d, b[0] = b[1] = Q8_SIGNED ? 0.f : -128.f * d;
}

/* Q4_K and Q5_K's 6-bit scales and mins of the 8 sub-blocks (kernels/quant/layout.py). */
static void k_scales(const uint8_t *s, int *sc, int *mn) {
    for (int j = 0; j < 4; j++) {
        sc[j] = s[j] & 63, mn[j] = s[j + 4] & 63;
        sc[j + 4] = (s[j + 8] & 15) | ((s[j] >> 6) << 4);
        mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
}

static void k_ab(const uint8_t *bl, float *a, float *b) {
    const float d = h2f(rd16(bl)), dmin = h2f(rd16(bl + 2));
    int sc[8], mn[8];
    k_scales(bl + 4, sc, mn);
    for (int s = 0; s < 8; s++) {
        a[2 * s] = a[2 * s + 1] = d * (float)sc[s];
        b[2 * s] = b[2 * s + 1] = -dmin * (float)mn[s];
    }
}

static void unpack_q4_k(const uint8_t *bl, uint8_t *u, float *a, float *b) {
    const uint8_t *qs = bl + 16;
    for (int c = 0; c < 4; c++)
        for (int j = 0; j < 32; j++)
            u[64 * c + j] = qs[32 * c + j] & 15, u[64 * c + 32 + j] = qs[32 * c + j] >> 4;
    k_ab(bl, a, b);
}

static void unpack_q5_k(const uint8_t *bl, uint8_t *u, float *a, float *b) {
    const uint8_t *qh = bl + 16, *qs = bl + 48;
    for (int c = 0; c < 4; c++)
        for (int j = 0; j < 32; j++) {
            const int h = qh[j] >> (2 * c);
            u[64 * c + j] = (qs[32 * c + j] & 15) | ((h & 1) << 4);
            u[64 * c + 32 + j] = (qs[32 * c + j] >> 4) | (((h >> 1) & 1) << 4);
        }
    k_ab(bl, a, b);
}

static void unpack_q6_k(const uint8_t *bl, uint8_t *u, float *a, float *b) {
    const uint8_t *ql = bl, *qh = bl + 128;
    const int8_t *sc = (const int8_t *)(bl + 192);
    const float d = h2f(rd16(bl + 208));
    for (int h = 0; h < 2; h++)
        for (int j = 0; j < 32; j++) {
            const uint8_t *l = ql + 64 * h;
            const int hb = qh[32 * h + j];
            uint8_t *o = u + 128 * h;
            o[j] = (l[j] & 15) | ((hb & 3) << 4);
            o[32 + j] = (l[32 + j] & 15) | (((hb >> 2) & 3) << 4);
            o[64 + j] = (l[j] >> 4) | (((hb >> 4) & 3) << 4);
            o[96 + j] = (l[32 + j] >> 4) | (((hb >> 6) & 3) << 4);
        }
    for (int k = 0; k < 16; k++) a[k] = d * (float)sc[k], b[k] = -32.f * a[k];
}

typedef void (*unpack_fn)(const uint8_t *, uint8_t *, float *, float *);
static const unpack_fn UNPACK[N_TYPES] = {unpack_q4_0, unpack_q4_1, unpack_q5_0, unpack_q5_1,
                                          unpack_q8_0, unpack_q4_k, unpack_q5_k, unpack_q6_k};

/* A weight in blocks: rows of (in / weights) blocks, bias [out] or NULL. */
typedef struct {
    int type;
    const uint8_t *data;
    const float *bias;
    int out, in;
} Blk;

static inline size_t blk_row_bytes(const Blk *w) {
    return (size_t)(w->in / TYPE_WEIGHTS[w->type]) * TYPE_BYTES[w->type];
}

static inline int tiles_of(int in) { return (in + TILE - 1) / TILE; }

/* Tile t of a row -> u [256], a, b [16] (per 16 weights; zero past the row's end). */
static void unpack_tile_ab(const Blk *w, const uint8_t *row, int t, uint8_t *u, float *a, float *b) {
    const int qk = TYPE_WEIGHTS[w->type], nb = TYPE_BYTES[w->type];
    const int w0 = t * TILE, nw = w->in - w0 < TILE ? w->in - w0 : TILE;
    const unpack_fn f = UNPACK[w->type];
    for (int k = 0; k < nw / qk; k++) f(row + (size_t)(w0 / qk + k) * nb, u + k * qk, a + k * qk / 16, b + k * qk / 16);
    if (nw < TILE) {
        memset(u + nw, 0, TILE - nw);
        for (int k = nw / 16; k < 16; k++) a[k] = b[k] = 0.f;
    }
}

/* Tile t of a row -> u [256], A [64] (a spread to tile_dot's lanes), B [16]. */
static void unpack_tile(const Blk *w, const uint8_t *row, int t, uint8_t *u, float *A, float *B) {
    float a[16];
    unpack_tile_ab(w, row, t, u, a, B);
    for (int i = 0; i < 64; i++) A[i] = a[i / 4];
}

/* One token's activations for tiles: q [np] (np = in rounded up to a tile; zeros past in),
 * dx, dsum [np / 32] (quant_groups), dxl [np / 4] (dx spread to 4-weight lanes), s16 [np / 16]. */
typedef struct {
    int8_t *q;
    float *dx, *dsum, *dxl, *s16;
} Act;

static inline int padded(int in) { return tiles_of(in) * TILE; }

static size_t act_bytes(int in) { /* one token's Act buffers, in one allocation */
    const int np = padded(in);
    return (size_t)np + sizeof(float) * ((size_t)np / 32 * 2 + np / 4 + np / 16);
}

static Act act_at(void *mem, int in) {
    const int np = padded(in);
    Act a;
    a.dx = (float *)mem;
    a.dsum = a.dx + np / 32;
    a.dxl = a.dsum + np / 32;
    a.s16 = a.dxl + np / 4;
    a.q = (int8_t *)(a.s16 + np / 16);
    return a;
}

static void act_quant(const float *x, int in, Act *a) {
    const int np = padded(in);
    quant_groups(x, in, a->q, a->dx, a->dsum);
    memset(a->q + in, 0, (size_t)(np - in));
    for (int g = in / 32; g < np / 32; g++) a->dx[g] = a->dsum[g] = 0.f;
    for (int i = 0; i < np / 4; i++) a->dxl[i] = a->dx[i / 8];
    for (int k = 0; k < np / 16; k++) {
        int s = 0;
        for (int j = 0; j < 16; j++) s += a->q[16 * k + j];
        a->s16[k] = a->dx[k / 2] * (float)s;
    }
}

static inline float hsum16(const float *acc) {
    float s = 0.f;
    for (int k = 0; k < 16; k++) s += acc[k];
    return s;
}

/* Row o of w times one token. */
static float blk_row(const Blk *w, int o, const Act *x) {
    const size_t rb = blk_row_bytes(w);
    const uint8_t *row = w->data + (size_t)o * rb;
    _Alignas(64) uint8_t u[TILE];
    _Alignas(64) float A[64], B[16], acc[16] = {0};
    float y;
    if (fast_row(w->type, row, w->in, x->q, x->dxl, x->dsum, x->s16, &y)) /* isa.h */
        return w->bias ? y + w->bias[o] : y;
    const int nt = tiles_of(w->in);
    for (int t = 0; t < nt; t++) {
        const size_t at = (size_t)t * rb / nt;
        for (int p = 0; p < 4; p++) __builtin_prefetch(row + at + PREFETCH + 64 * p);
        unpack_tile(w, row, t, u, A, B);
        tile_dot(u, A, B, x->q + TILE * t, x->dxl + 64 * t, x->s16 + 16 * t, acc);
    }
    y = hsum16(acc);
    return w->bias ? y + w->bias[o] : y;
}

static void blk_matvec(const Blk *w, const Act *x, float *y, int threads) {
    threads = matvec_threads(w->out, w->in, threads);
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
#endif
    for (int o = 0; o < w->out; o++) y[o] = blk_row(w, o, x);
}

#define GEMM_ROWS 4    /* rows whose tiles are unpacked together */
#define GEMM_TOKENS 32 /* tokens each unpacked tile is used against before the next tile */

/* y [T][out] = W x_t for T tokens: per GEMM_ROWS rows and GEMM_TOKENS tokens, each tile of the
 * rows is unpacked once into L1 and multiplied by every token's activations of that tile. */
static void blk_gemm(const Blk *w, const Act *xs, int T, float *y, int threads) {
    (void)threads;
    const int nt = tiles_of(w->in), groups = (w->out + GEMM_ROWS - 1) / GEMM_ROWS;
    const size_t rb = blk_row_bytes(w);
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1)
#endif
    for (int g = 0; g < groups; g++) {
        const int o0 = g * GEMM_ROWS, nr = w->out - o0 < GEMM_ROWS ? w->out - o0 : GEMM_ROWS;
        _Alignas(64) uint8_t u[GEMM_ROWS][TILE];
        _Alignas(64) float A[GEMM_ROWS][64], B[GEMM_ROWS][16];
        _Alignas(64) float acc[GEMM_TOKENS][GEMM_ROWS][16];
        for (int t0 = 0; t0 < T; t0 += GEMM_TOKENS) {
            const int nx = T - t0 < GEMM_TOKENS ? T - t0 : GEMM_TOKENS;
            memset(acc, 0, sizeof acc);
            for (int t = 0; t < nt; t++) {
                for (int r = 0; r < nr; r++)
                    unpack_tile(w, w->data + (size_t)(o0 + r) * rb, t, u[r], A[r], B[r]);
                for (int i = 0; i < nx; i++) {
                    const Act *x = xs + t0 + i;
                    tile_dot_rows(nr, (const uint8_t(*)[TILE])u, (const float(*)[64])A,
                                  (const float(*)[16])B, x->q + TILE * t, x->dxl + 64 * t,
                                  x->s16 + 16 * t, acc[i]);
                }
            }
            for (int i = 0; i < nx; i++)
                for (int r = 0; r < nr; r++) {
                    const float v = hsum16(acc[i][r]);
                    y[(size_t)(t0 + i) * w->out + o0 + r] = w->bias ? v + w->bias[o0 + r] : v;
                }
        }
    }
}

#if SEP_ISA == 2
#include "panel_avx512.h"
#endif

/* y [T][out] = x [T][in] W^T (+ bias) for a weight in blocks of ``type`` (T = 1: the
 * matrix-vector product; else the blocked GEMM: on AVX512-VNNI from PANEL_MIN_T tokens on, the
 * panels of panel_avx512.h). */
void sep_block_matmul(int type, const uint8_t *data, const float *bias, int out, int in,
                      const float *x, int T, float *y, int threads) {
    const Blk w = {type, data, bias, out, in};
    const size_t ab = (act_bytes(in) + 63) / 64 * 64;
    char *mem = aligned_alloc(64, ab * (size_t)(T + 1));
    Act *xs = malloc(sizeof(Act) * (size_t)(T + 1));
    for (int i = 0; i < T; i++) {
        xs[i] = act_at(mem + ab * i, in);
        act_quant(x + (size_t)i * in, in, xs + i);
    }
    memset(mem + ab * T, 0, ab); /* xs[T]: a token of zeros */
    xs[T] = act_at(mem + ab * T, in);
    if (T == 1)
        blk_matvec(&w, xs, y, threads);
#if SEP_ISA == 2
    else if (T >= PANEL_MIN_T)
        blk_gemm_panels(&w, xs, T, xs + T, y, threads);
#endif
    else
        blk_gemm(&w, xs, T, y, threads);
    free(xs);
    free(mem);
}

/* out [rows][in] fp32 = the weight dequantised (w = a * u + b per 16 weights, blocks.h's tiles):
 * the fast way to a dense copy (the int8 and fp32 loads of a GGUF), checked against
 * kernels/quant's reference. Rows split over ``threads``. */
void sep_block_dequant(int type, const uint8_t *data, int rows, int in, float *out, int threads) {
    const Blk w = {type, data, NULL, rows, in};
    const size_t rb = blk_row_bytes(&w);
    const int nt = tiles_of(in);
    (void)threads;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
#endif
    for (int o = 0; o < rows; o++) {
        _Alignas(64) uint8_t u[TILE];
        _Alignas(64) float A[64], B[16];
        float *y = out + (size_t)o * in;
        for (int t = 0; t < nt; t++) {
            unpack_tile(&w, data + (size_t)o * rb, t, u, A, B);
            const int n = in - t * TILE < TILE ? in - t * TILE : TILE;
            for (int i = 0; i < n; i++) {
                const int s = Q8_SIGNED && type == T_Q8_0 ? (int)(int8_t)u[i] : (int)u[i];
                y[t * TILE + i] = A[i / 4] * (float)s + B[i / 16];
            }
        }
    }
}
