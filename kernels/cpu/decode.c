/* CPU kernels, loaded with ctypes (kernels/cpu/build.py compiles this file, the one translation
 * unit, once per machine with the system's C compiler): matrix-vector products and GEMMs on 4-bit,
 * int8 and GGUF-block weights, and a whole decoder step of a Llama-shaped model over the ring
 * cache. The pure-torch references: kernels/cpu/reference.py, kernels/quant.
 *
 * The instruction set is chosen once, in isa.h (AVX512-VNNI, AVX2 or plain C), whose primitives
 * every function below is written on; the GGUF block formats and their products are in blocks.h.
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
#include "isa.h"
#ifdef _OPENMP
#include <omp.h>
#endif
#include "blocks.h"

int sep_isa(void) { return SEP_ISA; } /* 2: AVX512-VNNI, 1: AVX2, 0: plain C */

/* x [n] (n % 32 == 0) -> q [n], dx [n/32], dsum [n/32] = dx * sum(q of the group). */
void sep_quant_groups(const float *x, int n, int8_t *q, float *dx, float *dsum) {
    quant_groups(x, n, q, dx, dsum);
}

static void q4_matvec(const Q4 *w, const int8_t *q, const float *dx, const float *dsum, float *y,
                      int threads) {
    threads = matvec_threads(w->out, w->in, threads);
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
    quant_groups(x, in, q, dx, dx + in / GROUP);
    q4_matvec(&w, q, dx, dx + in / GROUP, y, threads);
    free(q);
    free(dx);
}

/* The int8 LM head for one token: x [in] fp32 -> y [out]; see the top of this file. */
void sep_int8_matvec(const int8_t *w, const int32_t *row_sums, const float *scale,
                     const float *inv_smooth, const float *bias, int out, int in, const float *x,
                     float *y, int threads) {
    threads = matvec_threads(out, in, threads);
    float *xs = malloc(sizeof(float) * (size_t)in);
    uint8_t *xu = malloc((size_t)in + 64);
    int8_t *xq = malloc((size_t)in);
    float amax = 0.f;
    for (int j = 0; j < in; j++) {
        xs[j] = x[j] * inv_smooth[j];
        amax = fmaxf(amax, fabsf(xs[j]));
    }
    float row = fmaxf(amax, 1e-12f) / 127.f; /* torch: amax.clamp_min(1e-12) / 127 */
    for (int j = 0; j < in; j++) {
        const int v = (int)nearbyintf(xs[j] / row);
        xu[j] = (uint8_t)(v + 128);
        xq[j] = (int8_t)v;
    }
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
#endif
    for (int o = 0; o < out; o++) {
        const int32_t dot = int8_dot(xu, xq, w + (size_t)o * in, in, row_sums[o]);
        float v = (float)dot * row * scale[o];
        y[o] = bias ? v + bias[o] : v;
    }
    free(xs);
    free(xu);
    free(xq);
}

/* ---------------------------------------------------------------- attention helpers */

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

/* The q heads of one kv head (``group`` of them, q [group][d], rotated) over the slots
 * 0..span-1 of that kv head: scores from the rotated keys kt (blocks of 16 slots), masked by
 * ``ok`` [S], softmax, then the values v [S][d] of the slots in ``seen`` -> out [group][d]. */
