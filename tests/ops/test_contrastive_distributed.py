"""contrastive_loss(gather="all_gather" | "ring") in 2 gloo processes vs one process on the whole batch.

A shared linear encoder (DDP-style replicated parameters) maps each rank's inputs to embeddings; each
rank's loss covers its own rows. The mean of the ranks' losses must equal the single-process loss on
the concatenated batch, and the ranks' parameter gradients averaged (what DDP does) must equal the
single-process gradients.
"""
import math

import pytest
import torch

import helpers
from avfast.ops import contrastive_loss

WORLD = 2
B_LOCAL, D_IN, D = 6, 5, 4

CONFIGS = [
    dict(gather="all_gather", backend="torch"),
    dict(gather="all_gather", backend="chunked", symmetric=False, label_smoothing=0.1),
    dict(gather="ring", backend="chunked"),
    dict(gather="ring", backend="chunked", symmetric=False, label_smoothing=0.1),
    dict(gather="all_gather", backend="chunked", kind="siglip"),
    dict(gather="ring", backend="chunked", kind="siglip"),
    dict(gather="all_gather", backend="triton", source_weight=0.5),  # under TRITON_INTERPRET=1 without a GPU
]


def _problem():
    g = torch.Generator().manual_seed(7)
    n = WORLD * B_LOCAL
    xa, xb = torch.randn(n, D_IN, generator=g), torch.randn(n, D_IN, generator=g)
    src = torch.randint(0, 3, (n,), generator=g)
    pos = torch.randint(0, n - 2, (n,), generator=g)
    weight = torch.randn(D, D_IN, generator=g)
    return xa, xb, src, pos, weight


def _loss_and_grads(xa, xb, src, pos, weight, config, **dist_kwargs):
    enc = torch.nn.Linear(D_IN, D, bias=False)
    with torch.no_grad():
        enc.weight.copy_(weight)
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    kind = config.get("kind", "infonce")
    bias = torch.nn.Parameter(torch.tensor(-2.0)) if kind == "siglip" else None
    opts = dict({"source_weight": 3.0}, **{k: v for k, v in config.items() if k not in ("gather", "backend")})
    loss = contrastive_loss(enc(xa), enc(xb), logit_scale=logit_scale, logit_bias=bias, source_ids=src,
                            positive_ids=pos, backend=config["backend"], **opts, **dist_kwargs)
    loss.backward()
    grads = [enc.weight.grad, logit_scale.grad] + ([bias.grad] if bias is not None else [])
    return loss.detach(), [g.detach() for g in grads]


def _rank_fn(rank, world_size):
    import torch.distributed as dist

    xa, xb, src, pos, weight = _problem()
    rows = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
    results = []
    for config in CONFIGS:
        loss, grads = _loss_and_grads(xa[rows], xb[rows], src[rows], pos[rows], weight, config,
                                      gather=config["gather"])
        for g in grads:  # DDP: average the replicated parameters' gradients
            dist.all_reduce(g)
            g /= world_size
        results.append((loss.tolist(), [g.tolist() for g in grads]))  # plain lists survive the process exit
    return results, _unequal_batch_error(rank)


@pytest.fixture(scope="module")
def rank_results():
    return helpers.spawn(_rank_fn, WORLD)  # one process start for every check below


def test_gathered_losses_match_single_process(rank_results):
    per_rank = [r[0] for r in rank_results]
    xa, xb, src, pos, weight = _problem()
    for i, config in enumerate(CONFIGS):
        ref_config = dict(config, backend="torch")
        loss, grads = _loss_and_grads(xa, xb, src, pos, weight, ref_config, gather="none")
        mean_loss = torch.tensor(sum(r[i][0] for r in per_rank) / WORLD)
        helpers.assert_close(mean_loss, loss, **helpers.tol(torch.float32, 10), msg=f"loss {config}")
        for rank in range(WORLD):
            for j, (g, ref) in enumerate(zip(per_rank[rank][i][1], grads)):
                helpers.assert_close(torch.tensor(g), ref, **helpers.tol(torch.float32, 10), msg=f"rank {rank} grad {j} {config}")


def test_gather_without_process_group_is_single_process():
    xa, xb, src, pos, weight = _problem()
    for gather in ("all_gather", "ring"):
        a = contrastive_loss(xa, xb, source_ids=src, gather=gather, backend="chunked")
        helpers.assert_close(a, contrastive_loss(xa, xb, source_ids=src), msg=gather)


def _unequal_batch_error(rank):
    x = torch.randn(3 + rank, 4)
    try:
        contrastive_loss(x, x, gather="all_gather")
    except ValueError as exc:
        return str(exc)
    return "no error"


def test_unequal_local_batches_raise(rank_results):
    messages = [r[1] for r in rank_results]
    assert all("same local batch size" in m for m in messages), messages
