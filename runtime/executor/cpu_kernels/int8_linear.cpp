// y = x @ (Q * scale)^T (+ bias) on CPU for int8 weights (symmetric, one float32 scale per
// output row), activations in float32 or bfloat16. Two loops:
//
// - W8A8 on AVX-512 VNNI (the default where it builds; below): each activation row is
//   quantized on the fly and one vpdpbusd multiplies 4 k of 16 outputs into int32. Over the
//   benchmark model's 48 projections (bf16 activations, 2-core EPYC): 1 row 2.6 ms against the
//   bf16 blocked kernel's 5.8 (the int8 weights read at ~33 GB/s), 8 rows 3.9 against 5.4, 32
//   rows 10.0 against 15.2.
// - W8A16 on AVX-512 or AVX2 with FMA (first): each int8 is widened to float32 in registers
//   (a sign-extending load and a conversion) and multiplied into float32 accumulators, the
//   scale applied once per output at the end. As fast as VNNI at 1 row; at 8-32 rows 0.7x the
//   bf16 kernel, since a float32 FMA does half the products of bf16's vdpbf16ps.
//
// Why our own: torch's `_weight_int8pack_mm` read the same weights at bf16's speed at 1 row,
// took 2-2.5x bf16's time at 8-32 rows, and crashes when the inner dimension is not a
// multiple of 16 (quantize.py).
//
// Layout of a packed weight [N, K] for the widening loop: [N/BLOCK_N][K][BLOCK_N] int8, zero
// padded in N: for each k, a block's BLOCK_N outputs side by side, so one load gives LANES
// outputs and the activation is broadcast (no horizontal sums); a tile of ROWS activation rows
// reads the block's weights once. Scales: float32 [N/BLOCK_N * BLOCK_N], zero padded.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <c10/util/BFloat16.h>
#include <algorithm>
#include <cmath>
#include <cstring>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#define LOOMLM_INT8_LINEAR 1
#endif

namespace {

#if defined(__AVX512F__)
constexpr int64_t LANES = 16;
constexpr int64_t BLOCK_N = 4 * LANES;
constexpr int ROWS = 6;  // 24 accumulators + 4 widened weights + 1 broadcast of 32 registers
using V = __m512;
inline V widen(const int8_t* w) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w))));
}
inline V bcast(float x) { return _mm512_set1_ps(x); }
inline V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
inline V zero() { return _mm512_setzero_ps(); }
inline V loadf(const float* p) { return _mm512_loadu_ps(p); }
inline V mul(V a, V b) { return _mm512_mul_ps(a, b); }
inline void storef(float* p, V v) { _mm512_storeu_ps(p, v); }
#elif defined(LOOMLM_INT8_LINEAR)
constexpr int64_t LANES = 8;
constexpr int64_t BLOCK_N = 2 * LANES;
constexpr int ROWS = 6;  // 12 accumulators + 2 widened weights + 1 broadcast of 16 registers
using V = __m256;
inline V widen(const int8_t* w) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(w))));
}
inline V bcast(float x) { return _mm256_set1_ps(x); }
inline V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
inline V zero() { return _mm256_setzero_ps(); }
inline V loadf(const float* p) { return _mm256_loadu_ps(p); }
inline V mul(V a, V b) { return _mm256_mul_ps(a, b); }
inline void storef(float* p, V v) { _mm256_storeu_ps(p, v); }
#else
constexpr int64_t BLOCK_N = 16;
#endif
constexpr int64_t BLOCK_M = 128;  // activation rows per task

at::Tensor pack(const at::Tensor& q) {
  TORCH_CHECK(q.dim() == 2 && q.scalar_type() == at::kChar, "int8_linear: weight must be [out, in] int8");
  const int64_t N = q.size(0), K = q.size(1), blocks = (N + BLOCK_N - 1) / BLOCK_N;
  auto out = at::zeros({blocks, K, BLOCK_N}, q.options());
  const auto src = q.contiguous();
  const int8_t* s = src.data_ptr<int8_t>();
  int8_t* d = out.data_ptr<int8_t>();
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t n = b * BLOCK_N; n < std::min(N, (b + 1) * BLOCK_N); ++n)
        for (int64_t k = 0; k < K; ++k) d[(b * K + k) * BLOCK_N + n % BLOCK_N] = s[n * K + k];
  });
  return out;
}

