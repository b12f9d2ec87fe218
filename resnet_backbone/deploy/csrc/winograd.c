/* Winograd minimal filtering F(m x m, 3 x 3) for 3x3 / stride-1 convolutions (Lavin & Gray, "Fast Algorithms for
 * Convolutional Neural Networks", CVPR 2016): the input and output transforms, in NHWC (channels-last) layout.
 *
 * The convolution is y = A^T [ (G g G^T) .* (B^T d B) ] A per a x a input tile d (a = m + 2) and m x m output
 * tile; summed over input channels, the elementwise product becomes a*a independent matrix products
 * [tiles x C] @ [C x K], which the caller runs as one oneDNN grouped 1x1 convolution (or torch.bmm). This file
 * does the two memory-bound halves around it:
 *   rb_winograd_input:  x [N, H, W, C] -> V [T, a*a, C]   T = N * th * tw tiles, tile (n, ty, tx) at
 *                                                          t = (n * th + ty) * tw + tx; tile-major, so each tile is
 *                                                          written in one piece (and is one "pixel" of the grouped
 *                                                          convolution's NHWC input)
 *   rb_winograd_output: M (t, p, k) at M[t * ts + p * ps + k] -> y [N, Ho, Wo, K], with the convolution's
 *                                                          epilogue fused: + bias, + residual, ReLU
 * Channels are processed in blocks of CB, innermost and contiguous: the per-channel tile transforms vectorise over
 * channels (omp simd). Plain C with a C ABI, loaded with ctypes; OpenMP over tiles. Built for the machine it runs
 * on (-march=native; the cache is keyed by the CPU) by resnet_backbone/deploy/winograd.py.
 */
#include <stdint.h>
#include <string.h>

#define CB 64
#define AMAX 6
/* the channel loops have no dependences between iterations (outputs and inputs never overlap): vectorise them
 * without the runtime overlap checks the compiler would otherwise add and fail for strided rows */
#define SIMD _Pragma("omp simd")

/* The transforms, written out (F(2x2, 3x3): points 0, 1, -1; F(4x4, 3x3): points 0, 1, -1, 2, -2; and infinity;
 * the same matrices as in winograd.py), each applied to a columns of cb channels: z[k * zs + c] -> r[i * rs + c].
 * One pass over a whole tile is a = m + 2 of these along the columns, then a along the rows. */
static void bt2(const float *restrict z, int64_t zs, float *restrict r, int64_t rs, int cb) {
    SIMD for (int c = 0; c < cb; c++) {
        const float z0 = z[c], z1 = z[zs + c], z2 = z[2 * zs + c], z3 = z[3 * zs + c];
        r[c] = z0 - z2;
        r[rs + c] = z1 + z2;
        r[2 * rs + c] = z2 - z1;
        r[3 * rs + c] = z1 - z3;
    }
}

static void bt4(const float *restrict z, int64_t zs, float *restrict r, int64_t rs, int cb) {
    SIMD for (int c = 0; c < cb; c++) {
        const float z0 = z[c], z1 = z[zs + c], z2 = z[2 * zs + c], z3 = z[3 * zs + c], z4 = z[4 * zs + c],
                    z5 = z[5 * zs + c];
        r[c] = 4.f * z0 - 5.f * z2 + z4;
        r[rs + c] = z3 + z4 - 4.f * (z1 + z2);
        r[2 * rs + c] = z4 - z3 + 4.f * (z1 - z2);
        r[3 * rs + c] = z4 - z2 + 2.f * (z3 - z1);
        r[4 * rs + c] = z4 - z2 + 2.f * (z1 - z3);
        r[5 * rs + c] = 4.f * z1 - 5.f * z3 + z5;
    }
}

static void at2(const float *restrict z, int64_t zs, float *restrict r, int64_t rs, int cb) {
    SIMD for (int c = 0; c < cb; c++) {
        const float z0 = z[c], z1 = z[zs + c], z2 = z[2 * zs + c], z3 = z[3 * zs + c];
        r[c] = z0 + z1 + z2;
        r[rs + c] = z1 - z2 - z3;
    }
}

static void at4(const float *restrict z, int64_t zs, float *restrict r, int64_t rs, int cb) {
    SIMD for (int c = 0; c < cb; c++) {
        const float z1 = z[zs + c], z2 = z[2 * zs + c], z3 = z[3 * zs + c], z4 = z[4 * zs + c];
        const float s12 = z1 + z2, d12 = z1 - z2, s34 = z3 + z4, d34 = z3 - z4;
        r[c] = z[c] + s12 + s34;
        r[rs + c] = d12 + 2.f * d34;
        r[2 * rs + c] = s12 + 4.f * s34;
        r[3 * rs + c] = d12 + 8.f * d34 + z[5 * zs + c];
    }
}

typedef void (*transform_fn)(const float *restrict, int64_t, float *restrict, int64_t, int);

