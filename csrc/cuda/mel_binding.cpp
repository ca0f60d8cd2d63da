// Torch binding of csrc/cuda/mel.cu: avfast_C::mel_spectrogram_cuda (compiled only in the CUDA build).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <cmath>

extern "C" {
size_t avfast_mel_smem_bytes(int64_t tile, int64_t win_len, int64_t n_freq);
int avfast_mel_tile(int64_t win_len, int64_t n_freq, size_t smem_limit);
cudaError_t avfast_mel_spectrogram_cuda(
    const void* wave, int dtype, const int64_t* lengths, const int64_t* frames, const float* window, const float* fb,
    const int64_t* bands, const int64_t* freq_masks, const int64_t* time_masks, float* out, int64_t B, int64_t C,
    int64_t T, int64_t win_len, int64_t n_fft, int64_t n_mels, int64_t n_fm, int64_t n_tm, int64_t hop,
    int64_t offset, int boundary, int64_t n_out, float preemphasis, int remove_dc, float power, int log_mode,
    float log_eps, float log_offset, float top_db, float mean, float std, float pad_value, float mask_value,
    int mask_mean, int time_major, int tile, size_t smem_bytes, cudaStream_t stream);
}

namespace {

at::Tensor mel_spectrogram_cuda(const at::Tensor& wave, const at::Tensor& lengths, const at::Tensor& frames,
                                const at::Tensor& window, const at::Tensor& fb, const at::Tensor& bands,
                                const at::Tensor& freq_masks, const at::Tensor& time_masks, int64_t n_fft, int64_t hop,
                                int64_t offset, int64_t boundary, int64_t n_out, double preemphasis, bool remove_dc,
                                double power, int64_t log_mode, double log_eps, double log_offset, double top_db,
                                double mean, double std, double pad_value, double mask_value, bool time_major) {
  TORCH_CHECK(wave.is_cuda() && wave.dim() == 3 && wave.is_contiguous(), "mel_spectrogram_cuda: wave must be a contiguous CUDA (B, C, T)");
  for (const at::Tensor* t : {&lengths, &frames, &bands, &freq_masks, &time_masks})
    TORCH_CHECK(t->is_cuda() && t->scalar_type() == at::kLong && t->is_contiguous(), "mel_spectrogram_cuda: index tensors must be contiguous CUDA int64");
  TORCH_CHECK(window.scalar_type() == at::kFloat && fb.scalar_type() == at::kFloat, "mel_spectrogram_cuda: window and fb must be float32");
  int dtype = 0;
  if (wave.scalar_type() == at::kHalf) dtype = 1;
  else if (wave.scalar_type() == at::kDouble) dtype = 2;
  else TORCH_CHECK(wave.scalar_type() == at::kFloat, "mel_spectrogram_cuda: wave must be float16/32/64");
  const c10::cuda::CUDAGuard guard(wave.device());
  const int64_t B = wave.size(0), C = wave.size(1), T = wave.size(2), n_mels = fb.size(1), win_len = window.size(0);
  const int64_t n_freq = n_fft / 2 + 1;
  at::Tensor out = time_major ? at::empty({B, C, n_out, n_mels}, wave.options().dtype(at::kFloat))
                              : at::empty({B, C, n_mels, n_out}, wave.options().dtype(at::kFloat));
  int smem_optin = 0;
  cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, wave.get_device());
  const int tile = avfast_mel_tile(win_len, n_freq, static_cast<size_t>(smem_optin));
  TORCH_CHECK(tile > 0, "mel_spectrogram_cuda: n_fft=", n_fft, " needs more shared memory than this GPU has");
  const cudaError_t err = avfast_mel_spectrogram_cuda(
      wave.data_ptr(), dtype, lengths.data_ptr<int64_t>(), frames.data_ptr<int64_t>(), window.data_ptr<float>(),
      fb.data_ptr<float>(), bands.data_ptr<int64_t>(), freq_masks.data_ptr<int64_t>(), time_masks.data_ptr<int64_t>(),
      out.data_ptr<float>(), B, C, T, win_len, n_fft, n_mels, freq_masks.size(1), time_masks.size(1), hop, offset,
      static_cast<int>(boundary), n_out, static_cast<float>(preemphasis), remove_dc, static_cast<float>(power),
      static_cast<int>(log_mode), static_cast<float>(log_eps), static_cast<float>(log_offset),
      static_cast<float>(top_db), static_cast<float>(mean), static_cast<float>(std), static_cast<float>(pad_value),
      std::isnan(mask_value) ? 0.0f : static_cast<float>(mask_value), std::isnan(mask_value), time_major, tile,
      avfast_mel_smem_bytes(tile, win_len, n_freq), c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "mel_spectrogram_cuda: launch failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(avfast_C, m) {
  m.def("mel_spectrogram_cuda(Tensor wave, Tensor lengths, Tensor frames, Tensor window, Tensor fb, Tensor bands, "
        "Tensor freq_masks, Tensor time_masks, int n_fft, int hop, int offset, int boundary, int n_out, "
        "float preemphasis, bool remove_dc, float power, int log_mode, float log_eps, float log_offset, "
        "float top_db, float mean, float std, float pad_value, float mask_value, bool time_major) -> Tensor");
  m.impl("mel_spectrogram_cuda", c10::DispatchKey::CUDA, TORCH_FN(mel_spectrogram_cuda));
}
