// Fused mel spectrogram on CPU: framing -> (dc, preemphasis) -> window -> real FFT -> |X|^p ->
// sparse mel -> log/dB, then a per-sample finish pass (top_db, padding, masks, mean/std, layout).
//
// Work is split over (sample, channel, block of frames). Default (mel_blocks_aten): blocks of
// kAtenBlock frames go through ATen's batched rfft into per-thread buffers, then power + sparse mel +
// log. Opt-in (fft_impl 1, mel_blocks): our radix-2 FFT over blocks of kBlock frames held "structure
// of arrays" (value k of every frame contiguous), so each butterfly and mel tap runs over kBlock
// frames at once. Either way the wave is read once and the output written once (plus one in-cache
// finish pass per sample).
//
// Argument order is shared with the Triton and CUDA backends (avfast/ops/mel.py: fused_args).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <complex>
#include <limits>
#include <vector>

namespace {

constexpr int64_t kBlock = 16;  // frames per block of our FFT: one AVX-512 register of floats
constexpr int64_t kAtenBlock = 128;  // frames per ATen rfft call (per-thread buffers, reused)

enum Boundary : int64_t { kConstant = 0, kReflect = 1, kReplicate = 2, kSymmetric = 3 };
enum LogMode : int64_t { kNone = 0, kLog = 1, kDb = 2 };

// Index of wave sample i for a signal of n samples under `boundary`; -1 means "zero".
inline int64_t boundary_index(int64_t i, int64_t n, int64_t boundary) {
  if (i >= 0 && i < n) return i;
  switch (boundary) {
    case kReplicate: return i < 0 ? 0 : n - 1;
    case kReflect: {
      if (n == 1) return 0;
      const int64_t period = 2 * (n - 1);
      int64_t j = ((i % period) + period) % period;
      return j < n ? j : period - j;
    }
    case kSymmetric: {
      const int64_t period = 2 * n;
      int64_t j = ((i % period) + period) % period;
      return j < n ? j : period - 1 - j;
    }
    default: return -1;
  }
}

struct Params {
  int64_t n_fft, hop, offset, boundary, n_out, log_mode;
  float preemphasis, power, log_eps, log_offset, top_db, mean, std, pad_value, mask_value;
  bool remove_dc, mask_mean, time_major;
};

// Sparse mel bank: for mel m, weights w[m][k - lo[m]] over rows lo[m] .. hi[m].
struct MelBank {
  std::vector<int64_t> lo, hi, start;
  std::vector<float> w;
  MelBank(const at::Tensor& fb, const at::Tensor& bands) {
    auto f = fb.accessor<float, 2>();
    auto b = bands.accessor<int64_t, 2>();
    const int64_t n_mels = fb.size(1);
    for (int64_t m = 0; m < n_mels; ++m) {
      lo.push_back(b[m][0]);
      hi.push_back(b[m][1]);
      start.push_back(static_cast<int64_t>(w.size()));
      for (int64_t k = b[m][0]; k < b[m][1]; ++k) w.push_back(f[k][m]);
    }
  }
};

// Real FFT of n_fft (a power of two) points as a complex FFT of n_fft / 2 points over kBlock frames.
struct BlockFFT {
  int64_t n, half, stages;
  std::vector<int64_t> rev;
  std::vector<float> tw_re, tw_im, post_re, post_im;
  explicit BlockFFT(int64_t n_fft) : n(n_fft), half(n_fft / 2), stages(0) {
    while ((int64_t{1} << stages) < half) ++stages;
    rev.resize(half);
    for (int64_t i = 0; i < half; ++i) {
      int64_t r = 0;
      for (int64_t s = 0; s < stages; ++s) r |= ((i >> s) & 1) << (stages - 1 - s);
      rev[i] = r;
    }
    for (int64_t j = 0; j < std::max<int64_t>(half / 2, 1); ++j) {
      const double a = -2.0 * M_PI * j / half;
      tw_re.push_back(std::cos(a));
      tw_im.push_back(std::sin(a));
    }
    for (int64_t k = 0; k <= half; ++k) {
      const double a = -2.0 * M_PI * k / n;
      post_re.push_back(std::cos(a));
      post_im.push_back(std::sin(a));
    }
  }

