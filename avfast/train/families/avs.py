"""Family ``avs``: seed 002's audio-visual segmentation (ICL-AVS) on AVSBench S4 / MS3 / AVSS.

    avfast avs train --task s4 --config configs/avs/s4.yaml --out runs/avs_s4 [--set data.root=AVSBench]
    avfast avs eval --task s4 --checkpoint runs/avs_s4 --split test [--masks runs/avs_s4/masks]

``data.root`` empty trains and evaluates on synthetic clips (``avfast.data.avsbench.SyntheticAVS``).
Evaluation prints J, F and FDR (AVSS: mIoU, F, FDR and the foreground J), once more per audio SNR of
``data.snr_db``, and writes PNGs (frame | ground truth | prediction) of ``eval.save_masks`` clips to
``eval.masks_dir`` (``avfast avs train`` defaults it to ``<out>/masks``).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from avfast.models.icl_avs import ICLAVSConfig, ICLAVSLoss, ICLAVSLossConfig
from avfast.train.family import Family

__all__ = ["FAMILY", "AVSDataConfig", "AVSEvalConfig", "add_parser"]

SPLIT_SEEDS = {"train": 1, "val": 2, "test": 3}


@dataclasses.dataclass
class AVSDataConfig:
    """Where the clips come from; ``root`` empty: synthetic clips."""

    task: str = "s4"                 # s4 | ms3 | avss (must equal model.task)
    root: str = ""                   # AVSBench root (semantic or object release; avfast.data.avsbench)
    layout: str = "auto"             # auto | semantic | object (avfast.data.avsbench)
    subsets: list = dataclasses.field(default_factory=list)  # semantic layout: v1s / v1m / v2 ([]: the task's)
    size: int = 224                  # frames and masks resized to size x size (AVSBench evaluates at 224)
    batch_size: int = 4              # clips per optimizer step (AVSBench's public setting)
    num_workers: int = 0
    snr_db: list = dataclasses.field(default_factory=list)  # extra evaluations with noisy audio (dB)
    frame_mix: float = 0.0           # fraction of eval clips with frames of other clips (0.25: the seed's MS3)
    synthetic_clips: int = 64        # training clips of the synthetic set (val / test get half)
    synthetic_size: int = 64         # frame size of synthetic clips
    features_file: str = "vggish.npy"  # per-clip (T, 128) audio features when model.audio == "vggish"


@dataclasses.dataclass
class AVSEvalConfig:
    batch_size: int = 4
    save_masks: int = 4              # clips whose masks are written as PNGs
    masks_dir: str = ""              # "" : no PNGs


def _validate(cfg) -> None:
    from avfast.train.config import ConfigError

    if cfg.data.task != cfg.model.task:
        raise ConfigError(f"data.task ({cfg.data.task!r}) must equal model.task ({cfg.model.task!r}); "
                          "avfast avs --task sets both")
    if cfg.data.batch_size < 1 or cfg.eval.batch_size < 1:
        raise ConfigError("data.batch_size and eval.batch_size must be >= 1")
    if not 0.0 <= cfg.data.frame_mix <= 1.0:
        raise ConfigError(f"data.frame_mix must be in [0, 1] ({cfg.data.frame_mix} given)")


def _build_model(cfg):
    from avfast.models.icl_avs import build_icl_avs

    return build_icl_avs(**dataclasses.asdict(cfg.model))


def _objective(loss: ICLAVSLoss):
    def objective(model, batch):
        out = model(batch["frames"], batch["audio"])
        total, terms = loss(out, batch["masks"], batch.get("valid"))
        return total, {k: v.detach() for k, v in terms.items()}

    return objective


def _build_objective(cfg, model):
    return _objective(ICLAVSLoss(cfg.loss))


def _audio_kind(cfg) -> str:
    return "features" if cfg.model.audio == "vggish" else "wave"


def _dataset(cfg, split: str, snr_db: float | None = None):
    """The split as a map-style dataset (AVSBench) or a dict of tensors (synthetic)."""
    d = cfg.data
    if d.root:
        from avfast.data.avsbench import AVSBenchDataset

        return AVSBenchDataset(d.root, d.task, split, size=d.size, audio=_audio_kind(cfg), snr_db=snr_db,
                               frame_mix=d.frame_mix if split != "train" else 0.0, seed=cfg.train.seed,
                               features_file=d.features_file, layout=d.layout, subsets=tuple(d.subsets) or None)
    from avfast.data.avsbench import SyntheticAVS, add_noise_at_snr

    gen = SyntheticAVS(d.task, size=d.synthetic_size, audio=_audio_kind(cfg), seed=cfg.train.seed)
    n = d.synthetic_clips if split == "train" else max(d.synthetic_clips // 2, 1)
    tensors = gen.tensors(n, seed=cfg.train.seed * 10 + SPLIT_SEEDS[split])
    tensors.pop("objects")
    if snr_db is not None:
        g = torch.Generator().manual_seed(cfg.train.seed)
        tensors["audio"] = add_noise_at_snr(tensors["audio"], snr_db, generator=g)
    return tensors


def _build_data(cfg, split, info):
    from avfast.data.avsbench import collate_avs
    from avfast.train.data import training_source

    return training_source(_dataset(cfg, split), cfg, info, collate_avs)


def _eval_batches(cfg, data):
    """Batches of an evaluation split in order, each a dict with ``uid`` (list of names)."""
    bs = cfg.eval.batch_size
    if isinstance(data, dict):
        n = data["frames"].shape[0]
        for i in range(0, n, bs):
            batch = {k: v[i:i + bs] for k, v in data.items()}
            batch["uid"] = [f"synthetic_{j:04d}" for j in range(i, min(i + bs, n))]
            yield batch
        return
    from avfast.data.avsbench import collate_avs

    for i in range(0, len(data), bs):
        yield collate_avs([data[j] for j in range(i, min(i + bs, len(data)))])


def _colour(mask: np.ndarray, semantic: bool) -> np.ndarray:
    from avfast.data.avsbench import labels_to_colour

    if semantic:
        return labels_to_colour(mask)
    return np.repeat((mask > 0.5).astype(np.uint8)[..., None] * 255, 3, axis=-1)


def save_mask_pngs(directory, uid: str, frames: torch.Tensor, target: torch.Tensor, pred: torch.Tensor,
                   semantic: bool) -> list[str]:
    """Write one PNG per frame: the frame, the ground truth and the prediction side by side.

    frames (T, 3, H, W) ImageNet-normalised; target, pred (T, H, W) (binary or labels)."""
    from avfast.data.avsbench import IMAGENET_MEAN, IMAGENET_STD, write_image

    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    paths = []
    for i in range(frames.shape[0]):
        image = ((frames[i].float().cpu() * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        row = np.concatenate([image, _colour(target[i].cpu().numpy(), semantic),
                              _colour(pred[i].cpu().numpy(), semantic)], axis=1)
        paths.append(write_image(Path(directory) / f"{uid}_{i}.png", row))
    return paths


def _run_eval(cfg, model, data, device, masks_dir: str | None) -> dict:
    from avfast.metrics import SegmentationMeter

    semantic = cfg.model.task == "avss"
    meter = SegmentationMeter(cfg.model.classes if semantic else None)
    saved = 0
    for batch in _eval_batches(cfg, data):
        frames, audio = batch["frames"].to(device), batch["audio"].to(device)
        logits = model(frames, audio)["logits"].float()
        valid = batch["valid"].to(device)
        target = batch["masks"].to(device)
        pred = logits.argmax(2) if semantic else logits.sigmoid()
        meter.update(logits[valid] if semantic else pred[valid], target[valid])
        if masks_dir and saved < cfg.eval.save_masks:
            for k in range(min(cfg.eval.save_masks - saved, frames.shape[0])):
                shown = pred[k] if semantic else (pred[k] > 0.5).float()
                save_mask_pngs(masks_dir, batch["uid"][k], frames[k], target[k], shown, semantic)
                saved += 1
    results = meter.compute()
    order = ("mIoU", "F", "FDR", "J") if semantic else ("J", "F", "FDR")
    return {**{k: results[k] for k in order}, "frames": results["frames"]}


def _evaluate(cfg, model, split, info):
    device = next(model.parameters()).device
    masks_dir = str(Path(cfg.eval.masks_dir) / split) if cfg.eval.masks_dir else None
    results = _run_eval(cfg, model, _dataset(cfg, split), device, masks_dir)
    for snr in cfg.data.snr_db:
        noisy = _run_eval(cfg, model, _dataset(cfg, split, snr_db=float(snr)), device, None)
        results[f"snr_{float(snr):g}dB"] = noisy
    return results


FAMILY = Family(
    name="avs", model=ICLAVSConfig, data=AVSDataConfig, loss=ICLAVSLossConfig, eval=AVSEvalConfig,
    build_model=_build_model, build_objective=_build_objective, build_data=_build_data, validate=_validate,
    evaluate=_evaluate,
    # AVSBench's public training setting (the seed gives none): Adam, lr 1e-4, batch 4, 15 epochs
    defaults={"name": "icl_avs", "optim": {"name": "adam", "lr": 1e-4, "weight_decay": 0.0, "epochs": 15.0,
                                           "warmup_epochs": 0.0, "schedule": "constant"}},
)


def _with_task(args, extra: list[str]) -> None:
    sets = list(args.set or [])
    if args.task:
        sets += [f"model.task={args.task}", f"data.task={args.task}"]
    args.set = sets + extra


def add_parser(sub) -> None:
    """``avfast avs train|eval --task s4|ms3|avss``."""
    from avfast.train.run import add_family_commands

    actions = add_family_commands(sub, "avs", "avs", "audio-visual segmentation (seed 002, ICL-AVS): train | eval")
    train, evaluate = actions.choices["train"], actions.choices["eval"]
    for p in (train, evaluate):
        p.add_argument("--task", choices=("s4", "ms3", "avss"), default=None,
                       help="AVSBench task (sets model.task and data.task)")
    evaluate.add_argument("--masks", default=None, help="write PNGs (frame | ground truth | prediction) here")
    run_train, run_eval = train.get_default("func"), evaluate.get_default("func")

    def train_cmd(args):
        _with_task(args, [] if any(s.startswith("eval.masks_dir=") for s in args.set or [])
                   else [f"eval.masks_dir={Path(args.out) / 'masks'}"])
        return run_train(args)

    def eval_cmd(args):
        _with_task(args, [f"eval.masks_dir={args.masks}"] if args.masks else [])
        return run_eval(args)

    train.set_defaults(func=train_cmd)
    evaluate.set_defaults(func=eval_cmd)
