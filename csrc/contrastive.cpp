// Fused CPU tile kernels of avfast.ops.contrastive_loss (InfoNCE), used by the `cpp` backend.
//
// The chunk loop and the matmuls stay in Python/MKL (avfast/ops/_contrastive_chunked.py); these ops
// replace the ~10 elementwise passes per (c x n) logits tile with one or two:
//   contrastive_tile_fwd_cpu(z, ...) -> (row_parts (c, 4), col_parts (n, 4))
//       z (c, n) float32 scaled logits, rewritten in place into the biased / masked logits.
//       parts = [log-sum-exp, positive logit, sum of valid logits, valid count] per row / column.
//   contrastive_tile_bwd_cpu(z, ...) -> z rewritten in place into d loss / d logits.
// Rules (same as the torch reference): row i's positive is column i + shift; off it, a column with
// the same positive id is removed (-inf), one with the same source id gets + log_w.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "cpu_features.h"

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define AVFAST_AVX512 1
#endif

namespace {

using at::Tensor;
using Vec = at::vec::Vectorized<float>;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kStartMax = -1.0e30f;  // finite running-max start: exp(m_old - m_new) never sees inf - inf

struct Ids {
  const int64_t* x_pos = nullptr;
  const int64_t* y_pos = nullptr;
  const int64_t* x_src = nullptr;
  const int64_t* y_src = nullptr;
};

const int64_t* ids_ptr(const c10::optional<Tensor>& t, int64_t n, const char* name) {
  if (!t.has_value()) return nullptr;
  TORCH_CHECK(t->scalar_type() == at::kLong && t->is_contiguous() && t->numel() == n,
              "contrastive tile: ", name, " must be a contiguous int64 tensor of ", n, " ids");
  return t->data_ptr<int64_t>();
}

Ids make_ids(const c10::optional<Tensor>& x_pos, const c10::optional<Tensor>& y_pos,
             const c10::optional<Tensor>& x_src, const c10::optional<Tensor>& y_src, int64_t c, int64_t n) {
  Ids ids;
  ids.x_pos = ids_ptr(x_pos, c, "x_pos");
  ids.y_pos = ids_ptr(y_pos, n, "y_pos");
  ids.x_src = ids_ptr(x_src, c, "x_src");
  ids.y_src = ids_ptr(y_src, n, "y_src");
  TORCH_CHECK((ids.x_pos == nullptr) == (ids.y_pos == nullptr), "contrastive tile: give both or neither pos ids");
  TORCH_CHECK((ids.x_src == nullptr) == (ids.y_src == nullptr), "contrastive tile: give both or neither src ids");
  return ids;
}

// Applies the id rules to row i in place; returns the number of removed columns.
int64_t apply_rules(float* row, int64_t i, int64_t n, int64_t jd, const Ids& ids, float log_w) {
  int64_t removed = 0;
  if (ids.x_pos == nullptr && (ids.x_src == nullptr || log_w == 0.f)) return 0;
  const int64_t xp = ids.x_pos ? ids.x_pos[i] : 0;
  const int64_t xs = ids.x_src ? ids.x_src[i] : 0;
  for (int64_t j = 0; j < n; ++j) {
    if (j == jd) continue;
    if (ids.x_pos && ids.y_pos[j] == xp) {
      row[j] = kNegInf;
      ++removed;
    } else if (ids.x_src && ids.y_src[j] == xs) {
      row[j] += log_w;
    }
  }
  return removed;
}

float row_max(const float* row, int64_t n) {
  Vec vm(kStartMax);
  int64_t j = 0;
  for (; j + Vec::size() <= n; j += Vec::size()) vm = at::vec::maximum(vm, Vec::loadu(row + j));
  float m = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, vm);
  for (; j < n; ++j) m = std::max(m, row[j]);
  return m;
}