#if defined(LOOMLM_INT8_LINEAR)

// MC rows times one column block over all of K; y = acc * scale + bias, in T.
template <typename T, int MC>
inline void tile(const int8_t* wb, const float* x, int64_t K, T* y, int64_t ldy,
                 const float* scale, const float* bias, int64_t n0, int64_t N) {
  constexpr int R = BLOCK_N / LANES;
  V acc[MC][R];
#pragma GCC unroll 8
  for (int i = 0; i < MC; ++i)
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) acc[i][r] = zero();
#pragma GCC unroll 4
  for (int64_t k = 0; k < K; ++k) {
    const int8_t* w = wb + k * BLOCK_N;
    V wf[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) wf[r] = widen(w + r * LANES);
#pragma GCC unroll 8
    for (int i = 0; i < MC; ++i) {
      const V xb = bcast(x[i * K + k]);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) acc[i][r] = fma(wf[r], xb, acc[i][r]);
    }
  }
  alignas(64) float buf[LANES];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
    const int64_t n = n0 + r * LANES;
    if (n >= N) break;
    const int64_t count = std::min<int64_t>(LANES, N - n);
    const V s = loadf(scale + n);  // padded to whole blocks
    for (int i = 0; i < MC; ++i) {
      storef(buf, mul(acc[i][r], s));
      for (int64_t j = 0; j < count; ++j) {
        const float v = buf[j] + (bias ? bias[n + j] : 0.f);
        y[i * ldy + n + j] = static_cast<T>(v);  // bfloat16: round to nearest even
      }
    }
  }
}

template <typename T, int MC>
inline void tail(int64_t rows, const int8_t* wb, const float* x, int64_t K, T* y, int64_t ldy,
                 const float* scale, const float* bias, int64_t n0, int64_t N) {
  if constexpr (MC > 0) {
    if (rows == MC) tile<T, MC>(wb, x, K, y, ldy, scale, bias, n0, N);
    else tail<T, MC - 1>(rows, wb, x, K, y, ldy, scale, bias, n0, N);
  }
}

template <typename T>
void run(const at::Tensor& x, const at::Tensor& packed, const float* scale, const float* bias,
         at::Tensor& y) {
  const int64_t M = x.size(0), K = x.size(1), N = y.size(1), blocks = packed.size(0);
  const int64_t row_tasks = (M + BLOCK_M - 1) / BLOCK_M;
  const float* xp = x.data_ptr<float>();
  const int8_t* w = packed.data_ptr<int8_t>();
  T* yp = y.data_ptr<T>();
  at::parallel_for(0, row_tasks * blocks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t % blocks, m_end = std::min(M, (t / blocks + 1) * BLOCK_M);
      const int8_t* wb = w + b * K * BLOCK_N;
      int64_t m = (t / blocks) * BLOCK_M;
      for (; m + ROWS <= m_end; m += ROWS)
        tile<T, ROWS>(wb, xp + m * K, K, yp + m * N, N, scale, bias, b * BLOCK_N, N);
      tail<T, ROWS - 1>(m_end - m, wb, xp + m * K, K, yp + m * N, N, scale, bias, b * BLOCK_N, N);
    }
  });
}

#endif  // LOOMLM_INT8_LINEAR

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
// W8A8 on AVX-512 VNNI: the activations are quantized per row on the fly (symmetric int8 of
// the row's largest magnitude, stored as uint8 = q + 128), so one vpdpbusd multiplies 4 k of
// 16 outputs and adds them into int32 (64 products, no widening of the weight). The +128 is
// taken back exactly in int32 with each output's weight sum: sum(w*(q+128)) - 128*sum(w).
// Layout: [N/64][K/4][64][4] int8 (K zero padded to a multiple of 4).
#define LOOMLM_INT8_VNNI 1
constexpr int VNNI_ROWS = 6;  // 24 accumulators + 4 weights + 1 broadcast

