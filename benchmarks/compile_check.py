"""Compile-only check of every Triton kernel for sm_80 / sm_86 / sm_89 / sm_90, on a machine without a GPU.

Each case calls the op's public function with ``backend="triton"`` on CPU tensors (forward and
backward) under ``avfast.kernels.standin.target(cap)``: the op's dispatch check and launch code run
as on the GPU, every kernel compiles through Triton's NVIDIA backend and bundled ptxas, launches do
nothing. Per case and target:

- dispatch accepts -> every kernel must compile and fit the target's shared memory;
- dispatch refuses -> the same call with the check switched off must fail to compile or exceed
  the shared memory (else dispatch refuses a shape that works).

Each distinct specialisation compiles once per target (Triton's own JIT cache). Results: one row
per compiled variant (num_warps, num_stages, shared bytes, registers and spill bytes from ``ptxas -v``);
every fp16/bf16 variant must be spill-free (the exact fp32 "ieee" dots may spill: documented in
benchmarks/RESULTS.md; mel computes in fp32 whatever the input dtype). ``--full`` walks every flag
combination and dtype on every target; the default (CI) grid walks the tile-deciding axes (dtype,
D / head dim, rows, k, preset) on every target, the attention flags (masks, bias, dropout: they change
the register budget) for bf16 on every target, and the other flag combinations on sm_90 only.
Targets run in ``--jobs`` processes (default 2).

    python benchmarks/compile_check.py [--full] [--targets 90,86] [--ops cross_attention] [--jobs 2] [--json out.json] [--table]
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import itertools
import json
import multiprocessing
import sys
import time
from typing import Callable, Iterator

import torch

from avfast import _backend
from avfast.kernels import standin

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_REGISTER_REFUSAL = "spills registers"  # the phrase of dispatch refusals made for the register budget
_SHORT = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


@dataclasses.dataclass
class Case:
    op: str
    label: str
    run: Callable[[], None]
    dtype: torch.dtype


@contextlib.contextmanager
def triton_on_cpu(op: str, *, enforce_check: bool = True) -> Iterator[None]:
    """The op's triton backend serves CPU tensors (dispatch check kept unless ``enforce_check=False``)."""
    table = _backend._REGISTRY[op]
    original = table["triton"]
    table["triton"] = dataclasses.replace(original, devices=("cuda", "cpu"),
                                          check=original.check if enforce_check else None)
    key = (op, "triton")
    had = key in _backend._AVAILABILITY
    saved = _backend._AVAILABILITY.get(key)
    _backend._AVAILABILITY[key] = None
    try:
        yield
    finally:
        table["triton"] = original
        if had:
            _backend._AVAILABILITY[key] = saved
        else:
            _backend._AVAILABILITY.pop(key, None)


# ----------------------------------------------------------------------------------------- grids


def _dtypes(full: bool, flags: bool) -> tuple:
    """Every dtype on sm_90 / the full grid; bf16 and fp32 elsewhere (fp16 and bf16 tiles are alike)."""
    return DTYPES if full or flags else (torch.bfloat16, torch.float32)