  // re/im: (half, kBlock) already in bit-reversed order. power: (half + 1, kBlock) of |X_k|^2.
  void power(float* re, float* im, float* power) const {
    for (int64_t len = 2; len <= half; len <<= 1) {
      const int64_t h = len / 2, step = half / len;
      for (int64_t i = 0; i < half; i += len) {
        for (int64_t j = 0; j < h; ++j) {
          const float wr = tw_re[j * step], wi = tw_im[j * step];
          float* ar = re + (i + j) * kBlock;
          float* ai = im + (i + j) * kBlock;
          float* br = re + (i + j + h) * kBlock;
          float* bi = im + (i + j + h) * kBlock;
#pragma omp simd
          for (int64_t f = 0; f < kBlock; ++f) {
            const float tr = wr * br[f] - wi * bi[f];
            const float ti = wr * bi[f] + wi * br[f];
            br[f] = ar[f] - tr;
            bi[f] = ai[f] - ti;
            ar[f] += tr;
            ai[f] += ti;
          }
        }
      }
    }
    for (int64_t k = 0; k <= half; ++k) {
      const float* zr = re + (k % half) * kBlock;
      const float* zi = im + (k % half) * kBlock;
      const float* cr = re + ((half - k) % half) * kBlock;
      const float* ci = im + ((half - k) % half) * kBlock;
      const float wr = post_re[k], wi = post_im[k];
      float* p = power + k * kBlock;
#pragma omp simd
      for (int64_t f = 0; f < kBlock; ++f) {
        const float er = 0.5f * (zr[f] + cr[f]), ei = 0.5f * (zi[f] - ci[f]);
        const float orr = 0.5f * (zi[f] + ci[f]), oi = -0.5f * (zr[f] - cr[f]);
        const float xr = er + wr * orr - wi * oi, xi = ei + wr * oi + wi * orr;
        p[f] = xr * xr + xi * xi;
      }
    }
  }
};

inline float log_value(float v, const Params& p) {
  if (p.log_mode == kLog) return std::log(std::max(v + p.log_offset, p.log_eps));
  if (p.log_mode == kDb) return 10.0f * std::log10(std::max(v, p.log_eps));
  return v;
}

// Windowed frame f (n_fft values, zero tail) of one (sample, channel) wave of `len` samples.
template <typename scalar_t>
void load_frame(const scalar_t* x, int64_t len, int64_t f, const float* win, int64_t win_len, const Params& p,
                float* out) {
  const int64_t s0 = f * p.hop + p.offset;
  if (s0 >= 0 && s0 + win_len <= len) {
    for (int64_t k = 0; k < win_len; ++k) out[k] = static_cast<float>(x[s0 + k]);
  } else {
    for (int64_t k = 0; k < win_len; ++k) {
      const int64_t i = boundary_index(s0 + k, len, p.boundary);
      out[k] = i < 0 ? 0.0f : static_cast<float>(x[i]);
    }
  }
  if (p.remove_dc) {
    double s = 0;
    for (int64_t k = 0; k < win_len; ++k) s += out[k];
    const float m = static_cast<float>(s / win_len);
    for (int64_t k = 0; k < win_len; ++k) out[k] -= m;
  }
  if (p.preemphasis != 0.0f) {
    for (int64_t k = win_len - 1; k > 0; --k) out[k] -= p.preemphasis * out[k - 1];
    out[0] -= p.preemphasis * out[0];
  }
  for (int64_t k = 0; k < win_len; ++k) out[k] *= win[k];
  std::fill(out + win_len, out + p.n_fft, 0.0f);
}

// Power spectra (n_freq, kBlock) of frames [f0, f0 + nf) through our FFT.
struct Spectra {
  const BlockFFT* fft;
  int64_t n_fft, n_freq;
  std::vector<float> frame, re, im, power;
  Spectra(const BlockFFT* f, int64_t n) : fft(f), n_fft(n), n_freq(n / 2 + 1), frame(n),
      re((n / 2) * kBlock), im((n / 2) * kBlock), power((n / 2 + 1) * kBlock) {}

