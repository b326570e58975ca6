/* y = x @ w^T + b for few rows of x, read at the memory's speed: the CPU kernel of
 * layers/native.py (which says when it is used and why).
 *
 * A decoding step multiplies one or a few vectors by every weight matrix, so the time is the time to
 * read the matrices. Each output is one row of w read straight through (one sequential stream, which
 * the hardware prefetchers follow best) and multiplied with up to 4 rows of x at a time, so that a
 * row of w is loaded once per 4 rows of x; those stay in L1. The outputs are shared among torch's
 * OpenMP threads: this library links the libgomp torch has loaded, so both use one thread pool
 * and one thread count.
 *
 * w is (out, in) row-major (nn.Linear's layout), x (rows, in) and y (rows, out) row-major, b (out)
 * or NULL; any sizes (a short last chunk of a row is read with masked loads).
 */
#include <immintrin.h>
#include <stdint.h>

#define ROWS_AT_ONCE 4
#define PARALLEL_FROM (1L << 16) /* multiply-adds below which a second thread costs more than it saves */

static inline float sum_lanes(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_hadd_ps(s, s);
    return _mm_cvtss_f32(_mm_hadd_ps(s, s));
}

/* sums[r] = dot(w_row, x[r]) for the first `n` rows of x (n a constant where inlined: 1 to 4). */
static inline __attribute__((always_inline)) void dots(const float *w_row, const float *x, long in, int n,
                                                       __m256i tail_mask, float *sums) {
    __m256 even[ROWS_AT_ONCE], odd[ROWS_AT_ONCE]; /* two chains per row, so FMA latency never waits */
    for (int r = 0; r < n; r++) even[r] = odd[r] = _mm256_setzero_ps();
    long i = 0;
    for (; i + 16 <= in; i += 16) {
        __m256 w0 = _mm256_loadu_ps(w_row + i), w1 = _mm256_loadu_ps(w_row + i + 8);
        for (int r = 0; r < n; r++) {
            even[r] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + r * in + i), even[r]);
            odd[r] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + r * in + i + 8), odd[r]);
        }
    }
    if (i + 8 <= in) {
        __m256 w0 = _mm256_loadu_ps(w_row + i);
        for (int r = 0; r < n; r++) even[r] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + r * in + i), even[r]);
        i += 8;
    }
    if (i < in) {
        __m256 w0 = _mm256_maskload_ps(w_row + i, tail_mask);
        for (int r = 0; r < n; r++) odd[r] = _mm256_fmadd_ps(w0, _mm256_maskload_ps(x + r * in + i, tail_mask), odd[r]);
    }
    for (int r = 0; r < n; r++) sums[r] = sum_lanes(_mm256_add_ps(even[r], odd[r]));
}

void few_rows_linear(const float *x, const float *w, const float *b, float *y, long rows, long in, long out) {
    int32_t lanes[8];
    for (int k = 0; k < 8; k++) lanes[k] = k < in % 8 ? -1 : 0;
    const __m256i tail_mask = _mm256_loadu_si256((const __m256i *)lanes);
    #pragma omp parallel for schedule(static) if (rows * in * out >= PARALLEL_FROM)
    for (long j = 0; j < out; j++) {
        const float *w_row = w + j * in;
        const float bias = b ? b[j] : 0.0f;
        for (long first = 0; first < rows; first += ROWS_AT_ONCE) {
            float sums[ROWS_AT_ONCE];
            const float *xs = x + first * in;
            switch (rows - first < ROWS_AT_ONCE ? rows - first : ROWS_AT_ONCE) {
                case 1: dots(w_row, xs, in, 1, tail_mask, sums); break;
                case 2: dots(w_row, xs, in, 2, tail_mask, sums); break;
                case 3: dots(w_row, xs, in, 3, tail_mask, sums); break;
                default: dots(w_row, xs, in, 4, tail_mask, sums); break;
            }
            for (long r = first; r < rows && r < first + ROWS_AT_ONCE; r++) y[r * out + j] = sums[r - first] + bias;
        }
    }
}

/* A first, cheap pass over a matrix kept in int8 (generate/shortlist.py): y = (x @ q^T) * scale, q
 * (out, in) int8 row-major with one scale per row (out), x (rows, in) and y (rows, out) float32.
 * A quarter of the bytes of the float32 matrix; each chunk of 8 weights is widened to float32 once
 * per 4 rows of x. */
static inline __m256 widen8(const int8_t *q) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)q)));
}

/* Like dots: chains of multiply-adds in parallel, enough of them that their latency never waits
 * (4 for a single row of x, 2 per row for more). */
static inline __attribute__((always_inline)) void int8_dots(const int8_t *q_row, const float *x, long in, int n,
                                                            float *sums) {
    enum { CHAINS = 4 };
    const int chains = n == 1 ? 4 : 2;
    __m256 acc[ROWS_AT_ONCE][CHAINS];
    for (int r = 0; r < n; r++)
        for (int c = 0; c < chains; c++) acc[r][c] = _mm256_setzero_ps();
    long i = 0;
    for (; i + 8 * chains <= in; i += 8 * chains)
        for (int c = 0; c < chains; c++) {
            __m256 w = widen8(q_row + i + 8 * c);
            for (int r = 0; r < n; r++) acc[r][c] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + r * in + i + 8 * c), acc[r][c]);
        }
    for (; i + 8 <= in; i += 8) {
        __m256 w = widen8(q_row + i);
        for (int r = 0; r < n; r++) acc[r][0] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + r * in + i), acc[r][0]);
    }
    for (int r = 0; r < n; r++) {
        __m256 total = acc[r][0];
        for (int c = 1; c < chains; c++) total = _mm256_add_ps(total, acc[r][c]);
        float sum = sum_lanes(total);
        for (long k = i; k < in; k++) sum += (float)q_row[k] * x[r * in + k];
        sums[r] = sum;
    }
}

void int8_rows_linear(const float *x, const int8_t *q, const float *scale, float *y, long rows, long in, long out) {
    #pragma omp parallel for schedule(static) if (rows * in * out >= PARALLEL_FROM)
    for (long j = 0; j < out; j++) {
        const int8_t *q_row = q + j * in;
        for (long first = 0; first < rows; first += ROWS_AT_ONCE) {
            float sums[ROWS_AT_ONCE];
            const float *xs = x + first * in;
            switch (rows - first < ROWS_AT_ONCE ? rows - first : ROWS_AT_ONCE) {
                case 1: int8_dots(q_row, xs, in, 1, sums); break;
                case 2: int8_dots(q_row, xs, in, 2, sums); break;
                case 3: int8_dots(q_row, xs, in, 3, sums); break;
                default: int8_dots(q_row, xs, in, 4, sums); break;
            }
            for (long r = first; r < rows && r < first + ROWS_AT_ONCE; r++) y[r * out + j] = sums[r - first] * scale[j];
        }
    }
}
