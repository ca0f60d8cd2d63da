// Torch binding of the CUDA cross-attention forward (compiled only in the CUDA build):
// avfast_C::cross_attention_fwd_cuda(q, k, v, kv_lens?, key_padding_mask?, attn_bias?, keep?, scale,
// dropout_p) -> (out (B, Hq, Lq, Dh), lse (B, Hq, Lq) fp32). Inputs are validated in Python first.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>

#include "attention.h"

namespace {

int dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return avfast::kAttnF32;
    case at::kHalf: return avfast::kAttnF16;
    case at::kBFloat16: return avfast::kAttnBF16;
    default: TORCH_CHECK(false, "cross_attention_fwd_cuda: dtype ", t, " not supported (float32, float16, bfloat16)");
  }
}

at::Tensor last_dim_contiguous(const at::Tensor& x) { return x.stride(-1) == 1 ? x : x.contiguous(); }

std::tuple<at::Tensor, at::Tensor> cross_attention_fwd_cuda(const at::Tensor& q_in, const at::Tensor& k_in,
                                                            const at::Tensor& v_in,
                                                            const std::optional<at::Tensor>& kv_lens,
                                                            const std::optional<at::Tensor>& key_padding_mask,
                                                            const std::optional<at::Tensor>& attn_bias,
                                                            const std::optional<at::Tensor>& keep, double scale,
                                                            double dropout_p) {
  TORCH_CHECK(q_in.is_cuda() && q_in.dim() == 4 && k_in.dim() == 4 && v_in.dim() == 4,
              "cross_attention_fwd_cuda: expected 4-D CUDA q, k, v");
  const c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = last_dim_contiguous(q_in), k = last_dim_contiguous(k_in), v = last_dim_contiguous(v_in);
  const int64_t B = q.size(0), Hq = q.size(1), Lq = q.size(2), Dh = q.size(3), Hkv = k.size(1), Lk = k.size(2);
  auto out = at::empty({B, Hq, Lq, Dh}, q.options());
  auto lse = at::empty({B, Hq, Lq}, q.options().dtype(at::kFloat));

  // Split the keys when B * Hq * Lq blocks cannot keep every SM busy.
  int sms = 1;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, q.get_device());
  const int64_t blocks = B * Hq * Lq, target = 2 * (int64_t)sms;
  int64_t splits = blocks >= target ? 1 : std::min<int64_t>((target + blocks - 1) / blocks, (Lk + 63) / 64);
  splits = std::max<int64_t>(splits, 1);
  const int64_t keys_per_split = (Lk + splits - 1) / splits;
  splits = (Lk + keys_per_split - 1) / keys_per_split;

  at::Tensor part_out, part_lse, bias, kpm, lens, keep_u8;
  avfast::AttnFwdArgs a{};
  a.q = q.data_ptr();
  a.k = k.data_ptr();
  a.v = v.data_ptr();
  if (attn_bias) {
    bias = attn_bias->to(q.scalar_type()).expand({B, Hq, Lq, Lk});
    a.bias = bias.data_ptr();
    a.sbb = bias.stride(0), a.sbh = bias.stride(1), a.sbm = bias.stride(2), a.sbn = bias.stride(3);
  }
  if (key_padding_mask) {
    kpm = key_padding_mask->to(at::kByte).contiguous();
    a.key_padding = kpm.data_ptr<uint8_t>();
  }
  if (kv_lens) {
    lens = kv_lens->to(at::kLong).contiguous();
    a.kv_lens = lens.data_ptr<int64_t>();
  }
  if (keep) {
    keep_u8 = keep->to(at::kByte).contiguous();
    a.keep = keep_u8.data_ptr<uint8_t>();
  }
  if (splits > 1) {
    part_out = at::empty({splits, B, Hq, Lq, Dh}, q.options().dtype(at::kFloat));
    part_lse = at::empty({splits, B, Hq, Lq}, q.options().dtype(at::kFloat));
    a.part_out = part_out.data_ptr<float>();
    a.part_lse = part_lse.data_ptr<float>();
  }
  a.out = out.data_ptr();
  a.lse = lse.data_ptr<float>();
  a.sqb = q.stride(0), a.sqh = q.stride(1), a.sqm = q.stride(2);
  a.skb = k.stride(0), a.skh = k.stride(1), a.skn = k.stride(2);
  a.svb = v.stride(0), a.svh = v.stride(1), a.svn = v.stride(2);
  a.B = (int)B, a.Hq = (int)Hq, a.Hkv = (int)Hkv, a.Lq = (int)Lq, a.Lk = (int)Lk, a.Dh = (int)Dh;
  a.splits = (int)splits, a.keys_per_split = (int)keys_per_split;
  a.scale = (float)scale;
  a.drop_scale = keep ? (float)(1.0 / (1.0 - dropout_p)) : 1.f;
  const cudaError_t err = avfast_cross_attention_fwd_cuda(&a, dtype_code(q.scalar_type()),
                                                          c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "cross_attention_fwd_cuda: launch failed: ", cudaGetErrorString(err));
  return {out, lse};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(avfast_C, m) {
  m.def("cross_attention_fwd_cuda(Tensor q, Tensor k, Tensor v, Tensor? kv_lens, Tensor? key_padding_mask, "
        "Tensor? attn_bias, Tensor? keep, float scale, float dropout_p) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(avfast_C, CUDA, m) { m.impl("cross_attention_fwd_cuda", &cross_attention_fwd_cuda); }
