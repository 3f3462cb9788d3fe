// Prompt (extend) attention on CPU straight from the paged pool: the queries of each request's
// new tokens over its whole context (cached prefix + the new tokens), causal, with an optional
// sliding window. Flash-attention tiles: a block of queries meets the context one block of keys
// at a time with an online softmax, so the score matrix never leaves the cache.
//
// Why our own: torch's causal flash attention for CPU computed a 1,024-token prefill of the
// benchmark model (12 heads of 64) at ~90-108 GFLOP/s in float32 and no faster in bfloat16,
// about half of what the linear kernel reaches on the same cores, and it needs each context as
// a dense [S, D] view (a request whose slots are scattered was gathered into a copy first).
//
// Layout: scores are kept transposed, [keys][queries]. A task transposes its block of queries
// once (BQ = 3 vectors of them, pre-scaled by scale * log2(e)); then a score tile is a key's
// element broadcast times a vector of queries, so keys and values are read in place from their
// pool slots, in any order, with no packing; the softmax's max and sum run down the key axis,
// one query per vector lane, with no horizontal reductions; and the exponential is base 2, in
// vector registers. The value product broadcasts a weight and loads a row of V. bfloat16 and
// half pools are widened to float32 as they are read; accumulation is float32 throughout.
// (A first version packed K transposed and V per call: the packing's fresh pages cost as much
// as the products.)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <vector>
#if defined(__AVX512F__) || defined(__F16C__)
#include <immintrin.h>
#endif

