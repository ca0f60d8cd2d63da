// Affinity top-k on CPU: blocked GEMM (at::mm on row x column blocks) + a running top-k heap per row.
//
// avfast_C::affinity_topk_cpu(a (G,B,D), b (G,N,D), a_exact, b_exact, bias (G,N) or empty, k,
//                            candidates, exclude_self) -> (values (G,B,k) float, indices (G,B,k) int64)
// score(i, j) = a_i . b_j + bias_j. Ranking: value desc, index asc; NaN counts as -inf; with
// exclude_self column i is skipped for row i. candidates == 0: exact search (a, b float32).
// candidates > 0: a, b are bfloat16; the best `candidates` by the bf16 scores are re-scored in float32
// with a_exact, b_exact (+ bias) and the best k of them returned.
// Work: row blocks of <= 256 queries; when there are fewer row blocks than threads (few queries, a big
// gallery) each block's columns are split across threads and the per-split top lists merged.
// Memory: per task a rows x cols score block and rows x cap heap entries; nothing of size B x N.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu_features.h"

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>

namespace {

constexpr int64_t kMaxRowsPerTask = 256;  // a 256 x 1024 fp32 score block (1 MiB) stays in a core's L2
constexpr int64_t kColsPerBlock = 1024;
constexpr int64_t kFilterWidth = 16;

// An entry (score v, column i) packed into one integer whose order is the ranking: higher v first,
// then lower i. Needs i < 2^32; -0.0 is folded into +0.0 and NaN into -inf by the caller.
using Entry = uint64_t;

inline uint32_t ordered_bits(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

inline float entry_value(Entry e) {
  const uint32_t o = static_cast<uint32_t>(e >> 32);
  const uint32_t u = (o & 0x80000000u) ? (o & 0x7fffffffu) : ~o;
  float v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}

inline int64_t entry_index(Entry e) { return 0xffffffffu - static_cast<uint32_t>(e); }

inline Entry make_entry(float v, int64_t i) {
  v = std::isnan(v) ? -std::numeric_limits<float>::infinity() : v + 0.0f;
  return (static_cast<uint64_t>(ordered_bits(v)) << 32) | (0xffffffffu - static_cast<uint32_t>(i));
}

// The best `cap` entries seen so far, kept lazily: entries above the threshold are appended to a
// buffer of 2 cap; a full buffer is cut back to its best cap by nth_element (amortized O(1) per entry)
// and the threshold rises to the worst kept value.
struct RunningTopK {
  Entry* e;  // 2 * cap slots
  int64_t cap;
  int64_t size = 0;
  bool ready = false;  // at least cap entries kept: the threshold is meaningful
  float thr = -std::numeric_limits<float>::infinity();

  float threshold() const { return thr; }
  bool full() const { return ready; }

  void compact() {
    std::nth_element(e, e + cap - 1, e + size, std::greater<Entry>());
    size = cap;
    thr = entry_value(e[cap - 1]);
    ready = true;
  }

  // Columns arrive in ascending index order, so a later column never wins a tie against a kept one.
  void offer(float v, int64_t i) {
    if (ready && !(v > thr)) return;
    e[size++] = make_entry(v, i);
    if (size == 2 * cap) compact();
  }

  // Keeps exactly the best cap entries (unordered).
  void finish() {
    if (size > cap) compact();
  }
};

inline float to_float(float v) { return v; }
inline float to_float(c10::BFloat16 v) { return static_cast<float>(v); }

// The build uses no -march flag; the hot loops get AVX-512 / AVX2 clones picked at load time.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define AVFAST_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define AVFAST_CLONES
#endif

// Bit t set where score t of 16 (+ bias) exceeds thr: AVX-512 where the CPU has it, else scalar.
template <typename T>
uint32_t above_generic(const T* s, const float* bias, float thr) {
  uint32_t mask = 0;
  for (int64_t t = 0; t < kFilterWidth; ++t) mask |= uint32_t(to_float(s[t]) + (bias ? bias[t] : 0.f) > thr) << t;
  return mask;
}

#if defined(__GNUC__) && defined(__x86_64__)
__attribute__((target("avx512f"))) uint32_t above_avx512(const float* s, const float* bias, float thr) {
  __m512 v = _mm512_loadu_ps(s);
  if (bias) v = _mm512_add_ps(v, _mm512_loadu_ps(bias));
  return _mm512_cmp_ps_mask(v, _mm512_set1_ps(thr), _CMP_GT_OQ);
}

__attribute__((target("avx512f"))) uint32_t above_avx512(const c10::BFloat16* s, const float* bias, float thr) {
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s));
  __m512 v = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));  // bf16 -> f32 is a shift
  if (bias) v = _mm512_add_ps(v, _mm512_loadu_ps(bias));
  return _mm512_cmp_ps_mask(v, _mm512_set1_ps(thr), _CMP_GT_OQ);
}

