/* The blocked GEMM of blocks.h on AVX512-VNNI: panels of 16 rows, the rows in the lanes.
 * Included by blocks.h where isa.h chose AVX512-VNNI.
 *
 * A tile (256 weights) of 16 rows is unpacked (blocks.h's unpack_tile_ab) and laid out as a
 * panel: 64 vectors of 64 bytes, vector k holding weights 4k..4k+3 of each of the 16 rows (lane
 * r: row r), the per-16 scales a and offsets b as vectors over the rows. One vpdpbusd then
 * multiplies 4 weights of 16 rows by 4 activation bytes of one token (a broadcast), and the 8
 * products of a 32-weight group sum in integer: the group's float work (its weights' scale a
 * times the token's dx, its offsets b times the token's dsum) is done once per 8 vpdpbusd for 16
 * rows, where the tiles of blocks.h spend three float operations per vpdpbusd. PANEL_TOKENS
 * tokens run at once with their accumulators in registers, each panel vector loaded once for
 * all of them. The numbers are those of the tiles (the same int8 activations per group of 32,
 * w = a u + b), summed in another order.
 */
#define PANEL 16       /* rows of a panel: the lanes of a vector of floats */
#define PANEL_TOKENS 8 /* tokens of one call of panel_run: accumulators in registers */
#define PANEL_MIN_T 4  /* fewer tokens take blocks.h's tiles */

typedef struct {
    _Alignas(64) uint8_t w[64][64]; /* [4-weight step k][row r: 4 bytes] */
    _Alignas(64) float a[16][16];   /* [16 weights][row]: w = a u + b */
    _Alignas(64) float b[16][16];
} Panel;

/* 16 x 16 dwords: out[c][r] = in[r][c] (in: rows of `stride` dwords). */
static inline void transpose16(const uint32_t *in, size_t stride, uint32_t *out) {
    __m512i r[16], t[16];
    for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_si512(in + i * stride);
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    /* per 128-bit lane L and group of 4 rows m: r[4m + j] = columns 4L + j of rows 4m..4m+3 */
    for (int m = 0; m < 4; m++) {
        const __m512i *q = t + 4 * m;
        r[4 * m + 0] = _mm512_unpacklo_epi64(q[0], q[2]);
        r[4 * m + 1] = _mm512_unpackhi_epi64(q[0], q[2]);
        r[4 * m + 2] = _mm512_unpacklo_epi64(q[1], q[3]);
        r[4 * m + 3] = _mm512_unpackhi_epi64(q[1], q[3]);
    }
    for (int j = 0; j < 4; j++) {
        const __m512i v0 = _mm512_shuffle_i32x4(r[j], r[4 + j], 0x44);
        const __m512i v1 = _mm512_shuffle_i32x4(r[j], r[4 + j], 0xee);
        const __m512i v2 = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0x44);
        const __m512i v3 = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0xee);
        _mm512_storeu_si512(out + 16 * (0 + j), _mm512_shuffle_i32x4(v0, v2, 0x88));
        _mm512_storeu_si512(out + 16 * (4 + j), _mm512_shuffle_i32x4(v0, v2, 0xdd));
        _mm512_storeu_si512(out + 16 * (8 + j), _mm512_shuffle_i32x4(v1, v3, 0x88));
        _mm512_storeu_si512(out + 16 * (12 + j), _mm512_shuffle_i32x4(v1, v3, 0xdd));
    }
}

/* Tile t of rows o0..o0+nr-1 (nr <= 16; the rest zero) -> the panel. */
static void panel_build(const Blk *w, int o0, int nr, int t, Panel *p) {
    _Alignas(64) uint8_t u[PANEL][TILE];
    _Alignas(64) float a[PANEL][16], b[PANEL][16];
    const size_t rb = blk_row_bytes(w);
    for (int r = 0; r < PANEL; r++) {
        if (r < nr) {
            unpack_tile_ab(w, w->data + (size_t)(o0 + r) * rb, t, u[r], a[r], b[r]);
        } else {
            memset(u[r], 0, TILE);
            for (int k = 0; k < 16; k++) a[r][k] = b[r][k] = 0.f;
        }
    }
    for (int c = 0; c < 4; c++) transpose16((const uint32_t *)u + 16 * c, TILE / 4, (uint32_t *)p->w[16 * c]);
    transpose16((const uint32_t *)a, 16, (uint32_t *)p->a);
    transpose16((const uint32_t *)b, 16, (uint32_t *)p->b);
}

static inline __m512i bcast4(const int8_t *q) {
    int32_t v;
    memcpy(&v, q, 4);
    return _mm512_set1_epi32(v);
}

/* acc[n][16 rows] += the panel (tile t) times tokens x[n], n < PANEL_TOKENS. `six`: the scales
 * differ per 16 weights (Q6_K; the others: per 32, a[2g] == a[2g + 1], b likewise). */
