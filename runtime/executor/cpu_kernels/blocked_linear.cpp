// y = x @ W^T (+ bias) on CPU over a weight reordered once, at load time, into column blocks
// that the AVX-512 loop below streams in order.
//
// Why our own: decode multiplies 1-8 activation rows by every weight of the model, so the step
// time is the time to stream the weights. oneDNN's packed product (the engine's previous path)
// streamed the benchmark model's bf16 weights at 15-19 GB/s at 1-8 rows on a machine that sums
// memory at ~30; this loop reads them at 23-33 GB/s, and is level with oneDNN from 16 rows to
// 1,024-row prefills, where both are bound by arithmetic (`python -m loomlm.bench kernels`).
//
// Layout of a packed weight [N, K]: [N/64][K/P][64][P], zero padded, P = 2 in bfloat16 (the
// pair of k that one vdpbf16ps lane multiplies and adds) and 1 in float32. For each pair of k,
// a block holds 64 outputs side by side: one 64-byte load per 16 outputs, and the activations
// are broadcast, so no horizontal sums are needed.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>  // registered as torch.ops.loomlm_cpu.*: no pybind11
#include <c10/util/BFloat16.h>
#include <algorithm>
#include <cstring>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t BLOCK_N = 64;  // outputs per column block: 4 AVX-512 registers of f32
constexpr int64_t BLOCK_M = 128;  // activation rows per task, so long prefills split too

template <typename T>
constexpr int64_t pair_of() { return sizeof(T) == 2 ? 2 : 1; }

template <typename T>
at::Tensor pack_typed(const at::Tensor& w) {
  constexpr int64_t P = pair_of<T>();
  const int64_t N = w.size(0), K = w.size(1);
  const int64_t blocks = (N + BLOCK_N - 1) / BLOCK_N, pairs = (K + P - 1) / P;
  auto out = at::zeros({blocks, pairs, BLOCK_N, P}, w.options());
  const auto src = w.contiguous();
  const T* s = src.data_ptr<T>();
  T* d = out.data_ptr<T>();
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t n = b * BLOCK_N; n < std::min(N, (b + 1) * BLOCK_N); ++n)
        for (int64_t k = 0; k < K; ++k)
          d[((b * pairs + k / P) * BLOCK_N + n % BLOCK_N) * P + k % P] = s[n * K + k];
  });
  return out;
}

#if defined(__AVX512F__)

template <typename T> struct Isa;

template <> struct Isa<float> {
  using X = __m512;
  static X broadcast(const float* x) { return _mm512_set1_ps(*x); }
  static X broadcast_last(const float* x) { return _mm512_set1_ps(*x); }
  static __m512 step(__m512 acc, const float* w, X x) {
    return _mm512_fmadd_ps(_mm512_loadu_ps(w), x, acc);
  }
  static __m512 load(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
  static void store(float* y, __m512 v, __mmask16 m) { _mm512_mask_storeu_ps(y, m, v); }
};

#if defined(__AVX512BF16__)
template <> struct Isa<c10::BFloat16> {
  using X = __m512i;
  static X broadcast(const c10::BFloat16* x) {
    int32_t pair;
    std::memcpy(&pair, x, 4);
    return _mm512_set1_epi32(pair);
  }
  // The last k of an odd K has no partner; its packed weight partner is zero.
  static X broadcast_last(const c10::BFloat16* x) {
    uint16_t one;
    std::memcpy(&one, x, 2);
    return _mm512_set1_epi32(one);
  }
  static __m512 step(__m512 acc, const c10::BFloat16* w, X x) {
    return _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(w), (__m512bh)x);
  }
  static __m512 load(const c10::BFloat16* p, __mmask16 m) {
    const __m256i h = _mm256_maskz_loadu_epi16(m, p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  static void store(c10::BFloat16* y, __m512 v, __mmask16 m) {
    _mm256_mask_storeu_epi16(y, m, (__m256i)_mm512_cvtneps_pbh(v));  // round to nearest even
  }
};
#endif

// MC activation rows times one 64-output block, over all of K.
template <typename T, int MC>
inline void tile(const T* wb, const T* x, int64_t ldx, T* y, int64_t ldy, const T* bias,
                 int64_t K, int64_t n0, int64_t N) {
  using I = Isa<T>;
  constexpr int64_t P = pair_of<T>();
  constexpr int R = BLOCK_N / 16;
  const int64_t full = K / P;  // pairs whose every k exists
  __m512 acc[MC][R];
#pragma GCC unroll 8
  for (int i = 0; i < MC; ++i)
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) acc[i][r] = _mm512_setzero_ps();
  for (int64_t p = 0; p < full; ++p) {
    const T* w = wb + p * BLOCK_N * P;
    typename I::X xb[MC];
#pragma GCC unroll 8
    for (int i = 0; i < MC; ++i) xb[i] = I::broadcast(x + i * ldx + p * P);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int i = 0; i < MC; ++i) acc[i][r] = I::step(acc[i][r], w + r * 16 * P, xb[i]);
  }
  if (full * P < K) {  // odd K in bfloat16
    const T* w = wb + full * BLOCK_N * P;
#pragma GCC unroll 8
    for (int i = 0; i < MC; ++i) {
      const typename I::X xb = I::broadcast_last(x + i * ldx + full * P);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) acc[i][r] = I::step(acc[i][r], w + r * 16 * P, xb);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
    const int64_t n = n0 + r * 16;
    if (n >= N) break;
    const int64_t count = std::min<int64_t>(16, N - n);
    const __mmask16 mask = static_cast<__mmask16>((1u << count) - 1);
    const __m512 b = bias ? I::load(bias + n, mask) : _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int i = 0; i < MC; ++i) I::store(y + i * ldy + n, _mm512_add_ps(acc[i][r], b), mask);
  }
}

