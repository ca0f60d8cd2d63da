// CPU feature checks shared by the C++ kernels (the build uses no -march flag: one .so for every x86
// CPU; AVX-512 paths are functions with target attributes, chosen at run time).
#pragma once

#include <cstdlib>

namespace avfast_cpu {

// True on an x86-64 CPU with AVX-512F, unless AVFAST_NO_AVX512 is set (tests run the portable path).
inline bool avx512() {
#if defined(__GNUC__) && defined(__x86_64__)
  static const bool enabled = __builtin_cpu_supports("avx512f") && std::getenv("AVFAST_NO_AVX512") == nullptr;
  return enabled;
#else
  return false;
#endif
}

}  // namespace avfast_cpu
