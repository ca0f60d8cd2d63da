"""A plain training loop of the tiny event fusion net on synthetic clips (used by tests and the bench)."""
import torch

from avfast.audio.onset import onset_detect
from avfast.data.vggsound import SyntheticEvents
from avfast.metrics.multilabel import average_precision, mean_average_precision
from avfast.models.event_fusion import (EventFusionLoss, EventLossConfig, assign_layers, dominant_layers, event_fusion_tiny,
                                        format_layer_table, onset_steps)


def train_and_assign(train_clips=64, test_clips=48, epochs=5, seed=0, lr=3e-3, batch=16, loss=EventLossConfig(),
                     generator=None, model=None):
    torch.manual_seed(seed)
    gen = SyntheticEvents(seed=seed, **(generator or {}))
    tr, te = gen.tensors(train_clips, seed=seed * 10 + 1), gen.tensors(test_clips, seed=seed * 10 + 2)
    for d in (tr, te):
        d["onsets"] = onset_steps(onset_detect(d["wave"]), 30)
        d["frames"] = (d["frames"].float() / 255 - 0.45) / 0.25
    model = event_fusion_tiny(classes=gen.classes, frame_size=gen.size, **(model or {}))
    loss_fn = EventFusionLoss(loss)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(epochs):
        perm, total = torch.randperm(train_clips), 0.0
        model.train()
        for i in range(0, train_clips, batch):
            idx = perm[i:i + batch]
            out = model(tr["wave"][idx], tr["frames"][idx], onsets=tr["onsets"][idx])
            loss, _ = loss_fn(out, tr["labels"][idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / train_clips)
    model.eval()
    with torch.no_grad():
        out = model(te["wave"], te["frames"], onsets=te["onsets"])
    labels = te["labels"]
    loc = localization_vs_baselines(model.localize(out, te["loc_step"]), te["boxes"], seed)
    top1 = float(labels[torch.arange(len(labels)), out["scores"].argmax(1)].mean())
    cats, layers = dominant_layers(out["logits"], labels)
    assignment = assign_layers(cats, layers, 3, gen.classes)
    return {"loss_first": losses[0], "loss_last": losses[-1], "top1": top1,
            "chance": float(labels.sum(1).mean()) / gen.classes,
            "mAP": mean_average_precision(out["scores"], labels),
            "chance_mAP": mean_average_precision(torch.rand_like(out["scores"]), labels),
            "ap_layers": [[round(float(v), 2) for v in average_precision(out["logits"][:, i], labels)]
                          for i in range(out["logits"].shape[1])],
            "assignment": assignment.tolist(), **loc, "types": gen.types,
            "table": format_layer_table(assignment, ("onset", "instant", "continuous"), gen.class_names)}


def localization_vs_baselines(maps, boxes, seed=0):
    """Mean cIoU and AUC (VGG-SS protocol) of ``maps (N, h, w)`` against the clips' boxes (N, 4), and of
    ``reference_maps`` on the same clips (``random_``, ``centre_``, ``oracle_``: the boxes at the maps' resolution)."""
    from avfast.metrics.localization import LocalizationMeter, box_mask

    meter = LocalizationMeter(baselines=True, seed=seed)
    meter.update(maps, torch.stack([box_mask([b.tolist()], fmt="vggss") for b in boxes]))
    return {k: v for k, v in meter.compute().items() if "mean_cIoU" in k or "AUC" in k}