#endif

template <typename T>
inline uint32_t above_threshold(const T* s, const float* bias, float thr) {
  static_assert(kFilterWidth == 16, "the AVX-512 filters compare 16 floats");
#if defined(__GNUC__) && defined(__x86_64__)
  if (avfast_cpu::avx512()) return above_avx512(s, bias, thr);
#endif
  return above_generic(s, bias, thr);
}

// Offers one row of a score block (columns c0 .. c0 + cols) to its heap. A vectorizable pre-filter
// skips groups of columns whose scores all fall at or below the heap's threshold.
template <typename T>
inline __attribute__((always_inline)) void scan_row_impl(const T* s, const float* bias, int64_t cols, int64_t c0,
                                                         int64_t self_col, RunningTopK& heap) {
  int64_t j = 0;
  for (; j < cols && !heap.full(); ++j) {
    if (c0 + j != self_col) heap.offer(to_float(s[j]) + (bias ? bias[j] : 0.f), c0 + j);
  }
  for (; j + kFilterWidth <= cols; j += kFilterWidth) {
    const float thr = heap.threshold();
    uint32_t mask = above_threshold(s + j, bias ? bias + j : nullptr, thr);
    while (mask) {  // only the lanes above the threshold of the group's start (offer re-checks)
      const int64_t t = j + __builtin_ctz(mask);
      mask &= mask - 1;
      if (c0 + t != self_col) heap.offer(to_float(s[t]) + (bias ? bias[t] : 0.f), c0 + t);
    }
  }
  for (; j < cols; ++j) {
    if (c0 + j != self_col) heap.offer(to_float(s[j]) + (bias ? bias[j] : 0.f), c0 + j);
  }
}

AVFAST_CLONES void scan_row(const float* s, const float* bias, int64_t cols, int64_t c0, int64_t self_col,
                            RunningTopK& heap) {
  scan_row_impl(s, bias, cols, c0, self_col, heap);
}

AVFAST_CLONES void scan_row(const c10::BFloat16* s, const float* bias, int64_t cols, int64_t c0, int64_t self_col,
                            RunningTopK& heap) {
  scan_row_impl(s, bias, cols, c0, self_col, heap);
}

AVFAST_CLONES float dot(const float* x, const float* y, int64_t d) {
  constexpr int64_t L = 16;
  float acc[L] = {};
  int64_t t = 0;
  for (; t + L <= d; t += L) {
    for (int64_t l = 0; l < L; ++l) acc[l] += x[t + l] * y[t + l];
  }
  float out = 0.f;
  for (int64_t l = 0; l < L; ++l) out += acc[l];
  for (; t < d; ++t) out += x[t] * y[t];
  return out;
}

void check_inputs(const at::Tensor& a, const at::Tensor& b, const at::Tensor& bias, int64_t k, int64_t candidates) {
  TORCH_CHECK(a.device().is_cpu() && b.device().is_cpu(), "affinity_topk_cpu: tensors must be on CPU");
  TORCH_CHECK(a.dim() == 3 && b.dim() == 3 && a.size(0) == b.size(0) && a.size(2) == b.size(2),
              "affinity_topk_cpu: a (G, B, D) and b (G, N, D) expected, got ", a.sizes(), " and ", b.sizes());
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "affinity_topk_cpu: a and b must share a dtype");
  TORCH_CHECK(candidates > 0 ? a.scalar_type() == at::kBFloat16 : a.scalar_type() == at::kFloat,
              "affinity_topk_cpu: float32 operands (bfloat16 with candidates > 0) expected, got ", a.scalar_type());
  TORCH_CHECK(bias.numel() == 0 || (bias.scalar_type() == at::kFloat && bias.numel() == b.size(0) * b.size(1)),
              "affinity_topk_cpu: bias must be empty or float32 (G, N)");
  const int64_t cap = candidates > 0 ? candidates : k;
  TORCH_CHECK(k >= 1 && cap >= k, "affinity_topk_cpu: need 1 <= k <= candidates, got k=", k, " candidates=", candidates);
}

