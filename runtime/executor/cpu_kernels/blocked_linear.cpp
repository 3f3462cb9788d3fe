// y = x @ W^T (+ bias) on CPU over a weight reordered once, at load time, into column blocks
// that the vector loop below streams in order.
//
// Why our own: decode multiplies 1-8 activation rows by every weight of the model, so the step
// time is the time to stream the weights. oneDNN's packed product (the engine's previous path)
// streamed the benchmark model's bf16 weights at 15-19 GB/s at 1-8 rows on an AVX-512 machine
// that sums memory at ~30; this loop reads them at 23-33 GB/s, and is level with oneDNN from 16
// rows to 1,024-row prefills, where both are bound by arithmetic (`python -m loomlm.bench
// kernels`). On an AVX2-only EPYC (Zen 3; `sum` ~28 GB/s) oneDNN has no packed bfloat16 product
// and `F.linear` reads bf16 weights at 14 GB/s for 1 row and 2.2 for 8; this loop widens them
// to float32 in registers and reads 21-29 and 13; in float32 it reads 24-28 GB/s at 1 row and
// 20-22 at 8 against oneDNN's 21 and 12, and computes 1,024-row prefills at ~150 GFLOP/s, 80%
// of the two cores' multiply-add peak.
//
// Layout of a packed weight [N, K]: [N/BLOCK_N][K/P][BLOCK_N][P], zero padded, P = 2 in bfloat16
// (the pair of k that one vdpbf16ps lane multiplies and adds; on AVX2 the pair is split into
// two float32 lanes by a shift and a mask) and 1 in float32. For each pair of k, a block holds
// BLOCK_N outputs side by side: one vector load per LANES outputs, and the activations are
// broadcast, so no horizontal sums are needed. BLOCK_N is 64 outputs (4 vectors) with AVX-512
// and 16 (2 vectors) with AVX2, whose 16 registers hold 6 rows x 2 accumulators: a tile of 6
// rows then reads a block's weights once where 4-vector blocks took 3 passes of 2-3 rows. The
// build targets this machine.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>  // registered as torch.ops.loomlm_cpu.*: no pybind11
#include <c10/util/BFloat16.h>
#include <algorithm>
#include <cstring>
#include <type_traits>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#define LOOMLM_VECTOR_LINEAR 1
#endif

