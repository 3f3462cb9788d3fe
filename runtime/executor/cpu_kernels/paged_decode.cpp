// Decode attention on CPU straight from the paged KV pool: one query per request over the
// keys at positions [lo, hi) of its slot row, reading each K and V byte once.
//
// Why C++: written in torch ops, the gather of a request's keys into a padded block and the
// batched [1 x D] @ [D x L] products that follow ran at 1-9 GB/s on the benchmark machine
// (MKL's small batched GEMVs and the gather's extra write dominate), against the ~25-33 GB/s
// the machine streams. A loop that reads each pool row once and keeps scores in cache does not
// have that problem (see `python -m loomlm.bench attention`).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>  // registered as torch.ops.loomlm_cpu.paged_decode: no pybind11
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <algorithm>
#include <cmath>
#include <vector>

namespace {

// Each task reads whole K (then V) rows — all kv heads of one slot, contiguous in the pool —
// so that the pool is streamed in order; a request's context is split into chunks so that a
// few long requests still give every thread work (flash-decoding), merged at the end.
template <typename T, int D>
void decode(const T* q, const T* k, const T* v, const int64_t* slots, const int64_t* lo,
            const int64_t* hi, T* out, int64_t B, int64_t H, int64_t Hkv, int64_t L,
            int64_t pool_stride, float scale, int64_t chunk) {
  const int64_t G = H / Hkv;
  // task list: (request, first position, last position)
  std::vector<int64_t> task_req, task_first, task_last, req_task0(B + 1);
  for (int64_t b = 0; b < B; ++b) {
    req_task0[b] = static_cast<int64_t>(task_req.size());
    const int64_t first = lo[b], last = std::max(hi[b], lo[b]);
    int64_t p = first;
    do {
      const int64_t e = std::min(last, p + chunk);
      task_req.push_back(b); task_first.push_back(p); task_last.push_back(e);
      p = e;
    } while (p < last);
  }
  req_task0[B] = static_cast<int64_t>(task_req.size());
  const int64_t ntasks = req_task0[B];
  std::vector<float> part_m(ntasks * H), part_l(ntasks * H), part_acc(ntasks * H * D);
  at::parallel_for(0, ntasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores, qf(H * D);
    float kf[D];
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = task_req[t], first = task_first[t], n = task_last[t] - first;
      scores.resize(std::max<int64_t>(n, 1) * H);
      for (int64_t i = 0; i < H * D; ++i) qf[i] = static_cast<float>(q[b * H * D + i]) * scale;
      const int64_t* row = slots + b * L + first;
      for (int64_t p = 0; p < n; ++p) {
        const T* kr = k + row[p] * pool_stride;
        for (int64_t kh = 0; kh < Hkv; ++kh) {
          for (int d = 0; d < D; ++d) kf[d] = static_cast<float>(kr[kh * D + d]);
          for (int64_t g = 0; g < G; ++g) {
            const float* qh = qf.data() + (kh * G + g) * D;
            float s = 0.f;
            for (int d = 0; d < D; ++d) s += qh[d] * kf[d];
            scores[p * H + kh * G + g] = s;
          }
        }
      }
      float* m = part_m.data() + t * H;
      float* l = part_l.data() + t * H;
      float* acc = part_acc.data() + t * H * D;
      for (int64_t h = 0; h < H; ++h) {
        float mx = -INFINITY;
        for (int64_t p = 0; p < n; ++p) mx = std::max(mx, scores[p * H + h]);
        float sum = 0.f;
        for (int64_t p = 0; p < n; ++p) {
          const float e = std::exp(scores[p * H + h] - mx);
          scores[p * H + h] = e;
          sum += e;
        }
        m[h] = mx; l[h] = sum;
      }
      std::fill(acc, acc + H * D, 0.f);
      for (int64_t p = 0; p < n; ++p) {
        const T* vr = v + row[p] * pool_stride;
        for (int64_t kh = 0; kh < Hkv; ++kh) {
          for (int d = 0; d < D; ++d) kf[d] = static_cast<float>(vr[kh * D + d]);
          for (int64_t g = 0; g < G; ++g) {
            const int64_t h = kh * G + g;
            const float w = scores[p * H + h];
            float* ah = acc + h * D;
            for (int d = 0; d < D; ++d) ah[d] += w * kf[d];
          }
        }
      }
    }
  });
  // merge each request's chunks: rescale by exp(m_chunk - m_max)
  at::parallel_for(0, B * H, 16, [&](int64_t begin, int64_t end) {
    float o[D];
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      float mx = -INFINITY;
      for (int64_t t = req_task0[b]; t < req_task0[b + 1]; ++t) mx = std::max(mx, part_m[t * H + h]);
      float total = 0.f;
      std::fill(o, o + D, 0.f);
      for (int64_t t = req_task0[b]; t < req_task0[b + 1]; ++t) {
        if (part_l[t * H + h] == 0.f) continue;
        const float w = std::exp(part_m[t * H + h] - mx);
        total += w * part_l[t * H + h];
        const float* a = part_acc.data() + (t * H + h) * D;
        for (int d = 0; d < D; ++d) o[d] += w * a[d];
      }
      const float inv = total > 0.f ? 1.f / total : 0.f;
      for (int d = 0; d < D; ++d) out[bh * D + d] = static_cast<T>(o[d] * inv);
    }
  });
}

