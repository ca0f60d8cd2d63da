"""Train and evaluate any model family from a config: the code behind ``avfast <family> train|eval``.

    avfast pacs train --config configs/pacs/dcl.yaml --out runs/pacs [--set optim.lr=1e-4] [--resume]
    torchrun --nproc-per-node 8 -m avfast.cli pacs train --config ... --out runs/pacs
    avfast pacs eval --checkpoint runs/pacs --split test [--json results.json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable

import torch

__all__ = ["train_family", "load_run", "evaluate_model", "add_family_commands", "count_trainable"]


def count_trainable(model: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def evaluate_model(cfg, model: torch.nn.Module, split: str, info) -> dict:
    """The family's ``evaluate`` on ``split`` in eval mode without gradients (``{}`` if it has none)."""
    from avfast.train.family import get_family

    family = get_family(cfg.family)
    if family.evaluate is None:
        return {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return family.evaluate(cfg, model, split, info)
    finally:
        model.train(was_training)


def train_family(cfg, out_dir: str | Path | None, *, resume: str | None = None, device: str = "auto",
                 evaluate_splits: tuple[str, ...] = ("test",), log: Callable[[str], None] = print) -> dict:
    """Train ``cfg`` (any family) on one process or under torchrun; returns the report dict.

    Writes ``config.json``, ``metrics.jsonl``, ``checkpoints/`` and ``report.json`` to ``out_dir``.
    ``resume``: ``"latest"`` (the run's latest checkpoint) or a checkpoint path. After training,
    the family's evaluation runs on each of ``evaluate_splits`` with the best checkpoint's weights
    when early stopping kept one, else the final weights.
    """
    from avfast.train.checkpoint import latest_checkpoint, load_checkpoint
    from avfast.train.config import config_to_dict
    from avfast.train.distributed import destroy_distributed, init_distributed, unwrap_model
    from avfast.train.family import get_family
    from avfast.train.trainer import Trainer, seed_everything

    family = get_family(cfg.family)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    info = init_distributed(device)
    out = Path(out_dir) if out_dir is not None else None
    say = log if info.is_main else (lambda *_: None)
    try:
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        model = family.build_model(cfg)
        seed_everything(cfg.train.seed + info.rank)
        total, trainable = count_trainable(model)
        say(f"model {cfg.name} (family {cfg.family}): {total / 1e6:.2f}M parameters, {trainable / 1e6:.2f}M trainable")
        if out is not None and info.is_main:
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.json").write_text(json.dumps(config_to_dict(cfg), indent=2))
        data = family.build_data(cfg, "train", info)
        evaluate = None
        if family.evaluate is not None and cfg.train.eval_every:
            evaluate = lambda trainer: evaluate_model(cfg, unwrap_model(trainer.model), "val", info)  # noqa: E731
        hooks = family.build_hooks(cfg) if family.build_hooks is not None else []
        trainer = Trainer(cfg, model, family.build_objective(cfg, model), data, out_dir=out, dist_info=info,
                          hooks=hooks, evaluate=evaluate, log=say)
        say(f"data: {data.steps_per_epoch} batches of {data.clips_per_batch} per epoch; "
            f"{trainer.total_steps} optimizer steps on {info.device}")
        if resume:
            trainer.resume(out if resume == "latest" else resume)
        summary = trainer.train()
        trainer.close()
        say(f"trained {summary['steps']} steps in {summary['seconds']:.1f} s "
            f"({summary['clips_per_s']:.1f} items/s), final loss {summary['loss']:.4f}")
        report: dict[str, Any] = {"train": summary, "evaluations": trainer.evaluations}
        best = latest_checkpoint(trainer.checkpoint_dir / "best") if out is not None else None
        final_model = unwrap_model(trainer.model)
        if best is not None and evaluate_splits:
            final_model.load_state_dict(load_checkpoint(best)["model"])
            say(f"evaluating the best checkpoint ({cfg.train.early_stopping_metric} {trainer.best})")
        for split in evaluate_splits:
            results = evaluate_model(cfg, final_model, split, info)
            if results:
                report[split] = results
                say(format_metrics(f"{split}:", results))
        if out is not None and info.is_main:
            (out / "report.json").write_text(json.dumps(report, indent=2, default=float))
            say(f"checkpoints, metrics.jsonl and report.json in {out}")
        return report
    finally:
        destroy_distributed(info)


def load_run(path: str | Path, overrides: list[str] | tuple = ()) -> tuple[Any, torch.nn.Module, dict]:
    """``(cfg, model with the checkpoint's weights, checkpoint state)`` of a run directory, a
    checkpoint directory (its ``latest``) or a checkpoint file; ``overrides`` as ``--set``."""
    from avfast.train.checkpoint import load_checkpoint
    from avfast.train.config import apply_overrides, config_from_dict
    from avfast.train.family import get_family

    path = Path(path)
    if path.is_dir() and (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    state = load_checkpoint(path)
    cfg = config_from_dict(apply_overrides(state["config"], list(overrides)))
    torch.manual_seed(cfg.train.seed)
    model = get_family(cfg.family).build_model(cfg)
    model.load_state_dict(state["model"])
    return cfg, model, state


def format_metrics(title: str, results: dict, indent: str = "  ") -> str:
    """``results`` as indented ``key value`` lines (nested dicts indented further)."""
    lines = [title]
    for key, value in results.items():
        if isinstance(value, dict):
            lines.append(format_metrics(f"{indent}{key}:", value, indent + "  "))
        elif isinstance(value, float):
            lines.append(f"{indent}{key} {value:.4f}")
        else:
            lines.append(f"{indent}{key} {value}")
    return "\n".join(lines)


def _cmd_train(args: argparse.Namespace) -> int:
    from avfast.train.config import load_config

    cfg = load_config(args.config, list(args.set or []), family=args.family)
    train_family(cfg, args.out, resume=args.resume, device=args.device,
                 evaluate_splits=tuple(args.evaluate) if args.evaluate is not None else ("test",))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from avfast.train.distributed import destroy_distributed, init_distributed

    cfg, model, state = load_run(args.checkpoint, args.set or [])
    if cfg.family != args.family:
        raise SystemExit(f"{args.checkpoint}: a checkpoint of family {cfg.family!r}, not {args.family!r}")
    info = init_distributed(args.device)
    try:
        model.to(info.device)
        results = evaluate_model(cfg, model, args.split, info)
        if info.is_main:
            print(format_metrics(f"{args.split} (step {state['step']}):", results))
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=2, default=float))
    finally:
        destroy_distributed(info)
    return 0


