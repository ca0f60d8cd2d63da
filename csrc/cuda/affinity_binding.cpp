// Torch binding of csrc/cuda/affinity.cu: avfast_C::affinity_topk_cuda (compiled only in the CUDA build).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>

extern "C" cudaError_t avfast_affinity_topk_f32(const float* a, const float* b, const float* bias, float* part_v,
                                                int64_t* part_i, float* out_v, int64_t* out_i, int G, int B,
                                                int N, int D, int k, int splits, bool exclude_self,
                                                cudaStream_t stream);

namespace {

constexpr int64_t kRowsPerBlock = 64;
constexpr int64_t kMinColsPerSplit = 256;

// Column splits so that about two blocks per SM run: a few query rows over a huge gallery still fill the GPU.
int64_t choose_splits(int64_t blocks, int64_t N, int device) {
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  const int64_t want = (2 * sms + blocks - 1) / std::max<int64_t>(blocks, 1);
  return std::max<int64_t>(1, std::min(want, (N + kMinColsPerSplit - 1) / kMinColsPerSplit));
}

// a (G, B, D), b (G, N, D) float32 CUDA; bias (G, N) float32 or empty -> values (G, B, k), indices int64.
std::tuple<at::Tensor, at::Tensor> affinity_topk_cuda(const at::Tensor& a_in, const at::Tensor& b_in,
                                                      const at::Tensor& bias_in, int64_t k, bool exclude_self) {
  TORCH_CHECK(a_in.is_cuda() && b_in.is_cuda(), "affinity_topk_cuda: a and b must be CUDA tensors");
  TORCH_CHECK(a_in.scalar_type() == at::kFloat && b_in.scalar_type() == at::kFloat,
              "affinity_topk_cuda: float32 operands expected");
  TORCH_CHECK(a_in.dim() == 3 && b_in.dim() == 3 && a_in.size(0) == b_in.size(0) && a_in.size(2) == b_in.size(2),
              "affinity_topk_cuda: a (G, B, D) and b (G, N, D) expected, got ", a_in.sizes(), " and ", b_in.sizes());
  const int64_t G = a_in.size(0), B = a_in.size(1), N = b_in.size(1), D = a_in.size(2);
  TORCH_CHECK(k >= 1 && k <= 32, "affinity_topk_cuda: 1 <= k <= 32 required, got ", k);
  TORCH_CHECK(k <= N - (exclude_self ? 1 : 0), "affinity_topk_cuda: k=", k, " exceeds the N=", N, " columns");
  TORCH_CHECK(bias_in.numel() == 0 || (bias_in.is_cuda() && bias_in.scalar_type() == at::kFloat &&
                                       bias_in.numel() == G * N),
              "affinity_topk_cuda: bias must be empty or float32 (G, N) on the same device");
  TORCH_CHECK(B < INT32_MAX && N < INT32_MAX && D < INT32_MAX, "affinity_topk_cuda: sizes must fit in int32");
  const c10::cuda::CUDAGuard guard(a_in.device());
  const at::Tensor a = a_in.detach().contiguous(), b = b_in.detach().contiguous(), bias = bias_in.contiguous();
  const int64_t splits = choose_splits(G * ((B + kRowsPerBlock - 1) / kRowsPerBlock), N, a.get_device());
  auto part_v = at::empty({G, B, splits, k}, a.options());
  auto part_i = at::empty({G, B, splits, k}, a.options().dtype(at::kLong));
  auto values = at::empty({G, B, k}, a.options());
  auto indices = at::empty({G, B, k}, a.options().dtype(at::kLong));
  const cudaError_t err = avfast_affinity_topk_f32(
      a.data_ptr<float>(), b.data_ptr<float>(), bias.numel() ? bias.data_ptr<float>() : nullptr,
      part_v.data_ptr<float>(), part_i.data_ptr<int64_t>(), values.data_ptr<float>(), indices.data_ptr<int64_t>(),
      (int)G, (int)B, (int)N, (int)D, (int)k, (int)splits, exclude_self, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "affinity_topk_cuda: kernel launch failed: ", cudaGetErrorString(err));
  return {values, indices};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(avfast_C, m) {
  m.def("affinity_topk_cuda(Tensor a, Tensor b, Tensor bias, int k, bool exclude_self) -> (Tensor, Tensor)");
  m.impl("affinity_topk_cuda", c10::DispatchKey::CUDA, &affinity_topk_cuda);
}