// (sum exp(row - m), sum of finite entries)
std::pair<float, float> row_sums(const float* row, int64_t n, float m) {
  Vec vs(0.f), vt(0.f), vm(m), zero(0.f), ninf(kNegInf);
  int64_t j = 0;
  for (; j + Vec::size() <= n; j += Vec::size()) {
    Vec v = Vec::loadu(row + j);
    vs = vs + (v - vm).exp();
    vt = vt + Vec::blendv(v, zero, v == ninf);
  }
  auto add = [](Vec& a, Vec& b) { return a + b; };
  float s = at::vec::vec_reduce_all<float>(add, vs), t = at::vec::vec_reduce_all<float>(add, vt);
  for (; j < n; ++j) {
    s += std::exp(row[j] - m);
    if (row[j] != kNegInf) t += row[j];
  }
  return {s, t};
}

// Column stats of a (c, stride) tile over columns [0, w), w <= 64: online (max, sum exp(v - max)) down
// the rows, sum of finite entries and their count (the portable path).
void column_stats(const float* z, int64_t c, int64_t stride, int64_t w, float* m, float* s, float* t, float* k) {
  std::fill(m, m + w, kStartMax);
  std::fill(s, s + w, 0.f);
  std::fill(t, t + w, 0.f);
  std::fill(k, k + w, 0.f);
  for (int64_t i = 0; i < c; ++i) {
    const float* row = z + i * stride;
    int64_t j = 0;
    for (; j + Vec::size() <= w; j += Vec::size()) {
      Vec v = Vec::loadu(row + j), vm = Vec::loadu(m + j), zero(0.f), one(1.f), ninf(kNegInf);
      Vec mn = at::vec::maximum(vm, v);
      Vec vs = Vec::loadu(s + j) * (vm - mn).exp() + (v - mn).exp();
      Vec finite = v != ninf;
      mn.store(m + j);
      vs.store(s + j);
      (Vec::loadu(t + j) + Vec::blendv(zero, v, finite)).store(t + j);
      (Vec::loadu(k + j) + Vec::blendv(zero, one, finite)).store(k + j);
    }
    for (; j < w; ++j) {
      const float v = row[j], mn = std::max(m[j], v);
      s[j] = s[j] * std::exp(m[j] - mn) + std::exp(v - mn);
      m[j] = mn;
      if (v != kNegInf) { t[j] += v; k[j] += 1.f; }
    }
  }
}

// One row of d loss / d logits in place: g * exp(v - lse) - reps (+ the column direction's terms when
// cg is given); removed (-inf) logits get 0 (the portable path).
void row_grad(float* row, int64_t n, float g, float lse, float reps, const float* cg, const float* cl, const float* ce) {
  const Vec vg(g), vlse(lse), vre(reps), zero(0.f), ninf(kNegInf);
  int64_t j = 0;
  for (; j + Vec::size() <= n; j += Vec::size()) {
    Vec v = Vec::loadu(row + j);
    Vec d = vg * (v - vlse).exp() - vre;
    if (cg) d = d + Vec::loadu(cg + j) * (v - Vec::loadu(cl + j)).exp() - Vec::loadu(ce + j);
    Vec::blendv(d, zero, v == ninf).store(row + j);
  }
  for (; j < n; ++j) {
    const float v = row[j];
    float d = g * std::exp(v - lse) - reps;
    if (cg) d += cg[j] * std::exp(v - cl[j]) - ce[j];
    row[j] = (v == kNegInf) ? 0.f : d;
  }
}

#ifdef AVFAST_AVX512
// AVX-512 versions of the exp loops: ATen's Vectorized<float>::exp is scalar libm expf in an extension
// built without CPU_CAPABILITY flags, and the exps are most of these kernels' time.
#define AVX512 __attribute__((target("avx512f")))

