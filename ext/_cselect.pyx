# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Native selection of the best live candidate of one scope.

Twin: ``semcache/_pyselect.py`` (same signatures, same results; ties go to the lowest row).
A row is a candidate when ``live[row]`` is non-zero and ``expires[row] > now``.

Chain scans take float16 rows (the arena) or float32 rows; either way the dot product is
computed in float32 arithmetic from the rows' exact float32 values.  float16 rows are
widened with F16C/AVX2/FMA when the CPU has them (checked once at import; the module is
built without ``-march`` flags), else with an exact bit-level conversion.
"""

cimport numpy as cnp
from libc.math cimport INFINITY
from libc.stdint cimport uint16_t

cnp.import_array()

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>

    /* IEEE half -> float, exact for every input (zero, subnormal, normal, inf, NaN), with
       no subnormal float arithmetic (F. Giesen's half_to_float_fast5, branch form). */
    static inline float sc_half_to_float(uint16_t h) {
        uint32_t o = (uint32_t)(h & 0x7fffu) << 13;
        uint32_t e = o & (0x7c00u << 13);
        float f;
        o += (uint32_t)(127 - 15) << 23;
        if (e == (0x7c00u << 13)) {
            o += (uint32_t)(128 - 16) << 23;
        } else if (e == 0) {
            o += 1u << 23;
            memcpy(&f, &o, 4);
            f -= 6.103515625e-05f;  /* 2^-14 */
            memcpy(&o, &f, 4);
        }
        o |= (uint32_t)(h & 0x8000u) << 16;
        memcpy(&f, &o, 4);
        return f;
    }

    static float sc_dot_f16_portable(const uint16_t* a, const float* b, Py_ssize_t d) {
        float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        Py_ssize_t i = 0;
        for (; i + 4 <= d; i += 4) {
            s0 += sc_half_to_float(a[i]) * b[i];
            s1 += sc_half_to_float(a[i + 1]) * b[i + 1];
            s2 += sc_half_to_float(a[i + 2]) * b[i + 2];
            s3 += sc_half_to_float(a[i + 3]) * b[i + 3];
        }
        for (; i < d; i++) s0 += sc_half_to_float(a[i]) * b[i];
        return (s0 + s1) + (s2 + s3);
    }

    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    #include <immintrin.h>
    __attribute__((target("avx2,fma,f16c")))
    static float sc_dot_f16_f16c(const uint16_t* a, const float* b, Py_ssize_t d) {
        __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
        __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
        Py_ssize_t i = 0;
        for (; i + 32 <= d; i += 32) {
            s0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(a + i))),
                                 _mm256_loadu_ps(b + i), s0);
            s1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(a + i + 8))),
                                 _mm256_loadu_ps(b + i + 8), s1);
            s2 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(a + i + 16))),
                                 _mm256_loadu_ps(b + i + 16), s2);
            s3 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(a + i + 24))),
                                 _mm256_loadu_ps(b + i + 24), s3);
        }
        for (; i + 8 <= d; i += 8)
            s0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(a + i))),
                                 _mm256_loadu_ps(b + i), s0);
        __m256 s = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
        __m128 x = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        x = _mm_add_ps(x, _mm_movehl_ps(x, x));
        x = _mm_add_ss(x, _mm_shuffle_ps(x, x, 1));
        float r = _mm_cvtss_f32(x);
        for (; i < d; i++) r += _cvtsh_ss(a[i]) * b[i];
        return r;
    }
    static int sc_have_f16c(void) {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
            && __builtin_cpu_supports("f16c");
    }
    #else
    static float sc_dot_f16_f16c(const uint16_t* a, const float* b, Py_ssize_t d) {
        return sc_dot_f16_portable(a, b, d);
    }
    static int sc_have_f16c(void) { return 0; }
    #endif
    """
    float sc_half_to_float(uint16_t h) noexcept nogil
    float sc_dot_f16_portable(const uint16_t* a, const float* b, Py_ssize_t d) noexcept nogil
    float sc_dot_f16_f16c(const uint16_t* a, const float* b, Py_ssize_t d) noexcept nogil
    int sc_have_f16c() noexcept nogil

cdef bint _HAVE_F16C = sc_have_f16c() != 0
cdef bint _F16C = _HAVE_F16C


def half_kernel(str use=None):
    """The float16 dot-product kernel in use, ``"f16c"`` or ``"portable"``; ``use`` switches
    it (for tests and benchmarks; ``"f16c"`` only when the CPU has it, else ValueError)."""
    global _F16C
    if use is not None:
        if use not in ("f16c", "portable") or (use == "f16c" and not _HAVE_F16C):
            raise ValueError(f"half kernel: f16c (when the CPU has it) or portable (got {use!r})")
        _F16C = use == "f16c"
    return "f16c" if _F16C else "portable"


