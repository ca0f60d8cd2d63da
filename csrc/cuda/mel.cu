// Fused mel spectrogram on CUDA (plain CUDA, no ATen: compiles with `nvcc -c` anywhere).
//
// mel_frames_kernel: one block per (sample x channel, tile of `tile` frames). The tile's windowed frames
// (DC removal, pre-emphasis, boundary reflection per sample length) go to shared memory; each thread
// owns DFT bins k and accumulates all frames of the tile for them (one sincospi per (k, n) for the
// whole tile); |X|^p goes to shared memory; then each thread sums sparse mel bands and writes log/dB.
// mel_finish_kernel: one block per sample: top_db over all channels, padding, masks, (y - mean) / std.
// Argument order follows avfast/ops/mel.py: fused_args.
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math_constants.h>
#include <stdint.h>

#include "common.cuh"

namespace {

constexpr int kThreads = 256;
constexpr int kMaxTile = 16;

struct MelArgs {
  const void* wave;
  int dtype;  // 0 float32, 1 float16, 2 float64
  const int64_t *lengths, *frames, *bands;
  const float *window, *fb;
  float* out;
  int64_t C, T, win_len, n_fft, n_freq, n_mels, hop, offset, n_out, stride_m, stride_f;
  int boundary, log_mode, remove_dc, tile;
  float preemphasis, power, log_eps, log_offset;
};

__device__ inline float load_sample(const MelArgs& a, int64_t row, int64_t i) {
  const int64_t j = row * a.T + i;
  if (a.dtype == 1) return __half2float(static_cast<const __half*>(a.wave)[j]);
  if (a.dtype == 2) return static_cast<float>(static_cast<const double*>(a.wave)[j]);
  return static_cast<const float*>(a.wave)[j];
}

// Value of wave sample i (may lie outside [0, len)) under the boundary rule; 0 outside for "constant".
__device__ inline float boundary_sample(const MelArgs& a, int64_t row, int64_t i, int64_t len) {
  if (i < 0 || i >= len) {
    if (a.boundary == 1) {  // reflect
      const int64_t period = len > 1 ? 2 * (len - 1) : 1;
      int64_t j = ((i % period) + period) % period;
      i = j < len ? j : period - j;
    } else if (a.boundary == 2) {  // replicate
      i = i < 0 ? 0 : len - 1;
    } else if (a.boundary == 3) {  // symmetric (kaldi)
      const int64_t period = 2 * len;
      int64_t j = ((i % period) + period) % period;
      i = j < len ? j : period - 1 - j;
    } else {
      return 0.0f;
    }
  }
  return load_sample(a, row, i);
}

__device__ inline float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

__global__ void mel_frames_kernel(MelArgs a) {
  extern __shared__ float smem[];
  float* frames = smem;                       // (tile, win_len)
  float* power = smem + a.tile * a.win_len;   // (tile, n_freq)
  __shared__ float means[kMaxTile];
  const int64_t bc = blockIdx.x, b = bc / a.C;
  const int64_t len = a.lengths[b];
  const int64_t valid = a.frames[b] < a.n_out ? a.frames[b] : a.n_out;
  const int64_t f0 = static_cast<int64_t>(blockIdx.y) * a.tile;
  if (f0 >= valid) return;
  const int nf = static_cast<int>(valid - f0 < a.tile ? valid - f0 : a.tile);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int f = warp; f < kMaxTile; f += kThreads / 32) {
    float s = 0.0f;
    if (a.remove_dc && f < nf) {
      const int64_t s0 = (f0 + f) * a.hop + a.offset;
      for (int64_t n = lane; n < a.win_len; n += 32) s += boundary_sample(a, bc, s0 + n, len);
      s = warp_sum(s);
    }
    if (lane == 0) means[f] = a.remove_dc ? s / a.win_len : 0.0f;
  }
  __syncthreads();
  for (int64_t idx = threadIdx.x; idx < nf * a.win_len; idx += kThreads) {
    const int f = static_cast<int>(idx / a.win_len);
    const int64_t n = idx % a.win_len, s0 = (f0 + f) * a.hop + a.offset;
    float v = boundary_sample(a, bc, s0 + n, len) - means[f];
    if (a.preemphasis != 0.0f) v -= a.preemphasis * (boundary_sample(a, bc, s0 + (n > 0 ? n - 1 : 0), len) - means[f]);
    frames[idx] = v * a.window[n];
  }
  __syncthreads();
  for (int64_t k = threadIdx.x; k < a.n_freq; k += kThreads) {
    float re[kMaxTile], im[kMaxTile];
    for (int f = 0; f < kMaxTile; ++f) re[f] = im[f] = 0.0f;
    int64_t phase = 0;  // (k * n) mod n_fft, kept exact in integers
    for (int64_t n = 0; n < a.win_len; ++n) {
      float s, c;
      sincospif(2.0f * static_cast<float>(phase) / static_cast<float>(a.n_fft), &s, &c);
#pragma unroll
      for (int f = 0; f < kMaxTile; ++f) {
        if (f < nf) {
          const float v = frames[f * a.win_len + n];
          re[f] += v * c;
          im[f] -= v * s;
        }
      }
      phase += k;
      if (phase >= a.n_fft) phase -= a.n_fft;
    }
    for (int f = 0; f < nf; ++f) {
      float p = re[f] * re[f] + im[f] * im[f];
      if (a.power != 2.0f) p = p > 0.0f ? powf(p, 0.5f * a.power) : 0.0f;
      power[f * a.n_freq + k] = p;
    }
  }
  __syncthreads();
  float* out = a.out + bc * a.n_mels * a.n_out;
  for (int64_t idx = threadIdx.x; idx < nf * a.n_mels; idx += kThreads) {
    const int f = static_cast<int>(idx / a.n_mels);
    const int64_t m = idx % a.n_mels;
    float acc = 0.0f;
    for (int64_t k = a.bands[2 * m]; k < a.bands[2 * m + 1]; ++k) acc += a.fb[k * a.n_mels + m] * power[f * a.n_freq + k];
    if (a.log_mode == 1) acc = logf(fmaxf(acc + a.log_offset, a.log_eps));
    else if (a.log_mode == 2) acc = 10.0f * log10f(fmaxf(acc, a.log_eps));
    out[m * a.stride_m + (f0 + f) * a.stride_f] = acc;
  }
}

