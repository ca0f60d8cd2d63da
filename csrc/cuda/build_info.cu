// Plain CUDA (no ATen headers) so `nvcc -c` compiles it on any machine.
#include <cuda_runtime.h>

extern "C" int avfast_cuda_runtime_version() {
  int version = 0;
  cudaRuntimeGetVersion(&version);
  return version;
}
