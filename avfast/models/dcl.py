"""Seed 000: Disentangled Counterfactual Learning (DCL) = DSE + CLM on a PACS fusion head.

- **DSE** (disentangled sequential encoder, C-DSVAE style) on a feature sequence x (B, T, D):
  per-frame MLP -> g (g_dim) -> Bi-LSTM (rnn) -> static latent f from the last states of both
  directions, dynamic latents z_t from a second LSTM over the Bi-LSTM states; a decoder MLP
  reconstructs x_t from [f, z_t]; the prior of z_t is a learned LSTM over z_{<t}.
  Loss (``dse_loss``): recon + alpha KL_f + beta KL_z + gamma MI(f, z) + theta (NCE_f + NCE_z).
- **CLM** (counterfactual learning module): X = Linear([z1, z2]) per pair; X' = A X with A the
  top-k (self included) ``exp_softmax`` affinity of the batch (``avfast.ops.affinity_topk``);
  X' is split back to the two objects and feeds the fusion head (the public code computes it and
  drops it; here it reaches the objective). The counterfactual A* (random neighbours, random
  weights) gives o_cf; the objective adds the triplet loss of the effect o - o_cf.

Weight mapping (our reading; the seed gives gamma = 1, alpha = beta = 10, theta = 1 without naming
the terms): alpha -> KL_f, beta -> KL_z, gamma -> MI, theta -> both contrastive terms.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avfast.models.icl_avs import kl_standard_normal
from avfast.models.late_fusion import FusionConfig, LateFusion, pool_time, predict_answer, triplet_cosine_loss
from avfast.ops import affinity_topk, contrastive_loss

__all__ = ["DSEConfig", "DSE", "DSELossConfig", "dse_loss", "gaussian_kl", "log_density", "mws_mutual_information",
           "static_augment", "dynamic_augment", "CounterfactualModule", "DCLConfig", "DCLLossConfig", "DCLModel",
           "dcl_objective", "build_pacs_model", "late_fusion_baseline", "late_fusion_dcl", "parameter_table"]

DSE_MODES = ("none", "video", "audio", "both")
INTERVENTIONS = ("random", "none")


# DSE ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DSEConfig:
    """DSE sizes; defaults are the public DCL code's (f 256, z 32, g 128, rnn 256, hidden 256)."""

    input_dim: int = 768
    hidden: int = 256
    g_dim: int = 128
    rnn: int = 256
    f_dim: int = 256
    z_dim: int = 32
    dropout: float = 0.3

    def __post_init__(self):
        for name in ("input_dim", "hidden", "g_dim", "rnn", "f_dim", "z_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"DSEConfig.{name} must be >= 1 ({getattr(self, name)} given)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"DSEConfig.dropout must be in [0, 1) ({self.dropout} given)")


def _reparameterize(mean: Tensor, logvar: Tensor, sample: bool) -> Tensor:
    return mean + torch.randn_like(mean) * (0.5 * logvar).exp() if sample else mean


