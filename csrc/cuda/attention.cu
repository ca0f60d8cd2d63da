// Cross-attention forward for short queries over long, padded keys (plain CUDA, no ATen).
//
// One block per (query row, batch * head, key split); its warps stride over the split's keys, each
// lane holding Dh / 32 of the query, the running output and the online-softmax state:
//   s = q . k * scale + bias,  masked keys (past kv_lens[b] or key_padding) skipped, never read;
//   m, l, acc updated per key; warps merged through shared memory; out = acc / l, lse = m + log l.
// Rows without a valid key give out = 0 and lse = -inf. With several splits every split writes an
// fp32 partial and a second kernel merges them: out = sum_s exp(lse_s - lse) out_s.
// Memory-bound, no tensor cores: meant for decode-like Lq (1-16) at inference; training uses Triton.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>

#include "attention.h"
#include "common.cuh"

namespace avfast {
namespace {

constexpr int kWarps = 4;
constexpr int kMaxDh = 256;
constexpr int kPerLane = kMaxDh / 32;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16(x); }

__device__ __forceinline__ float warp_sum(float x) {
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// Writes one finished row: final output (q's dtype) or the split's fp32 partial.
template <typename T>
__device__ void store_row(const AttnFwdArgs& a, int split, int64_t row, const float* o, float lse, int lane) {
  const bool partial = a.splits > 1;
  for (int i = 0; i < kPerLane; ++i) {
    const int d = lane + 32 * i;
    if (d >= a.Dh) break;
    if (partial) {
      a.part_out[((int64_t)split * a.B * a.Hq * a.Lq + row) * a.Dh + d] = o[i];
    } else {
      static_cast<T*>(a.out)[row * a.Dh + d] = from_float<T>(o[i]);
    }
  }
  if (lane == 0) {
    if (partial) a.part_lse[(int64_t)split * a.B * a.Hq * a.Lq + row] = lse;
    else a.lse[row] = lse;
  }
}

template <typename T>
__global__ void __launch_bounds__(32 * kWarps) attn_fwd_kernel(AttnFwdArgs a) {
  const int m = blockIdx.x, bh = blockIdx.y, split = blockIdx.z;
  const int b = bh / a.Hq, h = bh % a.Hq, hk = h / (a.Hq / a.Hkv);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const T* q = static_cast<const T*>(a.q) + b * a.sqb + h * a.sqh + m * a.sqm;
  const T* kb = static_cast<const T*>(a.k) + b * a.skb + hk * a.skh;
  const T* vb = static_cast<const T*>(a.v) + b * a.svb + hk * a.svh;
  const T* bias = a.bias ? static_cast<const T*>(a.bias) + b * a.sbb + h * a.sbh + m * a.sbm : nullptr;
  const int64_t row = (int64_t)bh * a.Lq + m;

  float qr[kPerLane], acc[kPerLane];
  for (int i = 0; i < kPerLane; ++i) {
    const int d = lane + 32 * i;
    qr[i] = d < a.Dh ? to_float(q[d]) * a.scale : 0.f;
    acc[i] = 0.f;
  }
  int end = a.Lk;
  if (a.kv_lens) end = min(end, (int)a.kv_lens[b]);
  const int start = split * a.keys_per_split;
  end = min(end, start + a.keys_per_split);

  float mx = -INFINITY, l = 0.f;
  for (int n = start + warp; n < end; n += kWarps) {
    if (a.key_padding && a.key_padding[(int64_t)b * a.Lk + n]) continue;
    const T* kr = kb + n * a.skn;
    float s = 0.f;
    for (int i = 0; i < kPerLane; ++i) {
      const int d = lane + 32 * i;
      if (d < a.Dh) s += qr[i] * to_float(kr[d]);
    }
    s = warp_sum(s);
    if (bias) s += to_float(bias[n * a.sbn]);
    if (s == -INFINITY) continue;  // masked by the bias
    const float m_new = fmaxf(mx, s);
    const float alpha = __expf(mx - m_new);
    const float p = __expf(s - m_new);
    l = l * alpha + p;
    float pv = p;
    if (a.keep) pv = a.keep[row * a.Lk + n] ? p * a.drop_scale : 0.f;
    const T* vr = vb + n * a.svn;
    for (int i = 0; i < kPerLane; ++i) {
      const int d = lane + 32 * i;
      if (d < a.Dh) acc[i] = acc[i] * alpha + pv * to_float(vr[d]);
    }
    mx = m_new;
  }

  __shared__ float s_m[kWarps], s_l[kWarps];
  __shared__ float s_acc[kWarps][kMaxDh];
  if (lane == 0) {
    s_m[warp] = mx;
    s_l[warp] = l;
  }
  for (int i = 0; i < kPerLane; ++i) {
    const int d = lane + 32 * i;
    if (d < a.Dh) s_acc[warp][d] = acc[i];
  }
  __syncthreads();
  if (warp != 0) return;
  float m_all = -INFINITY;
  for (int w = 0; w < kWarps; ++w) m_all = fmaxf(m_all, s_m[w]);
  const float m_safe = m_all == -INFINITY ? 0.f : m_all;
  float weight[kWarps], l_all = 0.f;
  for (int w = 0; w < kWarps; ++w) {
    weight[w] = __expf(s_m[w] - m_safe);
    l_all += s_l[w] * weight[w];
  }
  const float inv = l_all > 0.f ? 1.f / l_all : 0.f;
  float o[kPerLane];
  for (int i = 0; i < kPerLane; ++i) {
    const int d = lane + 32 * i;
    float sum = 0.f;
    if (d < a.Dh) {
      for (int w = 0; w < kWarps; ++w) sum += s_acc[w][d] * weight[w];
    }
    o[i] = sum * inv;
  }
  store_row<T>(a, split, row, o, l_all > 0.f ? m_safe + logf(l_all) : -INFINITY, lane);
}

// One warp per (batch * head, query row): merges the splits' partials.
template <typename T>
__global__ void attn_merge_kernel(AttnFwdArgs a) {
  const int64_t rows = (int64_t)a.B * a.Hq * a.Lq;
  const int64_t row = (int64_t)blockIdx.x * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  float m_all = -INFINITY;
  for (int s = 0; s < a.splits; ++s) m_all = fmaxf(m_all, a.part_lse[s * rows + row]);
  const float m_safe = m_all == -INFINITY ? 0.f : m_all;
  float total = 0.f;
  for (int s = 0; s < a.splits; ++s) total += __expf(a.part_lse[s * rows + row] - m_safe);
  const float inv = total > 0.f ? 1.f / total : 0.f;
  for (int d = lane; d < a.Dh; d += 32) {
    float sum = 0.f;
    for (int s = 0; s < a.splits; ++s) {
      sum += __expf(a.part_lse[s * rows + row] - m_safe) * a.part_out[(s * rows + row) * a.Dh + d];
    }
    static_cast<T*>(a.out)[row * a.Dh + d] = from_float<T>(sum * inv);
  }
  if (lane == 0) a.lse[row] = total > 0.f ? m_safe + logf(total) : -INFINITY;
}

template <typename T>
cudaError_t launch(const AttnFwdArgs& a, cudaStream_t stream) {
  dim3 grid(a.Lq, a.B * a.Hq, a.splits);
  attn_fwd_kernel<T><<<grid, 32 * kWarps, 0, stream>>>(a);
  if (a.splits > 1) {
    const int64_t rows = (int64_t)a.B * a.Hq * a.Lq;
    attn_merge_kernel<T><<<(unsigned)ceil_div((int)rows, kWarps), 32 * kWarps, 0, stream>>>(a);
  }
  return last_launch_error();
}

}  // namespace
}  // namespace avfast

extern "C" cudaError_t avfast_cross_attention_fwd_cuda(const avfast::AttnFwdArgs* args, int dtype, cudaStream_t stream) {
  using namespace avfast;
  if (args->Dh < 1 || args->Dh > kMaxDh || args->Hkv < 1 || args->Hq % args->Hkv != 0 || args->splits < 1) {
    return cudaErrorInvalidValue;
  }
  switch (dtype) {
    case kAttnF32: return launch<float>(*args, stream);
    case kAttnF16: return launch<__half>(*args, stream);
    case kAttnBF16: return launch<__nv_bfloat16>(*args, stream);
    default: return cudaErrorInvalidValue;
  }
}
