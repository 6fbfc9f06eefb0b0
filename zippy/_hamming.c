/* Compiled Hamming kernels behind zippy.matching (backend "native"); built at install time.

   One build runs on any CPU: the SIMD paths are compiled with GCC/Clang target attributes and chosen
   at run time (__builtin_cpu_supports); the caller passes the ISA name, so every path can be forced
   (zippy.matching reads ZIPPY_MATCHER_ISA) and tested against the others.

   ISAs, fastest first:
     "avx512"  AVX-512F + VPOPCNTDQ: 16 columns per zmm (uint32 lanes), XOR + VPOPCNTD + add.
     "avx2"    AVX2: 8 columns per ymm; popcount by nibble lookup (VPSHUFB). Both operands are stored
               pre-split into low / high nibbles (x & 0x0F.., (x >> 4) & 0x0F..), so a nibble of a XOR is
               one XOR away (no shift / mask per pair): per 32-bit word 2 XOR + 2 VPSHUFB + 2 byte adds,
               byte counts summed over up to 16 words, then VPMADDUBSW + VPMADDWD to 32-bit distances.
     "popcnt"  x86-64 scalar POPCNT on 64-bit words.
     "generic" portable C (__builtin_popcountll), the only path off x86.

   The SIMD paths compute a tile of a few rows x one vector of columns (RT / RT5 below) with the row
   words broadcast, then reduce in registers (no distance matrix):
     per row and lane: the smallest distance, its column, the second-smallest distance (lanes see
       their columns in increasing order; only a strictly smaller distance replaces the best), merged
       over the lanes at the end: ties -> the lowest column, as cv2.BFMatcher;
     per column: the smallest distance and the first row reaching it (rows in increasing order, strict).
   Columns are processed in blocks packed on the fly (memory O(block), not O(N1)).

   Entry points (the GIL is released while they run):
     isas() -> tuple of the ISA names usable on this CPU, fastest first.
     nn(isa, d0, d1, nbytes, want_second, want_cols, rd, ri, rs, cd, ci)
     knn(isa, d0, d1, nbytes, k, topd, topi)
     pair_distances(isa, d0, d1, nbytes, i, j, out)
     guided(isa, d0, d1, nbytes, i, j, rd, ri, rs, cd, ci)   (candidate pairs sorted by i, then j)
   d0 / d1 are C-contiguous uint8 buffers [N, nbytes]; outputs are int32 buffers the caller allocates
   (rd / ri / rs [N0], cd / ci [N1], topd / topi [N0, k] pre-filled with BIG / -1; out [C]); i / j are
   int64 [C]. Distances are int32; BIG (1 << 30) means "none". */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(_M_X64)
#define ZX86 1
#include <immintrin.h>
#else
#define ZX86 0
#endif

#define BIG (1 << 30)
#ifndef CB2
#define CB2 2048 /* avx2: columns per packed block (64 bytes each for 256-bit descriptors) */
#endif
#ifndef CB5
#define CB5 2048 /* avx512: columns per packed block (32 bytes each) */
#endif
#define WCHUNK 16   /* avx2: 32-bit words summed as bytes before widening (16 * 8 <= 255) */
/* Tiles (rows x column vectors), chosen by measurement on Zen 4 (N = 2000, 256-bit, cycles per pair):
   avx2 6 x 1: 2.1, against 2.2 (8 x 1), 2.4 (4 x 1) and 2.8 (4 x 2: GCC spills accumulators);
   avx512 4 x 1: 1.1-1.2, no better with 8 x 1, 4 x 2, 6 x 2 or 8 x 2. */
#ifndef RT
#define RT 6
#endif
#ifndef CT
#define CT 1
#endif
#ifndef RT5
#define RT5 4
#endif
#ifndef CT5
#define CT5 1
#endif   /* avx2: 32-bit words summed as bytes before widening (16 * 8 <= 255) */

enum { ISA_GENERIC = 0, ISA_POPCNT = 1, ISA_AVX2 = 2, ISA_AVX512 = 3 };

typedef struct {
    const uint8_t *d0, *d1;
    int64_t n0, n1, nbytes, k;
    int want_second, want_cols;
    int32_t *rd, *ri, *rs, *cd, *ci; /* nn outputs */
    int32_t *topd, *topi;            /* knn outputs [n0, k] */
    int64_t cb;                      /* columns per packed block (SIMD paths) */
} job_t;

/* Columns per packed block: ``base``, fewer for wide descriptors so a block stays <= 256 KiB. */
static int64_t block_cols(int64_t base, int64_t bytes_per_col) {
    int64_t cb = base;
    while (cb > 16 && cb * bytes_per_col > (1 << 18)) cb /= 2;
    return cb;
}

static void *zalloc(size_t bytes) {
    size_t size = (bytes + 63) / 64 * 64;
    void *p = aligned_alloc(64, size ? size : 64);
    if (p) memset(p, 0, size ? size : 64);
    return p;
}

static inline uint32_t word32(const uint8_t *row, int64_t w, int64_t nbytes) {
    uint32_t x = 0;
    int64_t b = 4 * w;
    if (b + 4 <= nbytes) {
        memcpy(&x, row + b, 4);
    } else {
        uint8_t tmp[4] = {0, 0, 0, 0};
        for (int64_t t = b; t < nbytes; t++) tmp[t - b] = row[t];
        memcpy(&x, tmp, 4);
    }
    return x;
}