/* bias, shortcut addition, ReLU: y[c] = relu?(o[c] + bias[c] + res[c]) */
static void epilogue(const float *restrict o, const float *restrict bias, const float *restrict res,
                               int relu, float *restrict y, int cb) {
    SIMD for (int c = 0; c < cb; c++) {
        float s = o[c];
        if (bias) s += bias[c];
        if (res) s += res[c];
        y[c] = (relu && s < 0.f) ? 0.f : s;
    }
}

/* tile t -> (image n, tile row ty, tile column tx) */
static void locate(int64_t t, int64_t th, int64_t tw, int64_t *n, int64_t *ty, int64_t *tx) {
    *n = t / (th * tw);
    *ty = (t / tw) % th;
    *tx = t % tw;
}

int rb_winograd_input(const float *x, float *V, int64_t N, int64_t H, int64_t W, int64_t C, int64_t pad_h,
                      int64_t pad_w, int m, int64_t th, int64_t tw, int nthreads) {
    if (m != 2 && m != 4) return -1;
    const transform_fn bt = m == 2 ? bt2 : bt4;
    const int a = m + 2;
    int64_t n, ty, tx;
#pragma omp parallel for num_threads(nthreads) schedule(static) private(n, ty, tx)
    for (int64_t t = 0; t < N * th * tw; t++) {
        float d[AMAX * AMAX * CB], tmp[AMAX * AMAX * CB];
        locate(t, th, tw, &n, &ty, &tx);
        const int64_t y0 = ty * m - pad_h, x0 = tx * m - pad_w;
        const int inside = y0 >= 0 && x0 >= 0 && y0 + a <= H && x0 + a <= W;
        for (int64_t c0 = 0; c0 < C; c0 += CB) {
            const int cb = (int)(C - c0 < CB ? C - c0 : CB);
            const float *src;
            int64_t rs, cs;
            if (inside) { /* read the tile where it is */
                src = x + ((n * H + y0) * W + x0) * C + c0;
                rs = W * C;
                cs = C;
            } else { /* gather it with its zero padding */
                for (int i = 0; i < a; i++)
                    for (int j = 0; j < a; j++) {
                        const int64_t iy = y0 + i, ix = x0 + j;
                        float *dst = d + (i * a + j) * CB;
                        if (iy < 0 || iy >= H || ix < 0 || ix >= W)
                            memset(dst, 0, sizeof(float) * cb);
                        else
                            memcpy(dst, x + ((n * H + iy) * W + ix) * C + c0, sizeof(float) * cb);
                    }
                src = d;
                rs = (int64_t)a * CB;
                cs = CB;
            }
            /* B^T d: column j of d to column j of tmp ([a][a][CB]) */
            for (int j = 0; j < a; j++) bt(src + j * cs, rs, tmp + j * CB, (int64_t)a * CB, cb);
            /* (B^T d) B: row i of tmp to points i * a + 0 .. a - 1 of the tile */
            for (int i = 0; i < a; i++) bt(tmp + i * a * CB, CB, V + ((int64_t)t * a * a + i * a) * C + c0, C, cb);
        }
    }
    return 0;
}

int rb_winograd_output(const float *M, int64_t ts, int64_t ps, float *y, const float *bias, const float *residual,
                       int relu, int64_t N, int64_t Ho, int64_t Wo, int64_t K, int m, int64_t th, int64_t tw,
                       int nthreads) {
    if (m != 2 && m != 4) return -1;
    const transform_fn at = m == 2 ? at2 : at4;
    const int a = m + 2;
    int64_t n, ty, tx;
#pragma omp parallel for num_threads(nthreads) schedule(static) private(n, ty, tx)
    for (int64_t t = 0; t < N * th * tw; t++) {
        float tmp[AMAX * AMAX * CB], o[AMAX * CB];
        locate(t, th, tw, &n, &ty, &tx);
        const int mi = (int)(Ho - ty * m < m ? Ho - ty * m : m), mj = (int)(Wo - tx * m < m ? Wo - tx * m : m);
        for (int64_t k0 = 0; k0 < K; k0 += CB) {
            const int kb = (int)(K - k0 < CB ? K - k0 : CB);
            const int64_t off = ((n * Ho + ty * m) * Wo + tx * m) * K + k0;
            const float *mp = M + t * ts + k0, *b = bias ? bias + k0 : 0, *r = residual ? residual + off : 0;
            /* A^T M: column j of the a x a products to column j of tmp ([m][a][CB]) */
            for (int j = 0; j < a; j++) at(mp + j * ps, a * ps, tmp + j * CB, (int64_t)a * CB, kb);
            for (int i = 0; i < mi; i++) { /* (A^T M) A, row by row, then the epilogue into y */
                at(tmp + i * a * CB, CB, o, CB, kb);
                for (int j = 0; j < mj; j++) {
                    const int64_t at_ij = off + (i * Wo + j) * K;
                    epilogue(o + j * CB, b, r ? r + (i * Wo + j) * K : 0, relu, y + at_ij, kb);
                }
            }
        }
    }
    return 0;
}