static void attend_group(const float *q, int group, const float *kt, const float *v, int S,
                         int span, const uint8_t *ok, const int *seen, int n_seen, int d,
                         float scale, float *scores, float *out) {
    head_scores(q, group, kt, S, span, d, scores);
    for (int h = 0; h < group; h++) {
        float *sc = scores + h * S, mx = -INFINITY;
        for (int s = 0; s < span; s++) {
            sc[s] = ok[s] ? sc[s] * scale : -INFINITY;
            mx = fmaxf(mx, sc[s]);
        }
        const float inv = 1.f / exp_sum(sc, span, mx);
        for (int s = 0; s < span; s++) sc[s] = ok[s] ? sc[s] * inv : 0.f;
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

enum { P_LN1, P_LN2, P_PROJ }; /* then 7 projections x (kind, p0, p1, p2, bias) */
#define PTRS_PER_PROJ 5
#define PTRS_PER_LAYER (P_PROJ + 7 * PTRS_PER_PROJ)
#define KIND_Q4 (-1) /* p0, p1, p2: codes, step, min of a Q4 weight; kinds >= 0: blocks.h */

/* A projection of the step: a Q4 weight or one in GGUF blocks (p0: the rows' blocks). */
typedef struct {
    int kind;
    Q4 q4;
    Blk blk;
} Proj;

static Proj proj(const int64_t *p, int which, int out, int in) {
    const int64_t *b = p + P_PROJ + PTRS_PER_PROJ * which;
    Proj w;
    w.kind = (int)b[0];
    const Q4 q4 = {(const uint8_t *)b[1], (const uint16_t *)b[2], (const uint16_t *)b[3],
                   (const float *)b[4], out, in};
    const Blk blk = {w.kind, (const uint8_t *)b[1], (const float *)b[4], out, in};
    w.q4 = q4, w.blk = blk;
    return w;
}

/* y = W x for the activations x quantised once (act_quant) for every projection that reads x. */
static void project(const Proj *w, const Act *x, float *y, int threads) {
    if (w->kind == KIND_Q4)
        q4_matvec(&w->q4, x->q, x->dx, x->dsum, y, threads);
    else
        blk_matvec(&w->blk, x, y, threads);
}

/* The kinds a step may hold: 1 if every projection of every layer is one this build knows. */
int sep_step_kinds_ok(int layers, const int64_t *ptrs) {
    for (int l = 0; l < layers; l++)
        for (int k = 0; k < 7; k++) {
            const int64_t kind = ptrs[(size_t)l * PTRS_PER_LAYER + P_PROJ + PTRS_PER_PROJ * k];
            if (kind != KIND_Q4 && (kind < 0 || kind >= N_TYPES)) return 0;
        }
    return 1;
}

/* One token through every decoder layer of a Llama-shaped model (RMSNorm, 4-bit q/k/v/o and
 * SiLU-gated MLP), each projection a Q4 weight or GGUF blocks (mixed freely), attending over the ring as the sepllm/full plans do: every slot with a cache
 * position 0 <= pos <= q_pos, keys rotated to their position.
 *
 * ptrs   : per layer PTRS_PER_LAYER entries (ln1, ln2 fp32; then q, k, v, o, gate, up, down,
 *          each kind (KIND_Q4 or a block type), its data (Q4: codes, step, min; blocks: the
 *          rows, 0, 0), bias-or-0).
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
    void *act_mem = aligned_alloc(64, (act_bytes(big) + 63) / 64 * 64);
    Act act = act_at(act_mem, big); /* the input of the projections, quantised once */
    float *qr = malloc(sizeof(float) * (size_t)qd);
    float *p = malloc(sizeof(float) * (size_t)S * group);
    uint8_t *ok = malloc((size_t)S);
    int *seen = malloc(sizeof(int) * (size_t)S), n_seen = 0, span = 0;
    for (int s = 0; s < S; s++) {
        ok[s] = slot_pos[s] >= 0 && slot_pos[s] <= q_pos;
        if (ok[s]) seen[n_seen++] = s, span = s + 1;
    }
    const float *qc = cos_t + (size_t)q_pos * rot, *qs = sin_t + (size_t)q_pos * rot;

    for (int l = 0; l < layers; l++) {
        const int64_t *P = ptrs + (size_t)l * PTRS_PER_LAYER;
        const Proj wq = proj(P, 0, qd, hidden), wk = proj(P, 1, kvd, hidden);
        const Proj wv = proj(P, 2, kvd, hidden), wo = proj(P, 3, hidden, qd);
        const Proj wg = proj(P, 4, inter, hidden), wu = proj(P, 5, inter, hidden);
        const Proj wd = proj(P, 6, hidden, inter);
        const size_t lo = (size_t)l * n_kv * S * d, lr = (size_t)l * n_kv * Sp * d;

        /* attention */
        rms_norm(h, (const float *)P[P_LN1], hidden, eps, x);
        act_quant(x, hidden, &act);
        project(&wq, &act, qv, threads);
        project(&wk, &act, kv, threads);
        project(&wv, &act, vv, threads);
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
        act_quant(att, qd, &act);
        project(&wo, &act, x, threads);
        for (int j = 0; j < hidden; j++) h[j] += x[j];

        /* MLP */
        rms_norm(h, (const float *)P[P_LN2], hidden, eps, x);
        act_quant(x, hidden, &act);
        project(&wg, &act, gate, threads);
        project(&wu, &act, up, threads);
        for (int j = 0; j < inter; j++) gate[j] = gate[j] / (1.f + expf(-gate[j])) * up[j];
        act_quant(gate, inter, &act);
        project(&wd, &act, x, threads);
        for (int j = 0; j < hidden; j++) h[j] += x[j];
    }
    free(x), free(qv), free(att), free(kv), free(gate), free(act_mem), free(qr), free(p);
    free(seen), free(ok);
}