/* --------------------------------------------------------------------------------------- reductions */
/* Row state per row: LANES bests, LANES columns, LANES second-bests (int32). Merged over lanes here. */
static void finish_rows(const int32_t *state, int64_t n, int lanes, int32_t *rd, int32_t *ri, int32_t *rs) {
    for (int64_t i = 0; i < n; i++) {
        const int32_t *b = state + i * 3 * lanes, *x = b + lanes, *s = b + 2 * lanes;
        int32_t best = BIG, idx = -1, lane = -1;
        for (int l = 0; l < lanes; l++) {
            if (b[l] < best || (b[l] == best && best < BIG && x[l] < idx)) {
                best = b[l];
                idx = x[l];
                lane = l;
            }
        }
        int32_t second = BIG;
        for (int l = 0; l < lanes; l++) {
            if (s[l] < second) second = s[l];
            if (l != lane && b[l] < second) second = b[l];
        }
        rd[i] = best;
        ri[i] = best < BIG ? idx : -1;
        rs[i] = second;
    }
}

static inline void knn_insert(int32_t *topd, int32_t *topi, int64_t k, int32_t d, int32_t j) {
    if (d >= topd[k - 1]) return; /* strict: an earlier column with the same distance stays ahead */
    int64_t p = k - 1;
    while (p > 0 && topd[p - 1] > d) {
        topd[p] = topd[p - 1];
        topi[p] = topi[p - 1];
        p--;
    }
    topd[p] = d;
    topi[p] = j;
}

/* ------------------------------------------------------------------------------------- scalar paths */
/* Portable kernel (also the x86 POPCNT path): row by row, the distances to a tile of STILE
   columns (64-bit words, tile stored word-major so the column loop is contiguous and can vectorise) go
   to a small buffer, then reduce as the SIMD paths: first minimum per row (+ second), per column. */
#define STILE 512

#define SCALAR_BODY                                                                                        \
    int64_t nw = (job->nbytes + 7) / 8, k = job->k;                                                        \
    uint64_t *a = zalloc((size_t)(job->n0 * nw) * 8), *bt = zalloc((size_t)(nw * STILE) * 8);             \
    int32_t *buf = zalloc((size_t)STILE * 4);                                                              \
    if (!a || !bt || !buf) {                                                                               \
        free(a);                                                                                           \
        free(bt);                                                                                          \
        free(buf);                                                                                         \
        return -1;                                                                                         \
    }                                                                                                      \
    for (int64_t i = 0; i < job->n0; i++) memcpy((uint8_t *)(a + i * nw), job->d0 + i * job->nbytes, job->nbytes); \
    for (int64_t j0 = 0; j0 < job->n1; j0 += STILE) {                                                      \
        int64_t len = job->n1 - j0 < STILE ? job->n1 - j0 : STILE;                                         \
        for (int64_t c = 0; c < len; c++) {                                                                \
            uint64_t tmp[8];                                                                               \
            for (int64_t w0 = 0; w0 < nw; w0 += 8) {                                                       \
                int64_t b0 = w0 * 8, nb = job->nbytes - b0 < 64 ? job->nbytes - b0 : 64;                  \
                memset(tmp, 0, sizeof tmp);                                                                \
                memcpy(tmp, job->d1 + (j0 + c) * job->nbytes + b0, nb);                                    \
                for (int64_t w = w0; w < nw && w < w0 + 8; w++) bt[w * STILE + c] = tmp[w - w0];           \
            }                                                                                              \
        }                                                                                                  \
        for (int64_t i = 0; i < job->n0; i++) {                                                            \
            const uint64_t *x = a + i * nw;                                                                \
            if (nw == 4) {                                                                                 \
                const uint64_t x0 = x[0], x1 = x[1], x2 = x[2], x3 = x[3];                                 \
                const uint64_t *c0 = bt, *c1 = bt + STILE, *c2 = bt + 2 * STILE, *c3 = bt + 3 * STILE;     \
                for (int64_t c = 0; c < len; c++)                                                          \
                    buf[c] = (int32_t)(__builtin_popcountll(x0 ^ c0[c]) + __builtin_popcountll(x1 ^ c1[c]) + \
                                       __builtin_popcountll(x2 ^ c2[c]) + __builtin_popcountll(x3 ^ c3[c])); \
            } else {                                                                                       \
                for (int64_t c = 0; c < len; c++) buf[c] = 0;                                              \
                for (int64_t w = 0; w < nw; w++) {                                                         \
                    const uint64_t xw = x[w], *cw = bt + w * STILE;                                        \
                    for (int64_t c = 0; c < len; c++) buf[c] += (int32_t)__builtin_popcountll(xw ^ cw[c]); \
                }                                                                                          \
            }                                                                                              \
            int32_t dmin = BIG;                                                                            \
            for (int64_t c = 0; c < len; c++) dmin = buf[c] < dmin ? buf[c] : dmin;                        \
            if (job->topd) {                                                                               \
                int32_t *td = job->topd + i * k, *ti = job->topi + i * k;                                  \
                if (dmin < td[k - 1])                                                                      \
                    for (int64_t c = 0; c < len; c++)                                                      \
                        if (buf[c] < td[k - 1]) knn_insert(td, ti, k, buf[c], (int32_t)(j0 + c));          \
                continue;                                                                                  \
            }                                                                                              \
            if (dmin < job->rd[i]) {                                                                       \
                int64_t jb = 0;                                                                            \
                while (buf[jb] != dmin) jb++;                                                              \
                if (job->want_second) {                                                                    \
                    int32_t s = job->rd[i];                                                                \
                    for (int64_t c = 0; c < len; c++) s = (c != jb && buf[c] < s) ? buf[c] : s;            \
                    job->rs[i] = s;                                                                        \
                }                                                                                          \
                job->rd[i] = dmin;                                                                         \
                job->ri[i] = (int32_t)(j0 + jb);                                                           \
            } else if (job->want_second && dmin < job->rs[i]) {                                            \
                job->rs[i] = dmin;                                                                         \
            }                                                                                              \
            if (job->want_cols) {                                                                          \
                int32_t *cd = job->cd + j0, *ci = job->ci + j0, ii = (int32_t)i;                           \
                for (int64_t c = 0; c < len; c++) {                                                        \
                    int better = buf[c] < cd[c];                                                           \
                    cd[c] = better ? buf[c] : cd[c];                                                       \
                    ci[c] = better ? ii : ci[c];                                                           \
                }                                                                                          \
            }                                                                                              \
        }                                                                                                  \
    }                                                                                                      \
    free(a);                                                                                               \
    free(bt);                                                                                              \
    free(buf);                                                                                             \
    return 0;

