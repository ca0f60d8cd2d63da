"""OGM-GE: on-the-fly gradient modulation with generalisation enhancement (seed 003), a trainer hook.

Per optimizer step, from each micro-batch's ``aux = {"out_a", "out_v", "labels"}`` (each modality's
contribution to the fused logits, see ``avfast.models.fusion``):

    s_a = sum_i softmax(out_a_i)[y_i],  s_v likewise (summed over micro-batches and, under DDP, ranks)
    rho_a = s_a / s_v,  rho_v = 1 / rho_a
    k_m = 1 - tanh(alpha * rho_m)            for the dominant modality (rho_m > 1), 1 for the other
          (form="paper": 1 - tanh(alpha * relu(rho_m - 1)), the CVPR paper's)
    g <- k_m * g + N(0, std(g)^2)            (GE; the std of the unscaled gradient; OGM alone: k_m * g)

for the chosen encoder parameters (names under ``audio_prefix`` / ``visual_prefix``; by default only
4-D conv weights, as the public code), during epochs ``start_epoch..end_epoch`` inclusive. The
trainer calls ``after_backward`` after all micro-batches' backward with unscaled gradients (AMP)
and before clipping and ``optimizer.step()``; the coefficients and scores are returned (logged)
every step. In an fp16 step whose gradients overflowed (the GradScaler skips it) the modulated
gradients are not finite either; that step changes no weight.
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

__all__ = ["OGMGEConfig", "OGMGE", "modality_scores", "ogm_coefficients", "modulate_gradients"]


@dataclasses.dataclass(frozen=True)
class OGMGEConfig:
    """OGM-GE settings (defaults: the public code's, alpha within the 0.1-1 range it uses)."""

    enabled: bool = True
    alpha: float = 0.5
    form: str = "tanh"               # tanh: 1 - tanh(alpha * rho) (seed, public code) | paper: relu(rho - 1) inside
    ge: bool = True                  # generalisation enhancement (Gaussian noise); False: OGM only
    start_epoch: int = 0             # modulation during [start_epoch, end_epoch], inclusive, 0-based
    end_epoch: int = 50
    conv_only: bool = True           # scale only 4-D (conv) weight gradients, as the public code
    audio_prefix: str = "audio_net."
    visual_prefix: str = "visual_net."

    def __post_init__(self):
        if self.alpha <= 0:
            raise ValueError(f"OGMGEConfig.alpha must be > 0 ({self.alpha} given)")
        if self.form not in ("tanh", "paper"):
            raise ValueError(f"OGMGEConfig.form must be tanh|paper, got {self.form!r}")
        if self.start_epoch < 0 or self.end_epoch < self.start_epoch:
            raise ValueError(f"OGMGEConfig: need 0 <= start_epoch <= end_epoch ({self.start_epoch}, {self.end_epoch})")
        if not self.audio_prefix or not self.visual_prefix:
            raise ValueError("OGMGEConfig: audio_prefix and visual_prefix must name the encoders")


def modality_scores(out_a: torch.Tensor, out_v: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(s_a, s_v) as a float64 (2,) tensor: sums over the batch of softmax(out_m)[y]. out_m (B, C), labels (B,)."""
    if out_a.shape != out_v.shape or out_a.dim() != 2 or labels.shape != out_a.shape[:1]:
        raise ValueError(f"modality_scores: expected out_a, out_v (B, C) and labels (B,), got {tuple(out_a.shape)}, "
                         f"{tuple(out_v.shape)}, {tuple(labels.shape)}")
    idx = labels.long()[:, None]
    return torch.stack([torch.softmax(o.detach().double(), -1).gather(1, idx).sum() for o in (out_a, out_v)])


def ogm_coefficients(s_a: float, s_v: float, alpha: float, form: str = "tanh") -> tuple[float, float, float]:
    """(k_a, k_v, rho_a) from the modality scores: the dominant modality (rho > 1) gets k < 1."""
    rho_a = s_a / max(s_v, 1e-12)
    rho_v = 1.0 / max(rho_a, 1e-12)

    def k(rho: float) -> float:
        if rho <= 1:
            return 1.0
        return 1.0 - math.tanh(alpha * (rho if form == "tanh" else max(rho - 1.0, 0.0)))

    return k(rho_a), k(rho_v), rho_a


def _selected(model: nn.Module, prefix: str, conv_only: bool):
    for name, p in model.named_parameters():
        if name.startswith(prefix) and p.grad is not None and (p.dim() == 4 or not conv_only):
            yield p


def modulate_gradients(model: nn.Module, prefix: str, k: float, *, ge: bool, conv_only: bool = True,
                       generator: torch.Generator | None = None) -> int:
    """Scale the gradients of ``model``'s parameters under ``prefix`` by ``k`` (plus N(0, std(g)^2)
    noise with ``ge``); returns how many tensors were changed."""
    n = 0
    for p in _selected(model, prefix, conv_only):
        g = p.grad
        if ge:
            std = float(g.float().std()) if g.numel() > 1 else 0.0
            noise = torch.randn(g.shape, generator=generator, device=g.device if generator is None else
                                generator.device, dtype=torch.float32).to(g.device, g.dtype)
            g.mul_(k).add_(noise, alpha=std)
        else:
            g.mul_(k)
        n += 1
    return n


class OGMGE:
    """The trainer hook: ``OGMGE(config)``; ``after_backward(trainer, aux)`` reads ``out_a``, ``out_v``,
    ``labels`` from every micro-batch's aux and returns the logged values ``ogm/k_a``, ``ogm/k_v``,
    ``ogm/rho_a``, ``ogm/score_a``, ``ogm/score_v`` (scores as batch means) and ``ogm/active``."""

    def __init__(self, config: OGMGEConfig = OGMGEConfig(), generator: torch.Generator | None = None):
        self.config, self.generator = config, generator
        self._checked = False

    def _check_prefixes(self, model: nn.Module) -> None:
        names = [n for n, _ in model.named_parameters()]
        for prefix in (self.config.audio_prefix, self.config.visual_prefix):
            if not any(n.startswith(prefix) for n in names):
                raise ValueError(f"OGM-GE: no parameter of {type(model).__name__} is named {prefix!r}...; "
                                 "set audio_prefix / visual_prefix to the encoders' names")
        self._checked = True

    def scores(self, aux: list[dict], trainer=None) -> tuple[torch.Tensor, int]:
        """Summed (s_a, s_v) over micro-batches (and ranks) and the number of samples."""
        total, count = None, 0
        for i, item in enumerate(aux):
            missing = [k for k in ("out_a", "out_v", "labels") if k not in item]
            if missing:
                raise KeyError(f"OGM-GE: micro-batch {i}'s aux lacks {missing}; the objective must return "
                               "(loss, logs, {'out_a', 'out_v', 'labels'})")
            s = modality_scores(item["out_a"], item["out_v"], item["labels"])
            total = s if total is None else total + s
            count += item["labels"].shape[0]
        both = torch.cat([total, torch.tensor([float(count)], dtype=total.dtype, device=total.device)])
        if trainer is not None and trainer.dist.distributed:
            from avfast.train.distributed import all_reduce_sum

            both = all_reduce_sum(both)
        return both[:2], int(both[2])

    def after_backward(self, trainer, aux: list[dict]) -> dict:
        from avfast.train.distributed import unwrap_model

        c = self.config
        model = unwrap_model(trainer.model)
        if not self._checked:
            self._check_prefixes(model)
        (s_a, s_v), n = self.scores(aux, trainer)
        k_a, k_v, rho_a = ogm_coefficients(float(s_a), float(s_v), c.alpha, c.form)
        active = c.enabled and c.start_epoch <= trainer.epoch <= c.end_epoch
        if active:
            modulate_gradients(model, c.audio_prefix, k_a, ge=c.ge, conv_only=c.conv_only, generator=self.generator)
            modulate_gradients(model, c.visual_prefix, k_v, ge=c.ge, conv_only=c.conv_only, generator=self.generator)
        return {"ogm/k_a": k_a, "ogm/k_v": k_v, "ogm/rho_a": rho_a, "ogm/score_a": float(s_a) / max(n, 1),
                "ogm/score_v": float(s_v) / max(n, 1), "ogm/active": float(active)}
