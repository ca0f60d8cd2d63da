"""Builds avfast and its compiled extension ``avfast._C``.

``csrc/*.cpp`` (C++ CPU kernels, one ``TORCH_LIBRARY_FRAGMENT(avfast_C, m)`` per file) are always
compiled. ``csrc/cuda/*.cu`` and ``csrc/cuda/*.cpp`` (their torch bindings) join when torch has CUDA
and nvcc is found; ``AVFAST_BUILD_CUDA=0|1`` overrides. ``AVFAST_BUILD_EXT=0`` skips the extension
(the package then runs on its pure ``torch`` backends).
"""
import glob
import os
import shutil

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
# No -std flag: torch's extension builder picks the C++ standard its headers need (C++17 up to
# torch 2.13, C++20 from 2.14).


def _env_flag(name):
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    if value not in ("0", "1"):
        raise SystemExit(f"{name} must be 0 or 1, got {value!r}")
    return value == "1"


def _want_cuda(torch):
    forced = _env_flag("AVFAST_BUILD_CUDA")
    from torch.utils.cpp_extension import CUDA_HOME

    can = torch.version.cuda is not None and (CUDA_HOME is not None or shutil.which("nvcc"))
    if forced and not can:
        raise SystemExit("AVFAST_BUILD_CUDA=1 but torch has no CUDA or nvcc was not found")
    return can if forced is None else forced


def _extensions():
    if _env_flag("AVFAST_BUILD_EXT") is False:
        return [], {}
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    rel = lambda pattern: sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))
    sources = rel("csrc/*.cpp")
    cxx = ["-O3", "-g0", "-fopenmp"] if os.name != "nt" else ["/O2"]
    args = dict(extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"] if os.name != "nt" else [])
    if _want_cuda(torch):
        sources += rel("csrc/cuda/*.cu") + rel("csrc/cuda/*.cpp")
        args["extra_compile_args"]["nvcc"] = ["-O3", "-lineinfo", "--use_fast_math"]
        args["define_macros"] = [("AVFAST_WITH_CUDA", "1")]
        ext = CUDAExtension("avfast._C", sources, **args)
    else:
        ext = CppExtension("avfast._C", sources, **args)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    packages=find_packages(include=["avfast", "avfast.*"]) + ["avfast.kernels"],
    package_dir={"avfast.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