static int run_generic(job_t *job) { SCALAR_BODY }

#if ZX86
__attribute__((target("popcnt"))) static int run_popcnt(job_t *job) { SCALAR_BODY }

/* ---------------------------------------------------------------------------------------------- AVX2 */
#define AVX2 __attribute__((target("avx2")))
#define AVX2_INLINE static inline __attribute__((always_inline, target("avx2")))

/* Pack columns j0 .. j0+len of d1 for avx2: group g (8 columns), word w -> 8 low nibbles, 8 high nibbles. */
static void pack_cols_nib(const job_t *job, int64_t j0, int64_t len, int64_t W, uint32_t *out) {
    int64_t groups = (len + 7) / 8;
    memset(out, 0, (size_t)(groups * W * 16) * 4);
    for (int64_t c = 0; c < len; c++) {
        const uint8_t *row = job->d1 + (j0 + c) * job->nbytes;
        int64_t g = c / 8, l = c % 8;
        for (int64_t w = 0; w < W; w++) {
            uint32_t x = word32(row, w, job->nbytes);
            out[(g * W + w) * 16 + l] = x & 0x0F0F0F0Fu;
            out[(g * W + w) * 16 + 8 + l] = (x >> 4) & 0x0F0F0F0Fu;
        }
    }
}

static void pack_rows_nib(const job_t *job, int64_t W, int64_t rows, uint32_t *out) {
    for (int64_t i = 0; i < job->n0; i++) {
        const uint8_t *row = job->d0 + i * job->nbytes;
        for (int64_t w = 0; w < W; w++) {
            uint32_t x = word32(row, w, job->nbytes);
            out[(i * W + w) * 2] = x & 0x0F0F0F0Fu;
            out[(i * W + w) * 2 + 1] = (x >> 4) & 0x0F0F0F0Fu;
        }
    }
    (void)rows;
}

/* Distances of R rows (q: broadcast words, 16 W uint32 per row) x C groups (p, stride 16 W) into D[r][c].
   The row words come pre-broadcast from a small buffer: a plain vector load, where VPBROADCASTD from
   memory would compete with VPSHUFB for the shuffle ports. */
AVX2_INLINE void dist_avx2(const uint32_t *q, const uint32_t *p, const int64_t W, const int R, const int C,
                           __m256i D[RT][2]) {
    const __m256i T = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2,
                                       2, 3, 2, 3, 3, 4);
    const __m256i one8 = _mm256_set1_epi8(1), one16 = _mm256_set1_epi16(1);
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) D[r][c] = _mm256_setzero_si256();
    for (int64_t w0 = 0; w0 < W; w0 += WCHUNK) {
        int64_t w1 = w0 + WCHUNK < W ? w0 + WCHUNK : W;
        __m256i A[RT][2];
        for (int r = 0; r < R; r++)
            for (int c = 0; c < C; c++) A[r][c] = _mm256_setzero_si256();
#pragma GCC unroll 1 /* a plain loop keeps the accumulators in registers (full unrolling made GCC spill) */
        for (int64_t w = w0; w < w1; w++) {
            for (int h = 0; h < 2; h++) {
                __m256i bv[2];
                for (int c = 0; c < C; c++) bv[c] = _mm256_load_si256((const __m256i *)(p + (c * W + w) * 16 + h * 8));
                for (int r = 0; r < R; r++) {
                    __m256i qv = _mm256_load_si256((const __m256i *)(q + (r * W + w) * 16 + h * 8));
                    for (int c = 0; c < C; c++)
                        A[r][c] = _mm256_add_epi8(A[r][c], _mm256_shuffle_epi8(T, _mm256_xor_si256(qv, bv[c])));
                }
            }
        }
        for (int r = 0; r < R; r++)
            for (int c = 0; c < C; c++)
                D[r][c] = _mm256_add_epi32(D[r][c], _mm256_madd_epi16(_mm256_maddubs_epi16(A[r][c], one8), one16));
    }
}