// exp of 16 floats (Cephes expf: ln 2 in two parts, degree-5 polynomial, scalef; about 2 ulp);
// exactly 0 below -87.3 (so -inf, a removed logit, gives 0); NaN stays NaN.
AVX512 inline __m512 exp16(__m512 x) {
  const __m512 xc = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.3f));
  const __m512 n = _mm512_roundscale_ps(_mm512_fmadd_ps(xc, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(0.5f)),
                                        _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), xc);
  r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
  __m512 y = _mm512_set1_ps(1.9875691500e-4f);
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.3981999507e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894e-2f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459e-1f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201e-1f));
  y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  const __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.3f), _CMP_NLT_UQ);
  return _mm512_maskz_mov_ps(keep, _mm512_scalef_ps(y, n));
}

AVX512 inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1u);
}

AVX512 std::pair<float, float> row_sums_avx512(const float* row, int64_t n, float m) {
  __m512 vs = _mm512_setzero_ps(), vt = _mm512_setzero_ps();
  const __m512 vm = _mm512_set1_ps(m), ninf = _mm512_set1_ps(kNegInf);
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 lanes = tail_mask(n - j);
    const __m512 v = _mm512_maskz_loadu_ps(lanes, row + j);
    vs = _mm512_mask_add_ps(vs, lanes, vs, exp16(_mm512_sub_ps(v, vm)));
    vt = _mm512_mask_add_ps(vt, lanes & _mm512_cmp_ps_mask(v, ninf, _CMP_NEQ_OQ), vt, v);
  }
  return {_mm512_reduce_add_ps(vs), _mm512_reduce_add_ps(vt)};
}

// column_stats in two passes down the rows (max, then sum exp(v - max)): one exp per entry.
AVX512 void column_stats_avx512(const float* z, int64_t c, int64_t stride, int64_t w, float* m, float* s, float* t,
                                float* k) {
  constexpr int R = 4;  // 4 x 16 = kBlock columns
  __mmask16 lanes[R];
  __m512 vm[R], vs[R], vt[R], vk[R];
  const __m512 ninf = _mm512_set1_ps(kNegInf), one = _mm512_set1_ps(1.f);
  for (int q = 0; q < R; ++q) {
    lanes[q] = w > 16 * q ? tail_mask(w - 16 * q) : __mmask16(0);
    vm[q] = _mm512_set1_ps(kStartMax);
    vs[q] = vt[q] = vk[q] = _mm512_setzero_ps();
  }
  for (int64_t i = 0; i < c; ++i)
    for (int q = 0; q < R; ++q)
      vm[q] = _mm512_mask_max_ps(vm[q], lanes[q], vm[q], _mm512_maskz_loadu_ps(lanes[q], z + i * stride + 16 * q));
  for (int64_t i = 0; i < c; ++i) {
    for (int q = 0; q < R; ++q) {
      const __m512 v = _mm512_maskz_loadu_ps(lanes[q], z + i * stride + 16 * q);
      const __mmask16 finite = lanes[q] & _mm512_cmp_ps_mask(v, ninf, _CMP_NEQ_OQ);
      vs[q] = _mm512_mask_add_ps(vs[q], lanes[q], vs[q], exp16(_mm512_sub_ps(v, vm[q])));
      vt[q] = _mm512_mask_add_ps(vt[q], finite, vt[q], v);
      vk[q] = _mm512_mask_add_ps(vk[q], finite, vk[q], one);
    }
  }
  for (int q = 0; q < R; ++q) {
    _mm512_mask_storeu_ps(m + 16 * q, lanes[q], vm[q]);
    _mm512_mask_storeu_ps(s + 16 * q, lanes[q], vs[q]);
    _mm512_mask_storeu_ps(t + 16 * q, lanes[q], vt[q]);
    _mm512_mask_storeu_ps(k + 16 * q, lanes[q], vk[q]);
  }
}