template <typename T>
void linear_typed(const at::Tensor& x, const at::Tensor& packed, const T* bias, at::Tensor& y) {
  constexpr int64_t P = pair_of<T>();
  const int64_t M = x.size(0), K = x.size(1), N = y.size(1);
  const int64_t blocks = packed.size(0), pairs = packed.size(1);
  const int64_t row_tasks = (M + BLOCK_M - 1) / BLOCK_M;
  const T* xp = x.data_ptr<T>();
  const T* w = packed.data_ptr<T>();
  T* yp = y.data_ptr<T>();
  // Tasks run column blocks in order within a row group, so each thread streams one
  // contiguous stretch of the weight.
  at::parallel_for(0, row_tasks * blocks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t % blocks, m_end = std::min(M, (t / blocks + 1) * BLOCK_M);
      const T* wb = w + b * pairs * BLOCK_N * P;
      const int64_t n0 = b * BLOCK_N;
      int64_t m = (t / blocks) * BLOCK_M;
      for (; m + 4 <= m_end; m += 4) tile<T, 4>(wb, xp + m * K, K, yp + m * N, N, bias, K, n0, N);
      switch (m_end - m) {
        case 3: tile<T, 3>(wb, xp + m * K, K, yp + m * N, N, bias, K, n0, N); break;
        case 2: tile<T, 2>(wb, xp + m * K, K, yp + m * N, N, bias, K, n0, N); break;
        case 1: tile<T, 1>(wb, xp + m * K, K, yp + m * N, N, bias, K, n0, N); break;
        default: break;
      }
    }
  });
}

#endif  // __AVX512F__

// Bit 0: float32 runs here; bit 1: bfloat16 runs here. Decided by what the build targets.
int64_t supported_dtypes() {
  int64_t bits = 0;
#if defined(__AVX512F__)
  bits |= 1;
#if defined(__AVX512BF16__)
  bits |= 2;
#endif
#endif
  return bits;
}

bool runs(at::ScalarType dtype) {
  const int64_t bits = supported_dtypes();
  return (dtype == at::kFloat && (bits & 1)) || (dtype == at::kBFloat16 && (bits & 2));
}

at::Tensor pack_weight(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2, "blocked_linear: weight must be [out, in], got ",
              weight.sizes());
  TORCH_CHECK(runs(weight.scalar_type()), "blocked_linear: ", weight.scalar_type(),
              " is not supported by this CPU build");
  if (weight.scalar_type() == at::kFloat) return pack_typed<float>(weight);
  return pack_typed<c10::BFloat16>(weight);
}

at::Tensor blocked_linear(const at::Tensor& x, const at::Tensor& packed,
                          const c10::optional<at::Tensor>& bias, int64_t out_features) {
  TORCH_CHECK(x.scalar_type() == packed.scalar_type(), "blocked_linear: x is ",
              x.scalar_type(), " but the weight is ", packed.scalar_type());
  TORCH_CHECK(runs(x.scalar_type()), "blocked_linear: ", x.scalar_type(), " not supported");
  TORCH_CHECK(packed.dim() == 4 && packed.size(2) == BLOCK_N, "blocked_linear: not a packed weight");
  const int64_t K = x.size(-1);
  TORCH_CHECK((K + packed.size(3) - 1) / packed.size(3) == packed.size(1),
              "blocked_linear: x has ", K, " features, the weight another number");
  TORCH_CHECK(packed.size(0) * BLOCK_N >= out_features, "blocked_linear: out_features too large");
  const auto x2 = x.reshape({-1, K}).contiguous();
  auto out_shape = x.sizes().vec();
  out_shape.back() = out_features;
  auto y = at::empty({x2.size(0), out_features}, x.options());
  c10::optional<at::Tensor> b;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->numel() == out_features && bias->scalar_type() == x.scalar_type(),
                "blocked_linear: bias must be [out_features] of the input's dtype");
    b = bias->contiguous();
  }
#if defined(__AVX512F__)
  if (x2.size(0) > 0) {
    if (x.scalar_type() == at::kFloat) {
      linear_typed<float>(x2, packed, b ? b->data_ptr<float>() : nullptr, y);
    } else {
#if defined(__AVX512BF16__)
      linear_typed<c10::BFloat16>(x2, packed, b ? b->data_ptr<c10::BFloat16>() : nullptr, y);
#endif
    }
  }
#endif
  return y.view(out_shape);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(loomlm_cpu, m) {
  m.def("blocked_linear_dtypes() -> int", supported_dtypes);
  m.def("pack_blocked_weight(Tensor weight) -> Tensor");
  m.def("blocked_linear(Tensor x, Tensor packed, Tensor? bias, int out_features) -> Tensor");
}

TORCH_LIBRARY_IMPL(loomlm_cpu, CPU, m) {
  m.impl("pack_blocked_weight", pack_weight);
  m.impl("blocked_linear", blocked_linear);
}