/* One tile: rows i0 .. i0+R, groups g0 .. g0+C of the block starting at column j0. */
AVX2_INLINE void tile_avx2(const job_t *job, const uint32_t *QB, const uint32_t *P, int64_t i0, int64_t g0,
                           int64_t j0, int64_t len, const int64_t W, const int R, const int C, int knn,
                           int32_t *state) {
    __m256i D[RT][2];
    dist_avx2(QB, P + g0 * W * 16, W, R, C, D);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int c = 0; c < C; c++) {
        int64_t first = (g0 + c) * 8; /* column offset in the block */
        if (first + 8 > len) {        /* padded lanes never win */
            __m256i pad = _mm256_cmpgt_epi32(_mm256_add_epi32(lane, _mm256_set1_epi32((int)first)),
                                             _mm256_set1_epi32((int)len - 1));
            for (int r = 0; r < R; r++) D[r][c] = _mm256_or_si256(D[r][c], _mm256_and_si256(pad, _mm256_set1_epi32(BIG)));
        }
        __m256i jv = _mm256_add_epi32(lane, _mm256_set1_epi32((int)(j0 + first)));
        if (knn) {
            for (int r = 0; r < R; r++) {
                int32_t *td = job->topd + (i0 + r) * job->k, *ti = job->topi + (i0 + r) * job->k;
                int mask = _mm256_movemask_ps(
                    _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(td[job->k - 1]), D[r][c])));
                if (mask) {
                    int32_t tmp[8] __attribute__((aligned(32)));
                    _mm256_store_si256((__m256i *)tmp, D[r][c]);
                    for (int l = 0; l < 8; l++)
                        if (mask >> l & 1) knn_insert(td, ti, job->k, tmp[l], (int32_t)(j0 + first + l));
                }
            }
            continue;
        }
        for (int r = 0; r < R; r++) {
            int32_t *st = state + (i0 + r) * 24;
            __m256i best = _mm256_load_si256((const __m256i *)st);
            __m256i lt = _mm256_cmpgt_epi32(best, D[r][c]);
            if (job->want_second) {
                __m256i s = _mm256_load_si256((const __m256i *)(st + 16));
                _mm256_store_si256((__m256i *)(st + 16), _mm256_min_epi32(s, _mm256_max_epi32(best, D[r][c])));
            }
            _mm256_store_si256((__m256i *)st, _mm256_min_epi32(best, D[r][c]));
            __m256i idx = _mm256_load_si256((const __m256i *)(st + 8));
            _mm256_store_si256((__m256i *)(st + 8), _mm256_blendv_epi8(idx, jv, lt));
        }
        if (job->want_cols) {
            int32_t *cdp = job->cd + j0 + first, *cip = job->ci + j0 + first;
            int full = first + 8 <= len;
            int32_t bufd[8] __attribute__((aligned(32))), bufi[8] __attribute__((aligned(32)));
            if (!full) {
                for (int l = 0; l < 8; l++) {
                    bufd[l] = first + l < len ? cdp[l] : BIG;
                    bufi[l] = first + l < len ? cip[l] : -1;
                }
            }
            int32_t *pd = full ? cdp : bufd, *pi = full ? cip : bufi;
            __m256i cb = _mm256_loadu_si256((const __m256i *)pd), cx = _mm256_loadu_si256((const __m256i *)pi);
            for (int r = 0; r < R; r++) {
                __m256i lt = _mm256_cmpgt_epi32(cb, D[r][c]);
                cb = _mm256_min_epi32(cb, D[r][c]);
                cx = _mm256_blendv_epi8(cx, _mm256_set1_epi32((int)(i0 + r)), lt);
            }
            _mm256_storeu_si256((__m256i *)pd, cb);
            _mm256_storeu_si256((__m256i *)pi, cx);
            if (!full)
                for (int l = 0; first + l < len; l++) {
                    cdp[l] = bufd[l];
                    cip[l] = bufi[l];
                }
        }
    }
}

/* QB[r][w][h][8] = row i0 + r's nibble word (w, h) broadcast to 8 lanes. */
AVX2_INLINE void broadcast_rows(const uint32_t *Q, int64_t i0, int R, int64_t W, uint32_t *QB) {
    for (int64_t t = 0; t < R * W * 2; t++)
        _mm256_store_si256((__m256i *)(QB + t * 8), _mm256_set1_epi32((int)Q[i0 * W * 2 + t]));
}

AVX2_INLINE void sweep_avx2(const job_t *job, const uint32_t *Q, uint32_t *P, uint32_t *QB, const int64_t W,
                            int knn, int32_t *state) {
    for (int64_t j0 = 0; j0 < job->n1; j0 += job->cb) {
        int64_t len = job->n1 - j0 < job->cb ? job->n1 - j0 : job->cb;
        int64_t groups = (len + 7) / 8;
        pack_cols_nib(job, j0, len, W, P);
        int64_t i = 0;
        for (; i + RT <= job->n0; i += RT) {
            broadcast_rows(Q, i, RT, W, QB);
            int64_t g = 0;
            for (; g + CT <= groups; g += CT) tile_avx2(job, QB, P, i, g, j0, len, W, RT, CT, knn, state);
            for (; g < groups; g++) tile_avx2(job, QB, P, i, g, j0, len, W, RT, 1, knn, state);
        }
        for (; i < job->n0; i++) {
            broadcast_rows(Q, i, 1, W, QB);
            for (int64_t g = 0; g < groups; g++) tile_avx2(job, QB, P, i, g, j0, len, W, 1, 1, knn, state);
        }
    }
}

AVX2 static void sweep_avx2_w8(const job_t *job, const uint32_t *Q, uint32_t *P, uint32_t *QB, int knn,
                               int32_t *state) {
    sweep_avx2(job, Q, P, QB, 8, knn, state); /* 256-bit descriptors: W known at compile time */
}

AVX2 static void sweep_avx2_any(const job_t *job, const uint32_t *Q, uint32_t *P, uint32_t *QB, int64_t W,
                                int knn, int32_t *state) {
    sweep_avx2(job, Q, P, QB, W, knn, state);
}

static int run_avx2(job_t *job, int knn) {
    int64_t W = (job->nbytes + 3) / 4;
    uint32_t *Q = zalloc((size_t)(job->n0 * W * 2) * 4);
    job->cb = block_cols(CB2, W * 8);
    uint32_t *P = zalloc((size_t)(job->cb * W * 2) * 4);
    uint32_t *QB = zalloc((size_t)(RT * W * 16) * 4);
    int32_t *state = knn ? NULL : zalloc((size_t)(job->n0 * 24) * 4);
    if (!Q || !P || !QB || (!knn && !state)) {
        free(Q);
        free(P);
        free(QB);
        free(state);
        return -1;
    }
    pack_rows_nib(job, W, job->n0, Q);
    if (!knn)
        for (int64_t t = 0; t < job->n0 * 24; t++) state[t] = (t % 24) / 8 == 1 ? -1 : BIG;
    if (W == 8)
        sweep_avx2_w8(job, Q, P, QB, knn, state);
    else
        sweep_avx2_any(job, Q, P, QB, W, knn, state);
    if (!knn) {
        finish_rows(state, job->n0, 8, job->rd, job->ri, job->rs);
        if (!job->want_second)
            for (int64_t i = 0; i < job->n0; i++) job->rs[i] = BIG;
    }
    free(Q);
    free(P);
    free(QB);
    free(state);
    return 0;
}