namespace {

#if defined(__AVX512F__)
constexpr int LANES = 16;  // float32 per vector register
constexpr int ACC = 24;    // accumulator registers a tile may hold (of 32)
#else
constexpr int LANES = 8;  // AVX2 (or whatever the compiler maps 8-float vectors to)
constexpr int ACC = 12;   // of 16
#endif
typedef float vf __attribute__((vector_size(LANES * 4), aligned(4)));
typedef int32_t vi __attribute__((vector_size(LANES * 4), aligned(4)));
typedef uint16_t vh __attribute__((vector_size(LANES * 2), aligned(2)));

constexpr int QV = 3;            // vectors of queries per task
constexpr int BQ = QV * LANES;   // queries per task: 48 with AVX-512, 24 with AVX2
constexpr int RK = ACC / QV;     // keys per score tile: 8 or 4
constexpr int BK = 64;           // keys per block of the online softmax (a multiple of RK)
constexpr float LOG2E = 1.4426950408889634f;

inline vf load(const float* p) { return *reinterpret_cast<const vf*>(p); }
inline void store(float* p, vf x) { *reinterpret_cast<vf*>(p) = x; }
inline vf splat(float x) { return x - vf{}; }

// LANES elements of a pool row as float32.
inline vf load_row(const float* p) { return load(p); }
inline vf load_row(const c10::BFloat16* p) {
  const vi wide = __builtin_convertvector(*reinterpret_cast<const vh*>(p), vi) << 16;
  return reinterpret_cast<const vf&>(wide);
}
inline vf load_row(const c10::Half* p) {
#if defined(__AVX512F__)
  const __m512 x = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return reinterpret_cast<const vf&>(x);
#elif defined(__F16C__)
  const __m256 x = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return reinterpret_cast<const vf&>(x);
#else
  vf x;
  for (int c = 0; c < LANES; ++c) x[c] = static_cast<float>(p[c]);
  return x;
#endif
}

// 2^x for x <= 0 (x = -inf gives 0): 2^n from the exponent bits, n the integer nearest x,
// times Cephes' degree-6 polynomial for 2^f, f = x - n in [-0.5, 0.5] (relative error ~2e-7).
// Results below 2^-125 flush to 0.
inline vf exp2_nonpositive(vf x) {
  const vi dead = x < splat(-125.f);
  x = x < splat(-125.f) ? splat(-125.f) : x;
  const vi n = __builtin_convertvector(x - splat(0.5f), vi);  // truncation: x - n in (-.5, .5]
  const vf f = x - __builtin_convertvector(n, vf);
  vf p = splat(1.535336188319500e-4f);
  p = p * f + splat(1.339887440266574e-3f);
  p = p * f + splat(9.618437357674640e-3f);
  p = p * f + splat(5.550332471162809e-2f);
  p = p * f + splat(2.402264791363012e-1f);
  p = p * f + splat(6.931472028550421e-1f);
  p = p * f + splat(1.0f);
  const vi bits = reinterpret_cast<const vi&>(p) + (n << 23);
  const vi kept = bits & ~dead;
  return reinterpret_cast<const vf&>(kept);
}

// st[RK][BQ] = keys[RK][D] . qt[D][BQ]: each key's elements broadcast, queries in lanes.
template <typename T, int D>
inline void qk_tile(const T* const* keys, const float* qt, float* st) {
  vf acc[RK][QV];
#pragma GCC unroll 32
  for (int r = 0; r < RK; ++r)
#pragma GCC unroll 32
    for (int c = 0; c < QV; ++c) acc[r][c] = vf{};
  for (int d = 0; d < D; ++d) {
    vf qv[QV];
#pragma GCC unroll 32
    for (int c = 0; c < QV; ++c) qv[c] = load(qt + d * BQ + c * LANES);
#pragma GCC unroll 32
    for (int r = 0; r < RK; ++r) {
      const vf x = splat(static_cast<float>(keys[r][d]));
#pragma GCC unroll 32
      for (int c = 0; c < QV; ++c) acc[r][c] += x * qv[c];
    }
  }
#pragma GCC unroll 32
  for (int r = 0; r < RK; ++r)
#pragma GCC unroll 32
    for (int c = 0; c < QV; ++c) store(st + r * BQ + c * LANES, acc[r][c]);
}

// Columns of V per output tile, from the head size, and query rows per tile: as many
// accumulators as the registers hold. (Every ROWS divides BQ for the sizes instantiated.)
template <int D>
constexpr int pv_cols() {
  constexpr int dv = D / LANES;
  return dv % 4 == 0 ? 4 : dv % 3 == 0 ? 3 : dv <= 6 ? dv : dv % 2 == 0 ? 2 : 1;
}
template <int D>
constexpr int pv_rows() { return ACC / pv_cols<D>(); }

// o[ROWS][this chunk's columns] = alpha * o + sum_j pt[j][row] * values[j][columns]: the online
// softmax's rescaling rides on the tile's load of o.
template <typename T, int ROWS, int CV, int D>
inline void pv_tile(const float* pt, const T* const* values, int n, const float* alpha, float* o) {
  vf acc[ROWS][CV];
#pragma GCC unroll 32
  for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 32
    for (int c = 0; c < CV; ++c) acc[r][c] = load(o + r * D + c * LANES) * splat(alpha[r]);
  for (int j = 0; j < n; ++j) {
    vf x[CV];
#pragma GCC unroll 32
    for (int c = 0; c < CV; ++c) x[c] = load_row(values[j] + c * LANES);
#pragma GCC unroll 32
    for (int r = 0; r < ROWS; ++r) {
      const vf w = splat(pt[j * BQ + r]);
#pragma GCC unroll 32
      for (int c = 0; c < CV; ++c) acc[r][c] += w * x[c];
    }
  }
#pragma GCC unroll 32
  for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 32
    for (int c = 0; c < CV; ++c) store(o + r * D + c * LANES, acc[r][c]);
}

// The value product for heads narrower than a vector (8 with AVX-512: the built-in model's),
// one query row at a time, keys in order as pv_tile takes them.
template <typename T, int D>
inline void pv_narrow(const float* pt, const T* const* values, int n, const float* alpha,
                      float* o, int rows) {
  for (int r = 0; r < rows; ++r) {
    float acc[D];
    for (int d = 0; d < D; ++d) acc[d] = o[r * D + d] * alpha[r];
    for (int j = 0; j < n; ++j) {
      const float w = pt[j * BQ + r];
      for (int d = 0; d < D; ++d) acc[d] += w * static_cast<float>(values[j][d]);
    }
    for (int d = 0; d < D; ++d) o[r * D + d] = acc[d];
  }
}

struct Request {
  int64_t q_start, ext, slot_offset, seq;  // its query rows, its context's slots and length
};

struct Task {
  int64_t req, head, q0, q1, cost;
};

template <typename T, int D>
void extend(const at::Tensor& q_t, const at::Tensor& k_t, const at::Tensor& v_t,
            const int64_t* slots, const std::vector<Request>& reqs, float scale, int64_t window,
            at::Tensor& out_t) {
  constexpr int CV = pv_cols<D>(), ROWS = pv_rows<D>();
  static_assert(BQ % ROWS == 0 && BK % RK == 0, "tile sizes");
  const int64_t H = q_t.size(1), Hkv = k_t.size(1), G = H / Hkv;
  const T* q = q_t.data_ptr<T>();
  const T* k = k_t.data_ptr<T>();
  const T* v = v_t.data_ptr<T>();
  T* out = out_t.data_ptr<T>();
  const int64_t pool_stride = k_t.stride(0), q_stride = q_t.stride(0), o_stride = out_t.stride(0);
  // Tasks: (request, head, block of queries), largest first, handed out one at a time, so
  // that the causal triangle's long tasks do not all land on one thread.
  std::vector<Task> tasks;
  for (int64_t ri = 0; ri < static_cast<int64_t>(reqs.size()); ++ri) {
    const Request& r = reqs[ri];
    for (int64_t q0 = 0; q0 < r.ext; q0 += BQ) {
      const int64_t q1 = std::min(r.ext, q0 + BQ);
      const int64_t first = r.seq - r.ext + q0, last = r.seq - r.ext + q1 - 1;
      const int64_t lo = window > 0 ? std::max<int64_t>(0, first - window + 1) : 0;
      for (int64_t h = 0; h < H; ++h) tasks.push_back({ri, h, q0, q1, last + 1 - lo});
    }
  }
  std::stable_sort(tasks.begin(), tasks.end(),
                   [](const Task& a, const Task& b) { return a.cost > b.cost; });
  std::atomic<int64_t> next{0};
  const int64_t ntasks = static_cast<int64_t>(tasks.size());
  const float qscale = scale * LOG2E;
  at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) {
    std::vector<float> scratch(BQ * D * 2 + BK * BQ + BQ * 5);  // on the heap: D <= 256
    float* qt = scratch.data();      // [D][BQ] this task's queries, transposed and scaled
    float* o = qt + BQ * D;          // [BQ][D] unnormalised output rows
    float* st = o + BQ * D;          // [BK][BQ] a block's scores, then weights
    float* m = st + BK * BQ;         // [BQ] running max per query (-inf: no key seen yet)
    float* shift = m + BQ;           // [BQ] what this block's scores are shifted by
    float* alpha = shift + BQ;       // [BQ] this block's rescaling of earlier sums
    float* lsum = alpha + BQ;        // [BQ] running sum of weights
    float* lane = lsum + BQ;         // [BQ] 0, 1, 2, ...: each query's offset in the task
    for (int i = 0; i < BQ; ++i) lane[i] = static_cast<float>(i);
    const T* kp[BK];
    const T* vp[BK];
    for (int64_t ti = next.fetch_add(1); ti < ntasks; ti = next.fetch_add(1)) {
      const Task& task = tasks[ti];
      const Request& r = reqs[task.req];
      const int rows = static_cast<int>(task.q1 - task.q0);
      const int pv_n = std::min(BQ, (rows + ROWS - 1) / ROWS * ROWS);
      const int64_t kh = task.head / G;
      for (int i = 0; i < BQ; ++i) {
        if (i < rows) {
          const T* qr = q + (r.q_start + task.q0 + i) * q_stride + task.head * D;
          for (int d = 0; d < D; ++d) qt[d * BQ + i] = static_cast<float>(qr[d]) * qscale;
        } else {
          for (int d = 0; d < D; ++d) qt[d * BQ + i] = 0.f;
        }
      }
      for (int i = 0; i < BQ; i += LANES) {
        store(m + i, splat(-INFINITY));
        store(lsum + i, vf{});
      }
      std::fill(o, o + BQ * D, 0.f);
      const int64_t first_pos = r.seq - r.ext + task.q0, last_pos = r.seq - r.ext + task.q1 - 1;
      const int64_t lo_key = window > 0 ? std::max<int64_t>(0, first_pos - window + 1) : 0;
      for (int64_t j0 = lo_key / BK * BK; j0 <= last_pos; j0 += BK) {
        // keys past the task's last query are hidden from all of its queries: not computed
        const int n = static_cast<int>(std::min<int64_t>(BK, last_pos + 1 - j0));
        for (int j = 0; j < BK; ++j) {  // past n: any valid row, its scores go unused
          const int64_t slot = slots[r.slot_offset + j0 + std::min(j, n - 1)];
          kp[j] = k + slot * pool_stride + kh * D;
          vp[j] = v + slot * pool_stride + kh * D;
        }
        for (int j = 0; j < n; j += RK) qk_tile<T, D>(kp + j, qt, st + j * BQ);
        // Mask where the block is not wholly visible to every query: the causal diagonal
        // (key j0 + j hides from the queries before it) and the window's trailing edge.
        const bool diagonal = j0 + n - 1 > first_pos;
        const bool edge = window > 0 && j0 <= last_pos - window;
        if (diagonal || edge) {
          for (int j = 0; j < n; ++j) {
            const float after = static_cast<float>(j0 + j - first_pos);  // hidden: lane < after
            const float gone = window > 0 ? after + static_cast<float>(window) : INFINITY;
            for (int c = 0; c < BQ; c += LANES) {  // ... and lane >= gone
              const vf l = load(lane + c), x = load(st + j * BQ + c);
              store(st + j * BQ + c, (l < splat(after)) | (l >= splat(gone)) ? splat(-INFINITY) : x);
            }
          }
        }
        for (int c = 0; c < BQ; c += LANES) {
          vf mx = load(st + c);
          for (int j = 1; j < n; ++j) {
            const vf x = load(st + j * BQ + c);
            mx = x > mx ? x : mx;
          }
          const vf m_old = load(m + c);
          const vf m_new = mx > m_old ? mx : m_old;
          // a query with no visible key yet keeps -inf: shift by 0 to stay NaN-free
          const vf sh = m_new == splat(-INFINITY) ? vf{} : m_new;
          store(m + c, m_new);
          store(shift + c, sh);
          const vf a = exp2_nonpositive(m_old - sh);
          store(alpha + c, a);
          vf sum = vf{};
          for (int j = 0; j < n; ++j) {
            const vf p = exp2_nonpositive(load(st + j * BQ + c) - sh);
            store(st + j * BQ + c, p);
            sum += p;
          }
          store(lsum + c, load(lsum + c) * a + sum);
        }
        if constexpr (D % LANES == 0) {
          for (int c0 = 0; c0 < D; c0 += CV * LANES) {
            const T* cols[BK];
            for (int j = 0; j < n; ++j) cols[j] = vp[j] + c0;
            for (int i = 0; i < pv_n; i += ROWS)
              pv_tile<T, ROWS, CV, D>(st + i, cols, n, alpha + i, o + i * D + c0);
          }
        } else {
          pv_narrow<T, D>(st, vp, n, alpha, o, rows);
        }
      }
      for (int i = 0; i < rows; ++i) {
        const float inv = lsum[i] > 0.f ? 1.f / lsum[i] : 0.f;
        T* orow = out + (r.q_start + task.q0 + i) * o_stride + task.head * D;
        for (int d = 0; d < D; ++d) orow[d] = static_cast<T>(o[i * D + d] * inv);
      }
    }
  });
}