struct FinishArgs {
  float* out;
  const int64_t *frames, *freq_masks, *time_masks;
  int64_t C, n_mels, n_out, stride_m, stride_f, n_fm, n_tm;
  float top_db, mean, inv_std, pad_value, mask_value;
  int mask_mean;
};

template <bool kMax>
__device__ float block_reduce(float v, float* scratch) {
  for (int o = 16; o > 0; o >>= 1) {
    const float w = __shfl_down_sync(0xffffffffu, v, o);
    v = kMax ? fmaxf(v, w) : v + w;
  }
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    v = threadIdx.x < kThreads / 32 ? scratch[threadIdx.x] : (kMax ? -CUDART_INF_F : 0.0f);
    for (int o = 16; o > 0; o >>= 1) {
      const float w = __shfl_down_sync(0xffffffffu, v, o);
      v = kMax ? fmaxf(v, w) : v + w;
    }
    if (threadIdx.x == 0) scratch[0] = v;
  }
  __syncthreads();
  v = scratch[0];
  __syncthreads();
  return v;
}

__device__ inline bool hit(const int64_t* intervals, int64_t count, int64_t pos) {
  for (int64_t i = 0; i < count; ++i)
    if (pos >= intervals[2 * i] && pos < intervals[2 * i + 1]) return true;
  return false;
}

