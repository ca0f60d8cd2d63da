"""The ``avfast`` command line: ``avfast info | bench | plot | make-demo-data | pretrain | eval | dub``.

Subcommands live in the modules listed in ``_COMMANDS`` and in the model families' modules
(``avfast/train/families/*.py``, found by scanning); each defines ``add_parser(subparsers)`` that
registers its subcommand and sets ``func``. A module that is not part of this build yet is left out
of the help.
"""
from __future__ import annotations

import argparse
import importlib
import platform
import sys

# module providing add_parser(subparsers), in help order
_COMMANDS = (
    "avfast.cli",  # info, bench
    "avfast.data.cli",  # make-demo-data, dub
    "avfast.train.cli",  # pretrain, eval
)


def _version_of(module: str, attr: str = "__version__") -> str:
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - report any import failure as "not installed"
        return f"not installed ({type(exc).__name__})"
    return str(getattr(mod, attr, "installed"))


def versions() -> dict[str, str]:
    """Versions of avfast and of the libraries it can use."""
    import torch

    from avfast import __version__, _ext

    cuda = torch.version.cuda or "none (CPU build of torch)"
    if torch.cuda.is_available():
        cuda += f"; device {torch.cuda.get_device_name(0)}"
    build = _ext.build_info()
    return {
        "avfast": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "CUDA": cuda,
        "triton": _version_of("triton"),
        "PyAV": _version_of("av"),
        "DALI": _version_of("nvidia.dali"),
        "torchaudio": _version_of("torchaudio"),
        "xformers": _version_of("xformers"),
        "avfast._C": ", ".join(f"{k}={v}" for k, v in build.items()) or f"not built: {_ext.load_error()}",
    }


def cmd_info(args: argparse.Namespace) -> int:
    from avfast import _backend

    print("avfast info")
    for name, value in versions().items():
        print(f"  {name:<11} {value}")
    rows = _backend.backend_table()
    print("\nbackends (op / backend / status):")
    if not rows:
        print("  no ops registered in this build")
    width = max((len(op) for op, _, _ in rows), default=0)
    for op, name, status in rows:
        print(f"  {op:<{width}}  {name:<9} {status}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from avfast import _bench

    return _bench.run(args.ops, quick=args.quick, json_path=args.json, plot_dir=args.plot)


def cmd_plot(args: argparse.Namespace) -> int:
    from avfast.plot import plot_run

    try:
        written = plot_run(args.run_dir, out_dir=args.out)
    except FileNotFoundError as exc:
        print(f"avfast plot: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="versions and, per op, which backends are available and why not")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("bench", help="run the CPU benchmarks (pytest-benchmark) and print speed ratios")
    p.add_argument("ops", nargs="*", help="benchmark files to run, e.g. mel affinity (default: all)")
    p.add_argument("--quick", action="store_true", help="few rounds, small sizes (a smoke run)")
    p.add_argument("--json", default=None, help="also keep pytest-benchmark's JSON here")
    p.add_argument("--plot", default=None, metavar="DIR", help="also draw each group's bars as PNG into DIR "
                   "(needs matplotlib: pip install 'avfast[plot]')")
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("plot", help="redraw a training run's loss / lr / R@k curves (PNG) from its metrics.jsonl")
    p.add_argument("run_dir", help="the run's --out directory (holds metrics.jsonl)")
    p.add_argument("--out", default=None, help="write the PNGs here instead of next to metrics.jsonl")
    p.set_defaults(func=cmd_plot)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avfast", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"avfast {_version_of('avfast')}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _COMMANDS:
        try:
            mod = sys.modules[__name__] if module == __name__ else importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if not module.startswith(exc.name or "\0"):
                raise
            continue
        mod.add_parser(sub)
    from avfast.train.family import family_modules

    for mod in family_modules().values():
        if hasattr(mod, "add_parser"):
            mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