at::Tensor pack_vnni(const at::Tensor& q) {
  TORCH_CHECK(q.dim() == 2 && q.scalar_type() == at::kChar, "int8_linear: weight must be [out, in] int8");
  const int64_t N = q.size(0), K = q.size(1), blocks = (N + BLOCK_N - 1) / BLOCK_N, quads = (K + 3) / 4;
  auto out = at::zeros({blocks, quads, BLOCK_N, 4}, q.options());
  const auto src = q.contiguous();
  const int8_t* s = src.data_ptr<int8_t>();
  int8_t* d = out.data_ptr<int8_t>();
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t n = b * BLOCK_N; n < std::min(N, (b + 1) * BLOCK_N); ++n)
        for (int64_t k = 0; k < K; ++k)
          d[((b * quads + k / 4) * BLOCK_N + n % BLOCK_N) * 4 + k % 4] = s[n * K + k];
  });
  return out;
}

template <typename T, int MC>
inline void tile_vnni(const int8_t* wb, const uint8_t* xq, int64_t ldq, const float* sx, int64_t quads,
                      T* y, int64_t ldy, const float* scale, const int32_t* wsum, const float* bias,
                      int64_t n0, int64_t N) {
  constexpr int R = BLOCK_N / LANES;
  __m512i acc[MC][R];
#pragma GCC unroll 8
  for (int i = 0; i < MC; ++i)
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) acc[i][r] = _mm512_setzero_si512();
#pragma GCC unroll 4
  for (int64_t p = 0; p < quads; ++p) {
    const int8_t* w = wb + p * BLOCK_N * 4;
    __m512i wv[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) wv[r] = _mm512_loadu_si512(w + r * LANES * 4);
#pragma GCC unroll 8
    for (int i = 0; i < MC; ++i) {
      int32_t four;
      std::memcpy(&four, xq + i * ldq + p * 4, 4);
      const __m512i xb = _mm512_set1_epi32(four);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) acc[i][r] = _mm512_dpbusd_epi32(acc[i][r], xb, wv[r]);
    }
  }
  alignas(64) float buf[LANES];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
    const int64_t n = n0 + r * LANES;
    if (n >= N) break;
    const int64_t count = std::min<int64_t>(LANES, N - n);
    const __m512 s = _mm512_loadu_ps(scale + n);
    const __m512i corr = _mm512_slli_epi32(_mm512_loadu_si512(wsum + n), 7);  // 128 * sum(w)
    for (int i = 0; i < MC; ++i) {
      const __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[i][r], corr));
      _mm512_storeu_ps(buf, _mm512_mul_ps(v, _mm512_mul_ps(s, _mm512_set1_ps(sx[i]))));
      for (int64_t j = 0; j < count; ++j)
        y[i * ldy + n + j] = static_cast<T>(buf[j] + (bias ? bias[n + j] : 0.f));
    }
  }
}

template <typename T, int MC>
inline void tail_vnni(int64_t rows, const int8_t* wb, const uint8_t* xq, int64_t ldq, const float* sx,
                      int64_t quads, T* y, int64_t ldy, const float* scale, const int32_t* wsum,
                      const float* bias, int64_t n0, int64_t N) {
  if constexpr (MC > 0) {
    if (rows == MC) tile_vnni<T, MC>(wb, xq, ldq, sx, quads, y, ldy, scale, wsum, bias, n0, N);
    else tail_vnni<T, MC - 1>(rows, wb, xq, ldq, sx, quads, y, ldy, scale, wsum, bias, n0, N);
  }
}