/* -------------------------------------------------------------------------------------------- AVX-512 */
#define AVX512 __attribute__((target("avx512f,avx512vpopcntdq")))
#define AVX512_INLINE static inline __attribute__((always_inline, target("avx512f,avx512vpopcntdq")))

static void pack_cols_16(const job_t *job, int64_t j0, int64_t len, int64_t W, uint32_t *out) {
    int64_t groups = (len + 15) / 16;
    memset(out, 0, (size_t)(groups * W * 16) * 4);
    for (int64_t c = 0; c < len; c++) {
        const uint8_t *row = job->d1 + (j0 + c) * job->nbytes;
        for (int64_t w = 0; w < W; w++) out[((c / 16) * W + w) * 16 + c % 16] = word32(row, w, job->nbytes);
    }
}

AVX512_INLINE void tile_avx512(const job_t *job, const uint32_t *Q, const uint32_t *P, int64_t i0, int64_t g0,
                               int64_t j0, int64_t len, const int64_t W, const int R, const int C, int knn,
                               int32_t *state) {
    __m512i D[RT5][2];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) D[r][c] = _mm512_setzero_si512();
    const uint32_t *q = Q + i0 * W, *p = P + g0 * W * 16;
    for (int64_t w = 0; w < W; w++) {
        __m512i bv[2];
        for (int c = 0; c < C; c++) bv[c] = _mm512_load_si512((const void *)(p + (c * W + w) * 16));
        for (int r = 0; r < R; r++) {
            __m512i qv = _mm512_set1_epi32((int)q[r * W + w]);
            for (int c = 0; c < C; c++)
                D[r][c] = _mm512_add_epi32(D[r][c], _mm512_popcnt_epi32(_mm512_xor_si512(qv, bv[c])));
        }
    }
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (int c = 0; c < C; c++) {
        int64_t first = (g0 + c) * 16;
        int64_t valid = len - first < 16 ? len - first : 16;
        __mmask16 ok = (__mmask16)((1u << valid) - 1u);
        if (valid < 16)
            for (int r = 0; r < R; r++) D[r][c] = _mm512_mask_mov_epi32(_mm512_set1_epi32(BIG), ok, D[r][c]);
        __m512i jv = _mm512_add_epi32(lane, _mm512_set1_epi32((int)(j0 + first)));
        if (knn) {
            for (int r = 0; r < R; r++) {
                int32_t *td = job->topd + (i0 + r) * job->k, *ti = job->topi + (i0 + r) * job->k;
                __mmask16 m = _mm512_cmpgt_epi32_mask(_mm512_set1_epi32(td[job->k - 1]), D[r][c]);
                if (m) {
                    int32_t tmp[16] __attribute__((aligned(64)));
                    _mm512_store_si512((void *)tmp, D[r][c]);
                    for (int l = 0; l < 16; l++)
                        if (m >> l & 1) knn_insert(td, ti, job->k, tmp[l], (int32_t)(j0 + first + l));
                }
            }
            continue;
        }
        for (int r = 0; r < R; r++) {
            int32_t *st = state + (i0 + r) * 48;
            __m512i best = _mm512_load_si512((const void *)st);
            __mmask16 lt = _mm512_cmpgt_epi32_mask(best, D[r][c]);
            if (job->want_second) {
                __m512i s = _mm512_load_si512((const void *)(st + 32));
                _mm512_store_si512((void *)(st + 32), _mm512_min_epi32(s, _mm512_max_epi32(best, D[r][c])));
            }
            _mm512_store_si512((void *)st, _mm512_min_epi32(best, D[r][c]));
            __m512i idx = _mm512_load_si512((const void *)(st + 16));
            _mm512_store_si512((void *)(st + 16), _mm512_mask_mov_epi32(idx, lt, jv));
        }
        if (job->want_cols) {
            int32_t *cdp = job->cd + j0 + first, *cip = job->ci + j0 + first;
            __m512i cb = _mm512_mask_loadu_epi32(_mm512_set1_epi32(BIG), ok, cdp);
            __m512i cx = _mm512_mask_loadu_epi32(_mm512_set1_epi32(-1), ok, cip);
            for (int r = 0; r < R; r++) {
                __mmask16 lt = _mm512_cmpgt_epi32_mask(cb, D[r][c]);
                cb = _mm512_min_epi32(cb, D[r][c]);
                cx = _mm512_mask_mov_epi32(cx, lt, _mm512_set1_epi32((int)(i0 + r)));
            }
            _mm512_mask_storeu_epi32(cdp, ok, cb);
            _mm512_mask_storeu_epi32(cip, ok, cx);
        }
    }
}

AVX512_INLINE void sweep_avx512(const job_t *job, const uint32_t *Q, uint32_t *P, const int64_t W, int knn,
                                int32_t *state) {
    for (int64_t j0 = 0; j0 < job->n1; j0 += job->cb) {
        int64_t len = job->n1 - j0 < job->cb ? job->n1 - j0 : job->cb;
        int64_t groups = (len + 15) / 16;
        pack_cols_16(job, j0, len, W, P);
        int64_t i = 0;
        for (; i + RT5 <= job->n0; i += RT5) {
            int64_t g = 0;
            for (; g + CT5 <= groups; g += CT5) tile_avx512(job, Q, P, i, g, j0, len, W, RT5, CT5, knn, state);
            for (; g < groups; g++) tile_avx512(job, Q, P, i, g, j0, len, W, RT5, 1, knn, state);
        }
        for (; i < job->n0; i++)
            for (int64_t g = 0; g < groups; g++) tile_avx512(job, Q, P, i, g, j0, len, W, 1, 1, knn, state);
    }
}