static inline void panel_run_kind(const Panel *p, const int six, const Act *const *x, int t,
                                  float *acc) {
    enum { N = PANEL_TOKENS };
    __m512 ac[N];
    const int8_t *q[N];
    const float *dx[N], *ds[N], *s16[N];
    for (int n = 0; n < N; n++) {
        ac[n] = _mm512_loadu_ps(acc + 16 * n);
        q[n] = x[n]->q + TILE * t, dx[n] = x[n]->dx + 8 * t;
        ds[n] = x[n]->dsum + 8 * t, s16[n] = x[n]->s16 + 16 * t;
    }
    for (int g = 0; g < 8; g++) { /* a group of 32 weights: 8 steps of 4 */
        if (!six) {
            __m512i T[N];
            for (int n = 0; n < N; n++) T[n] = _mm512_setzero_si512();
            for (int k = 8 * g; k < 8 * g + 8; k++) {
                const __m512i W = _mm512_load_si512(p->w[k]);
                for (int n = 0; n < N; n++) T[n] = _mm512_dpbusd_epi32(T[n], W, bcast4(q[n] + 4 * k));
            }
            const __m512 A = _mm512_load_ps(p->a[2 * g]), B = _mm512_load_ps(p->b[2 * g]);
            for (int n = 0; n < N; n++) {
                const __m512 s = _mm512_mul_ps(A, _mm512_set1_ps(dx[n][g]));
                ac[n] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(T[n]), s, ac[n]);
                ac[n] = _mm512_fmadd_ps(B, _mm512_set1_ps(ds[n][g]), ac[n]);
            }
        } else {
            __m512 h[N];
            for (int n = 0; n < N; n++) h[n] = _mm512_setzero_ps();
            for (int half = 0; half < 2; half++) {
                const int s = 2 * g + half;
                __m512i T[N];
                for (int n = 0; n < N; n++) T[n] = _mm512_setzero_si512();
                for (int k = 4 * s; k < 4 * s + 4; k++) {
                    const __m512i W = _mm512_load_si512(p->w[k]);
                    for (int n = 0; n < N; n++) T[n] = _mm512_dpbusd_epi32(T[n], W, bcast4(q[n] + 4 * k));
                }
                const __m512 A = _mm512_load_ps(p->a[s]), B = _mm512_load_ps(p->b[s]);
                for (int n = 0; n < N; n++) {
                    const __m512 v = _mm512_cvtepi32_ps(T[n]);
                    h[n] = _mm512_fmadd_ps(v, A, h[n]);
                    ac[n] = _mm512_fmadd_ps(B, _mm512_set1_ps(s16[n][s]), ac[n]);
                }
            }
            for (int n = 0; n < N; n++) ac[n] = _mm512_fmadd_ps(h[n], _mm512_set1_ps(dx[n][g]), ac[n]);
        }
    }
    for (int n = 0; n < N; n++) _mm512_storeu_ps(acc + 16 * n, ac[n]);
}

static void panel_run(const Panel *p, int six, const Act *const *x, int t, float *acc) {
    if (six)
        panel_run_kind(p, 1, x, t, acc);
    else
        panel_run_kind(p, 0, x, t, acc);
}

/* y [T][out] = W x_t for T >= PANEL_MIN_T tokens: threads over panels of 16 rows; per panel,
 * each tile is laid out once and run against every token (PANEL_TOKENS at a time; a last short
 * group is filled with `zero`, an Act of zeros, whose results are dropped). */
static void blk_gemm_panels(const Blk *w, const Act *xs, int T, const Act *zero, float *y,
                            int threads) {
    (void)threads;
    const int nt = tiles_of(w->in), panels = (w->out + PANEL - 1) / PANEL;
    const int groups = (T + PANEL_TOKENS - 1) / PANEL_TOKENS, six = w->type == T_Q6_K;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) if (threads > 1)
#endif
    {
        Panel *p = aligned_alloc(64, sizeof(Panel));
        float *acc = aligned_alloc(64, sizeof(float) * PANEL * PANEL_TOKENS * (size_t)groups);
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int pi = 0; pi < panels; pi++) {
            const int o0 = pi * PANEL, nr = w->out - o0 < PANEL ? w->out - o0 : PANEL;
            memset(acc, 0, sizeof(float) * PANEL * PANEL_TOKENS * (size_t)groups);
            for (int t = 0; t < nt; t++) {
                panel_build(w, o0, nr, t, p);
                for (int gi = 0; gi < groups; gi++) {
                    const Act *x[PANEL_TOKENS];
                    for (int n = 0; n < PANEL_TOKENS; n++) {
                        const int i = gi * PANEL_TOKENS + n;
                        x[n] = i < T ? xs + i : zero;
                    }
                    panel_run(p, six, x, t, acc + (size_t)gi * PANEL_TOKENS * PANEL);
                }
            }
            for (int i = 0; i < T; i++)
                for (int r = 0; r < nr; r++) {
                    const float v = acc[(size_t)i * PANEL + r];
                    y[(size_t)i * w->out + o0 + r] = w->bias ? v + w->bias[o0 + r] : v;
                }
        }
        free(acc);
        free(p);
    }
}