__global__ void mel_finish_kernel(FinishArgs a) {
  __shared__ float scratch[kThreads / 32];
  const int64_t b = blockIdx.x;
  const int64_t valid = a.frames[b] < a.n_out ? a.frames[b] : a.n_out;
  const int64_t plane = a.n_mels * a.n_out, inside = a.n_mels * valid;
  float* base = a.out + b * a.C * plane;
  const int64_t* fm = a.freq_masks + b * a.n_fm * 2;
  const int64_t* tm = a.time_masks + b * a.n_tm * 2;
  float floor_value = -CUDART_INF_F;
  if (a.top_db >= 0.0f) {
    float peak = -CUDART_INF_F;
    for (int64_t c = 0; c < a.C; ++c)
      for (int64_t i = threadIdx.x; i < inside; i += kThreads)
        peak = fmaxf(peak, base[c * plane + (i / valid) * a.stride_m + (i % valid) * a.stride_f]);
    floor_value = block_reduce<true>(peak, scratch) - a.top_db;
  }
  for (int64_t c = 0; c < a.C; ++c) {
    float* y = base + c * plane;
    float fill = a.mask_value;
    if (a.mask_mean) {
      float s = 0.0f;
      for (int64_t i = threadIdx.x; i < inside; i += kThreads)
        s += fmaxf(y[(i / valid) * a.stride_m + (i % valid) * a.stride_f], floor_value);
      s = block_reduce<false>(s, scratch);
      fill = valid > 0 ? s / static_cast<float>(inside) : 0.0f;
    }
    for (int64_t i = threadIdx.x; i < plane; i += kThreads) {
      const int64_t m = i / a.n_out, f = i % a.n_out;
      float& v = y[m * a.stride_m + f * a.stride_f];
      const float z = f >= valid ? a.pad_value : (hit(fm, a.n_fm, m) || hit(tm, a.n_tm, f)) ? fill : fmaxf(v, floor_value);
      v = (z - a.mean) * a.inv_std;
    }
  }
}

}  // namespace

// Shared memory bytes of mel_frames_kernel for `tile` frames.
extern "C" size_t avfast_mel_smem_bytes(int64_t tile, int64_t win_len, int64_t n_freq) {
  return static_cast<size_t>(tile * (win_len + n_freq)) * sizeof(float);
}

// Frames per block that fit `smem_limit` bytes (0 if not even one does).
extern "C" int avfast_mel_tile(int64_t win_len, int64_t n_freq, size_t smem_limit) {
  int tile = kMaxTile;
  while (tile > 0 && avfast_mel_smem_bytes(tile, win_len, n_freq) > smem_limit) --tile;
  return tile;
}

extern "C" cudaError_t avfast_mel_spectrogram_cuda(
    const void* wave, int dtype, const int64_t* lengths, const int64_t* frames, const float* window, const float* fb,
    const int64_t* bands, const int64_t* freq_masks, const int64_t* time_masks, float* out, int64_t B, int64_t C,
    int64_t T, int64_t win_len, int64_t n_fft, int64_t n_mels, int64_t n_fm, int64_t n_tm, int64_t hop,
    int64_t offset, int boundary, int64_t n_out, float preemphasis, int remove_dc, float power, int log_mode,
    float log_eps, float log_offset, float top_db, float mean, float std, float pad_value, float mask_value,
    int mask_mean, int time_major, int tile, size_t smem_bytes, cudaStream_t stream) {
  if (B == 0 || C == 0 || n_out == 0) return cudaSuccess;
  if (tile < 1 || tile > kMaxTile) return cudaErrorInvalidValue;
  MelArgs a{wave, dtype, lengths, frames, bands, window, fb, out, C, T, win_len, n_fft, n_fft / 2 + 1, n_mels, hop,
            offset, n_out, time_major ? 1 : n_out, time_major ? n_mels : 1, boundary, log_mode, remove_dc, tile,
            preemphasis, power, log_eps, log_offset};
  if (smem_bytes > 48 * 1024) {
    cudaError_t err = cudaFuncSetAttribute(mel_frames_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(smem_bytes));
    if (err != cudaSuccess) return err;
  }
  const dim3 grid(static_cast<unsigned>(B * C), static_cast<unsigned>(avfast::ceil_div(static_cast<int>(n_out), tile)));
  mel_frames_kernel<<<grid, kThreads, smem_bytes, stream>>>(a);
  cudaError_t err = avfast::last_launch_error();
  if (err != cudaSuccess) return err;
  FinishArgs f{out, frames, freq_masks, time_masks, C, n_mels, n_out, a.stride_m, a.stride_f, n_fm, n_tm,
               top_db, mean, 1.0f / std, pad_value, mask_value, mask_mean};
  mel_finish_kernel<<<static_cast<unsigned>(B), kThreads, 0, stream>>>(f);
  return avfast::last_launch_error();
}