// Writes row r's best k of the `size` kept entries to out_v / out_i (re-scoring them exactly first when
// candidates > 0: a_row and b_exact (N, D) are float32).
void emit_row(Entry* e, int64_t size, int64_t k, const float* a_row, const float* b_exact, const float* bias_g,
              int64_t D, float* out_v, int64_t* out_i) {
  if (a_row) {
    for (int64_t c = 0; c < size; ++c) {
      const int64_t j = entry_index(e[c]);
      if (c + 1 < size) {  // the candidates' rows are scattered through b: fetch the next one early
        const char* next = reinterpret_cast<const char*>(b_exact + entry_index(e[c + 1]) * D);
        for (int64_t line = 0; line < D * 4; line += 64) __builtin_prefetch(next + line);
      }
      e[c] = make_entry(dot(a_row, b_exact + j * D, D) + (bias_g ? bias_g[j] : 0.f), j);
    }
  }
  std::partial_sort(e, e + k, e + size, std::greater<Entry>());
  for (int64_t t = 0; t < k; ++t) {
    out_v[t] = entry_value(e[t]);
    out_i[t] = entry_index(e[t]);
  }
}

// How the (G, B) x N work is cut: row blocks of `rows` queries, and each row block's columns into
// `splits` ranges of `span` columns scanned by different threads (merged afterwards), so that a few
// queries against a large gallery still keep every thread busy and read each gallery row once.
struct Plan {
  int64_t rows, row_tasks, splits, span;
};

Plan make_plan(int64_t G, int64_t B, int64_t N, int64_t threads) {
  Plan p{};
  p.row_tasks = (B + kMaxRowsPerTask - 1) / kMaxRowsPerTask;
  if (G * p.row_tasks >= threads) {  // enough row blocks: a multiple of the thread count, of even size
    const int64_t total = (G * p.row_tasks + threads - 1) / threads * threads;
    p.row_tasks = std::min(B, (total + G - 1) / G);
    p.splits = 1;
  } else {
    p.splits = std::min((threads + G * p.row_tasks - 1) / (G * p.row_tasks), std::max<int64_t>(1, N / kColsPerBlock));
  }
  p.rows = (B + p.row_tasks - 1) / p.row_tasks;
  p.row_tasks = (B + p.rows - 1) / p.rows;
  p.span = (N + p.splits - 1) / p.splits;
  p.splits = (N + p.span - 1) / p.span;
  return p;
}

