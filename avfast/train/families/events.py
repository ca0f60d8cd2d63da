"""Family ``events``: seed 004's event-specific audio-visual fusion layers (VGGSound-style labels).

    avfast events train --config configs/events/vggsound.yaml --out runs/events [--set data.root=VGGSound]
    avfast events eval --checkpoint runs/events --split test
    avfast events localize --checkpoint runs/events --split test --heatmaps runs/events/heatmaps

``data.root`` empty trains on ``avfast.data.vggsound.SyntheticEvents``. Evaluation prints mAP of the
clip scores (max over layers) and of each layer, the category -> layer table (majority vote of the
clips' dominant layers) and, where boxes exist (VGG-SS json; synthetic objects), cIoU (fraction >=
0.5), AUC and mean cIoU of the audio-visual similarity maps at one step per clip (VGG-SS: the middle).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from avfast.models.event_fusion import EventFusionConfig, EventLossConfig
from avfast.train.family import Family

__all__ = ["FAMILY", "EventsDataConfig", "EventsEvalConfig", "add_parser", "save_heatmap_pngs"]

SPLIT_SEEDS = {"train": 1, "val": 2, "test": 3}
MEAN = (0.43216, 0.394666, 0.37645)   # torchvision video models (Kinetics) normalisation
STD = (0.22803, 0.22145, 0.216989)


@dataclasses.dataclass
class EventsDataConfig:
    """Where clips come from; ``root`` empty: synthetic event clips."""

    root: str = ""                   # VGGSound-style root (avfast.data.vggsound layout)
    batch_size: int = 16             # the seed gives none
    num_workers: int = 0
    fps: float = 10.0                # video frames per second (model.frames = model.segments * fps)
    synthetic_clips: int = 64        # training clips of the synthetic set (val / test get half)
    classes_per_type: int = 2        # synthetic: classes per event type (model.classes = 3 x this)


@dataclasses.dataclass
class EventsEvalConfig:
    batch_size: int = 16
    heatmaps: int = 4                # clips whose heat maps are written as PNGs
    heatmaps_dir: str = ""           # "" : no PNGs


def _validate(cfg) -> None:
    from avfast.train.config import ConfigError

    m, d = cfg.model, cfg.data
    if m.frames != round(m.segments * d.fps):
        raise ConfigError(f"model.frames ({m.frames}) must equal model.segments x data.fps ({m.segments} x {d.fps})")
    if not d.root and m.classes != 3 * d.classes_per_type:
        raise ConfigError(f"model.classes ({m.classes}) must be 3 x data.classes_per_type ({d.classes_per_type}) "
                          "on synthetic clips")
    if d.batch_size < 1 or cfg.eval.batch_size < 1:
        raise ConfigError("data.batch_size and eval.batch_size must be >= 1")


def _build_model(cfg):
    from avfast.models.event_fusion import EventFusionNet

    return EventFusionNet(cfg.model)


def _frames(x: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, T, H, W) -> normalised float."""
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1, 1)
    return (x.float() / 255 - mean) / std


def _forward(model, batch):
    return model(batch["wave"], _frames(batch["frames"]), onsets=batch.get("onsets"))


def _build_objective(cfg, model):
    from avfast.models.event_fusion import EventFusionLoss

    loss = EventFusionLoss(cfg.loss, cfg.model.layers)

    def objective(model, batch):
        total, terms = loss(_forward(model, batch), batch["labels"])
        return total, {k: v.detach() for k, v in terms.items()}

    return objective


def _generator(cfg):
    from avfast.data.vggsound import SyntheticEvents

    m = cfg.model
    return SyntheticEvents(classes_per_type=cfg.data.classes_per_type, seconds=m.segments, fps=int(cfg.data.fps),
                           size=m.frame_size, sample_rate=m.sample_rate, seed=cfg.train.seed)