AVX512 static void sweep_avx512_w8(const job_t *job, const uint32_t *Q, uint32_t *P, int knn, int32_t *state) {
    sweep_avx512(job, Q, P, 8, knn, state);
}

AVX512 static void sweep_avx512_any(const job_t *job, const uint32_t *Q, uint32_t *P, int64_t W, int knn,
                                    int32_t *state) {
    sweep_avx512(job, Q, P, W, knn, state);
}

static int run_avx512(job_t *job, int knn) {
    int64_t W = (job->nbytes + 3) / 4;
    uint32_t *Q = zalloc((size_t)(job->n0 * W) * 4);
    job->cb = block_cols(CB5, W * 4);
    uint32_t *P = zalloc((size_t)(job->cb * W) * 4);
    int32_t *state = knn ? NULL : zalloc((size_t)(job->n0 * 48) * 4);
    if (!Q || !P || (!knn && !state)) {
        free(Q);
        free(P);
        free(state);
        return -1;
    }
    for (int64_t i = 0; i < job->n0; i++)
        for (int64_t w = 0; w < W; w++) Q[i * W + w] = word32(job->d0 + i * job->nbytes, w, job->nbytes);
    if (!knn)
        for (int64_t t = 0; t < job->n0 * 48; t++) state[t] = (t % 48) / 16 == 1 ? -1 : BIG;
    if (W == 8)
        sweep_avx512_w8(job, Q, P, knn, state);
    else
        sweep_avx512_any(job, Q, P, W, knn, state);
    if (!knn) {
        finish_rows(state, job->n0, 16, job->rd, job->ri, job->rs);
        if (!job->want_second)
            for (int64_t i = 0; i < job->n0; i++) job->rs[i] = BIG;
    }
    free(Q);
    free(P);
    free(state);
    return 0;
}
#endif /* ZX86 */

/* ---------------------------------------------------------------------------------------- dispatch */
static int isa_supported(int isa) {
    switch (isa) {
    case ISA_GENERIC:
        return 1;
#if ZX86
    case ISA_POPCNT:
        return __builtin_cpu_supports("popcnt");
    case ISA_AVX2:
        return __builtin_cpu_supports("avx2");
    case ISA_AVX512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq");
#endif
    default:
        return 0;
    }
}

static const char *ISA_NAMES[] = {"generic", "popcnt", "avx2", "avx512"};

static int isa_from_name(const char *name) {
    for (int t = 0; t < 4; t++)
        if (strcmp(name, ISA_NAMES[t]) == 0) {
            if (!isa_supported(t)) {
                PyErr_Format(PyExc_ValueError, "ISA %s is not supported by this CPU", name);
                return -1;
            }
            return t;
        }
    PyErr_Format(PyExc_ValueError, "unknown ISA %s (expected avx512, avx2, popcnt or generic)", name);
    return -1;
}

static int run_job(job_t *job, int isa, int knn) {
    if (job->n0 == 0 || job->n1 == 0) return 0;
    switch (isa) {
#if ZX86
    case ISA_AVX512:
        return run_avx512(job, knn);
    case ISA_AVX2:
        return run_avx2(job, knn);
    case ISA_POPCNT:
        return run_popcnt(job);
#endif
    default:
        return run_generic(job);
    }
}

/* ------------------------------------------------------------------------------------------ Python */
static int check_buf(Py_buffer *b, Py_ssize_t want, const char *name) {
    if (b->len != want) {
        PyErr_Format(PyExc_ValueError, "%s must have %zd bytes, got %zd", name, want, b->len);
        return -1;
    }
    return 0;
}

static PyObject *py_isas(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    PyObject *out = PyList_New(0);
    for (int t = 3; t >= 0; t--)
        if (isa_supported(t)) {
            PyObject *s = PyUnicode_FromString(ISA_NAMES[t]);
            PyList_Append(out, s);
            Py_DECREF(s);
        }
    PyObject *tup = PyList_AsTuple(out);
    Py_DECREF(out);
    return tup;
}

static PyObject *py_nn(PyObject *self, PyObject *args) {
    (void)self;
    const char *isa_name;
    Py_buffer d0, d1, rd, ri, rs, cd, ci;
    Py_ssize_t nbytes;
    int want_second, want_cols;
    if (!PyArg_ParseTuple(args, "sy*y*nppw*w*w*w*w*", &isa_name, &d0, &d1, &nbytes, &want_second, &want_cols, &rd,
                          &ri, &rs, &cd, &ci))
        return NULL;
    PyObject *ret = NULL;
    int isa = isa_from_name(isa_name);
    if (isa < 0 || nbytes < 1) {
        if (isa >= 0) PyErr_SetString(PyExc_ValueError, "nbytes must be >= 1");
        goto done;
    }
    job_t job = {0};
    job.d0 = d0.buf;
    job.d1 = d1.buf;
    job.nbytes = nbytes;
    job.n0 = d0.len / nbytes;
    job.n1 = d1.len / nbytes;
    job.want_second = want_second;
    job.want_cols = want_cols;
    if (check_buf(&d0, job.n0 * nbytes, "d0") || check_buf(&d1, job.n1 * nbytes, "d1") ||
        check_buf(&rd, job.n0 * 4, "rd") || check_buf(&ri, job.n0 * 4, "ri") || check_buf(&rs, job.n0 * 4, "rs") ||
        check_buf(&cd, job.n1 * 4, "cd") || check_buf(&ci, job.n1 * 4, "ci"))
        goto done;
    job.rd = rd.buf;
    job.ri = ri.buf;
    job.rs = rs.buf;
    job.cd = cd.buf;
    job.ci = ci.buf;
    for (int64_t i = 0; i < job.n0; i++) {
        job.rd[i] = BIG;
        job.ri[i] = -1;
        job.rs[i] = BIG;
    }
    for (int64_t j = 0; j < job.n1; j++) {
        job.cd[j] = BIG;
        job.ci[j] = -1;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS rc = run_job(&job, isa, 0);
    Py_END_ALLOW_THREADS if (rc != 0) {
        PyErr_NoMemory();
        goto done;
    }
    ret = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&d0);
    PyBuffer_Release(&d1);
    PyBuffer_Release(&rd);
    PyBuffer_Release(&ri);
    PyBuffer_Release(&rs);
    PyBuffer_Release(&cd);
    PyBuffer_Release(&ci);
    return ret;
}