// Each row of x as uint8 q + 128 with its scale; K padded with the zero value 128. Read in
// the activations' own dtype (no float32 copy of x per call).
template <typename In>
void quantize_rows(const In* x, int64_t M, int64_t K, int64_t ldq, uint8_t* xq, float* sx) {
  at::parallel_for(0, M, 16, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      const In* row = x + m * K;
      float amax = 0.f;
      for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::abs(static_cast<float>(row[k])));
      const float s = amax > 0.f ? amax / 127.f : 1.f, inv = 1.f / s;
      sx[m] = s;
      uint8_t* q = xq + m * ldq;
      for (int64_t k = 0; k < K; ++k)
        q[k] = static_cast<uint8_t>(static_cast<int32_t>(std::nearbyint(static_cast<float>(row[k]) * inv)) + 128);
      for (int64_t k = K; k < ldq; ++k) q[k] = 128;
    }
  });
}

template <typename T>
void run_vnni(const at::Tensor& x, const at::Tensor& packed, const float* scale, const int32_t* wsum,
              const float* bias, at::Tensor& y) {
  const int64_t M = x.size(0), K = x.size(1), N = y.size(1), blocks = packed.size(0), quads = packed.size(1);
  const int64_t ldq = quads * 4;
  // One buffer: the rows' scales (float32), then the quantized rows.
  auto work = at::empty({M * 4 + M * ldq}, x.options().dtype(at::kByte));
  float* s = reinterpret_cast<float*>(work.data_ptr<uint8_t>());
  uint8_t* q = work.data_ptr<uint8_t>() + M * 4;
  if (x.scalar_type() == at::kFloat) quantize_rows(x.data_ptr<float>(), M, K, ldq, q, s);
  else quantize_rows(x.data_ptr<c10::BFloat16>(), M, K, ldq, q, s);
  const int8_t* w = packed.data_ptr<int8_t>();
  T* yp = y.data_ptr<T>();
  const int64_t row_tasks = (M + BLOCK_M - 1) / BLOCK_M;
  at::parallel_for(0, row_tasks * blocks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t % blocks, m_end = std::min(M, (t / blocks + 1) * BLOCK_M);
      const int8_t* wb = w + b * quads * BLOCK_N * 4;
      int64_t m = (t / blocks) * BLOCK_M;
      for (; m + VNNI_ROWS <= m_end; m += VNNI_ROWS)
        tile_vnni<T, VNNI_ROWS>(wb, q + m * ldq, ldq, s + m, quads, yp + m * N, N, scale, wsum, bias, b * BLOCK_N, N);
      tail_vnni<T, VNNI_ROWS - 1>(m_end - m, wb, q + m * ldq, ldq, s + m, quads, yp + m * N, N, scale, wsum,
                                  bias, b * BLOCK_N, N);
    }
  });
}
#endif  // VNNI

// Bit 0: the widening kernel runs here; bit 1: the VNNI (W8A8) kernel too.
int64_t supported() {
#if defined(LOOMLM_INT8_VNNI)
  return 3;
#elif defined(LOOMLM_INT8_LINEAR)
  return 1;
#else
  return 0;
#endif
}

at::Tensor pack_vnni_weight(const at::Tensor& q) {
#if defined(LOOMLM_INT8_VNNI)
  return pack_vnni(q);
#else
  TORCH_CHECK(false, "int8_linear: the VNNI kernel is not built for this CPU");
#endif
}

