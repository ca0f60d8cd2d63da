// Affinity top-k on CUDA: fp32 tiled GEMM + a running top-k list per row held by one warp; the
// columns may be split across blocks (partials) and merged by a second kernel.
//
// score(i, j) = a_i . b_j + bias_j; ranking value desc, index asc; NaN counts as -inf; with
// exclude_self column i is skipped for row i. k <= 32: lane t of a row's warp holds its t-th best.
// Plain CUDA (no ATen): the torch binding is csrc/cuda/affinity_binding.cpp.
#include <cuda_runtime.h>
#include <math_constants.h>
#include <stdint.h>

#include "common.cuh"

namespace {

constexpr int BM = 64;        // rows per block
constexpr int BN = 64;        // columns per tile
constexpr int BK = 16;        // depth per shared-memory stage
constexpr int THREADS = 256;  // 16 x 16 threads, 4 x 4 scores each
constexpr int WARPS = THREADS / 32;
constexpr int ROWS_PER_WARP = BM / WARPS;
constexpr unsigned FULL = 0xffffffffu;
constexpr int64_t EMPTY = INT64_MAX;
static_assert(BM == BN, "the tile loader fills as and bs in one loop");

__device__ __forceinline__ bool better(float v, int64_t i, float w, int64_t j) {
  return v > w || (v == w && i < j);
}

// Offers (v, i) to the warp's sorted list (lane t holds entry t; lanes >= k hold +inf guards).
__device__ __forceinline__ void insert(float& lv, int64_t& li, float v, int64_t i, int lane, int k) {
  const bool ahead = lane < k && better(lv, li, v, i);
  const unsigned mask = __ballot_sync(FULL, ahead);
  const int pos = __popc(mask);  // entries that stay ahead of the candidate
  if (pos >= k) return;
  const float up_v = __shfl_up_sync(FULL, lv, 1);
  const int64_t up_i = __shfl_up_sync(FULL, li, 1);
  if (lane < k) {
    if (lane == pos) {
      lv = v;
      li = i;
    } else if (lane > pos) {
      lv = up_v;
      li = up_i;
    }
  }
}

// Offers the warp's 32 lane-held candidates (valid where `ok`) to the list, in lane order.
__device__ __forceinline__ void offer_warp(float& lv, int64_t& li, float v, int64_t i, bool ok, int lane, int k) {
  const float thr_v = __shfl_sync(FULL, lv, k - 1);
  const int64_t thr_i = __shfl_sync(FULL, li, k - 1);
  unsigned pass = __ballot_sync(FULL, ok && better(v, i, thr_v, thr_i));
  while (pass) {
    const int src = __ffs(pass) - 1;
    pass &= pass - 1;
    insert(lv, li, __shfl_sync(FULL, v, src), __shfl_sync(FULL, i, src), lane, k);
  }
}

__device__ __forceinline__ void init_list(float& lv, int64_t& li, int lane, int k) {
  lv = lane < k ? -CUDART_INF_F : CUDART_INF_F;  // lanes >= k: guards that never move
  li = lane < k ? EMPTY : -1;
}

__global__ void __launch_bounds__(THREADS) affinity_partial_kernel(
    const float* __restrict__ a, const float* __restrict__ b, const float* __restrict__ bias,
    float* __restrict__ part_v, int64_t* __restrict__ part_i, int B, int N, int D, int k, int splits,
    int span, bool exclude_self) {
  __shared__ float as[BK][BM];
  __shared__ float bs[BK][BN];
  __shared__ float tile[BM][BN + 1];
  const int g = blockIdx.z, split = blockIdx.y, r0 = blockIdx.x * BM;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16, lane = tid % 32, warp = tid / 32;
  const float* ag = a + (int64_t)g * B * D;
  const float* bg = b + (int64_t)g * N * D;
  const float* biasg = bias ? bias + (int64_t)g * N : nullptr;
  const int c_begin = split * span, c_end = min(N, c_begin + span);

  float lv[ROWS_PER_WARP];
  int64_t li[ROWS_PER_WARP];
#pragma unroll
  for (int r = 0; r < ROWS_PER_WARP; ++r) init_list(lv[r], li[r], lane, k);

  for (int c0 = c_begin; c0 < c_end; c0 += BN) {
    float acc[4][4] = {};
    for (int d0 = 0; d0 < D; d0 += BK) {
      for (int e = tid; e < BM * BK; e += THREADS) {  // coalesced along D
        const int row = e / BK, d = e % BK;
        as[d][row] = (r0 + row < B && d0 + d < D) ? ag[(int64_t)(r0 + row) * D + d0 + d] : 0.f;
        bs[d][row] = (c0 + row < c_end && d0 + d < D) ? bg[(int64_t)(c0 + row) * D + d0 + d] : 0.f;
      }
      __syncthreads();
#pragma unroll
      for (int d = 0; d < BK; ++d) {
        float av[4], bv[4];
#pragma unroll
        for (int t = 0; t < 4; ++t) {
          av[t] = as[d][ty * 4 + t];
          bv[t] = bs[d][tx * 4 + t];
        }
#pragma unroll
        for (int p = 0; p < 4; ++p)
#pragma unroll
          for (int q = 0; q < 4; ++q) acc[p][q] = fmaf(av[p], bv[q], acc[p][q]);
      }
      __syncthreads();
    }
#pragma unroll
    for (int p = 0; p < 4; ++p)
#pragma unroll
      for (int q = 0; q < 4; ++q) tile[ty * 4 + p][tx * 4 + q] = acc[p][q];
    __syncthreads();
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; ++r) {
      const int row = warp * ROWS_PER_WARP + r, grow = r0 + row;
#pragma unroll
      for (int half = 0; half < BN; half += 32) {
        const int col = c0 + half + lane;
        float v = tile[row][half + lane] + ((biasg && col < c_end) ? biasg[col] : 0.f);
        v = isnan(v) ? -CUDART_INF_F : v;
        const bool ok = grow < B && col < c_end && !(exclude_self && col == grow);
        offer_warp(lv[r], li[r], v, col, ok, lane, k);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int r = 0; r < ROWS_PER_WARP; ++r) {
    const int grow = r0 + warp * ROWS_PER_WARP + r;
    if (grow < B && lane < k) {
      const int64_t out = (((int64_t)g * B + grow) * splits + split) * k + lane;
      part_v[out] = lv[r];
      part_i[out] = li[r];
    }
  }
}

// One warp per row: the k best of its splits * k partial candidates, best first.
__global__ void affinity_merge_kernel(const float* __restrict__ part_v, const int64_t* __restrict__ part_i,
                                      float* __restrict__ out_v, int64_t* __restrict__ out_i, int64_t rows,
                                      int m, int k) {
  const int lane = threadIdx.x % 32;
  const int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= rows) return;  // whole warps leave together
  float lv;
  int64_t li;
  init_list(lv, li, lane, k);
  for (int c0 = 0; c0 < m; c0 += 32) {
    const int c = c0 + lane;
    const bool ok = c < m && part_i[row * m + c] != EMPTY;
    const float v = ok ? part_v[row * m + c] : -CUDART_INF_F;
    const int64_t i = ok ? part_i[row * m + c] : EMPTY;
    offer_warp(lv, li, v, i, ok, lane, k);
  }
  if (lane < k) {
    out_v[row * k + lane] = lv;
    out_i[row * k + lane] = li;
  }
}

}  // namespace