static PyObject *py_knn(PyObject *self, PyObject *args) {
    (void)self;
    const char *isa_name;
    Py_buffer d0, d1, topd, topi;
    Py_ssize_t nbytes, k;
    if (!PyArg_ParseTuple(args, "sy*y*nnw*w*", &isa_name, &d0, &d1, &nbytes, &k, &topd, &topi)) return NULL;
    PyObject *ret = NULL;
    int isa = isa_from_name(isa_name);
    if (isa < 0 || nbytes < 1 || k < 1) {
        if (isa >= 0) PyErr_SetString(PyExc_ValueError, "nbytes and k must be >= 1");
        goto done;
    }
    job_t job = {0};
    job.d0 = d0.buf;
    job.d1 = d1.buf;
    job.nbytes = nbytes;
    job.k = k;
    job.n0 = d0.len / nbytes;
    job.n1 = d1.len / nbytes;
    if (check_buf(&d0, job.n0 * nbytes, "d0") || check_buf(&d1, job.n1 * nbytes, "d1") ||
        check_buf(&topd, job.n0 * k * 4, "topd") || check_buf(&topi, job.n0 * k * 4, "topi"))
        goto done;
    job.topd = topd.buf;
    job.topi = topi.buf;
    for (int64_t t = 0; t < job.n0 * k; t++) {
        job.topd[t] = BIG;
        job.topi[t] = -1;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS rc = run_job(&job, isa, 1);
    Py_END_ALLOW_THREADS if (rc != 0) {
        PyErr_NoMemory();
        goto done;
    }
    ret = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&d0);
    PyBuffer_Release(&d1);
    PyBuffer_Release(&topd);
    PyBuffer_Release(&topi);
    return ret;
}

#define PAIR_BODY                                                                                          \
    for (int64_t c = 0; c < n; c++) {                                                                      \
        const uint8_t *x = d0 + i[c] * nbytes, *y = d1 + j[c] * nbytes;                                    \
        int32_t d = 0;                                                                                     \
        int64_t b = 0;                                                                                     \
        for (; b + 8 <= nbytes; b += 8) {                                                                  \
            uint64_t u, v;                                                                                 \
            memcpy(&u, x + b, 8);                                                                          \
            memcpy(&v, y + b, 8);                                                                          \
            d += (int32_t)__builtin_popcountll(u ^ v);                                                     \
        }                                                                                                  \
        for (; b < nbytes; b++) d += (int32_t)__builtin_popcount((unsigned)(x[b] ^ y[b]));                 \
        out[c] = d;                                                                                        \
    }

static void pairs_generic(const uint8_t *d0, const uint8_t *d1, int64_t nbytes, const int64_t *i, const int64_t *j,
                          int64_t n, int32_t *out) {
    PAIR_BODY
}
#if ZX86
__attribute__((target("popcnt"))) static void pairs_popcnt(const uint8_t *d0, const uint8_t *d1, int64_t nbytes,
                                                           const int64_t *i, const int64_t *j, int64_t n,
                                                           int32_t *out) {
    PAIR_BODY
}
#endif

static PyObject *py_pair_distances(PyObject *self, PyObject *args) {
    (void)self;
    const char *isa_name;
    Py_buffer d0, d1, bi, bj, out;
    Py_ssize_t nbytes;
    if (!PyArg_ParseTuple(args, "sy*y*ny*y*w*", &isa_name, &d0, &d1, &nbytes, &bi, &bj, &out)) return NULL;
    PyObject *ret = NULL;
    int isa = isa_from_name(isa_name);
    if (isa < 0 || nbytes < 1) {
        if (isa >= 0) PyErr_SetString(PyExc_ValueError, "nbytes must be >= 1");
        goto done;
    }
    int64_t n = bi.len / 8, n0 = d0.len / nbytes, n1 = d1.len / nbytes;
    if (check_buf(&bj, n * 8, "j") || check_buf(&out, n * 4, "out")) goto done;
    const int64_t *ii = bi.buf, *jj = bj.buf;
    for (int64_t c = 0; c < n; c++)
        if (ii[c] < 0 || ii[c] >= n0 || jj[c] < 0 || jj[c] >= n1) {
            PyErr_Format(PyExc_IndexError, "candidate %lld out of range", (long long)c);
            goto done;
        }
    Py_BEGIN_ALLOW_THREADS
#if ZX86
    if (isa >= ISA_POPCNT)
        pairs_popcnt(d0.buf, d1.buf, nbytes, ii, jj, n, out.buf);
    else
#endif
        pairs_generic(d0.buf, d1.buf, nbytes, ii, jj, n, out.buf);
    Py_END_ALLOW_THREADS ret = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&d0);
    PyBuffer_Release(&d1);
    PyBuffer_Release(&bi);
    PyBuffer_Release(&bj);
    PyBuffer_Release(&out);
    return ret;
}