class DSE(nn.Module):
    """Disentangled sequential encoder over x (B, T, input_dim).

    ``encode(x)`` -> dict f_mean, f_logvar (B, f_dim), z_mean, z_logvar (B, T, z_dim);
    ``forward(x)`` adds samples f, z (means in eval mode), the reconstruction (B, T, input_dim) and
    the learned prior's z_prior_mean, z_prior_logvar (B, T, z_dim) given the sampled z_{<t}.
    """

    def __init__(self, config: DSEConfig = DSEConfig()):
        super().__init__()
        c = self.config = config
        self.frame_encoder = nn.Sequential(nn.Linear(c.input_dim, c.hidden), nn.LeakyReLU(0.2),
                                           nn.Linear(c.hidden, c.g_dim), nn.LeakyReLU(0.2))
        self.bilstm = nn.LSTM(c.g_dim, c.rnn, batch_first=True, bidirectional=True)
        self.f_mean, self.f_logvar = nn.Linear(2 * c.rnn, c.f_dim), nn.Linear(2 * c.rnn, c.f_dim)
        self.z_rnn = nn.LSTM(2 * c.rnn, c.rnn, batch_first=True)
        self.z_mean, self.z_logvar = nn.Linear(c.rnn, c.z_dim), nn.Linear(c.rnn, c.z_dim)
        self.prior_cell = nn.LSTMCell(c.z_dim, c.rnn)
        self.prior_mean, self.prior_logvar = nn.Linear(c.rnn, c.z_dim), nn.Linear(c.rnn, c.z_dim)
        self.decoder = nn.Sequential(nn.Linear(c.f_dim + c.z_dim, c.hidden), nn.LeakyReLU(0.2),
                                     nn.Linear(c.hidden, c.input_dim))
        self.dropout = nn.Dropout(c.dropout)

    def encode(self, x: Tensor) -> dict:
        c = self.config
        if x.dim() != 3 or x.shape[-1] != c.input_dim or x.shape[1] < 1:
            raise ValueError(f"DSE: expected a sequence (B, T >= 1, {c.input_dim}), got {tuple(x.shape)}")
        h, _ = self.bilstm(self.dropout(self.frame_encoder(x)))
        last = torch.cat([h[:, -1, :c.rnn], h[:, 0, c.rnn:]], -1)
        hz, _ = self.z_rnn(h)
        return {"f_mean": self.f_mean(last), "f_logvar": self.f_logvar(last),
                "z_mean": self.z_mean(hz), "z_logvar": self.z_logvar(hz)}

    def prior(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Learned prior of z_t given z_{<t} (z_0 input = 0): means and log-variances (B, T, z_dim)."""
        B, T, _ = z.shape
        state = (z.new_zeros(B, self.config.rnn), z.new_zeros(B, self.config.rnn))
        inp, outs = z.new_zeros(B, self.config.z_dim), []
        for t in range(T):
            state = self.prior_cell(inp, state)
            outs.append(state[0])
            inp = z[:, t]
        h = torch.stack(outs, 1)
        return self.prior_mean(h), self.prior_logvar(h)

    def forward(self, x: Tensor) -> dict:
        out = self.encode(x)
        out["f"] = _reparameterize(out["f_mean"], out["f_logvar"], self.training)
        out["z"] = _reparameterize(out["z_mean"], out["z_logvar"], self.training)
        out["z_prior_mean"], out["z_prior_logvar"] = self.prior(out["z"])
        T = x.shape[1]
        out["recon"] = self.decoder(torch.cat([out["f"].unsqueeze(1).expand(-1, T, -1), out["z"]], -1))
        return out

    def factors(self, out: dict) -> tuple[Tensor, Tensor]:
        """(static f (B, f_dim), dynamic z pooled over time (B, z_dim)): what the fusion head reads.

        Samples in training, means in eval mode: the task gradient then has to lift the means above the
        posterior noise, which keeps the KL terms from collapsing the factors the head reads."""
        return out["f"], out["z"].mean(1)


@dataclasses.dataclass(frozen=True)
class DSELossConfig:
    """DSE loss weights. Our reading of the seed: alpha -> KL_f, beta -> KL_z, gamma -> MI, theta -> NCE."""

    recon: float = 1.0
    alpha: float = 10.0              # KL(q(f|x) || N(0, I))
    beta: float = 10.0               # KL(q(z_t|x) || p(z_t|z_<t))
    gamma: float = 1.0               # MI(f, z) by minibatch-weighted sampling
    theta: float = 1.0               # NCE(f, f_static_aug) + NCE(z, z_dynamic_aug)
    nce_tau: float = 0.5
    dataset_size: int = 0            # N of minibatch-weighted sampling (0: the batch size)
    augment_noise: float = 1.0       # dynamic augmentation: a per-sequence constant offset of this std


def gaussian_kl(mean_q: Tensor, logvar_q: Tensor, mean_p: Tensor, logvar_p: Tensor) -> Tensor:
    """KL(N(mean_q, e^logvar_q) || N(mean_p, e^logvar_p)), mean over all elements:
    ``0.5 (logvar_p - logvar_q + (e^logvar_q + (mean_q - mean_p)^2) / e^logvar_p - 1)``."""
    return (0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mean_q - mean_p).pow(2)) / logvar_p.exp() - 1)).mean()


def log_density(x: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """Elementwise log N(x; mean, e^logvar) (broadcasting)."""
    return -0.5 * (math.log(2 * math.pi) + logvar + (x - mean).pow(2) / logvar.exp())


def mws_mutual_information(f: Tensor, f_mean: Tensor, f_logvar: Tensor, z: Tensor, z_mean: Tensor, z_logvar: Tensor,
                           dataset_size: int = 0) -> Tensor:
    """MI(f, z_t) penalty by minibatch-weighted sampling: mean over (t, i) of
    ``relu(log q(f_i, z_ti) - log q(f_i) - log q(z_ti))`` with ``log q(v_i) = logsumexp_j log q(v_i | x_j)
    - log(N B)`` (N = ``dataset_size``, 0: B). f (B, F), z (B, T, Z); densities form (T, B, B, .)."""
    B, T = z.shape[:2]
    log_nb = math.log((dataset_size or B) * B)
    lf = log_density(f[None, :, None], f_mean[None, None], f_logvar[None, None]).sum(-1).expand(T, B, B)
    zt, zm, zl = z.transpose(0, 1), z_mean.transpose(0, 1), z_logvar.transpose(0, 1)     # (T, B, Z)
    lz = log_density(zt[:, :, None], zm[:, None], zl[:, None]).sum(-1)                     # (T, B, B)
    log_qf = torch.logsumexp(lf, 2) - log_nb
    log_qz = torch.logsumexp(lz, 2) - log_nb
    log_qfz = torch.logsumexp(lf + lz, 2) - log_nb
    return F.relu(log_qfz - log_qf - log_qz).mean()


def static_augment(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Frames in a random order per sequence (B, T, D): the static factor must not change."""
    B, T, _ = x.shape
    order = torch.rand(B, T, generator=generator).argsort(1).to(x.device)
    return x.gather(1, order[..., None].expand_as(x))


def dynamic_augment(x: Tensor, noise: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """A random offset shared by all frames of a sequence (B, T, D): the appearance moves, the
    dynamics stay, so the dynamic factor must not change."""
    B, _, D = x.shape
    return x + noise * torch.randn(B, 1, D, generator=generator).to(x)


def dse_loss(dse: DSE, x: Tensor, out: dict, cfg: DSELossConfig = DSELossConfig(),
             generator: torch.Generator | None = None, backend: str = "auto") -> tuple[Tensor, dict]:
    """The DSE loss of one sequence batch x (B, T, D) with ``out = dse(x)``: (total, terms dict).

    recon = mean squared error; kl_f = sum over f dims of KL(q(f|x) || N(0, I)) / (T D), batch mean;
    kl_z = sum over t and z dims of KL(q(z_t|x) || p(z_t|z_<t)) / (T D), batch mean; mi, nce_f, nce_z
    as ``mws_mutual_information`` and symmetric InfoNCE at ``nce_tau`` between the (sampled; means
    in eval mode) factors of x and of its static / dynamic augmentation.
    """
    # Scales: the public objective sums the reconstruction over frames and features and the KLs over
    # latent dims; all three are divided here by the T x D input elements (same ratio, O(1) values).
    B, T, D = x.shape
    f_dim, z_dim = out["f_mean"].shape[-1], out["z_mean"].shape[-1]
    terms = {
        "recon": F.mse_loss(out["recon"], x),
        "kl_f": kl_standard_normal(out["f_mean"], out["f_logvar"]) * f_dim / (T * D),
        "kl_z": gaussian_kl(out["z_mean"], out["z_logvar"], out["z_prior_mean"], out["z_prior_logvar"]) * z_dim / D,
        "mi": mws_mutual_information(out["f"], out["f_mean"], out["f_logvar"], out["z"], out["z_mean"],
                                     out["z_logvar"], cfg.dataset_size),
    }
    zero = x.new_zeros(())
    if cfg.theta and x.shape[0] > 1:
        # on the sampled factors: when the KL terms shrink the means, unit-normalising a mean near 0
        # would blow its gradient up
        sa, da = dse.encode(static_augment(x, generator)), dse.encode(dynamic_augment(x, cfg.augment_noise, generator))
        f_aug = _reparameterize(sa["f_mean"], sa["f_logvar"], dse.training)
        z_aug = _reparameterize(da["z_mean"], da["z_logvar"], dse.training)
        terms["nce_f"] = contrastive_loss(out["f"], f_aug, tau=cfg.nce_tau, backend=backend)
        terms["nce_z"] = contrastive_loss(out["z"].flatten(1), z_aug.flatten(1), tau=cfg.nce_tau, backend=backend)
    else:
        terms["nce_f"] = terms["nce_z"] = zero
    total = (cfg.recon * terms["recon"] + cfg.alpha * terms["kl_f"] + cfg.beta * terms["kl_z"]
             + cfg.gamma * terms["mi"] + cfg.theta * (terms["nce_f"] + terms["nce_z"]))
    return total, terms


# CLM ---------------------------------------------------------------------------------------------


class CounterfactualModule(nn.Module):
    """Physical-knowledge relationships of the pairs in a batch and their counterfactual.

    forward(z1, z2) with the objects' (dynamic) features (B, in_dim) each -> dict x1, x2 (B, dim):
    the intervened features X' = A X split per object (X = Linear([z1, z2]) (B, 2 dim), A = top-k
    ``exp_softmax`` cosine affinity, self included); with ``intervention="random"`` also x1_cf,
    x2_cf from A* = k random neighbours with random softmax weights. k is capped at B.
    """

    def __init__(self, in_dim: int, dim: int, *, k: int = 5, tau: float = 2.0, intervention: str = "random",
                 backend: str = "auto"):
        super().__init__()
        if k < 1 or tau <= 0 or intervention not in INTERVENTIONS:
            raise ValueError(f"CounterfactualModule: need k >= 1, tau > 0, intervention in {INTERVENTIONS} "
                             f"(k={k}, tau={tau}, intervention={intervention!r})")
        self.k, self.tau, self.intervention, self.backend, self.dim = k, tau, intervention, backend, dim
        self.proj = nn.Linear(2 * in_dim, 2 * dim)

    def relationships(self, X: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(weights (B, k), indices (B, k), X' = A X (B, D)) of pair features X (B, D)."""
        k = min(self.k, X.shape[0])
        values, idx, agg = affinity_topk(X, k=k, tau=self.tau, aggregate=True, weights="exp_softmax",
                                         exclude_self=False, backend=self.backend)
        w = torch.softmax((values.float() / self.tau).exp(), -1)
        return w, idx, agg

    def forward(self, z1: Tensor, z2: Tensor) -> dict:
        X = self.proj(torch.cat([z1, z2], -1))
        _, _, agg = self.relationships(X)
        out = dict(zip(("x1", "x2"), agg.split(self.dim, -1)))
        if self.intervention == "random":
            B, k = X.shape[0], min(self.k, X.shape[0])
            idx = torch.rand(B, B, device=X.device).topk(k, -1).indices
            w = torch.softmax(torch.rand(B, k, device=X.device), -1).to(X.dtype)
            cf = (w.unsqueeze(-1) * X[idx]).sum(1)
            out.update(zip(("x1_cf", "x2_cf"), cf.split(self.dim, -1)))
        return out


# The DCL model on a fusion head ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DCLConfig:
    """A PACS model: a fusion head (``variant``) with optional DSE and CLM. Defaults: LateFusion w/ DCL.

    ``dse``: which modality sequences go through a DSE (``video``: the seed's DCL; ``audio``: its
    DSE-audio ablation; ``none``: the baseline). ``clm``: the counterfactual module on the DSE's
    dynamic factors (pooled features when ``dse="none"``: the CLM-only ablation).
    """

    variant: str = "late_fusion"
    text_dim: int = 1024             # DeBERTa-v3-large CLS; the seed says d = 768 (set text_dim: 768 for it)
    video_dim: int = 768
    audio_dim: int = 768
    hidden: int = 768
    out_dim: int = 768
    dropout: float = 0.0
    dse: str = "video"
    dse_hidden: int = 256
    g_dim: int = 128
    rnn: int = 256
    f_dim: int = 256
    z_dim: int = 32
    dse_dropout: float = 0.3
    clm: bool = True
    clm_dim: int = 256               # per object; X is 2 * clm_dim wide
    k: int = 5
    tau: float = 2.0
    intervention: str = "random"
    backend: str = "auto"

    def __post_init__(self):
        self.fusion  # validates the head's fields
        if self.dse not in DSE_MODES:
            raise ValueError(f"DCLConfig.dse must be one of {DSE_MODES} ({self.dse!r} given)")
        missing = [m for m in self.dse_modalities if m not in self.fusion.modalities]
        if missing:
            raise ValueError(f"DCLConfig: dse={self.dse!r} needs {missing} but variant {self.variant!r} "
                             f"has only {self.fusion.modalities}")
        if self.k < 1 or self.tau <= 0 or self.clm_dim < 1:
            raise ValueError(f"DCLConfig: need k >= 1, tau > 0, clm_dim >= 1 ({self.k}, {self.tau}, {self.clm_dim})")
        if self.intervention not in INTERVENTIONS:
            raise ValueError(f"DCLConfig.intervention must be one of {INTERVENTIONS} ({self.intervention!r} given)")

    @property
    def fusion(self) -> FusionConfig:
        return FusionConfig(self.variant, self.text_dim, self.video_dim, self.audio_dim, self.hidden, self.out_dim,
                            self.dropout)

    @property
    def dse_modalities(self) -> tuple[str, ...]:
        return {"none": (), "video": ("video",), "audio": ("audio",), "both": ("video", "audio")}[self.dse]

    def dse_config(self, modality: str) -> DSEConfig:
        return DSEConfig(getattr(self, f"{modality}_dim"), self.dse_hidden, self.g_dim, self.rnn, self.f_dim,
                         self.z_dim, self.dse_dropout)


@dataclasses.dataclass(frozen=True)
class DCLLossConfig(DSELossConfig):
    """Task loss (triplet, cosine, margin) + ``counterfactual`` x triplet of the effect o - o_cf + DSE
    losses of both objects (the public code's total)."""

    margin: float = 1.0
    counterfactual: float = 1.0
    dse_weight: float = 1.0


class DCLModel(nn.Module):
    """LateFusion / CLIP / AudioCLIP head w/ DSE and CLM on PACS feature batches.

    forward(batch) -> dict q, o1, o2 (B, out_dim), optional o1_cf, o2_cf, and ``dse``:
    {modality: (out of object 1, out of object 2)}. Batch: text (B, text_dim), video{1,2} (B, T, video_dim),
    audio{1,2} (B, [T,] audio_dim) (a DSE modality needs the sequence).
    """

    def __init__(self, config: DCLConfig = DCLConfig()):
        super().__init__()
        c = self.config = config
        self.dse = nn.ModuleDict({m: DSE(c.dse_config(m)) for m in c.dse_modalities})
        widths = [c.f_dim + c.z_dim if m in self.dse else getattr(c, f"{m}_dim") for m in c.fusion.modalities]
        clm_in = c.z_dim * len(self.dse) if self.dse else c.video_dim
        self.clm = CounterfactualModule(clm_in, c.clm_dim, k=c.k, tau=c.tau, intervention=c.intervention,
                                        backend=c.backend) if c.clm else None
        self.head = LateFusion(c.fusion, object_dims=tuple(widths) + ((c.clm_dim,) if c.clm else ()))

    def _object(self, batch: dict, which: int) -> tuple[list[Tensor], Tensor, dict]:
        """(fusion parts, CLM input, DSE outputs) of object ``which``."""
        parts, dynamic, outs = [], [], {}
        for m in self.config.fusion.modalities:
            x = batch[f"{m}{which}"]
            if x.shape[-1] != getattr(self.config, f"{m}_dim"):
                raise ValueError(f"DCLModel: {m}{which} features are {x.shape[-1]} wide, expected "
                                 f"{getattr(self.config, f'{m}_dim')}")
            if m in self.dse:
                if x.dim() != 3:
                    raise ValueError(f"DCLModel: dse on {m} needs {m}{which} as a sequence (B, T, D), "
                                     f"got {tuple(x.shape)}")
                outs[m] = self.dse[m](x)
                f, z = self.dse[m].factors(outs[m])
                parts.append(torch.cat([f, z], -1))
                dynamic.append(z)
            else:
                parts.append(pool_time(x))
        clm_in = torch.cat(dynamic, -1) if dynamic else pool_time(batch[f"video{which}"])
        return parts, clm_in, outs

    def forward(self, batch: dict) -> dict:
        p1, c1, d1 = self._object(batch, 1)
        p2, c2, d2 = self._object(batch, 2)
        out = {"q": self.head.encode_text(batch["text"]), "dse": {m: (d1[m], d2[m]) for m in d1}}
        if self.clm is None:
            out["o1"], out["o2"] = self.head.encode_object(p1), self.head.encode_object(p2)
            return out
        cf = self.clm(c1, c2)
        out["o1"], out["o2"] = self.head.encode_object(p1 + [cf["x1"]]), self.head.encode_object(p2 + [cf["x2"]])
        if "x1_cf" in cf:
            out["o1_cf"] = self.head.encode_object(p1 + [cf["x1_cf"]])
            out["o2_cf"] = self.head.encode_object(p2 + [cf["x2_cf"]])
        return out


def dcl_objective(model: DCLModel, batch: dict, cfg: DCLLossConfig = DCLLossConfig(),
                  generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
    """(loss, logs) of a PACS batch: triplet(q, o1, o2) [+ counterfactual triplet of the effect]
    [+ dse_weight x the DSE losses of both objects]; logs hold every term and the batch accuracy."""
    out = model(batch)
    label = batch["label"]
    task = triplet_cosine_loss(out["q"], out["o1"], out["o2"], label, cfg.margin)
    logs = {"task": task.detach()}
    total = task
    if "o1_cf" in out and cfg.counterfactual:
        effect = triplet_cosine_loss(out["q"], out["o1"] - out["o1_cf"], out["o2"] - out["o2_cf"], label, cfg.margin)
        total = total + cfg.counterfactual * effect
        logs["counterfactual"] = effect.detach()
    backend = model.config.backend
    for m, (o1, o2) in out["dse"].items():
        for which, o in ((1, o1), (2, o2)):
            dloss, terms = dse_loss(model.dse[m], batch[f"{m}{which}"], o, cfg, generator, backend)
            total = total + cfg.dse_weight * dloss
            for name, value in terms.items():
                logs[f"dse_{m}_{name}"] = logs.get(f"dse_{m}_{name}", 0.0) + value.detach() / 2
    logs["acc"] = (predict_answer(out["q"], out["o1"], out["o2"]) == label).float().mean()
    return total, logs


# Builders and sizes ------------------------------------------------------------------------------------


def _build(*, weights=None, device=None, **overrides) -> DCLModel:
    from avfast.models.mit import load_state_dict_file

    with torch.device(device or "cpu"):
        model = DCLModel(DCLConfig(**overrides))
    if weights is not None:
        load_state_dict_file(model, weights)
    return model


def build_pacs_model(*, weights=None, device=None, **overrides) -> DCLModel:
    """Any PACS model from ``DCLConfig`` fields (``dse="none", clm=False`` is the plain baseline)."""
    return _build(weights=weights, device=device, **overrides)


def late_fusion_baseline(*, weights=None, device=None, **overrides) -> DCLModel:
    """The LateFusion baseline (no DSE, no CLM)."""
    return _build(weights=weights, device=device, **{"dse": "none", "clm": False, **overrides})


def late_fusion_dcl(*, weights=None, device=None, **overrides) -> DCLModel:
    """LateFusion w/ DCL (DSE on video, CLM k = 5, tau = 2)."""
    return _build(weights=weights, device=device, **overrides)


def _count(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def parameter_table(*, with_backbones: bool = True, **overrides) -> dict[str, int]:
    """Parameters per part, built on the meta device: text head, ViT-B/16, AST, fusion MLP, DSE, CLM, total.

    The backbones (frozen, features pre-extracted in training) count when ``with_backbones``: ViT-B/16
    with pooler, AST with its AudioSet head (as released). The text encoder (DeBERTa) is not counted:
    the seed saves its features once.
    """
    from avfast.models.ast import ast_base
    from avfast.models.vit import vit_b16

    model = _build(device="meta", **overrides)
    table = {"text head": _count(model.head.text_mlp)}
    if with_backbones:
        table["ViT-B/16"] = _count(vit_b16(device="meta"))
        if "audio" in model.config.fusion.modalities:
            table["AST"] = _count(ast_base(device="meta"))
    table["fusion MLP"] = _count(model.head.object_mlp)
    table["DSE"] = _count(model.dse)
    table["CLM"] = _count(model.clm)
    table["total"] = sum(table.values())
    return table
