"""A stand-in Triton driver: compile avfast's kernels for a CUDA target on a machine without a GPU.

``with target(90): op(cpu_tensors, backend="triton")`` runs the op's own launch code on CPU tensors;
every launch compiles its kernel through Triton's real NVIDIA backend (MLIR -> PTX -> the ptxas
bundled with triton) for ``sm_90`` and then does nothing. ``Target.records`` holds one
``Compiled`` per distinct specialisation (name, constexprs, num_warps, num_stages, shared bytes,
registers and spill bytes parsed from ``ptxas -v``). A launch whose kernel needs more shared memory
than the target allows raises ``triton.runtime.errors.OutOfResources`` exactly as on the GPU.

Output tensors are never written (launches do nothing): the op's results are garbage; only the
compile matters. Used by ``benchmarks/compile_check.py`` and the tests in ``tests/gpu_compile``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import tempfile
from typing import Iterator

import triton.compiler as tcompiler
from triton.backends.compiler import GPUTarget
from triton.backends.driver import DriverBase
from triton.runtime.driver import driver

# Shared memory one block may use (bytes; cudaDevAttrMaxSharedMemoryPerBlockOptin) and SM counts of
# a typical part of each generation: A100 (sm_80), A10/RTX 30 (sm_86), L4/RTX 40 (sm_89), H100 (sm_90).
SHARED_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}
SM_COUNT = {80: 108, 86: 72, 89: 58, 90: 132}
TARGETS = tuple(SHARED_LIMIT)

_PTXAS_FUNC = re.compile(r"Compiling entry function '(\w+)'")
_PTXAS_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_REGS = re.compile(r"Used (\d+) registers")


@dataclasses.dataclass
class Compiled:
    """One compiled specialisation of one kernel for one target."""

    kernel: str
    capability: int
    constexprs: dict
    num_warps: int
    num_stages: int
    shared: int
    registers: int
    spill_stores: int
    spill_loads: int
    op: str = ""      # filled in by the caller that knows which op / input dtype launched it
    dtype: str = ""
    hash: str = ""    # Triton's hash of the compiled kernel; Target.launches lists it once per launch

    @property
    def spills(self) -> int:
        return self.spill_stores + self.spill_loads


def parse_ptxas_log(log: str) -> tuple[int, int, int]:
    """(registers, spill store bytes, spill load bytes) of the one entry function in a ``ptxas -v`` log."""
    regs = _PTXAS_REGS.search(log)
    spill = _PTXAS_SPILL.search(log)
    if regs is None or spill is None:
        raise ValueError(f"no register/spill line in the ptxas -v log:\n{log}")
    return int(regs.group(1)), int(spill.group(1)), int(spill.group(2))


class _Utils:
    def __init__(self, capability: int):
        self.capability = capability

    def get_device_properties(self, device):
        return {"max_shared_mem": SHARED_LIMIT[self.capability], "multiprocessor_count": SM_COUNT[self.capability],
                "max_num_regs": 65536, "warpSize": 32, "sm_clock_rate": 0, "mem_clock_rate": 0, "mem_bus_width": 0}

    def load_binary(self, name, kernel, shared, device):
        # (module, function, n_regs, n_spills, n_max_threads): nothing is loaded
        return None, None, 0, 0, 1024


class _Launcher:
    def __init__(self, src, metadata):
        self.hash = metadata.hash

    def __call__(self, *args, **kwargs):
        tgt = active()
        if tgt is not None:  # nothing runs: the launch is only recorded (a JIT cache hit compiles nothing)
            tgt.launches.append(self.hash)


class StandInDriver(DriverBase):
    """Targets ``cuda:<capability>``; the device id is the capability, so each target keeps its own
    JIT cache; launches do nothing."""

    launcher_cls = _Launcher

    def __init__(self, capability: int):
        super().__init__()
        if capability not in SHARED_LIMIT:
            raise ValueError(f"unknown target sm_{capability}; known: {sorted(SHARED_LIMIT)}")
        self.capability = capability
        self.utils = _Utils(capability)

    @classmethod
    def is_active(cls):
        return False

    def map_python_to_cpp_type(self, ty: str) -> str:
        return ty

    def get_current_target(self):
        return GPUTarget("cuda", self.capability, 32)

    def get_current_device(self):
        return self.capability

    def set_current_device(self, device):
        pass

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        import torch

        return torch.device("cpu")

    def get_device_interface(self):
        raise RuntimeError("the stand-in driver has no device")

    def get_benchmarker(self):
        raise RuntimeError("the stand-in driver cannot time kernels")


class Target:
    """The active stand-in target: ``capability``, ``shared_limit``, ``sm_count``, ``records`` (one per
    compiled specialisation) and ``launches`` (the hash of the kernel of every launch, in order)."""

    def __init__(self, capability: int):
        self.capability = capability
        self.shared_limit = SHARED_LIMIT[capability]
        self.sm_count = SM_COUNT[capability]
        self.records: list[Compiled] = []
        self.launches: list[str] = []

    def launched(self, since: int = 0) -> list[Compiled]:
        """The records of the kernels launched from ``launches[since]`` on (cache hits included)."""
        hashes = set(self.launches[since:])
        return [r for r in self.records if r.hash in hashes]


_ACTIVE: list[Target] = []


def active() -> Target | None:
    """The stand-in target in effect (None outside ``target(...)``)."""
    return _ACTIVE[-1] if _ACTIVE else None


def _recording_compile(real):
    def compile(src, target=None, options=None, **kwargs):
        tgt = active()
        if tgt is None:
            return real(src, target=target, options=options, **kwargs)
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            kernel = real(src, target=target, options=options, **kwargs)
        text = log.getvalue()
        name = kernel.metadata.name
        # the log holds this kernel's entry only (fresh cache dir): parse it
        regs, st, ld = parse_ptxas_log(text)
        constexprs = {src.fn.arg_names[path[0]]: getattr(value, "value", value)
                      for path, value in src.constants.items() if len(path) == 1}
        tgt.records.append(Compiled(name, tgt.capability, constexprs, kernel.metadata.num_warps,
                                    kernel.metadata.num_stages, kernel.metadata.shared, regs, st, ld,
                                    hash=kernel.hash))
        return kernel

    return compile


@contextlib.contextmanager
def target(capability: int, cache_dir: str | None = None) -> Iterator[Target]:
    """Within: Triton compiles for ``sm_<capability>`` with the stand-in driver (launches do nothing).

    A fresh Triton cache directory is used (a cache hit would skip ptxas and its register report).
    """
    from triton import knobs

    tgt = Target(capability)
    saved_compile = tcompiler.compile
    saved = dict(dump=knobs.nvidia.dump_ptxas_log, cache=knobs.cache.dir)
    tmp = None
    if cache_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="avfast-triton-")
        cache_dir = tmp.name
    driver.set_active(StandInDriver(capability))
    tcompiler.compile = _recording_compile(saved_compile)
    knobs.nvidia.dump_ptxas_log = True
    knobs.cache.dir = cache_dir
    _ACTIVE.append(tgt)
    try:
        yield tgt
    finally:
        _ACTIVE.pop()
        tcompiler.compile = saved_compile
        knobs.nvidia.dump_ptxas_log = saved["dump"]
        knobs.cache.dir = saved["cache"]
        driver.reset_active() if _has_default_driver() else setattr(driver, "_active", None)
        if tmp is not None:
            tmp.cleanup()


def _has_default_driver() -> bool:
    try:
        return driver.default is not None
    except RuntimeError:  # no GPU driver on this machine
        return False


def ptxas_path() -> str:
    """The ptxas bundled with triton (the one that compiles here)."""
    from triton import knobs

    return knobs.nvidia.ptxas.path


