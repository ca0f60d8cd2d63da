"""The compile-only check catches what the CPU interpreter lets through (no GPU needed).

The test session runs Triton in the interpreter (tests/conftest.py), so each case runs this file in
a subprocess without TRITON_INTERPRET, where @triton.jit compiles for real through the stand-in.
"""
import os
import subprocess
import sys

import pytest
import torch
import triton
import triton.language as tl
from triton.compiler.errors import CompilationError
from triton.runtime.errors import OutOfResources

from avfast.kernels import standin

_PLAIN_GLOBAL = -1.0e30             # what kernels/contrastive.py had: the interpreter accepts it
_CONST_GLOBAL = tl.constexpr(-1.0e30)


@triton.jit
def _uses_plain_global(out_ptr, BLOCK: tl.constexpr):
    tl.store(out_ptr + tl.arange(0, BLOCK), tl.full((BLOCK,), _PLAIN_GLOBAL, tl.float32))


@triton.jit
def _uses_const_global(out_ptr, BLOCK: tl.constexpr):
    tl.store(out_ptr + tl.arange(0, BLOCK), tl.full((BLOCK,), _CONST_GLOBAL, tl.float32))


@triton.jit
def _dot_tile(a_ptr, b_ptr, c_ptr, BLOCK: tl.constexpr, BLOCK_K: tl.constexpr):
    r = tl.arange(0, BLOCK)
    k = tl.arange(0, BLOCK_K)
    a = tl.load(a_ptr + r[:, None] * BLOCK_K + k[None, :])
    b = tl.load(b_ptr + k[:, None] * BLOCK + r[None, :])
    tl.store(c_ptr + r[:, None] * BLOCK + r[None, :], tl.dot(a, b))


def case_non_constexpr_global_fails_to_compile():
    out = torch.empty(16)
    with standin.target(90) as tgt:
        with pytest.raises(CompilationError, match="global variable _PLAIN_GLOBAL"):
            _uses_plain_global[(1,)](out, BLOCK=16)
        _uses_const_global[(1,)](out, BLOCK=16)   # the fixed form compiles
    assert [r.kernel for r in tgt.records] == ["_uses_const_global"]
    assert tgt.records[0].spills == 0 and tgt.records[0].registers > 0


def case_over_limit_tile_is_refused_per_target():
    # a 256 x 256 fp32 dot over K=256 stages its operands in shared memory: > 99 KiB, < 227 KiB
    a = torch.empty(256, 256)
    b = torch.empty(256, 256)
    c = torch.empty(256, 256)
    with standin.target(86) as tgt86:
        with pytest.raises(OutOfResources, match="shared memory"):
            _dot_tile[(1,)](a, b, c, BLOCK=256, BLOCK_K=64, num_warps=8)
    assert tgt86.records[0].shared > standin.SHARED_LIMIT[86]
    with standin.target(90) as tgt90:
        _dot_tile[(1,)](a, b, c, BLOCK=256, BLOCK_K=64, num_warps=8)
    assert standin.SHARED_LIMIT[86] < tgt90.records[0].shared <= standin.SHARED_LIMIT[90]


def _ptx(kernel) -> str:
    return next(iter(kernel.device_caches[90][0].values())).asm["ptx"]


def case_row_offsets_are_64_bit():
    """Rows x stride passes 2**31 for a 4.2M x 512 gallery: the compiled address arithmetic multiplies
    in 64 bits (``mul.lo.s64``; the int32 version compiled none). Shapes stay small: the PTX is the same."""
    import collections

    from avfast.kernels import affinity, attention, contrastive

    with standin.target(90):
        affinity.topk_scores(torch.randn(1, 64, 64), torch.randn(1, 512, 64), None, 5, False)
        ids = collections.namedtuple("Ids", "x_pos y_pos x_src y_src")(None, None, None, None)
        contrastive.forward(torch.randn(64, 64, dtype=torch.float16), torch.randn(64, 64, dtype=torch.float16),
                            torch.tensor(1.0), None, ids, 0, 0.0, 0.0, False, "infonce")
        q = torch.randn(2, 2, 4, 64, dtype=torch.float16)
        kv = torch.randn(2, 1, 80, 64, dtype=torch.float16)
        attention.attention_forward(q, kv, kv, None, None, None, None, 0.125, 0.0, splits=1)
    for kernel in (affinity._affinity_partial_kernel, contrastive._contrastive_fwd_kernel, attention._attn_fwd_kernel):
        assert "mul.lo.s64" in _ptx(kernel), f"{kernel.fn.__name__}: no 64-bit offset multiply in its PTX"