/* guided(isa, d0, d1, nbytes, i, j, rd, ri, rs, cd, ci): nearest neighbours restricted to candidate pairs
   (i, j) sorted by i, then j (int64 [C]); outputs as nn (rs = second-smallest candidate distance). */
static PyObject *py_guided(PyObject *self, PyObject *args) {
    (void)self;
    const char *isa_name;
    Py_buffer d0, d1, bi, bj, rd, ri, rs, cd, ci;
    Py_ssize_t nbytes;
    if (!PyArg_ParseTuple(args, "sy*y*ny*y*w*w*w*w*w*", &isa_name, &d0, &d1, &nbytes, &bi, &bj, &rd, &ri, &rs, &cd,
                          &ci))
        return NULL;
    PyObject *ret = NULL;
    int32_t *dist = NULL;
    int isa = isa_from_name(isa_name);
    if (isa < 0 || nbytes < 1) {
        if (isa >= 0) PyErr_SetString(PyExc_ValueError, "nbytes must be >= 1");
        goto done;
    }
    int64_t n = bi.len / 8, n0 = d0.len / nbytes, n1 = d1.len / nbytes;
    if (check_buf(&bj, n * 8, "j") || check_buf(&rd, n0 * 4, "rd") || check_buf(&ri, n0 * 4, "ri") ||
        check_buf(&rs, n0 * 4, "rs") || check_buf(&cd, n1 * 4, "cd") || check_buf(&ci, n1 * 4, "ci"))
        goto done;
    const int64_t *ii = bi.buf, *jj = bj.buf;
    for (int64_t c = 0; c < n; c++)
        if (ii[c] < 0 || ii[c] >= n0 || jj[c] < 0 || jj[c] >= n1 ||
            (c > 0 && (ii[c] < ii[c - 1] || (ii[c] == ii[c - 1] && jj[c] <= jj[c - 1])))) {
            PyErr_Format(PyExc_ValueError, "candidate %lld out of range or not sorted by (i, j)", (long long)c);
            goto done;
        }
    dist = malloc((size_t)(n ? n : 1) * 4);
    if (!dist) {
        PyErr_NoMemory();
        goto done;
    }
    int32_t *prd = rd.buf, *pri = ri.buf, *prs = rs.buf, *pcd = cd.buf, *pci = ci.buf;
    Py_BEGIN_ALLOW_THREADS
#if ZX86
    if (isa >= ISA_POPCNT)
        pairs_popcnt(d0.buf, d1.buf, nbytes, ii, jj, n, dist);
    else
#endif
        pairs_generic(d0.buf, d1.buf, nbytes, ii, jj, n, dist);
    for (int64_t t = 0; t < n0; t++) {
        prd[t] = BIG;
        pri[t] = -1;
        prs[t] = BIG;
    }
    for (int64_t t = 0; t < n1; t++) {
        pcd[t] = BIG;
        pci[t] = -1;
    }
    for (int64_t c = 0; c < n; c++) { /* rows and columns in increasing order: strict '<' keeps the first */
        int64_t i = ii[c], j = jj[c];
        int32_t d = dist[c];
        if (d < prd[i]) {
            prs[i] = prd[i];
            prd[i] = d;
            pri[i] = (int32_t)j;
        } else if (d < prs[i]) {
            prs[i] = d;
        }
        if (d < pcd[j]) {
            pcd[j] = d;
            pci[j] = (int32_t)i;
        }
    }
    Py_END_ALLOW_THREADS ret = Py_NewRef(Py_None);
done:
    free(dist);
    PyBuffer_Release(&d0);
    PyBuffer_Release(&d1);
    PyBuffer_Release(&bi);
    PyBuffer_Release(&bj);
    PyBuffer_Release(&rd);
    PyBuffer_Release(&ri);
    PyBuffer_Release(&rs);
    PyBuffer_Release(&cd);
    PyBuffer_Release(&ci);
    return ret;
}

/* spin(n) -> None: 8 n dependent integer additions (8 n cycles on any x86-64 core: one cycle of latency
   each). The benchmark times it to know the clock the kernels ran at, for cycles per pair. */
static PyObject *py_spin(PyObject *self, PyObject *arg) {
    (void)self;
    long long n = PyLong_AsLongLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    uint64_t x = 0;
    Py_BEGIN_ALLOW_THREADS for (long long t = 0; t < n; t++) {
#if ZX86
        __asm__ volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
                         "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0"
                         : "+r"(x));
#else
        __asm__ volatile("" : "+r"(x));
        x += 8;
#endif
    }
    Py_END_ALLOW_THREADS return PyLong_FromUnsignedLongLong(x);
}

static PyMethodDef methods[] = {
    {"spin", py_spin, METH_O, "spin(n): 8 n dependent additions (clock measurement, x86-64)."},
    {"guided", py_guided, METH_VARARGS, "guided(isa, d0, d1, nbytes, i, j, rd, ri, rs, cd, ci)"},
    {"isas", py_isas, METH_NOARGS, "ISA names usable on this CPU, fastest first."},
    {"nn", py_nn, METH_VARARGS, "nn(isa, d0, d1, nbytes, want_second, want_cols, rd, ri, rs, cd, ci)"},
    {"knn", py_knn, METH_VARARGS, "knn(isa, d0, d1, nbytes, k, topd, topi)"},
    {"pair_distances", py_pair_distances, METH_VARARGS, "pair_distances(isa, d0, d1, nbytes, i, j, out)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_hamming", "Compiled Hamming kernels of zippy.matching.",
                                    -1, methods};

PyMODINIT_FUNC PyInit__hamming(void) {
#if ZX86
    __builtin_cpu_init();
#endif
    return PyModule_Create(&module);
}