std::tuple<at::Tensor, at::Tensor> affinity_topk_cpu(const at::Tensor& a_in, const at::Tensor& b_in,
                                                     const at::Tensor& a_exact_in, const at::Tensor& b_exact_in,
                                                     const at::Tensor& bias_in, int64_t k, int64_t candidates,
                                                     bool exclude_self) {
  check_inputs(a_in, b_in, bias_in, k, candidates);
  // Called below autograd (from the custom op), yet mm_out refuses inputs that carry requires_grad.
  const at::Tensor a = a_in.detach().contiguous(), b = b_in.detach().contiguous(), bias = bias_in.contiguous();
  const int64_t G = a.size(0), B = a.size(1), N = b.size(1), D = a.size(2);
  const int64_t cap = candidates > 0 ? candidates : k;
  auto values = at::empty({G, B, k}, a.options().dtype(at::kFloat));
  auto indices = at::empty({G, B, k}, a.options().dtype(at::kLong));
  if (G * B == 0) return {values, indices};
  TORCH_CHECK(cap <= N - (exclude_self ? 1 : 0), "affinity_topk_cpu: ", cap, " entries per row requested from N=", N,
              exclude_self ? " columns minus self" : " columns");
  TORCH_CHECK(!exclude_self || N >= B, "affinity_topk_cpu: exclude_self needs N >= B");
  TORCH_CHECK(N < (int64_t(1) << 32), "affinity_topk_cpu: N must be < 2^32, got ", N);
  at::Tensor a_exact, b_exact;
  if (candidates > 0) {
    a_exact = a_exact_in.detach().contiguous();
    b_exact = b_exact_in.detach().contiguous();
    TORCH_CHECK(a_exact.scalar_type() == at::kFloat && a_exact.sizes() == a.sizes() && b_exact.sizes() == b.sizes(),
                "affinity_topk_cpu: a_exact/b_exact must be float32 copies of a/b's shapes");
  }
  const Plan plan = make_plan(G, B, N, at::get_num_threads());
  const float* bias_p = bias.numel() ? bias.data_ptr<float>() : nullptr;
  const float* a_exact_p = candidates > 0 ? a_exact.data_ptr<float>() : nullptr;
  const float* b_exact_p = candidates > 0 ? b_exact.data_ptr<float>() : nullptr;
  float* values_p = values.data_ptr<float>();
  int64_t* indices_p = indices.data_ptr<int64_t>();
  // With splits > 1 every (row, split) leaves its best `cap` here; 0 ranks below every real entry.
  std::vector<Entry> partial(plan.splits > 1 ? G * B * plan.splits * cap : 0, Entry(0));

  at::parallel_for(0, G * plan.row_tasks * plan.splits, 1, [&](int64_t begin, int64_t end) {
    at::Tensor block = at::empty({plan.rows * kColsPerBlock}, a.options());
    std::vector<Entry> entries(plan.rows * 2 * cap);
    std::vector<RunningTopK> heaps;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t split = task % plan.splits, rt = task / plan.splits;
      const int64_t g = rt / plan.row_tasks, r0 = (rt % plan.row_tasks) * plan.rows, rows = std::min(plan.rows, B - r0);
      const int64_t c_begin = split * plan.span, c_end = std::min(N, c_begin + plan.span);
      const at::Tensor a_rows = a[g].narrow(0, r0, rows);
      heaps.clear();
      for (int64_t r = 0; r < rows; ++r) heaps.push_back(RunningTopK{entries.data() + r * 2 * cap, cap});
      for (int64_t c0 = c_begin; c0 < c_end; c0 += kColsPerBlock) {
        const int64_t cols = std::min(kColsPerBlock, c_end - c0);
        at::Tensor s = block.narrow(0, 0, rows * cols).view({rows, cols});
        at::mm_out(s, a_rows, b[g].narrow(0, c0, cols).t());
        const float* bias_c = bias_p ? bias_p + g * N + c0 : nullptr;
        AT_DISPATCH_SWITCH(s.scalar_type(), "affinity_topk_cpu",
          AT_DISPATCH_CASE(at::kFloat, [&] {
            for (int64_t r = 0; r < rows; ++r)
              scan_row(s.data_ptr<float>() + r * cols, bias_c, cols, c0, exclude_self ? r0 + r : -1, heaps[r]);
          })
          AT_DISPATCH_CASE(at::kBFloat16, [&] {
            for (int64_t r = 0; r < rows; ++r)
              scan_row(s.data_ptr<c10::BFloat16>() + r * cols, bias_c, cols, c0, exclude_self ? r0 + r : -1, heaps[r]);
          }));
      }
      for (int64_t r = 0; r < rows; ++r) {
        RunningTopK& heap = heaps[r];
        heap.finish();
        const int64_t row = g * B + r0 + r;
        if (plan.splits > 1) {
          std::copy(heap.e, heap.e + heap.size, partial.data() + (row * plan.splits + split) * cap);
        } else {
          emit_row(heap.e, heap.size, k, a_exact_p ? a_exact_p + row * D : nullptr, b_exact_p ? b_exact_p + g * N * D : nullptr,
                   bias_p ? bias_p + g * N : nullptr, D, values_p + row * k, indices_p + row * k);
        }
      }
    }
  });
  if (plan.splits > 1) {  // merge each row's per-split lists: the best cap of splits x cap entries
    at::parallel_for(0, G * B, 64, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        Entry* e = partial.data() + row * plan.splits * cap;
        std::nth_element(e, e + cap - 1, e + plan.splits * cap, std::greater<Entry>());
        const int64_t g = row / B;
        emit_row(e, cap, k, a_exact_p ? a_exact_p + row * D : nullptr, b_exact_p ? b_exact_p + g * N * D : nullptr,
                 bias_p ? bias_p + g * N : nullptr, D, values_p + row * k, indices_p + row * k);
      }
    });
  }
  return {values, indices};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(avfast_C, m) {
  m.def("affinity_topk_cpu(Tensor a, Tensor b, Tensor a_exact, Tensor b_exact, Tensor bias, int k, int candidates, "
        "bool exclude_self) -> (Tensor, Tensor)");
  m.impl("affinity_topk_cpu", c10::DispatchKey::CPU, &affinity_topk_cpu);
}
