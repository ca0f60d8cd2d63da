// Module init for avfast._C and the build description.
// Each op's kernels live in their own csrc/<op>.cpp with their own TORCH_LIBRARY_FRAGMENT(avfast_C, m).
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "cpu_features.h"

#ifdef AVFAST_WITH_CUDA
extern "C" int avfast_cuda_runtime_version();
#endif

namespace {

std::string build_info() {
  std::string info = "cpp=1";
#ifdef AVFAST_WITH_CUDA
  info += ";cuda=" + std::to_string(avfast_cuda_runtime_version());
#else
  info += ";cuda=0";
#endif
#ifdef _OPENMP
  info += ";openmp=1";
#endif
  info += avfast_cpu::avx512() ? ";avx512=1" : ";avx512=0";  // this CPU runs the AVX-512 paths
  return info;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(avfast_C, m) {
  m.def("build_info() -> str", &build_info);
}

// Empty module init: importing avfast._C loads the library, which registers the ops above.
static struct PyModuleDef avfast_c_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&avfast_c_module); }