  template <typename scalar_t>
  void compute(const scalar_t* x, int64_t len, int64_t f0, int64_t nf, const float* win, int64_t win_len,
               const Params& p) {
    const int64_t half = n_fft / 2;
    std::fill(re.begin(), re.end(), 0.0f);
    std::fill(im.begin(), im.end(), 0.0f);
    for (int64_t f = 0; f < nf; ++f) {
      load_frame(x, len, f0 + f, win, win_len, p, frame.data());
      for (int64_t m = 0; m < half; ++m) {
        const int64_t r = fft->rev[m] * kBlock + f;
        re[r] = frame[2 * m];
        im[r] = frame[2 * m + 1];
      }
    }
    fft->power(re.data(), im.data(), power.data());
    if (p.power != 2.0f) {
      for (auto& v : power) v = std::pow(v, 0.5f * p.power);
    }
  }
};

// Finish pass for sample b: top_db, padding, masks, (y - mean) / std, in place on its C planes.
void finish_sample(float* out, int64_t C, int64_t n_mels, int64_t valid, const int64_t* fm, int64_t n_fm,
                   const int64_t* tm, int64_t n_tm, const Params& p) {
  const int64_t n_out = p.n_out;
  const int64_t sm = p.time_major ? 1 : n_out, sf = p.time_major ? n_mels : 1;
  const int64_t plane = n_mels * n_out;
  std::vector<char> row(n_mels, 0), col(n_out, 0);
  for (int64_t i = 0; i < n_fm; ++i)
    for (int64_t m = std::max<int64_t>(fm[2 * i], 0); m < std::min(fm[2 * i + 1], n_mels); ++m) row[m] = 1;
  for (int64_t i = 0; i < n_tm; ++i)
    for (int64_t f = std::max<int64_t>(tm[2 * i], 0); f < std::min(tm[2 * i + 1], n_out); ++f) col[f] = 1;
  float floor_value = -std::numeric_limits<float>::infinity();
  if (p.top_db >= 0.0f && valid > 0) {
    float peak = -std::numeric_limits<float>::infinity();
    for (int64_t c = 0; c < C; ++c)
      for (int64_t m = 0; m < n_mels; ++m)
        for (int64_t f = 0; f < valid; ++f) peak = std::max(peak, out[c * plane + m * sm + f * sf]);
    floor_value = peak - p.top_db;
  }
  const float inv_std = 1.0f / p.std;
  for (int64_t c = 0; c < C; ++c) {
    float* y = out + c * plane;
    float fill = p.mask_value;
    if (p.mask_mean) {
      double s = 0;
      for (int64_t m = 0; m < n_mels; ++m)
        for (int64_t f = 0; f < valid; ++f) s += std::max(y[m * sm + f * sf], floor_value);
      fill = valid > 0 ? static_cast<float>(s / (static_cast<double>(valid) * n_mels)) : 0.0f;
    }
    for (int64_t m = 0; m < n_mels; ++m)
      for (int64_t f = 0; f < n_out; ++f) {
        float& v = y[m * sm + f * sf];
        const float z = f >= valid ? p.pad_value : (row[m] || col[f]) ? fill : std::max(v, floor_value);
        v = (z - p.mean) * inv_std;
      }
  }
}

// Log-mel of every valid frame, block by block, in parallel over (sample, channel, block).
template <typename scalar_t>
void mel_blocks(const scalar_t* x, int64_t BC, int64_t C, int64_t T, int64_t nb, const int64_t* len_p,
                const int64_t* nfr_p, const float* win, int64_t win_len, int64_t n_mels, const BlockFFT* fft,
                const MelBank& bank, const Params& p, float* out_p) {
  const int64_t n_out = p.n_out;
  const int64_t sm = p.time_major ? 1 : n_out, sf = p.time_major ? n_mels : 1;
  at::parallel_for(0, BC * nb, 1, [&](int64_t begin, int64_t end) {
    Spectra spectra(fft, p.n_fft);
    float acc[kBlock];
    for (int64_t u = begin; u < end; ++u) {
      const int64_t bc = u / nb, f0 = (u % nb) * kBlock, b = bc / C;
      const int64_t nf = std::min(std::min(nfr_p[b], n_out) - f0, kBlock);
      if (nf <= 0) continue;
      spectra.compute(x + bc * T, len_p[b], f0, nf, win, win_len, p);
      float* y = out_p + bc * n_mels * n_out;
      for (int64_t m = 0; m < n_mels; ++m) {
        std::fill(acc, acc + kBlock, 0.0f);
        const float* w = bank.w.data() + bank.start[m];
        for (int64_t k = bank.lo[m]; k < bank.hi[m]; ++k) {
          const float wk = w[k - bank.lo[m]];
          const float* pk = spectra.power.data() + k * kBlock;
#pragma omp simd
          for (int64_t f = 0; f < kBlock; ++f) acc[f] += wk * pk[f];
        }
        for (int64_t f = 0; f < nf; ++f) y[m * sm + (f0 + f) * sf] = log_value(acc[f], p);
      }
    }
  });
}

// Same through ATen's batched real FFT: per thread, reusable (kAtenBlock, n_fft) frames and
// (kAtenBlock, n_freq) complex spectra; power + sparse mel + log straight from the rfft output.
template <typename scalar_t>
void mel_blocks_aten(const scalar_t* x, int64_t BC, int64_t C, int64_t T, const int64_t* len_p,
                     const int64_t* nfr_p, const float* win, int64_t win_len, int64_t n_mels, const MelBank& bank,
                     const Params& p, float* out_p) {
  const int64_t n_out = p.n_out, n_fft = p.n_fft, n_freq = n_fft / 2 + 1;
  const int64_t nb = (n_out + kAtenBlock - 1) / kAtenBlock;
  at::parallel_for(0, BC * nb, 1, [&](int64_t begin, int64_t end) {
    at::Tensor frames = at::empty({kAtenBlock, n_fft}, at::kFloat);
    at::Tensor spec = at::empty({kAtenBlock, n_freq}, at::kComplexFloat);
    at::Tensor mel = at::empty({kAtenBlock, n_mels}, at::kFloat);
    std::vector<float> pw(n_freq);
    float* fp = frames.data_ptr<float>();
    float* mp = mel.data_ptr<float>();
    for (int64_t u = begin; u < end; ++u) {
      const int64_t bc = u / nb, f0 = (u % nb) * kAtenBlock, b = bc / C;
      const int64_t nf = std::min(std::min(nfr_p[b], n_out) - f0, kAtenBlock);
      if (nf <= 0) continue;
      for (int64_t f = 0; f < nf; ++f) load_frame(x + bc * T, len_p[b], f0 + f, win, win_len, p, fp + f * n_fft);
      at::Tensor s_nf = spec.narrow(0, 0, nf);
      at::fft_rfft_out(s_nf, frames.narrow(0, 0, nf), n_fft, 1);
      const float* s = reinterpret_cast<const float*>(spec.data_ptr<c10::complex<float>>());
      for (int64_t f = 0; f < nf; ++f) {
        const float* sf_ = s + f * n_freq * 2;
#pragma omp simd
        for (int64_t k = 0; k < n_freq; ++k) pw[k] = sf_[2 * k] * sf_[2 * k] + sf_[2 * k + 1] * sf_[2 * k + 1];
        if (p.power != 2.0f)
          for (auto& v : pw) v = std::pow(v, 0.5f * p.power);
        float* mf = mp + f * n_mels;
        for (int64_t m = 0; m < n_mels; ++m) {
          const float* w = bank.w.data() + bank.start[m];
          const float* pk = pw.data() + bank.lo[m];
          const int64_t n = bank.hi[m] - bank.lo[m];
          float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
          for (int64_t k = 0; k < n; ++k) acc += w[k] * pk[k];
          mf[m] = acc;
        }
      }
      // log / dB through ATen's vectorised kernels (scalar std::log costs as much as the FFT).
      at::Tensor mv = mel.narrow(0, 0, nf);
      if (p.log_mode == kLog) {
        if (p.log_offset != 0.0f) mv.add_(p.log_offset);
        mv.clamp_min_(p.log_eps).log_();
      } else if (p.log_mode == kDb) {
        mv.clamp_min_(p.log_eps).log10_().mul_(10.0f);
      }
      float* y = out_p + bc * n_mels * n_out;
      if (p.time_major) {
        std::copy(mp, mp + nf * n_mels, y + f0 * n_mels);
      } else {
        for (int64_t m = 0; m < n_mels; ++m)
          for (int64_t f = 0; f < nf; ++f) y[m * n_out + f0 + f] = mp[f * n_mels + m];
      }
    }
  });
}

at::Tensor mel_spectrogram_cpu(const at::Tensor& wave, const at::Tensor& lengths, const at::Tensor& frames,
                               const at::Tensor& window, const at::Tensor& fb, const at::Tensor& bands,
                               const at::Tensor& freq_masks, const at::Tensor& time_masks, int64_t n_fft, int64_t hop,
                               int64_t offset, int64_t boundary, int64_t n_out, double preemphasis, bool remove_dc,
                               double power, int64_t log_mode, double log_eps, double log_offset, double top_db,
                               double mean, double std, double pad_value, double mask_value, bool time_major,
                               int64_t fft_impl) {
  TORCH_CHECK(wave.dim() == 3 && wave.is_contiguous(), "mel_spectrogram_cpu: wave must be contiguous (B, C, T)");
  TORCH_CHECK(window.scalar_type() == at::kFloat && fb.scalar_type() == at::kFloat, "window/fb must be float32");
  const int64_t B = wave.size(0), C = wave.size(1), T = wave.size(2);
  const int64_t n_mels = fb.size(1), win_len = window.size(0);
  TORCH_CHECK(fb.size(0) == n_fft / 2 + 1 && win_len <= n_fft, "mel_spectrogram_cpu: bad filter bank or window");
  // Index tensors are read through raw pointers below: check them here, not by a crash there.
  for (const at::Tensor* t : {&lengths, &frames, &bands, &freq_masks, &time_masks})
    TORCH_CHECK(t->scalar_type() == at::kLong && t->device().is_cpu(),
                "mel_spectrogram_cpu: lengths, frames, bands and masks must be int64 CPU tensors");
  TORCH_CHECK(lengths.numel() == B && frames.numel() == B, "mel_spectrogram_cpu: lengths and frames must have B entries");
  TORCH_CHECK(bands.dim() == 2 && bands.size(0) == n_mels && bands.size(1) == 2,
              "mel_spectrogram_cpu: bands must be (n_mels, 2)");
  for (const at::Tensor* t : {&freq_masks, &time_masks})
    TORCH_CHECK(t->dim() == 3 && t->size(0) == B && t->size(2) == 2, "mel_spectrogram_cpu: masks must be (B, n, 2)");
  Params p{n_fft, hop, offset, boundary, n_out, log_mode, static_cast<float>(preemphasis),
           static_cast<float>(power), static_cast<float>(log_eps), static_cast<float>(log_offset),
           static_cast<float>(top_db), static_cast<float>(mean), static_cast<float>(std),
           static_cast<float>(pad_value), static_cast<float>(std::isnan(mask_value) ? 0.0 : mask_value), remove_dc,
           std::isnan(mask_value), time_major};
  at::Tensor out = time_major ? at::empty({B, C, n_out, n_mels}, wave.options().dtype(at::kFloat))
                              : at::empty({B, C, n_mels, n_out}, wave.options().dtype(at::kFloat));
  const bool pow2 = n_fft >= 4 && (n_fft & (n_fft - 1)) == 0;
  TORCH_CHECK(fft_impl != 1 || pow2, "mel_spectrogram_cpu: our FFT needs a power-of-two n_fft (", n_fft, ")");
  const bool own_fft = fft_impl == 1;  // 0 (default) and 2: ATen rfft, faster on both presets
  BlockFFT fft(own_fft ? n_fft : 4);
  MelBank bank(fb, bands);
  const auto len = lengths.contiguous();
  const auto nfr = frames.contiguous();
  const int64_t* len_p = len.data_ptr<int64_t>();
  const int64_t* nfr_p = nfr.data_ptr<int64_t>();
  const float* win = window.data_ptr<float>();
  const int64_t nb = (n_out + kBlock - 1) / kBlock;
  float* out_p = out.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND_HALF(wave.scalar_type(), "mel_spectrogram_cpu", [&] {
    if (own_fft)
      mel_blocks(wave.data_ptr<scalar_t>(), B * C, C, T, nb, len_p, nfr_p, win, win_len, n_mels, &fft, bank, p, out_p);
    else
      mel_blocks_aten(wave.data_ptr<scalar_t>(), B * C, C, T, len_p, nfr_p, win, win_len, n_mels, bank, p, out_p);
  });
  const auto fm = freq_masks.contiguous(), tm = time_masks.contiguous();
  const int64_t n_fm = fm.size(1), n_tm = tm.size(1);
  const int64_t* fm_p = fm.data_ptr<int64_t>();
  const int64_t* tm_p = tm.data_ptr<int64_t>();
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b)
      finish_sample(out_p + b * C * n_mels * n_out, C, n_mels, std::min(nfr_p[b], n_out), fm_p + b * n_fm * 2, n_fm,
                    tm_p + b * n_tm * 2, n_tm, p);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(avfast_C, m) {
  m.def("mel_spectrogram_cpu(Tensor wave, Tensor lengths, Tensor frames, Tensor window, Tensor fb, Tensor bands, "
        "Tensor freq_masks, Tensor time_masks, int n_fft, int hop, int offset, int boundary, int n_out, "
        "float preemphasis, bool remove_dc, float power, int log_mode, float log_eps, float log_offset, "
        "float top_db, float mean, float std, float pad_value, float mask_value, bool time_major, int fft_impl) "
        "-> Tensor");
  m.impl("mel_spectrogram_cpu", c10::DispatchKey::CPU, TORCH_FN(mel_spectrogram_cpu));
}