cdef inline float _dot(const float* a, const float* b, Py_ssize_t d) noexcept nogil:
    # eight independent accumulators so the compiler can keep the FMA pipes busy
    cdef float s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0
    cdef Py_ssize_t i = 0
    while i + 8 <= d:
        s0 += a[i] * b[i]
        s1 += a[i + 1] * b[i + 1]
        s2 += a[i + 2] * b[i + 2]
        s3 += a[i + 3] * b[i + 3]
        s4 += a[i + 4] * b[i + 4]
        s5 += a[i + 5] * b[i + 5]
        s6 += a[i + 6] * b[i + 6]
        s7 += a[i + 7] * b[i + 7]
        i += 8
    while i < d:
        s0 += a[i] * b[i]
        i += 1
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


cdef inline float _dot_half(const uint16_t* a, const float* b, Py_ssize_t d) noexcept nogil:
    if _F16C:
        return sc_dot_f16_f16c(a, b, d)
    return sc_dot_f16_portable(a, b, d)


def best_of_candidates(const float[::1] scores, const long long[::1] rows,
                       const double[::1] expires, const unsigned char[::1] live,
                       double now, double threshold):
    """Best candidate among ANN results; see the twin for the contract."""
    cdef Py_ssize_t i, k = scores.shape[0]
    cdef long long row, best_row = -1
    cdef float best = -INFINITY
    cdef Py_ssize_t cap = min(expires.shape[0], live.shape[0])
    if rows.shape[0] != k:
        raise ValueError("scores and rows differ in length")
    for i in range(k):
        row = rows[i]
        if row < 0 or row >= cap:
            continue
        if live[row] == 0 or not (expires[row] > now):
            continue
        if scores[i] > best:
            best = scores[i]
            best_row = row
    if best_row >= 0 and best >= threshold:
        return int(best_row), float(best)
    return -1, float(best)


def best_in_chain(object vecs, Py_ssize_t head, const int[::1] nxt,
                  const float[::1] query, const double[::1] expires,
                  const unsigned char[::1] live, double now, double threshold):
    """Exact scan of the rows chained from ``head`` by ``nxt``; see the twin."""
    cdef int kind = -1
    cdef cnp.ndarray arr
    if isinstance(vecs, cnp.ndarray):
        arr = <cnp.ndarray> vecs
        kind = cnp.PyArray_TYPE(arr)
    if (kind < 0 or arr.ndim != 2 or (kind != cnp.NPY_FLOAT16 and kind != cnp.NPY_FLOAT32)
            or not cnp.PyArray_IS_C_CONTIGUOUS(arr) or not cnp.PyArray_ISNOTSWAPPED(arr)
            or not cnp.PyArray_ISALIGNED(arr)):
        raise ValueError(f"vecs: must be a C-contiguous 2-d float16 or float32 array (got "
                         f"{getattr(vecs, 'dtype', type(vecs).__name__)}, "
                         f"{getattr(vecs, 'ndim', 0)}-d)")
    cdef Py_ssize_t d = arr.shape[1]
    cdef Py_ssize_t cap = min(arr.shape[0], nxt.shape[0], expires.shape[0], live.shape[0])
    cdef Py_ssize_t row = head, best_row = -1, steps = 0
    cdef bint half = kind == cnp.NPY_FLOAT16
    cdef const uint16_t* h = <const uint16_t*> cnp.PyArray_DATA(arr)
    cdef const float* f = <const float*> cnp.PyArray_DATA(arr)
    cdef const float* q
    cdef float score
    cdef float best = -INFINITY
    if query.shape[0] != d:
        raise ValueError(f"query has dimension {query.shape[0]}, arena has {d}")
    if d == 0:
        q = NULL
    else:
        q = &query[0]
    with nogil:
        while 0 <= row < cap and steps <= cap:
            steps += 1
            if live[row] != 0 and expires[row] > now:
                if half:
                    score = _dot_half(h + row * d, q, d)
                else:
                    score = _dot(f + row * d, q, d)
                if score > best:
                    best = score
                    best_row = row
            row = nxt[row]
    if steps > cap:
        raise ValueError("row chain has a cycle")
    if best_row >= 0 and best >= threshold:
        return best_row, float(best)
    return -1, float(best)


def half_to_float(const uint16_t[::1] bits, float[::1] out):
    """Widen IEEE half ``bits`` (uint16) into ``out`` (float32, same length) as the scan's
    portable path does; for tests."""
    cdef Py_ssize_t i
    if out.shape[0] != bits.shape[0]:
        raise ValueError("bits and out differ in length")
    for i in range(bits.shape[0]):
        out[i] = sc_half_to_float(bits[i])
