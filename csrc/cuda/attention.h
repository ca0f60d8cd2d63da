// Arguments of avfast's CUDA cross-attention forward (shared by attention.cu and its binding).
// Plain C struct: no ATen, so nvcc -c compiles the kernel file anywhere.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace avfast {

enum AttnDtype : int { kAttnF32 = 0, kAttnF16 = 1, kAttnBF16 = 2 };

struct AttnFwdArgs {
  const void* q;                 // (B, Hq, Lq, Dh), strides sqb/sqh/sqm, last dim contiguous
  const void* k;                 // (B, Hkv, Lk, Dh), strides skb/skh/skn
  const void* v;                 // (B, Hkv, Lk, Dh), strides svb/svh/svn
  const void* bias;              // nullable, q's dtype, broadcast (B, Hq, Lq, Lk) strides sbb/sbh/sbm/sbn
  const uint8_t* key_padding;    // nullable (B, Lk), 1 = padding
  const int64_t* kv_lens;        // nullable (B,)
  const uint8_t* keep;           // nullable dropout keep mask (B, Hq, Lq, Lk) contiguous
  void* out;                     // (B, Hq, Lq, Dh) contiguous, q's dtype
  float* lse;                    // (B, Hq, Lq) fp32
  float* part_out;               // (splits, B, Hq, Lq, Dh) fp32 when splits > 1
  float* part_lse;               // (splits, B, Hq, Lq) fp32 when splits > 1
  int64_t sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sbb, sbh, sbm, sbn;
  int B, Hq, Hkv, Lq, Lk, Dh, splits, keys_per_split;
  float scale, drop_scale;
};

}  // namespace avfast

// Launches the forward (and the split merge when args.splits > 1) on `stream`.
extern "C" cudaError_t avfast_cross_attention_fwd_cuda(const avfast::AttnFwdArgs* args, int dtype, cudaStream_t stream);