// a (G, B, D), b (G, N, D), bias (G, N) or nullptr, all float32 contiguous; part_* (G, B, splits, k);
// out_* (G, B, k). Needs 1 <= k <= 32 and every row to have >= k columns.
extern "C" cudaError_t avfast_affinity_topk_f32(const float* a, const float* b, const float* bias, float* part_v,
                                                int64_t* part_i, float* out_v, int64_t* out_i, int G, int B,
                                                int N, int D, int k, int splits, bool exclude_self,
                                                cudaStream_t stream) {
  if (k < 1 || k > 32 || splits < 1) return cudaErrorInvalidValue;
  if (G == 0 || B == 0) return cudaSuccess;
  const int span = avfast::ceil_div(avfast::ceil_div(N, splits), BN) * BN;
  const dim3 grid(avfast::ceil_div(B, BM), splits, G);
  affinity_partial_kernel<<<grid, THREADS, 0, stream>>>(a, b, bias, part_v, part_i, B, N, D, k, splits, span,
                                                         exclude_self);
  cudaError_t err = avfast::last_launch_error();
  if (err != cudaSuccess) return err;
  const int64_t rows = (int64_t)G * B;
  const int warps_per_block = 8;
  affinity_merge_kernel<<<(unsigned)((rows + warps_per_block - 1) / warps_per_block), 32 * warps_per_block, 0,
                          stream>>>(part_v, part_i, out_v, out_i, rows, splits * k, k);
  return avfast::last_launch_error();
}