// row_grad, 16 columns at a time.
AVX512 void row_grad_avx512(float* row, int64_t n, float g, float lse, float reps, const float* cg, const float* cl,
                            const float* ce) {
  const __m512 vg = _mm512_set1_ps(g), vlse = _mm512_set1_ps(lse), vre = _mm512_set1_ps(reps);
  const __m512 ninf = _mm512_set1_ps(kNegInf);
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 lanes = tail_mask(n - j);
    const __m512 v = _mm512_maskz_loadu_ps(lanes, row + j);
    __m512 d = _mm512_fmsub_ps(vg, exp16(_mm512_sub_ps(v, vlse)), vre);
    if (cg != nullptr) {
      const __m512 e = exp16(_mm512_sub_ps(v, _mm512_maskz_loadu_ps(lanes, cl + j)));
      d = _mm512_add_ps(d, _mm512_fmsub_ps(_mm512_maskz_loadu_ps(lanes, cg + j), e, _mm512_maskz_loadu_ps(lanes, ce + j)));
    }
    const __mmask16 finite = _mm512_cmp_ps_mask(v, ninf, _CMP_NEQ_OQ);
    _mm512_mask_storeu_ps(row + j, lanes, _mm512_maskz_mov_ps(finite, d));
  }
}
#undef AVX512
#endif

// Columns' [log-sum-exp, (positive: set later), sum, count] from their (max, sum-exp, sum, count).
void write_col_parts(float* out, int64_t w, const float* m, const float* s, const float* t, const float* k) {
  for (int64_t j = 0; j < w; ++j) {
    out[j * 4 + 0] = m[j] + std::log(s[j]);
    out[j * 4 + 2] = t[j];
    out[j * 4 + 3] = k[j];
  }
}

std::tuple<Tensor, Tensor> tile_fwd(Tensor z, c10::optional<Tensor> x_pos, c10::optional<Tensor> y_pos,
                                    c10::optional<Tensor> x_src, c10::optional<Tensor> y_src, int64_t shift,
                                    double log_w_d, bool both) {
  TORCH_CHECK(z.dim() == 2 && z.scalar_type() == at::kFloat && z.is_contiguous(),
              "contrastive_tile_fwd_cpu: z must be a contiguous float32 (c, n) tensor");
  const int64_t c = z.size(0), n = z.size(1);
  const Ids ids = make_ids(x_pos, y_pos, x_src, y_src, c, n);
  const float log_w = static_cast<float>(log_w_d);
  Tensor row_parts = at::zeros({c, 4}, z.options());
  Tensor col_parts = at::zeros({both ? n : 0, 4}, z.options());
  float* zp = z.data_ptr<float>();
  float* rp = row_parts.data_ptr<float>();
  at::parallel_for(0, c, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float* row = zp + i * n;
      const int64_t jd = i + shift;
      const int64_t removed = apply_rules(row, i, n, jd, ids, log_w);
      const float m = row_max(row, n);
#ifdef AVFAST_AVX512
      const auto [s, t] = avfast_cpu::avx512() ? row_sums_avx512(row, n, m) : row_sums(row, n, m);
#else
      const auto [s, t] = row_sums(row, n, m);
#endif
      rp[i * 4 + 0] = m + std::log(s);
      rp[i * 4 + 1] = (jd >= 0 && jd < n) ? row[jd] : 0.f;
      rp[i * 4 + 2] = t;
      rp[i * 4 + 3] = static_cast<float>(n - removed);
    }
  });
  if (both) {
    float* cp = col_parts.data_ptr<float>();
    constexpr int64_t kBlock = 64;  // columns per task; online (max, sum-exp) per column down the rows
    at::parallel_for(0, (n + kBlock - 1) / kBlock, 1, [&](int64_t b0, int64_t b1) {
      float m[kBlock], s[kBlock], t[kBlock], k[kBlock];
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t j0 = b * kBlock, w = std::min(kBlock, n - j0);
#ifdef AVFAST_AVX512
        if (avfast_cpu::avx512())
          column_stats_avx512(zp + j0, c, n, w, m, s, t, k);
        else
#endif
          column_stats(zp + j0, c, n, w, m, s, t, k);
        write_col_parts(cp + j0 * 4, w, m, s, t, k);
      }
    });
    for (int64_t i = 0; i < c; ++i) {
      const int64_t jd = i + shift;
      if (jd >= 0 && jd < n) cp[jd * 4 + 1] = zp[i * n + jd];
    }
  }
  return {row_parts, col_parts};
}