template <typename T>
void dispatch_dim(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const at::Tensor& slots, const at::Tensor& lo, const at::Tensor& hi,
                  at::Tensor& out, double scale, int64_t chunk) {
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2), Hkv = k.size(1), L = slots.size(1);
#define LOOM_CASE(DIM)                                                                        \
  case DIM:                                                                                   \
    decode<T, DIM>(q.data_ptr<T>(), k.data_ptr<T>(), v.data_ptr<T>(),                         \
                   slots.data_ptr<int64_t>(), lo.data_ptr<int64_t>(), hi.data_ptr<int64_t>(), \
                   out.data_ptr<T>(), B, H, Hkv, L, k.stride(0), static_cast<float>(scale),   \
                   chunk);                                                                    \
    return;
  switch (D) {
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
  TORCH_CHECK(false, "paged_decode: head_dim ", D, " is not one of 8, 16, 32, 64, 80, 96, 128, 256");
}

at::Tensor paged_decode(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                        const at::Tensor& slots, const at::Tensor& lo, const at::Tensor& hi,
                        double scale, int64_t chunk) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3 && slots.dim() == 2,
              "paged_decode: expected q [B, H, D], k/v [S, Hkv, D], slots [B, L]");
  TORCH_CHECK(q.is_contiguous() && slots.is_contiguous() && lo.is_contiguous() &&
                  hi.is_contiguous(), "paged_decode: q, slots, lo and hi must be contiguous");
  TORCH_CHECK(k.stride(2) == 1 && k.stride(1) == k.size(2) && v.strides() == k.strides(),
              "paged_decode: each pool row must hold its heads densely, k and v alike");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "paged_decode: q, k and v must share a dtype");
  TORCH_CHECK(slots.scalar_type() == at::kLong && lo.scalar_type() == at::kLong &&
                  hi.scalar_type() == at::kLong, "paged_decode: slots, lo, hi must be int64");
  TORCH_CHECK(q.size(0) == slots.size(0) && lo.numel() == q.size(0) && hi.numel() == q.size(0),
              "paged_decode: batch sizes differ");
  TORCH_CHECK(q.size(1) % k.size(1) == 0 && q.size(2) == k.size(2), "paged_decode: bad heads");
  TORCH_CHECK(chunk > 0, "paged_decode: chunk must be positive");
  auto out = at::empty_like(q);
  switch (q.scalar_type()) {
    case at::kFloat: dispatch_dim<float>(q, k, v, slots, lo, hi, out, scale, chunk); break;
    case at::kBFloat16: dispatch_dim<c10::BFloat16>(q, k, v, slots, lo, hi, out, scale, chunk); break;
    case at::kHalf: dispatch_dim<c10::Half>(q, k, v, slots, lo, hi, out, scale, chunk); break;
    default: TORCH_CHECK(false, "paged_decode: dtype ", q.scalar_type(), " not supported");
  }
  return out;
}

}  // namespace

TORCH_LIBRARY(loomlm_cpu, m) {
  m.def("paged_decode(Tensor q, Tensor k, Tensor v, Tensor slots, Tensor lo, Tensor hi, float scale, int chunk) -> Tensor");
  m.impl("paged_decode", c10::DispatchKey::CPU, TORCH_FN(paged_decode));
}