template <typename T>
void dispatch_dim(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const int64_t* slots, const std::vector<Request>& reqs, float scale,
                  int64_t window, at::Tensor& out) {
#define LOOM_CASE(DIM)                                                   \
  case DIM:                                                              \
    extend<T, DIM>(q, k, v, slots, reqs, scale, window, out);            \
    return;
  switch (q.size(2)) {
    LOOM_CASE(8)
    LOOM_CASE(16)
    LOOM_CASE(32)
    LOOM_CASE(64)
    LOOM_CASE(80)
    LOOM_CASE(96)
    LOOM_CASE(128)
    LOOM_CASE(256)
  }
#undef LOOM_CASE
  TORCH_CHECK(false, "extend_attention: head_dim ", q.size(2),
              " is not one of 8, 16, 32, 64, 80, 96, 128, 256");
}

// out[rows of each request] = attention of those queries over the request's context.
// reqs: [R, 4] int64 rows of (first query row, new tokens, offset of its slots in `slots`,
// context length); the context's last `new tokens` positions are the queries'.
void extend_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                      const at::Tensor& slots, const at::Tensor& reqs, double scale,
                      int64_t window, at::Tensor out) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3 && out.sizes() == q.sizes(),
              "extend_attention: expected q and out [T, H, D], k/v [S, Hkv, D]");
  TORCH_CHECK(q.stride(2) == 1 && q.stride(1) == q.size(2) && out.stride(2) == 1 &&
                  out.stride(1) == out.size(2),
              "extend_attention: each row of q and out must hold its heads densely");
  TORCH_CHECK(k.stride(2) == 1 && k.stride(1) == k.size(2) && v.strides() == k.strides(),
              "extend_attention: each pool row must hold its heads densely, k and v alike");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type() &&
                  out.scalar_type() == q.scalar_type(),
              "extend_attention: q, k, v and out must share a dtype");
  TORCH_CHECK(q.size(1) % k.size(1) == 0 && q.size(2) == k.size(2), "extend_attention: bad heads");
  TORCH_CHECK(slots.scalar_type() == at::kLong && slots.is_contiguous() && slots.dim() == 1,
              "extend_attention: slots must be contiguous int64 [N]");
  TORCH_CHECK(reqs.scalar_type() == at::kLong && reqs.is_contiguous() && reqs.dim() == 2 &&
                  reqs.size(1) == 4,
              "extend_attention: reqs must be contiguous int64 [R, 4]");
  TORCH_CHECK(window >= 0, "extend_attention: window must be >= 0 (0: none)");
  const int64_t* info = reqs.data_ptr<int64_t>();
  std::vector<Request> list;
  for (int64_t i = 0; i < reqs.size(0); ++i) {
    const int64_t q_start = info[4 * i], ext = info[4 * i + 1], off = info[4 * i + 2],
                  seq = info[4 * i + 3];
    TORCH_CHECK(ext >= 1 && ext <= seq && q_start >= 0 && q_start + ext <= q.size(0) &&
                    off >= 0 && off + seq <= slots.size(0),
                "extend_attention: request ", i, " is out of range");
    list.push_back({q_start, ext, off, seq});
  }
  if (list.empty()) return;
  const int64_t* s = slots.data_ptr<int64_t>();
  for (const auto& r : list)
    for (int64_t j = 0; j < r.seq; ++j)
      TORCH_CHECK(s[r.slot_offset + j] >= 0 && s[r.slot_offset + j] < k.size(0),
                  "extend_attention: slot out of the pool");
  const float sc = static_cast<float>(scale);
  switch (q.scalar_type()) {
    case at::kFloat: dispatch_dim<float>(q, k, v, s, list, sc, window, out); break;
    case at::kBFloat16: dispatch_dim<c10::BFloat16>(q, k, v, s, list, sc, window, out); break;
    case at::kHalf: dispatch_dim<c10::Half>(q, k, v, s, list, sc, window, out); break;
    default: TORCH_CHECK(false, "extend_attention: dtype ", q.scalar_type(), " not supported");
  }
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(loomlm_cpu, m) {
  m.def("extend_attention(Tensor q, Tensor k, Tensor v, Tensor slots, Tensor reqs, float scale, int window, Tensor(a!) out) -> ()");
}

TORCH_LIBRARY_IMPL(loomlm_cpu, CPU, m) {
  m.impl("extend_attention", extend_attention);
}