// d loss / d logits of one tile, written over z: for each direction with upstream g and stats
// (lse, count): g * (softmax - (1 - eps) onehot - eps / count * valid).
Tensor tile_bwd(Tensor z, c10::optional<Tensor> x_pos, c10::optional<Tensor> y_pos, c10::optional<Tensor> x_src,
                c10::optional<Tensor> y_src, int64_t shift, double log_w_d, double eps_d, Tensor g_row,
                Tensor row_stats, c10::optional<Tensor> g_col, c10::optional<Tensor> col_stats) {
  TORCH_CHECK(z.dim() == 2 && z.scalar_type() == at::kFloat && z.is_contiguous(),
              "contrastive_tile_bwd_cpu: z must be a contiguous float32 (c, n) tensor");
  const int64_t c = z.size(0), n = z.size(1);
  const Ids ids = make_ids(x_pos, y_pos, x_src, y_src, c, n);
  const float log_w = static_cast<float>(log_w_d), eps = static_cast<float>(eps_d);
  const bool both = g_col.has_value();
  TORCH_CHECK(g_row.numel() == c && row_stats.numel() == 2 * c, "contrastive_tile_bwd_cpu: row grads/stats size");
  Tensor gr = g_row.to(at::kFloat).contiguous(), rs = row_stats.to(at::kFloat).contiguous();
  // Per column: g, lse, g * eps / count (zeros when the column direction is absent).
  Tensor cg = at::zeros({n}, z.options()), clse = at::zeros({n}, z.options()), ceps = at::zeros({n}, z.options());
  if (both) {
    TORCH_CHECK(g_col->numel() == n && col_stats.has_value() && col_stats->numel() == 2 * n,
                "contrastive_tile_bwd_cpu: column grads/stats size");
    Tensor cs = col_stats->to(at::kFloat);
    cg = g_col->to(at::kFloat).contiguous();
    clse = cs.select(1, 0).contiguous();
    ceps = (cg * eps / cs.select(1, 1)).contiguous();
  }
  float* zp = z.data_ptr<float>();
  const float *grp = gr.data_ptr<float>(), *rsp = rs.data_ptr<float>();
  const float *cgp = cg.data_ptr<float>(), *clp = clse.data_ptr<float>(), *cep = ceps.data_ptr<float>();
  at::parallel_for(0, c, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float* row = zp + i * n;
      const int64_t jd = i + shift;
      apply_rules(row, i, n, jd, ids, log_w);
      const float g = grp[i], lse = rsp[2 * i], reps = g * eps / rsp[2 * i + 1];
#ifdef AVFAST_AVX512
      if (avfast_cpu::avx512())
        row_grad_avx512(row, n, g, lse, reps, both ? cgp : nullptr, clp, cep);
      else
#endif
        row_grad(row, n, g, lse, reps, both ? cgp : nullptr, clp, cep);
      if (jd >= 0 && jd < n) row[jd] -= (1.f - eps) * (g + (both ? cgp[jd] : 0.f));
    }
  });
  return z;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(avfast_C, m) {
  m.def("contrastive_tile_fwd_cpu(Tensor(a!) z, Tensor? x_pos, Tensor? y_pos, Tensor? x_src, Tensor? y_src, "
        "int shift, float log_w, bool both) -> (Tensor, Tensor)");
  m.def("contrastive_tile_bwd_cpu(Tensor(a!) z, Tensor? x_pos, Tensor? y_pos, Tensor? x_src, Tensor? y_src, "
        "int shift, float log_w, float smoothing, Tensor g_row, Tensor row_stats, Tensor? g_col, "
        "Tensor? col_stats) -> Tensor(a!)");
  m.impl("contrastive_tile_fwd_cpu", c10::DispatchKey::CPU, TORCH_FN(tile_fwd));
  m.impl("contrastive_tile_bwd_cpu", c10::DispatchKey::CPU, TORCH_FN(tile_bwd));
}
