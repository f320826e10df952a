/* Which instruction set this build of the kernels uses, decided once, here, by what the compiler
 * targets (-march): AVX512-VNNI, AVX2 (+FMA, F16C) or plain C. Exactly one of isa_avx512.h,
 * isa_avx2.h, isa_plain.h is included; each defines the same primitives (below), so every
 * other file is written once, without #ifs on the ISA.
 *
 *   h2f(h)                    fp16 -> fp32
 *   quant_groups(x, n, ...)   activations quantised per group of 32 (see decode.c)
 *   q4_row(w, o, ...)         row o of a Q4 weight (decode.c's pair layout) times activations
 *   int8_dot(...)             the int8 head's exact integer dot product
 *   dot_f32, axpy_f32         fp32 vector helpers
 *   head_scores(...)          one kv head's q heads against 16-slot blocks of rotated keys
 *   exp_sum(sc, n, mx)        sc = exp(sc - mx) in place, returns the sum
 *   tile_dot(...)             one 256-weight tile of unpacked blocks (blocks.h) times a token
 *   Q8_SIGNED                 1 where tile_dot multiplies signed bytes (AVX2), 0 unsigned
 *   fast_row(type, row, ...)  a whole row of blocks in registers for the types an ISA has a
 *                             row kernel for (returns 0 for the others: blocks.h's tiles run)
 */
#ifndef SEP_ISA_H
#define SEP_ISA_H
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
#if SEP_ISA
#include <immintrin.h>
#endif

/* The block formats' numbers (c_type in the kernels/quant modules; blocks.h's tables). */
enum { T_Q4_0, T_Q4_1, T_Q5_0, T_Q5_1, T_Q8_0, T_Q4_K, T_Q5_K, T_Q6_K, N_TYPES };

#define GROUP 32      /* activations are quantised per group of 32 */
#define TILE 256      /* weights a tile of unpacked blocks holds (blocks.h) */
#define PREFETCH 1024 /* bytes of weights read ahead: measured best of 512..4096 */
/* One token's products split over threads only from this many weights on: a worker that sleeps
 * between products (OMP_WAIT_POLICY=PASSIVE, sepcli/__main__.py) takes tens of microseconds to
 * wake, longer than a small product takes on one thread (docs/kernels.md: threads). */
#define PAR_MIN_WEIGHTS (1L << 21)
static inline int matvec_threads(long out, long in, int threads) {
    return out * in >= PAR_MIN_WEIGHTS ? threads : 1;
}

/* A Q4 weight in decode.c's pair layout (kernels/cpu/layouts.py: pack_q4). */
typedef struct {
    const uint8_t *codes; /* [out][in/2] */
    const uint16_t *step; /* [out][in/32] fp16 */
    const uint16_t *min;  /* [out][in/32] fp16 */
    const float *bias;    /* [out] or NULL */
    int out, in;
} Q4;

#if SEP_ISA
/* exp(x) for x <= 0 (softmax after subtracting the max): 2^n * 2^f with n = round(x log2 e),
 * 2^f by its Taylor series to degree 7 (error < 1e-8 on |f| <= 1/2), highest term first; x
 * below -87 gives 2^-126 ~ 1e-38. */
static const float EXP2_TAYLOR[8] = {1.5252734e-5f, 1.5403530e-4f, 1.3333558e-3f,
                                     9.6181291e-3f, 5.5504109e-2f, 2.4022651e-1f,
                                     6.9314718e-1f, 1.f};
#endif

#if SEP_ISA == 2
#include "isa_avx512.h"
#elif SEP_ISA == 1
#include "isa_avx2.h"
#else
#include "isa_plain.h"
#endif
#endif
