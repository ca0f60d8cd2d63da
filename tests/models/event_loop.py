"""A plain training loop of the tiny event fusion net on synthetic clips (used by tests and the bench)."""
import torch

from avfast.audio.onset import onset_detect
from avfast.data.vggsound import SyntheticEvents
from avfast.metrics.multilabel import mean_average_precision
from avfast.models.event_fusion import (EventFusionLoss, assign_layers, dominant_layers, event_fusion_tiny,
                                        format_layer_table, onset_steps)


def train_and_assign(train_clips=64, test_clips=48, epochs=5, seed=0, lr=3e-3, batch=16):
    torch.manual_seed(seed)
    gen = SyntheticEvents(seed=seed)
    tr, te = gen.tensors(train_clips, seed=seed * 10 + 1), gen.tensors(test_clips, seed=seed * 10 + 2)
    for d in (tr, te):
        d["onsets"] = onset_steps(onset_detect(d["wave"]), 30)
        d["frames"] = (d["frames"].float() / 255 - 0.45) / 0.25
    model = event_fusion_tiny(classes=gen.classes)
    loss_fn = EventFusionLoss()
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
    top1 = float(labels[torch.arange(len(labels)), out["scores"].argmax(1)].mean())
    cats, layers = dominant_layers(out["logits"], labels)
    assignment = assign_layers(cats, layers, 3, gen.classes)
    return {"loss_first": losses[0], "loss_last": losses[-1], "top1": top1,
            "chance": float(labels.sum(1).mean()) / gen.classes,
            "mAP": mean_average_precision(out["scores"], labels),
            "chance_mAP": mean_average_precision(torch.rand_like(out["scores"]), labels),
            "assignment": assignment.tolist(), "types": gen.types,
            "table": format_layer_table(assignment, ("onset", "instant", "continuous"), gen.class_names)}