def _contrastive_cases(full: bool, flags: bool) -> list[Case]:
    from avfast.ops import contrastive_loss

    cases = []
    dims = (32, 64, 128, 256, 512, 1024) if full else (64, 128, 256, 512, 1024) if flags else (128, 512, 1024)
    options = [("infonce", False), ("siglip", False), ("infonce", True), ("siglip", True)]
    for dtype, d, (kind, ids) in itertools.product(_dtypes(full, flags), dims, options):
        if (kind, ids) != ("infonce", False) and not (flags and (full or dtype == torch.bfloat16)):
            continue
        def run(dtype=dtype, d=d, kind=kind, ids=ids):
            a = torch.randn(48, d, dtype=dtype, requires_grad=True)
            b = torch.randn(48, d, dtype=dtype, requires_grad=True)
            extra = {}
            if ids:
                extra = dict(positive_ids=torch.arange(48) // 2, source_ids=torch.arange(48) // 4)
            if kind == "siglip":
                extra["logit_bias"] = torch.zeros(1, requires_grad=True)
            contrastive_loss(a, b, kind=kind, backend="triton", **extra).backward()
        cases.append(Case("contrastive_loss", f"{_SHORT[dtype]} D={d} {kind}{' ids' if ids else ''}", run, dtype))
    return cases


def _affinity_cases(full: bool, flags: bool) -> list[Case]:
    from avfast.ops import affinity_topk

    cases = []
    ks = (1, 5, 16, 32, 64, 128) if full else (1, 16, 64, 128)  # K_PAD and BLOCK_M follow k
    dims = (32, 64, 128, 512, 1024) if full else (64,)  # BLOCK_D is fixed (32): D only changes the loop
    options = [(False, None), (True, None), (False, torch.bfloat16)]
    for dtype, d, k, (excl, cdt) in itertools.product(_dtypes(full, flags), dims, ks, options):
        if (cdt is not None and k > 32) or ((excl or cdt is not None) and not (flags and (full or dtype == torch.bfloat16))):
            continue
        def run(dtype=dtype, d=d, k=k, excl=excl, cdt=cdt):
            x = torch.randn(300 if excl else 40, d, dtype=dtype)
            y = None if excl else torch.randn(300, d, dtype=dtype)  # exclude_self: x against itself
            try:
                affinity_topk(x, y, k, exclude_self=excl, compute_dtype=cdt, backend="triton")
            except (IndexError, RuntimeError) as exc:  # the bf16 search's candidates are garbage (launches
                if "out of bounds" not in str(exc):      # do nothing): the torch rerank after it may fail
                    raise
        cases.append(Case("affinity_topk", f"{_SHORT[dtype]} D={d} k={k}{' excl' if excl else ''}"
                                           f"{' bf16-compute' if cdt else ''}", run, dtype))
    return cases


def _attention_cases(full: bool, flags: bool) -> list[Case]:
    """Half precision: every head-dim block (16 .. 512) x every row block (16 .. 128), without and with
    every flag (kv_lens, key_padding_mask, attn_bias with its gradient, dropout) for bf16 on every
    target; fp16 (sm_90 / --full) and fp32 (the shared-memory limits) on fewer shapes."""
    from avfast.ops import cross_attention

    cases = []
    half_dims = (16, 32, 64, 80, 128, 256, 512) if full else (16, 32, 64, 128, 256, 512)
    fp32_dims = (32, 64, 80, 128, 256, 512) if full else (64, 128, 256, 512) if flags else (128, 256, 512)
    half_rows = (2, 16, 32, 64, 128) if full else (2, 32, 64, 128)  # packed rows per kv head
    fp32_rows = (2, 16, 32, 64, 128) if full else (2, 32, 128) if flags else (2, 128)
    options = [(False, False), (True, False), (False, True), (True, True)] if full else [(False, False), (True, True)]
    for dtype in _dtypes(full, flags):
        half = dtype != torch.float32
        for dh, lq, (masks, extras) in itertools.product(half_dims if half else fp32_dims,
                                                         half_rows if half else fp32_rows, options):
            if (masks or extras) and not (full or dtype == torch.bfloat16):
                continue
            def run(dtype=dtype, dh=dh, lq=lq, masks=masks, extras=extras):
                b, hq, hkv, lk = 2, 2, 1, 96
                q = torch.randn(b, hq, max(1, lq // 2), dh, dtype=dtype, requires_grad=True)
                k = torch.randn(b, hkv, lk, dh, dtype=dtype, requires_grad=True)
                v = torch.randn(b, hkv, lk, dh, dtype=dtype, requires_grad=True)
                kw = {}
                if masks:
                    kw["kv_lens"] = torch.tensor([lk, lk // 2])
                    kw["key_padding_mask"] = torch.zeros(b, lk, dtype=torch.bool)
                if extras:
                    kw["attn_bias"] = torch.zeros(1, hq, 1, lk, dtype=dtype, requires_grad=True)
                    kw["dropout_p"] = 0.1
                    kw["generator"] = torch.Generator().manual_seed(0)
                cross_attention(q, k, v, backend="triton", **kw).float().sum().backward()
            cases.append(Case("cross_attention", f"{_SHORT[dtype]} Dh={dh} rows={max(1, lq // 2) * 2}"
                                                 f"{' masks' if masks else ''}{' bias+dropout' if extras else ''}",
                              run, dtype))
    return cases


def _mel_cases(full: bool, flags: bool) -> list[Case]:
    from avfast.ops import mel_spectrogram
    from avfast.ops._mel_config import PRESETS

    cases = []
    for dtype, preset in itertools.product((torch.float16, torch.float32), PRESETS):
        def run(dtype=dtype, preset=preset):
            cfg = PRESETS[preset]
            wave = torch.randn(2, cfg.sample_rate // 4, dtype=dtype)
            mel_spectrogram(wave, preset, lengths=torch.tensor([wave.shape[-1], wave.shape[-1] // 2]),
                            backend="triton")
        cases.append(Case("mel_spectrogram", f"{_SHORT[dtype]} preset={preset}", run, dtype))
    return cases


GRIDS = (_contrastive_cases, _affinity_cases, _attention_cases, _mel_cases)


# ---------------------------------------------------------------------------------------- runner


@dataclasses.dataclass
class Outcome:
    op: str
    label: str
    capability: int
    accepted: bool
    compiled: bool
    error: str = ""
    refusal: str = ""
    spilled: bool = False   # refused, and with the check off an fp16/bf16 variant spilled

    @property
    def ok(self) -> bool:
        return self.accepted == self.compiled

    @property
    def register_refusal(self) -> bool:
        """Refused for the register budget (spills), a rule over a class of calls."""
        return not self.accepted and _REGISTER_REFUSAL in self.refusal


def _attempt(case: Case, enforce: bool) -> tuple[bool, str]:
    """(ran, error text) of one case; BackendError = dispatch refused."""
    from triton.compiler.errors import CompilationError
    from triton.runtime.errors import OutOfResources

    with triton_on_cpu(case.op, enforce_check=enforce):
        try:
            case.run()
        except _backend.BackendError as exc:
            return False, f"refused: {exc}"
        except (CompilationError, OutOfResources) as exc:
            return False, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        except Exception as exc:  # noqa: BLE001 - any other error is a failure of the case, reported
            return False, f"error {type(exc).__name__}: {str(exc)[:200]}"
    return True, ""


def _half_spills(case: Case, records) -> list:
    """The fp16/bf16 variants among ``records`` that spill (mel computes in fp32 whatever its input)."""
    if case.dtype == torch.float32 or case.op == "mel_spectrogram":
        return []
    return [r for r in records if r.spills]


def run_case(case: Case, capability: int, tgt: standin.Target | None = None) -> Outcome:
    """Accepted: it must compile. Refused: with the check off it must fail to compile, exceed the
    shared memory, or (fp16/bf16) spill, else dispatch refuses a shape that works."""
    ran, err = _attempt(case, enforce=True)
    if ran:
        return Outcome(case.op, case.label, capability, True, True)
    if err.startswith("refused"):
        first = len(tgt.launches) if tgt is not None else 0
        compiled, err2 = _attempt(case, enforce=False)
        spilled = _half_spills(case, tgt.launched(first)) if compiled and tgt is not None else []
        if spilled:
            compiled, err2 = False, "spills " + ", ".join(f"{r.kernel} {r.spills} B" for r in spilled)
        return Outcome(case.op, case.label, capability, False, compiled, err2, refusal=err, spilled=bool(spilled))
    return Outcome(case.op, case.label, capability, True, False, err)


def _check_target(cap: int, full: bool, ops: tuple[str, ...] | None, verbose: bool) -> dict:
    """One target's outcomes, compiled variants and failures (runs in a worker process with --jobs)."""
    start = time.perf_counter()
    outcomes, failures, spilling, served = [], [], set(), set()
    flags = full or cap == 90
    with standin.target(cap) as tgt:
        for grid in GRIDS:
            for case in grid(full, flags):
                if ops and case.op not in ops:
                    continue
                first, first_launch = len(tgt.records), len(tgt.launches)
                t0 = time.perf_counter()
                out = run_case(case, cap, tgt)
                if verbose:
                    print(f"  sm_{cap} {case.op} {case.label}: {'accepted' if out.accepted else 'refused'}"
                          f"{'' if out.ok else ' MISMATCH ' + out.error[:120]} ({time.perf_counter() - t0:.1f} s)",
                          flush=True)
                for rec in tgt.records[first:]:
                    rec.op, rec.dtype = case.op, _SHORT[case.dtype]
                for rec in _half_spills(case, tgt.launched(first_launch)) if out.accepted else []:
                    if rec.hash not in spilling:  # each spilling variant once, at the first case launching it
                        spilling.add(rec.hash)
                        failures.append(f"sm_{cap} {rec.kernel} {rec.constexprs} (num_warps={rec.num_warps}, "
                                        f"num_stages={rec.num_stages}): {rec.spills} spill bytes on a "
                                        f"{_SHORT[case.dtype]} path ({case.label})")
                if out.accepted:
                    served.update(tgt.launches[first_launch:])
                outcomes.append(out)
                if not out.ok and not out.register_refusal:
                    what = ("dispatch accepts but it does not compile" if out.accepted
                            else "dispatch refuses but it compiles")
                    failures.append(f"sm_{cap} {case.op} {case.label}: {what} {out.error}")
        variants = list(tgt.records)
    # a register-budget refusal covers a class of calls (some may land on a specialisation that happens
    # to fit): at least one refused call of the class must spill with the check off on this target
    by_reason: dict[str, list[Outcome]] = {}
    for out in outcomes:
        if out.register_refusal:
            by_reason.setdefault(out.refusal.split(_REGISTER_REFUSAL)[0].split(":")[-1], []).append(out)
    for group in by_reason.values():
        if not any(o.spilled for o in group):
            failures.append(f"sm_{cap} {group[0].op}: dispatch refuses {len(group)} calls for the register budget "
                            f"but none spills with the check off ({', '.join(o.label for o in group)})")
    seconds = time.perf_counter() - start
    print(f"sm_{cap}: {len(outcomes)} cases, {len(variants)} variants compiled in {seconds:.0f} s", flush=True)
    return dict(outcomes=outcomes, variants=variants, served=[v for v in variants if v.hash in served],
                failures=failures, seconds=seconds)


def check(targets=standin.TARGETS, *, full: bool = False, ops: tuple[str, ...] | None = None,
          verbose: bool = False, jobs: int = 1) -> dict:
    """Run the grid, one target per worker process when ``jobs`` > 1; returns {"outcomes": [...],
    "variants": every compiled variant, "served": those launched by a call dispatch accepts (not only by
    the check-off rerun of a refused one), "failures": [...], "seconds": wall, "cpu_seconds": summed}."""
    start = time.perf_counter()
    args = [(cap, full, ops, verbose) for cap in targets]
    if jobs > 1 and len(targets) > 1:
        with concurrent.futures.ProcessPoolExecutor(min(jobs, len(targets)),
                                                    mp_context=multiprocessing.get_context("spawn")) as pool:
            parts = list(pool.map(_check_target, *zip(*args)))
    else:
        parts = [_check_target(*a) for a in args]
    merged = {key: [x for part in parts for x in part[key]] for key in ("outcomes", "variants", "served", "failures")}
    return dict(merged, seconds=time.perf_counter() - start, cpu_seconds=sum(p["seconds"] for p in parts))


def table(variants) -> str:
    """Markdown table per kernel and target: variants, max shared bytes (and the limit), max registers,
    max spill bytes of the variants computing in fp16/bf16 (must be 0) and in fp32 (the exact "ieee"
    dots may spill; mel computes in fp32 whatever its input)."""
    groups: dict[tuple[str, int], list] = {}
    for v in variants:
        groups.setdefault((v.kernel, v.capability), []).append(v)
    lines = ["| kernel | target | variants | max shared (B) | limit (B) | max regs | max spill, fp16/bf16 (B) "
             "| max spill, fp32 (B) (spilling variants) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (kernel, cap), vs in sorted(groups.items()):
        half = [v.spills for v in vs if v.dtype in ("fp16", "bf16") and v.op != "mel_spectrogram"]
        full = [v.spills for v in vs if not (v.dtype in ("fp16", "bf16") and v.op != "mel_spectrogram")]
        lines.append(f"| {kernel} | sm_{cap} | {len(vs)} | {max(v.shared for v in vs)} | {standin.SHARED_LIMIT[cap]} "
                     f"| {max(v.registers for v in vs)} | {max(half) if half else '-'} "
                     f"| {f'{max(full)} ({sum(x > 0 for x in full)})' if full else '-'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="every flag combination on every target")
    p.add_argument("--targets", default=",".join(map(str, standin.TARGETS)))
    p.add_argument("--ops", default="", help="comma-separated op names (default: all)")
    p.add_argument("--json", default="")
    p.add_argument("--table", action="store_true", help="print the markdown table of variants")
    p.add_argument("-v", "--verbose", action="store_true", help="one line per case")
    p.add_argument("--jobs", type=int, default=2, help="worker processes, one target each (default 2)")
    args = p.parse_args(argv)
    targets = tuple(int(t) for t in args.targets.split(","))
    ops = tuple(o for o in args.ops.split(",") if o) or None
    res = check(targets, full=args.full, ops=ops, verbose=args.verbose, jobs=args.jobs)
    refused = [o for o in res["outcomes"] if not o.accepted]
    print(f"compile check: {len(res['outcomes'])} cases, {len(res['variants'])} variants compiled, "
          f"{len(refused)} cases refused by dispatch, {res['seconds']:.0f} s wall "
          f"({res['cpu_seconds']:.0f} s summed over the targets' workers)")
    for o in refused:
        print(f"  refused sm_{o.capability} {o.op} {o.label}: {o.refusal[:200]}")
    if args.table:
        print(table(res["served"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(seconds=res["seconds"], cpu_seconds=res["cpu_seconds"], failures=res["failures"],
                           outcomes=[dataclasses.asdict(o) for o in res["outcomes"]],
                           variants=[dict(dataclasses.asdict(v), served=v in res["served"]) for v in res["variants"]]),
                      f, indent=1, default=str)
    for f in res["failures"]:
        print("FAIL", f)
    return 1 if res["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