namespace {

#if defined(__AVX512F__)
constexpr int64_t LANES = 16;  // float32 per register
constexpr int64_t BLOCK_N = 4 * LANES;  // outputs per column block
#else
constexpr int64_t LANES = 8;
constexpr int64_t BLOCK_N = 2 * LANES;
#endif
constexpr int64_t BLOCK_M = 128;  // activation rows per task, so long prefills split too
#if defined(__AVX512F__)
constexpr int64_t PREFETCH_BYTES = 0;  // the hardware prefetcher keeps up (measured without)
#else
// On the AVX2 machine (AMD EPYC, Zen 3) the stream reached 21 GB/s of ~28 in bfloat16 without
// it, 23-27 with it; float32 was level either way (noisy, best of 25 over the 48 weights).
constexpr int64_t PREFETCH_BYTES = 2048;
#endif

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

#if defined(LOOMLM_VECTOR_LINEAR)

// What one instruction set does for one dtype: the accumulator V (LANES float32), an
// activation broadcast X, one multiply-add step over a pair of k, and bias loads and output
// stores of the first `count` lanes. ROWS: activation rows per tile, as many as the registers
// hold accumulators for (ROWS x BLOCK_N / LANES) beside one row's weights and broadcast.
template <typename T> struct Isa;

#if defined(__AVX512F__)
template <> struct Isa<float> {
  using In = float;  // the activations' type as the tile reads them
  using V = __m512;
  using X = __m512;
  static constexpr int ROWS = 6;  // 24 accumulators + 4 weights + 1 broadcast of 32 registers
  static __mmask16 mask(int64_t count) { return static_cast<__mmask16>((1u << count) - 1); }
  static X broadcast(const float* x) { return _mm512_set1_ps(*x); }
  static X broadcast_last(const float* x) { return _mm512_set1_ps(*x); }
  static V step(V acc, const float* w, X x) {
    return _mm512_fmadd_ps(_mm512_loadu_ps(w), x, acc);
  }
  static V zero() { return _mm512_setzero_ps(); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V load(const float* p, int64_t count) { return _mm512_maskz_loadu_ps(mask(count), p); }
  static void store(float* y, V v, int64_t count) { _mm512_mask_storeu_ps(y, mask(count), v); }
};

#if defined(__AVX512BF16__)
template <> struct Isa<c10::BFloat16> {
  using In = c10::BFloat16;
  using V = __m512;
  using X = __m512i;
  static constexpr int ROWS = 6;
  static __mmask16 mask(int64_t count) { return static_cast<__mmask16>((1u << count) - 1); }
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
  static V step(V acc, const c10::BFloat16* w, X x) {
    return _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(w), (__m512bh)x);
  }
  static V zero() { return _mm512_setzero_ps(); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V load(const c10::BFloat16* p, int64_t count) {
    const __m256i h = _mm256_maskz_loadu_epi16(mask(count), p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  static void store(c10::BFloat16* y, V v, int64_t count) {
    _mm256_mask_storeu_epi16(y, mask(count), (__m256i)_mm512_cvtneps_pbh(v));  // round to even
  }
};
#endif  // __AVX512BF16__

#else  // AVX2 + FMA

// Partial blocks (N off a multiple of 8) and bfloat16 go through a small buffer: a store
// happens once per K loop, so its cost does not show.
template <typename T>
inline __m256 load_lanes(const T* p, int64_t count) {
  alignas(32) float buf[8] = {};
  for (int64_t j = 0; j < count; ++j) buf[j] = static_cast<float>(p[j]);
  return _mm256_load_ps(buf);
}

template <typename T>
inline void store_lanes(T* y, __m256 v, int64_t count) {
  alignas(32) float buf[8];
  _mm256_store_ps(buf, v);
  for (int64_t j = 0; j < count; ++j) y[j] = static_cast<T>(buf[j]);  // bf16: round to even
}

template <> struct Isa<float> {
  using In = float;
  using V = __m256;
  using X = __m256;
  static constexpr int ROWS = 6;  // 12 accumulators + 2 weights + 1 broadcast of 16 registers
  static X broadcast(const float* x) { return _mm256_broadcast_ss(x); }
  static X broadcast_last(const float* x) { return _mm256_broadcast_ss(x); }
  static V step(V acc, const float* w, X x) {
    return _mm256_fmadd_ps(_mm256_loadu_ps(w), x, acc);
  }
  static V zero() { return _mm256_setzero_ps(); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V load(const float* p, int64_t count) {
    return count == 8 ? _mm256_loadu_ps(p) : load_lanes(p, count);
  }
  static void store(float* y, V v, int64_t count) {
    if (count == 8) _mm256_storeu_ps(y, v);
    else store_lanes(y, v, count);
  }
};

// A pair of bfloat16 weights (k, k+1) for one output shares a 32-bit lane: k's float32 is the
// lane shifted up 16 bits, k+1's is the lane with its low 16 bits cleared.
template <> struct Isa<c10::BFloat16> {
  // The activations are widened to float32 once per call (linear_typed), not per tile: a
  // broadcast is then one instruction, and the loop is bound by its multiply-adds.
  using In = float;
  using V = __m256;
  struct X { __m256 even, odd; };
  static constexpr int ROWS = 4;  // 8 accumulators + 4 widened weights + 2 broadcasts
  static X broadcast(const float* x) {
    return {_mm256_broadcast_ss(x), _mm256_broadcast_ss(x + 1)};
  }
  static X broadcast_last(const float* x) {
    return {_mm256_broadcast_ss(x), _mm256_setzero_ps()};
  }
  static V step(V acc, const c10::BFloat16* w, X x) {
    const __m256i pairs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
    const __m256 even = _mm256_castsi256_ps(_mm256_slli_epi32(pairs, 16));
    const __m256 odd = _mm256_castsi256_ps(_mm256_and_si256(pairs, _mm256_set1_epi32(-65536)));
    return _mm256_fmadd_ps(odd, x.odd, _mm256_fmadd_ps(even, x.even, acc));
  }
  static V zero() { return _mm256_setzero_ps(); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V load(const c10::BFloat16* p, int64_t count) { return load_lanes(p, count); }
  static void store(c10::BFloat16* y, V v, int64_t count) { store_lanes(y, v, count); }
};

#endif  // AVX2

// MC activation rows times one column block, over all of K.
template <typename T, int MC, typename In = typename Isa<T>::In>
inline void tile(const T* wb, const In* x, int64_t ldx, T* y, int64_t ldy, const T* bias,
                 int64_t K, int64_t n0, int64_t N) {
  using I = Isa<T>;
  constexpr int64_t P = pair_of<T>();
  constexpr int R = BLOCK_N / LANES;
  const int64_t full = K / P;  // pairs whose every k exists
  typename I::V acc[MC][R];
#pragma GCC unroll 8
  for (int i = 0; i < MC; ++i)
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) acc[i][r] = I::zero();
  // Unrolled: the loop's own counting and addressing otherwise take issue slots from the
  // multiply-adds (AVX2 float32: 1,024-row prefills 115 -> 150 GFLOP/s, 8 rows 16 -> 20 GB/s).
#pragma GCC unroll 4
  for (int64_t p = 0; p < full; ++p) {
    const T* w = wb + p * BLOCK_N * P;
    if constexpr (PREFETCH_BYTES > 0) {  // this step's bytes, PREFETCH_BYTES ahead
      const char* ahead = reinterpret_cast<const char*>(w) + PREFETCH_BYTES;
      for (int64_t line = 0; line < BLOCK_N * P * int64_t(sizeof(T)); line += 64)
        _mm_prefetch(ahead + line, _MM_HINT_T0);
    }
#pragma GCC unroll 8
    for (int i = 0; i < MC; ++i) {  // one broadcast live at a time (AVX2 has 16 registers)
      const typename I::X xb = I::broadcast(x + i * ldx + p * P);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) acc[i][r] = I::step(acc[i][r], w + r * LANES * P, xb);
    }
  }
  if (full * P < K) {  // odd K in bfloat16
    const T* w = wb + full * BLOCK_N * P;
#pragma GCC unroll 8
    for (int i = 0; i < MC; ++i) {
      const typename I::X xb = I::broadcast_last(x + i * ldx + full * P);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) acc[i][r] = I::step(acc[i][r], w + r * LANES * P, xb);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
    const int64_t n = n0 + r * LANES;
    if (n >= N) break;
    const int64_t count = std::min<int64_t>(LANES, N - n);
    const typename I::V b = bias ? I::load(bias + n, count) : I::zero();
#pragma GCC unroll 8
    for (int i = 0; i < MC; ++i) I::store(y + i * ldy + n, I::add(acc[i][r], b), count);
  }
}

// The last rows - fewer than a whole tile - as one tile of exactly that many.
template <typename T, int MC, typename In = typename Isa<T>::In>
inline void tail(int64_t rows, const T* wb, const In* x, int64_t ldx, T* y, int64_t ldy,
                 const T* bias, int64_t K, int64_t n0, int64_t N) {
  if constexpr (MC > 0) {
    if (rows == MC) tile<T, MC>(wb, x, ldx, y, ldy, bias, K, n0, N);
    else tail<T, MC - 1>(rows, wb, x, ldx, y, ldy, bias, K, n0, N);
  }
}

template <typename T>
void linear_typed(const at::Tensor& x, const at::Tensor& packed, const T* bias, at::Tensor& y) {
  constexpr int64_t P = pair_of<T>();
  constexpr int ROWS = Isa<T>::ROWS;
  const int64_t M = x.size(0), K = x.size(1), N = y.size(1);
  const int64_t blocks = packed.size(0), pairs = packed.size(1);
  const int64_t row_tasks = (M + BLOCK_M - 1) / BLOCK_M;
  using In = typename Isa<T>::In;
  // bfloat16 on AVX2: the activations widened to float32 once (M x K, small beside W)
  const at::Tensor xin = std::is_same_v<In, T> ? x : x.to(at::kFloat);
  const In* xp = xin.data_ptr<In>();
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
      for (; m + ROWS <= m_end; m += ROWS)
        tile<T, ROWS>(wb, xp + m * K, K, yp + m * N, N, bias, K, n0, N);
      tail<T, ROWS - 1>(m_end - m, wb, xp + m * K, K, yp + m * N, N, bias, K, n0, N);
    }
  });
}

#endif  // LOOMLM_VECTOR_LINEAR

// Bit 0: float32 runs here; bit 1: bfloat16 runs here. Decided by what the build targets.
int64_t supported_dtypes() {
#if defined(__AVX512F__)
#if defined(__AVX512BF16__)
  return 3;
#else
  return 1;  // bfloat16 stays with oneDNN, which has AVX-512 code for it
#endif
#elif defined(LOOMLM_VECTOR_LINEAR)
  return 3;
#else
  return 0;
#endif
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
#if defined(LOOMLM_VECTOR_LINEAR)
  if (x2.size(0) > 0) {
    if (x.scalar_type() == at::kFloat) {
      linear_typed<float>(x2, packed, b ? b->data_ptr<float>() : nullptr, y);
    } else {
#if !defined(__AVX512F__) || defined(__AVX512BF16__)
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