def case_attention_backward_sm80_registers():
    """ptxas 12.8 gave sm_80's former dK/dV kernel 32 registers (5-16 KB of spills) unless the PTX states
    ``.maxnreg``: every attention launch now does, and the bf16 backward with every flag is spill-free."""
    from avfast.kernels import attention

    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 2, 32, 128, generator=g).bfloat16()
    k = torch.randn(2, 1, 96, 128, generator=g).bfloat16()
    bias = torch.zeros(1, 2, 1, 96, dtype=torch.bfloat16)
    keep = torch.ones(2, 2, 32, 96, dtype=torch.bool)
    args = (torch.tensor([96, 40]), torch.zeros(2, 96, dtype=torch.bool), bias, keep, 0.1, 0.1)
    with standin.target(80) as tgt:
        out, lse = attention.attention_forward(q, k, k, *args, splits=1)
        attention.attention_backward(torch.randn_like(q), q, k, k, out, lse, *args, True, splits=1)
    kernels = {r.kernel: r for r in tgt.records}
    assert set(kernels) == {"_attn_fwd_kernel", "_attn_bwd_dq_kernel", "_attn_bwd_dkdv_kernel"}
    assert all(r.spills == 0 for r in tgt.records), [(r.kernel, r.registers, r.spills) for r in tgt.records]
    assert kernels["_attn_bwd_dkdv_kernel"].registers > 32
    ptx = next(iter(attention._attn_bwd_dkdv_kernel.device_caches[80][0].values())).asm["ptx"]
    assert ".maxnreg 255" in ptx


def test_half_spills_fail_the_check():
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
    import compile_check as cc

    def rec(spills):
        return standin.Compiled("k", 80, {}, 4, 2, 0, 255, spills, 0)

    for op, dtype, fails in [("cross_attention", torch.bfloat16, True), ("contrastive_loss", torch.float16, True),
                             ("cross_attention", torch.float32, False), ("mel_spectrogram", torch.float16, False)]:
        case = cc.Case(op, "x", lambda: None, dtype)
        assert cc._half_spills(case, [rec(8), rec(0)]) == ([rec(8)] if fails else [])
    assert not hasattr(cc, "KNOWN_SPILLS")


@pytest.mark.parametrize("cap,refused", [(80, False), (86, True), (89, True), (90, True)])
def test_wide_masked_bias_backward_is_refused_where_it_spills(monkeypatch, cap, refused):
    # the compile check proves each side per target (refused: spills with the check off; accepted: spill-free)
    from avfast.kernels import attention

    monkeypatch.setenv("AVFAST_TRITON_TILES", "gpu")
    monkeypatch.setattr(attention, "target_info", lambda device: (cap, standin.SHARED_LIMIT[cap], standin.SM_COUNT[cap]))
    call = dict(lq=16, masks=True, bias=True, needs_grad=True)
    why = attention.refusal(32, 512, torch.bfloat16, "cpu", **call)
    assert bool(why) == refused and all("spills registers" in w for w in why)
    assert not attention.refusal(32, 512, torch.bfloat16, "cpu", **dict(call, needs_grad=False))
    assert not attention.refusal(32, 512, torch.bfloat16, "cpu", **dict(call, bias=False))
    assert not attention.refusal(32, 256, torch.bfloat16, "cpu", **call)


def test_ptxas_log_parser():
    log = ("ptxas info    : Compiling entry function 'k' for 'sm_90a'\n"
           "ptxas info    : Used 168 registers, used 1 barriers\n"
           "    24 bytes stack frame, 40 bytes spill stores, 44 bytes spill loads\n")
    assert standin.parse_ptxas_log(log) == (168, 40, 44)
    with pytest.raises(ValueError, match="no register"):
        standin.parse_ptxas_log("garbage")


def _in_compiler(case: str):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, __file__, case], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{case}: ok" in proc.stdout


def test_non_constexpr_global_fails_to_compile():
    _in_compiler("case_non_constexpr_global_fails_to_compile")


def test_over_limit_tile_is_refused_per_target():
    _in_compiler("case_over_limit_tile_is_refused_per_target")


def test_row_offsets_are_64_bit():
    _in_compiler("case_row_offsets_are_64_bit")


def test_attention_backward_sm80_registers():
    _in_compiler("case_attention_backward_sm80_registers")


if __name__ == "__main__":
    assert os.environ.get("TRITON_INTERPRET", "0") != "1"
    globals()[sys.argv[1]]()
    print(f"{sys.argv[1]}: ok")
