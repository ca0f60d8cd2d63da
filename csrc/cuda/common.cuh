// Shared helpers for avfast's plain-CUDA kernels (no ATen headers, so nvcc -c works anywhere).
#pragma once
#include <cuda_runtime.h>

namespace avfast {

__host__ __device__ inline int ceil_div(int a, int b) { return (a + b - 1) / b; }

// Launchers return the cudaError_t of the launch; the torch binding turns it into an exception.
inline cudaError_t last_launch_error() { return cudaGetLastError(); }

}  // namespace avfast
