"""``avfast pretrain`` and ``avfast eval``.

    avfast pretrain --config configs/demo.yaml --data demo_data/manifest.jsonl --out runs/demo
    torchrun --nproc-per-node 8 -m avfast.cli pretrain --config configs/dub_x3d_r50.yaml --data m.jsonl --out runs/x
    avfast pretrain ... --resume            # continue runs/x from its latest checkpoint
    avfast eval --checkpoint runs/demo --data demo_data/manifest.jsonl [--probe labelled.jsonl]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

__all__ = ["add_parser", "cmd_pretrain", "cmd_eval"]


def _format_retrieval(results: dict) -> list[str]:
    lines = []
    for direction, r in results.items():
        ks = [k for k in r if k.startswith("R@")]
        recall = "  ".join(f"{k} {r[k]:5.1f}" for k in ks)
        chance = "  ".join(f"{r['chance_' + k]:.1f}" for k in ks if "chance_" + k in r)
        lines.append(f"  {direction:<13} {recall}  median rank {r['median_rank']:.0f}/{r['queries']}"
                     f"  (chance R@k: {chance})")
    return lines


def _evaluate(cfg, model, manifest: str, info, probe_manifest: str | None = None, label: str = "") -> dict:
    from avfast.train.data import EvalClips
    from avfast.train.evaluate import embed_clips, retrieval_metrics
    from avfast.train.trainer import resolve_precision

    clips = EvalClips(cfg, manifest, with_video=cfg.model.video is not None,
                      with_secondary=cfg.model.video is None, max_clips=cfg.eval.max_clips,
                      rank=info.rank, world_size=info.world_size)
    dtype = resolve_precision(cfg.train.precision, info.device)
    emb = embed_clips(model, clips.loader(cfg.eval.batch_size, cfg.data.num_workers), info.device, dtype)
    results = {"retrieval": retrieval_metrics(emb, cfg.eval.ks, chunk_size=cfg.eval.chunk_size,
                                              backend=cfg.eval.backend)}
    held_out = _held_out(cfg, manifest)
    results["held_out"] = held_out
    if info.is_main:
        where = "held-out clips (no movie file shared with training)" if held_out else "clips"
        print(f"retrieval {label}on {clips.total} {where}:")
        print("\n".join(_format_retrieval(results["retrieval"])))
    if probe_manifest:
        results["probe"] = _probe(cfg, model, probe_manifest, info, label)
    return results


def _held_out(cfg, manifest: str) -> bool:
    """True when no video file of ``manifest`` is in the training manifest (``data.manifest``)."""
    from avfast.data import read_manifest

    if not cfg.data.manifest:
        return False
    train = {str(Path(c.video).resolve()) for c in read_manifest(cfg.data.manifest)}
    return not any(str(Path(c.video).resolve()) in train for c in read_manifest(manifest))


def _probe(cfg, model, manifest: str, info, label: str = "") -> dict:
    """Linear and MLP probes on the labelled manifest, per task and modality (seed 001's evaluation).

    Features: the backbones' pre-projection features (``eval.probe_features``), pseudo-stereo audio,
    embedded once for every task. Tasks: ``eval.probe_split`` (ESC-50 folds, UCF101 split 1,
    VGGSound test csv) or, without one, each label of ``eval.probe_label`` (comma-separated) with
    every ``eval.probe_test_every``-th movie's clips held out for test. Each fold's hyper-parameters
    are chosen on validation clips carved from its training clips.
    Returns ``{task: {"features", "classes", modality: {kind: {"top1", "mean_per_class", ...}}}}``."""
    from avfast.train.data import EvalClips
    from avfast.train.distributed import all_gather_cat
    from avfast.train.evaluate import embed_clips, read_split

    e = cfg.eval
    clips = EvalClips(cfg, manifest, with_video=cfg.model.video is not None, rank=info.rank,
                      world_size=info.world_size)
    emb = embed_clips(model, clips.loader(e.batch_size, cfg.data.num_workers), info.device,
                      features=e.probe_features == "backbone")
    ids = all_gather_cat(emb["clip"]).cpu()
    manifest_clips = [clips.dataset.clips[i] for i in ids.tolist()]
    feats = {name: all_gather_cat(emb[key]).cpu().float() for key, name in (("v", "video"), ("a", "audio")) if key in emb}
    if len(feats) == 2:
        feats["audio+video"] = torch.cat([feats["audio"], feats["video"]], 1)
    tasks = []  # (name, class name per clip, folds)
    if e.probe_split:
        split = read_split(e.probe_split)
        names = [split.key(c) for c in manifest_clips]
        folds = [(torch.tensor([n in tr for n in names]), torch.tensor([n in te for n in names]))
                 for tr, te in split.folds]
        tasks.append((split.name, [split.labels.get(n) for n in names], folds))
    else:
        sources = torch.tensor([clips.dataset.source_ids[i] for i in ids.tolist()])
        test = sources % e.probe_test_every == 0  # whole movies on one side
        for key in [k.strip() for k in e.probe_label.split(",") if k.strip()]:
            values = [c.labels.get(key) for c in manifest_clips]
            values = ["+".join(sorted(map(str, v))) if isinstance(v, (list, tuple)) else v for v in values]
            tasks.append((key, values, [(~test, test)]))
    out = {}
    for task, classes, folds in tasks:
        out[task] = _probe_task(cfg, feats, ids, classes, folds, f"{manifest}: probe task {task!r}")
        if info.is_main:
            r = out[task]
            for name in feats:
                parts = "  ".join(f"{k} top-1 {r[name][k]['top1']:5.1f}% (mean/class {r[name][k]['mean_per_class']:5.1f}%)"
                                  for k in e.probe_kinds)
                sp = r[name]["split"]
                print(f"  {label}probe {task} ({r['classes']} classes, chance {100.0 / r['classes']:.1f}%, "
                      f"{sp['fit']}/{sp['val']}/{sp['test']} fit/val/test, {len(folds)} fold(s)) {name}: {parts}")
    return out


def _probe_task(cfg, feats: dict, ids, classes: list, folds: list, what: str) -> dict:
    """One task's probes per modality, averaged over its folds."""
    from avfast.train.evaluate import LINEAR_GRID, probe_task

    e = cfg.eval
    index = {name: i for i, name in enumerate(sorted({str(n) for n in classes if n is not None}))}
    if not index:
        raise ValueError(f"{what}: no clip has a label")
    y = torch.tensor([index[str(n)] if n is not None else -1 for n in classes])
    linear_grid = tuple({**g, "lr": e.probe_lr * g["lr"] / LINEAR_GRID[0]["lr"]} for g in LINEAR_GRID)
    out: dict = {"features": e.probe_features, "classes": len(index)}
    for name, x in feats.items():
        per_fold = [probe_task(x, y, ids, tr & (y >= 0), te & (y >= 0), val_fraction=e.probe_val_fraction,
                               kinds=tuple(e.probe_kinds), linear_grid=linear_grid, linear_epochs=e.probe_epochs,
                               mlp_epochs=e.probe_mlp_epochs, seed=cfg.train.seed)
                    for tr, te in folds]
        out[name] = {"split": per_fold[0]["split"]}
        for kind in e.probe_kinds:
            accs = torch.tensor([f[kind]["test_acc"] for f in per_fold])
            mpc = torch.tensor([f[kind]["test_mean_per_class"] for f in per_fold])
            out[name][kind] = {"top1": float(accs.mean()), "top1_std": float(accs.std(unbiased=False)),
                               "mean_per_class": float(mpc.mean()), "folds": len(per_fold),
                               "params": [f[kind]["params"] for f in per_fold]}
    return out


def _load_config(args):
    from avfast.train.config import load_config

    sets = list(args.set or [])
    if getattr(args, "data", None):
        sets.append(f"data.manifest={args.data}")
    return load_config(args.config, sets)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from avfast.models.dub import count_parameters
    from avfast.train.config import config_to_dict
    from avfast.train.data import ManifestSource
    from avfast.train.distributed import destroy_distributed, init_distributed
    from avfast.train.factory import build_model, build_objective
    from avfast.train.trainer import Trainer, seed_everything

    cfg = _load_config(args)
    if not cfg.data.manifest:
        raise SystemExit("avfast pretrain: give --data MANIFEST (or data.manifest in the config)")
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    info = init_distributed(args.device)
    out = Path(args.out)
    try:
        model = build_model(cfg)
        seed_everything(cfg.train.seed + info.rank)
        if info.is_main:
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.json").write_text(json.dumps(config_to_dict(cfg), indent=2))
            counts = count_parameters(model)
            print(f"model {cfg.name} ({cfg.data.variant}): " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in counts.items()))
        data = ManifestSource(cfg, cfg.data.manifest, rank=info.rank, world_size=info.world_size)
        trainer = Trainer(cfg, model, build_objective(cfg), data, out_dir=out, dist_info=info)
        if info.is_main:
            print(f"data: {len(data.dataset)} clips, {data.steps_per_epoch} batches of {cfg.data.batch_size} "
                  f"x {info.world_size} rank(s) per epoch; {trainer.total_steps} optimizer steps on {info.device}")
        if args.resume:
            trainer.resume(out if args.resume == "latest" else args.resume)
        eval_manifest = cfg.data.eval_manifest or cfg.data.manifest
        report = {}
        if args.eval and cfg.eval.before_training and trainer.step == 0:
            report["before"] = _evaluate(cfg, trainer.model, eval_manifest, info, cfg.data.probe_manifest,
                                         label="before training ")
        summary = trainer.train()
        trainer.close()
        if info.is_main:
            print(f"trained {summary['steps']} steps, {summary['clips']} clips in {summary['seconds']:.1f} s: "
                  f"{summary['clips_per_s']:.1f} clips/s, final loss {summary['loss']:.4f}")
        report["train"] = summary
        if args.eval:
            report["after"] = _evaluate(cfg, trainer.model, eval_manifest, info, cfg.data.probe_manifest,
                                        label="after training ")
        if info.is_main:
            (out / "report.json").write_text(json.dumps(report, indent=2))
            print(f"checkpoints, metrics.jsonl and report.json in {out}")
    finally:
        destroy_distributed(info)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from avfast.train.checkpoint import load_checkpoint
    from avfast.train.config import apply_overrides, config_from_dict
    from avfast.train.distributed import destroy_distributed, init_distributed
    from avfast.train.factory import build_model

    path = Path(args.checkpoint)
    if path.is_dir() and (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    state = load_checkpoint(path)
    sets = list(args.set or [])
    if args.probe:
        sets.append(f"data.probe_manifest={args.probe}")
    if args.probe_split:
        sets.append(f"eval.probe_split={args.probe_split}")
    cfg = config_from_dict(apply_overrides(state["config"], sets))
    info = init_distributed(args.device)
    try:
        model = build_model(cfg)
        model.load_state_dict(state["model"])
        model.to(info.device)
        results = _evaluate(cfg, model, args.data, info, cfg.data.probe_manifest,
                            label=f"of step {state['step']} ")
        if args.json and info.is_main:
            Path(args.json).write_text(json.dumps(results, indent=2))
    finally:
        destroy_distributed(info)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="dub-augmented audio-visual pretraining (seed 001); torchrun for DDP")
    p.add_argument("--config", default=None, help="YAML/TOML/JSON config (default: the paper's settings)")
    p.add_argument("--data", default=None, help="training manifest (JSON lines)")
    p.add_argument("--out", required=True, help="run directory: checkpoints/, metrics.jsonl, report.json")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config entry, e.g. optim.lr=1e-3")
    p.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue from the run's latest checkpoint, or from the given checkpoint file")
    p.add_argument("--no-eval", dest="eval", action="store_false", help="skip retrieval before/after training")
    p.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK if available) | cpu | cuda")
    p.set_defaults(func=cmd_pretrain)
    p = sub.add_parser("eval", help="retrieval R@k / median rank and optional linear probe of a checkpoint")
    p.add_argument("--checkpoint", required=True, help="checkpoint file, or a run/checkpoint directory (latest)")
    p.add_argument("--data", required=True, help="manifest of the clips to retrieve among")
    p.add_argument("--probe", default=None, help="labelled manifest for the linear and MLP probes")
    p.add_argument("--probe-split", default=None,
                   help="standard split: esc50:meta/esc50.csv | ucf101:ucfTrainTestlist | vggsound:vggsound.csv")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config entry")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_eval)