at::Tensor int8_linear_vnni(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                            const at::Tensor& wsum, const c10::optional<at::Tensor>& bias,
                            int64_t out_features) {
  TORCH_CHECK(supported() & 2, "int8_linear: the VNNI kernel is not built for this CPU");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "int8_linear: x must be float32 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(packed.dim() == 4 && packed.size(2) == BLOCK_N && packed.size(3) == 4 &&
                  packed.scalar_type() == at::kChar, "int8_linear: not a VNNI-packed int8 weight");
  const int64_t K = x.size(-1);
  TORCH_CHECK((K + 3) / 4 == packed.size(1), "int8_linear: x has ", K, " features, the weight another number");
  const int64_t padded = packed.size(0) * BLOCK_N;
  TORCH_CHECK(scale.numel() == padded && scale.scalar_type() == at::kFloat && wsum.numel() == padded &&
                  wsum.scalar_type() == at::kInt, "int8_linear: scale (float32) and wsum (int32) per padded output");
  const auto x2 = x.reshape({-1, K}).contiguous();  // read in its own dtype
  auto out_shape = x.sizes().vec();
  out_shape.back() = out_features;
  auto y = at::empty({x2.size(0), out_features}, x.options());
  at::Tensor b;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->numel() == out_features, "int8_linear: bias must be [out_features]");
    b = bias->to(at::kFloat).contiguous();
  }
#if defined(LOOMLM_INT8_VNNI)
  const float* bp = b.defined() ? b.data_ptr<float>() : nullptr;
  const auto s = scale.contiguous();
  const auto ws = wsum.contiguous();
  if (x2.size(0) > 0) {
    if (x.scalar_type() == at::kFloat)
      run_vnni<float>(x2, packed, s.data_ptr<float>(), ws.data_ptr<int32_t>(), bp, y);
    else
      run_vnni<c10::BFloat16>(x2, packed, s.data_ptr<float>(), ws.data_ptr<int32_t>(), bp, y);
  }
#endif
  return y.view(out_shape);
}

at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                       const c10::optional<at::Tensor>& bias, int64_t out_features) {
  TORCH_CHECK(supported(), "int8_linear: not built for this CPU");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "int8_linear: x must be float32 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(packed.dim() == 3 && packed.size(2) == BLOCK_N && packed.scalar_type() == at::kChar,
              "int8_linear: not a packed int8 weight");
  const int64_t K = x.size(-1);
  TORCH_CHECK(packed.size(1) == K, "int8_linear: x has ", K, " features, the weight ", packed.size(1));
  TORCH_CHECK(packed.size(0) * BLOCK_N >= out_features && scale.numel() == packed.size(0) * BLOCK_N &&
                  scale.scalar_type() == at::kFloat,
              "int8_linear: scale must be float32, one per (padded) output");
  const auto x2 = x.reshape({-1, K}).to(at::kFloat).contiguous();
  auto out_shape = x.sizes().vec();
  out_shape.back() = out_features;
  auto y = at::empty({x2.size(0), out_features}, x.options());
  at::Tensor b;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->numel() == out_features, "int8_linear: bias must be [out_features]");
    b = bias->to(at::kFloat).contiguous();
  }
#if defined(LOOMLM_INT8_LINEAR)
  const float* bp = b.defined() ? b.data_ptr<float>() : nullptr;
  const auto s = scale.contiguous();
  if (x2.size(0) > 0) {
    if (x.scalar_type() == at::kFloat) run<float>(x2, packed, s.data_ptr<float>(), bp, y);
    else run<c10::BFloat16>(x2, packed, s.data_ptr<float>(), bp, y);
  }
#endif
  return y.view(out_shape);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(loomlm_cpu, m) {
  m.def("int8_linear_supported() -> int", supported);
  m.def("pack_int8_weight(Tensor q) -> Tensor");
  m.def("int8_linear(Tensor x, Tensor packed, Tensor scale, Tensor? bias, int out_features) -> Tensor");
  m.def("pack_int8_vnni_weight(Tensor q) -> Tensor");
  m.def("int8_linear_vnni(Tensor x, Tensor packed, Tensor scale, Tensor wsum, Tensor? bias, int out_features) -> Tensor");
}

TORCH_LIBRARY_IMPL(loomlm_cpu, CPU, m) {
  m.impl("pack_int8_weight", pack);
  m.impl("int8_linear", int8_linear);
  m.impl("pack_int8_vnni_weight", pack_vnni_weight);
  m.impl("int8_linear_vnni", int8_linear_vnni);
}
