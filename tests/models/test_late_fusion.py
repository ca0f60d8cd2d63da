"""PACS fusion heads, the triplet task loss, ViT-B/16 and AST (sizes, shapes, local weights)."""
import pytest
import torch
from torch import nn

from avfast.models.ast import AstFrontEnd, ast_base, ast_tiny
from avfast.models.late_fusion import FusionConfig, LateFusion, predict_answer, triplet_cosine_loss
from avfast.models.vit import frame_augment, sample_frame_indices, vit_b16, vit_tiny


def _count(m):
    return sum(p.numel() for p in m.parameters())


def test_triplet_loss_equals_torch_triplet_with_cosine_and_hand_formula():
    g = torch.Generator().manual_seed(0)
    q, o1, o2 = (torch.randn(7, 5, generator=g) for _ in range(3))
    label = torch.tensor([0, 1, 1, 0, 0, 1, 0])
    ours = triplet_cosine_loss(q, o1, o2, label, margin=1.0)
    right = torch.where(label[:, None] == 0, o1, o2)
    wrong = torch.where(label[:, None] == 0, o2, o1)
    torch_loss = nn.TripletMarginWithDistanceLoss(distance_function=nn.CosineSimilarity(), margin=1.0)
    torch.testing.assert_close(ours, torch_loss(q, wrong, right))
    cos = nn.functional.cosine_similarity
    hand = sum(max(float(cos(q[i], wrong[i], 0) - cos(q[i], right[i], 0)) + 1.0, 0.0) for i in range(7)) / 7
    assert ours.item() == pytest.approx(hand, rel=1e-6)


def test_predict_picks_the_object_closer_to_the_question():
    q = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    o1 = torch.tensor([[1.0, 0.1], [0.0, 1.0]])
    o2 = torch.tensor([[0.0, 1.0], [1.0, 0.1]])
    assert predict_answer(q, o1, o2).tolist() == [0, 1]


def test_triplet_loss_rejects_mismatched_pair():
    with pytest.raises(ValueError, match="share a shape"):
        triplet_cosine_loss(torch.randn(3, 4), torch.randn(3, 4), torch.randn(2, 4), torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("variant,mods", [("late_fusion", ("video", "audio")), ("clip", ("video",)),
                                          ("audioclip", ("video", "audio"))])
def test_fusion_heads_shapes_and_modalities(variant, mods):
    cfg = FusionConfig(variant, text_dim=6, video_dim=5, audio_dim=3, hidden=8, out_dim=4)
    head = LateFusion(cfg)
    B = 4
    batch = {"text": torch.randn(B, 6), "video1": torch.randn(B, 8, 5), "video2": torch.randn(B, 8, 5),
             "audio1": torch.randn(B, 3), "audio2": torch.randn(B, 2, 3)}
    out = head(batch)
    assert {k: tuple(v.shape) for k, v in out.items()} == {"q": (B, 4), "o1": (B, 4), "o2": (B, 4)}
    assert head.object_dim == sum({"video": 5, "audio": 3}[m] for m in mods)
    # LateFusion mean-pools frames: the order of frames does not matter
    perm = dict(batch, video1=batch["video1"].flip(1))
    head.eval()
    torch.testing.assert_close(head(batch)["o1"], head(perm)["o1"])


def test_fusion_head_names_the_wrong_width():
    head = LateFusion(FusionConfig(text_dim=6, video_dim=5, audio_dim=3, hidden=8, out_dim=4))
    batch = {"text": torch.randn(2, 6), "video1": torch.randn(2, 8, 4), "audio1": torch.randn(2, 3)}
    with pytest.raises(ValueError, match="video1 features are 4 wide"):
        head.pooled_parts(batch, 1)
    with pytest.raises(ValueError, match="variant"):
        FusionConfig(variant="uniter")


def test_vit_b16_and_ast_parameter_counts_on_meta():
    assert _count(vit_b16(device="meta")) == 86_389_248         # HF google/vit-base-patch16-224-in21k
    assert _count(vit_b16(device="meta", pooler=False)) == 85_798_656
    ast = ast_base(device="meta")
    assert ast.config.grid == (12, 101)                        # 1212 patches at strides 10
    assert ast.pos_embed.shape == (1, 1214, 768)
    # 12 blocks of 7,087,872 + patch conv + 2 tokens + positions + final norm (+ 527-class head)
    block = 768 * 2304 + 2304 + 768 * 768 + 768 + 4 * 768 + 768 * 3072 + 3072 + 3072 * 768 + 768
    body = 12 * block + (256 * 768 + 768) + 2 * 768 + 1214 * 768 + 2 * 768
    assert _count(ast_base(device="meta", classes=0)) == body
    assert _count(ast) == body + 2 * 768 + 768 * 527 + 527


def test_vit_and_ast_forward_shapes_and_frozen():
    vit = vit_tiny(frozen=True)
    assert not any(p.requires_grad for p in vit.parameters()) and not vit.training
    assert vit(torch.randn(2, 3, 32, 32)).shape == (2, 64)
    with pytest.raises(ValueError, match="expected images"):
        vit(torch.randn(2, 3, 30, 30))
    ast = ast_tiny()
    assert ast(torch.randn(2, 64, 128)).shape == (2, 64)


def test_weights_load_from_a_local_path_strictly(tmp_path):
    src = vit_tiny()
    path = tmp_path / "vit.pt"
    torch.save(src.state_dict(), path)
    dst = vit_tiny(weights=path)
    for k, v in src.state_dict().items():
        torch.testing.assert_close(dst.state_dict()[k], v)
    state = src.state_dict()
    state.pop("norm.weight")
    torch.save(state, path)
    with pytest.raises(ValueError, match="norm.weight"):
        vit_tiny(weights=path)
    with pytest.raises(FileNotFoundError, match="not found"):
        ast_tiny(weights=tmp_path / "missing.pt")


def test_ast_front_end_from_raw_audio():
    fe = AstFrontEnd(backend="torch")
    wave = torch.randn(2, 16000)
    g = torch.Generator().manual_seed(0)
    train = fe(wave, generator=g)
    assert train.shape == (2, 1024, 128)
    fe.eval()
    ev = fe(wave)
    assert ev.shape == (2, 1024, 128)
    # 1 s gives 98 frames; the rest is padding (0 before normalisation -> (0 + 4.27) / 9.14)
    torch.testing.assert_close(ev[:, 98:], torch.full_like(ev[:, 98:], 4.2677393 / (4.5689974 * 2)))
    assert not torch.equal(train, ev)                           # masks + noise in training only


def test_frame_sampling_and_augmentation():
    idx = sample_frame_indices(80, 8, train=False)
    assert idx.tolist() == [0, 10, 20, 30, 40, 50, 60, 70]
    g = torch.Generator().manual_seed(1)
    idx = sample_frame_indices(80, 8, generator=g)
    assert (idx.diff() == 10).all() and 0 <= int(idx[0]) < 10
    frames = torch.randn(8, 3, 252, 252)
    out = frame_augment(frames, generator=g)
    assert out.shape == (8, 3, 224, 224)
    centre = frame_augment(frames, train=False)
    torch.testing.assert_close(centre, frames[..., 14:238, 14:238])