def _dataset(cfg, split: str):
    """(data, class names): a VGGSoundDataset, or a dict of synthetic tensors with precomputed onsets."""
    d, m = cfg.data, cfg.model
    if d.root:
        from avfast.data.vggsound import VGGSoundDataset
        from avfast.train.config import ConfigError

        ds = VGGSoundDataset(d.root, split, seconds=float(m.segments), sample_rate=m.sample_rate, fps=d.fps,
                             size=m.frame_size)
        if len(ds.classes) != m.classes:
            raise ConfigError(f"model.classes ({m.classes}) must equal the csv's {len(ds.classes)} classes")
        return ds, ds.classes
    from avfast.audio.onset import onset_detect
    from avfast.models.event_fusion import onset_steps

    gen = _generator(cfg)
    n = d.synthetic_clips if split == "train" else max(d.synthetic_clips // 2, 1)
    t = gen.tensors(n, seed=cfg.train.seed * 10 + SPLIT_SEEDS[split])
    t["onsets"] = onset_steps(onset_detect(t["wave"], sample_rate=m.sample_rate), m.steps)  # "precomputed onsets"
    return t, gen.class_names


def _build_data(cfg, split, info):
    from avfast.data.vggsound import collate_events
    from avfast.train.config import ConfigError
    from avfast.train.data import training_source

    if cfg.data.batch_size // info.world_size < 2:
        raise ConfigError(f"data.batch_size {cfg.data.batch_size} over {info.world_size} process(es) leaves "
                          f"{cfg.data.batch_size // info.world_size} clip per process: the event heads' BatchNorm "
                          "needs >= 2 in training")
    return training_source(_dataset(cfg, split)[0], cfg, info, collate_events)


def _eval_batches(cfg, data):
    bs = cfg.eval.batch_size
    if isinstance(data, dict):
        n = data["wave"].shape[0]
        for i in range(0, n, bs):
            batch = {k: v[i:i + bs] for k, v in data.items()}
            batch["clip"] = [f"synthetic_{j:04d}" for j in range(i, min(i + bs, n))]
            batch["boxes"] = [[b.tolist()] for b in batch.pop("boxes")]
            yield batch
        return
    from avfast.data.vggsound import collate_events

    for i in range(0, len(data), bs):
        batch = collate_events([data[j] for j in range(i, min(i + bs, len(data)))])
        batch["loc_step"] = torch.full((len(batch["clip"]),), cfg.model.steps // 2)   # VGG-SS: the middle frame
        yield batch


def save_heatmap_pngs(directory, clip: str, frames: torch.Tensor, heat: torch.Tensor, step: int, steps: int,
                      shown: int = 5) -> str:
    """One PNG per clip: ``shown`` frames across the clip, the localised step's frame last, each with
    its heat map (red) blended in. frames (3, T, H, W) uint8, heat (steps or 1, h, w) in any range."""
    import torch.nn.functional as F

    from avfast.data.avsbench import write_image

    t = frames.shape[1]
    picks = sorted({*np.linspace(0, steps - 1, shown - 1).round().astype(int).tolist(), int(step)})
    tiles = []
    for s in picks:
        img = frames[:, (s * t) // steps].float()                                  # (3, H, W)
        h = heat[min(s, heat.shape[0] - 1)].float()[None, None]
        h = F.interpolate(h, size=img.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
        h = (h - h.min()) / (h.max() - h.min()).clamp_min(1e-12)
        over = img * 0.5 + torch.stack([h * 255, torch.zeros_like(h), torch.zeros_like(h)]) * 0.5
        tiles.append(over.clamp(0, 255).byte().permute(1, 2, 0).cpu().numpy())
    return write_image(Path(directory) / f"{clip}.png", np.concatenate(tiles, axis=1))


def _run_eval(cfg, model, split: str, heatmaps_dir: str | None) -> dict:
    from avfast.metrics.localization import LocalizationMeter, box_mask
    from avfast.metrics.multilabel import mean_average_precision
    from avfast.models.event_fusion import assign_layers, dominant_layers

    device = next(model.parameters()).device
    data, names = _dataset(cfg, split)
    logits, labels, meter, saved = [], [], LocalizationMeter(baselines=True), 0
    for batch in _eval_batches(cfg, data):
        batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        out = _forward(model, batch)
        logits.append(out["logits"].float().cpu())
        labels.append(batch["labels"].float().cpu())
        have = [i for i, b in enumerate(batch["boxes"]) if len(b)]
        if have:
            maps = model.localize(out, batch["loc_step"])
            gts = torch.stack([box_mask(batch["boxes"][i], fmt="vggss", clip=batch["clip"][i]) for i in have])
            meter.update(maps[have].cpu(), gts, [batch["clip"][i] for i in have])
            for i in have:
                if heatmaps_dir and saved < cfg.eval.heatmaps:
                    every = torch.arange(cfg.model.steps, device=device)
                    sub = {k: out[k][i:i + 1].expand(len(every), *out[k].shape[1:]) for k in ("audio", "video_map")}
                    heat = model.localize(sub, every)                                     # one map per step
                    save_heatmap_pngs(heatmaps_dir, batch["clip"][i], batch["frames"][i], heat,
                                      int(batch["loc_step"][i]), cfg.model.steps)
                    saved += 1
    logits, labels = torch.cat(logits), torch.cat(labels)
    results = {"mAP": mean_average_precision(logits.sigmoid().amax(1), labels)}
    for i, name in enumerate(cfg.model.layers):
        results[f"mAP_{name}"] = mean_average_precision(logits[:, i], labels)
    cats, layers = dominant_layers(logits, labels)
    assignment = assign_layers(cats, layers, len(cfg.model.layers), cfg.model.classes)
    results["clips"] = int(labels.shape[0])
    if meter.values:
        results.update(meter.compute())
    # the category -> layer table (printed as nested lines by ``avfast events eval``)
    results["layer_table"] = {names[c]: (cfg.model.layers[a] if a >= 0 else "-")
                              for c, a in enumerate(assignment.tolist())}
    return results


def _evaluate(cfg, model, split, info):
    heat_dir = str(Path(cfg.eval.heatmaps_dir) / split) if cfg.eval.heatmaps_dir else None
    return _run_eval(cfg, model, split, heat_dir)


FAMILY = Family(
    name="events", model=EventFusionConfig, data=EventsDataConfig, loss=EventLossConfig, eval=EventsEvalConfig,
    build_model=_build_model, build_objective=_build_objective, build_data=_build_data, validate=_validate,
    evaluate=_evaluate,
    # the seed: SGD, lr 0.01, /10 after 3 epochs without validation gain (configs/events/vggsound.yaml sets
    # `schedule: plateau`, which needs a validation split: the default here stays constant)
    defaults={"name": "event_fusion", "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4,
                                                "schedule": "constant", "warmup_epochs": 0.0}},
)


def _cmd_localize(args) -> int:
    from avfast.train.run import format_metrics, load_run

    cfg, model, state = load_run(args.checkpoint, args.set or [])
    if cfg.family != "events":
        raise SystemExit(f"{args.checkpoint}: a checkpoint of family {cfg.family!r}, not 'events'")
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device).eval()
    if args.heatmaps:
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, heatmaps=args.clips))
    with torch.no_grad():
        results = _run_eval(cfg, model, args.split, args.heatmaps)
    loc = {k: results[k] for k in ("cIoU", "AUC", "mean_cIoU", "samples") if k in results}
    # the same boxes scored by reference maps: a centred prior and the boxes themselves at the model's resolution
    loc.update({k: results[k] for k in ("centre_mean_cIoU", "oracle_mean_cIoU", "random_mean_cIoU") if k in results})
    if not loc:
        raise SystemExit(f"split {args.split!r} has no boxes to localise (VGG-SS: vggss.json in the root)")
    print(format_metrics(f"{args.split} localisation (step {state['step']}):", loc))
    if args.heatmaps:
        print(f"heat maps of {min(args.clips, loc['samples'])} clips in {args.heatmaps}")
    return 0


def add_parser(sub) -> None:
    """``avfast events train|eval|localize``."""
    from avfast.train.run import add_family_commands

    actions = add_family_commands(sub, "events", "events",
                                  "event-specific audio-visual fusion layers (seed 004): train | eval | localize")
    train = actions.choices["train"]
    run_train = train.get_default("func")

    def train_cmd(args):
        if not any(s.startswith("eval.heatmaps_dir=") for s in args.set or []):
            args.set = list(args.set or []) + [f"eval.heatmaps_dir={Path(args.out) / 'heatmaps'}"]
        return run_train(args)

    train.set_defaults(func=train_cmd)
    p = actions.add_parser("localize", help="cIoU / AUC of the audio-visual similarity maps, heat-map PNGs")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.add_argument("--heatmaps", default=None, help="write heat-map PNGs (frames across the clip) here")
    p.add_argument("--clips", type=int, default=4, help="clips with PNGs")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_localize, family="events")