def add_family_commands(sub: argparse._SubParsersAction, command: str, family: str, help: str):
    """Register ``avfast <command> train|eval`` for ``family``; returns the sub-command group so a
    family can add more (``localize``, ...)."""
    parser = sub.add_parser(command, help=help)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = actions.add_parser("train", help=f"train a {family} model from a config (torchrun for DDP)")
    p.add_argument("--config", default=None, help=f"YAML/TOML/JSON config of family {family!r} "
                                                   "(default: the family's paper settings)")
    p.add_argument("--out", required=True, help="run directory: checkpoints/, metrics.jsonl, report.json")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config entry, e.g. optim.lr=1e-3")
    p.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue from the run's latest checkpoint, or from the given checkpoint file")
    p.add_argument("--evaluate", nargs="*", default=None, metavar="SPLIT",
                   help="splits to evaluate after training (default: test; none: skip)")
    p.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK if available) | cpu | cuda")
    p.set_defaults(func=_cmd_train, family=family)
    p = actions.add_parser("eval", help=f"evaluate a {family} checkpoint on a split")
    p.add_argument("--checkpoint", required=True, help="checkpoint file, or a run/checkpoint directory (latest)")
    p.add_argument("--split", default="test", help="train | val | test (default: test)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config entry")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_eval, family=family)
    return actions
