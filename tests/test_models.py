"""The tracker model and its checkpoints: OSTrack format, timm / MAE ViT init, ct-ray's own format."""
import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from ct_ray.models import (
    CheckpointError,
    OneStreamTracker,
    TrackerConfig,
    ct_ray_to_ostrack,
    infer_config,
    init_from_vit,
    load_ostrack,
    load_teacher,
    load_tracker,
    ostrack_to_ct_ray,
    save_tracker,
)

DIM, DEPTH, HEADS, C, PATCH = 32, 2, 4, 16, 16
Z, X = 64, 128


def ostrack_state_dict(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Every key of an OSTrack release checkpoint's ``net``, written out from the format, with random values."""

    def rnd(*shape, scale=0.1):
        return torch.randn(*shape, generator=generator) * scale

    sd = {
        "backbone.cls_token": rnd(1, 1, DIM),
        "backbone.pos_embed": rnd(1, 197, DIM),
        "backbone.patch_embed.proj.weight": rnd(DIM, 3, PATCH, PATCH, scale=0.05),
        "backbone.patch_embed.proj.bias": rnd(DIM),
        "backbone.pos_embed_z": rnd(1, (Z // PATCH) ** 2, DIM),
        "backbone.pos_embed_x": rnd(1, (X // PATCH) ** 2, DIM),
        "backbone.norm.weight": 1 + rnd(DIM),
        "backbone.norm.bias": rnd(DIM),
    }
    for i in range(DEPTH):
        p = f"backbone.blocks.{i}."
        sd.update({
            p + "norm1.weight": 1 + rnd(DIM), p + "norm1.bias": rnd(DIM),
            p + "attn.qkv.weight": rnd(3 * DIM, DIM, scale=0.3), p + "attn.qkv.bias": rnd(3 * DIM),
            p + "attn.proj.weight": rnd(DIM, DIM, scale=0.3), p + "attn.proj.bias": rnd(DIM),
            p + "norm2.weight": 1 + rnd(DIM), p + "norm2.bias": rnd(DIM),
            p + "mlp.fc1.weight": rnd(4 * DIM, DIM, scale=0.3), p + "mlp.fc1.bias": rnd(4 * DIM),
            p + "mlp.fc2.weight": rnd(DIM, 4 * DIM, scale=0.3), p + "mlp.fc2.bias": rnd(DIM),
        })
    widths = [DIM, C, C // 2, C // 4, C // 8]
    for branch, out in (("ctr", 1), ("offset", 2), ("size", 2)):
        for i in range(4):
            p = f"box_head.conv{i + 1}_{branch}."
            sd.update({
                p + "0.weight": rnd(widths[i + 1], widths[i], 3, 3, scale=0.2), p + "0.bias": rnd(widths[i + 1]),
                p + "1.weight": 1 + rnd(widths[i + 1]), p + "1.bias": rnd(widths[i + 1]),
                p + "1.running_mean": rnd(widths[i + 1]),
                p + "1.running_var": 0.5 + torch.rand(widths[i + 1], generator=generator),
                p + "1.num_batches_tracked": torch.tensor(1000),
            })
        sd[f"box_head.conv5_{branch}.weight"] = rnd(out, widths[4], 1, 1, scale=0.5)
        sd[f"box_head.conv5_{branch}.bias"] = rnd(out)
    return sd


def reference_forward(sd, template, search):
    """OSTrack's forward written out from METHOD.md section 1 with plain tensor ops (eval mode)."""
    def embed(img, pos):
        x = F.conv2d(img, sd["backbone.patch_embed.proj.weight"], sd["backbone.patch_embed.proj.bias"], stride=PATCH)
        return x.flatten(2).transpose(1, 2) + pos

    x = torch.cat([embed(template, sd["backbone.pos_embed_z"]), embed(search, sd["backbone.pos_embed_x"])], 1)
    for i in range(DEPTH):
        p = f"backbone.blocks.{i}."
        h = F.layer_norm(x, (DIM,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
        qkv = h @ sd[p + "attn.qkv.weight"].T + sd[p + "attn.qkv.bias"]
        b, n, _ = qkv.shape
        q, k, v = qkv.reshape(b, n, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(DIM // HEADS), dim=-1)
        h = (attn @ v).transpose(1, 2).reshape(b, n, DIM)
        x = x + h @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
        h = F.layer_norm(x, (DIM,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
        h = F.gelu(h @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"])
        x = x + h @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]
    x = F.layer_norm(x, (DIM,), sd["backbone.norm.weight"], sd["backbone.norm.bias"], eps=1e-6)
    side = X // PATCH
    fmap = x[:, (Z // PATCH) ** 2:].transpose(1, 2).reshape(x.shape[0], DIM, side, side)

    def branch(name):
        h = fmap
        for i in range(1, 5):
            p = f"box_head.conv{i}_{name}."
            h = F.conv2d(h, sd[p + "0.weight"], sd[p + "0.bias"], padding=1)
            h = (h - sd[p + "1.running_mean"][:, None, None]) / torch.sqrt(sd[p + "1.running_var"][:, None, None] + 1e-5)
            h = torch.relu(h * sd[p + "1.weight"][:, None, None] + sd[p + "1.bias"][:, None, None])
        return F.conv2d(h, sd[f"box_head.conv5_{name}.weight"], sd[f"box_head.conv5_{name}.bias"])

    score = branch("ctr").sigmoid().clamp(1e-4, 1 - 1e-4)
    size = branch("size").sigmoid().clamp(1e-4, 1 - 1e-4)
    offset = branch("offset")
    boxes = []
    for j in range(score.shape[0]):
        idx = int(score[j, 0].flatten().argmax())
        iy, ix = divmod(idx, side)
        boxes.append([(ix + offset[j, 0, iy, ix]) / side, (iy + offset[j, 1, iy, ix]) / side,
                      size[j, 0, iy, ix], size[j, 1, iy, ix]])
    return torch.tensor(boxes), score


class ForeignSettings:
    """Stands for the training objects OSTrack pickles next to the weights."""


def _foreign_module():
    name = "lib.train.admin.settings_for_test"  # OSTrack's training objects live under its package ``lib``
    for depth in range(1, name.count(".") + 1):
        sys.modules.setdefault(name.rsplit(".", name.count(".") - depth + 1)[0], types.ModuleType("parent"))
    module = types.ModuleType(name)
    ForeignSettings.__module__ = module.__name__
    module.ForeignSettings = ForeignSettings
    sys.modules[module.__name__] = module


@pytest.fixture(scope="module")
def ostrack_file(tmp_path_factory):
    sd = ostrack_state_dict(torch.Generator().manual_seed(0))
    _foreign_module()
    settings = ForeignSettings()
    settings.lr = 4e-4
    path = tmp_path_factory.mktemp("ostrack") / "OSTrack_ep0300.pth.tar"
    torch.save({"net": sd, "epoch": 300, "settings": settings}, path)
    return path, sd


def test_ostrack_checkpoint_matches_reference_forward(ostrack_file):
    path, sd = ostrack_file
    model = load_ostrack(path).eval()
    assert model.config == TrackerConfig(embed_dim=DIM, depth=DEPTH, num_heads=DIM // 64 or 1, mlp_ratio=4.0,
                                         patch_size=PATCH, template_size=Z, search_size=X, head_channels=C)
    model = load_ostrack(path, num_heads=HEADS).eval()
    generator = torch.Generator().manual_seed(1)
    template, search = torch.randn(3, 3, Z, Z, generator=generator), torch.randn(3, 3, X, X, generator=generator)
    with torch.no_grad():
        out = model(template, search)
    boxes, score = reference_forward(sd, template, search)
    assert torch.allclose(out["score_map"], score, atol=1e-5)
    assert torch.allclose(out["pred_boxes"], boxes, atol=1e-5)
    assert out["pred_boxes"].shape == (3, 4) and out["score_map"].shape == (3, 1, X // PATCH, X // PATCH)


def test_ostrack_key_mapping_both_ways(ostrack_file):
    _, sd = ostrack_file
    mapped = ostrack_to_ct_ray(sd)
    assert "backbone.cls_token" not in mapped and "pos_embed" not in mapped
    assert mapped["blocks.1.attn.qkv.weight"] is sd["backbone.blocks.1.attn.qkv.weight"]
    assert mapped["box_head.conv5_size.bias"] is sd["box_head.conv5_size.bias"]
    back = ct_ray_to_ostrack(mapped)
    assert set(back) == set(sd) - {"backbone.cls_token", "backbone.pos_embed"}
    model = OneStreamTracker(infer_config(mapped, HEADS))
    assert set(model.state_dict()) == set(mapped)


def test_ostrack_wrong_keys_rejected(tmp_path, ostrack_file):
    _, sd = ostrack_file
    cases = {
        "extra": ({**sd, "backbone.blocks.0.attn.extra": torch.zeros(1)}, "unexpected keys"),
        "missing": ({k: v for k, v in sd.items() if k != "box_head.conv3_size.1.running_var"}, "missing keys"),
        "shape": ({**sd, "backbone.norm.bias": torch.zeros(DIM + 1)}, "shape mismatches"),
        "outside": ({**sd, "optimizer.state": torch.zeros(1)}, "optimizer.state"),
    }
    for name, (state, message) in cases.items():
        path = tmp_path / f"{name}.pth"
        torch.save({"net": state}, path)
        with pytest.raises(CheckpointError, match=message):
            load_ostrack(path)
    torch.save({"weights": 1}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not an OSTrack checkpoint"):
        load_ostrack(tmp_path / "other.pth")
    with pytest.raises(FileNotFoundError):
        load_ostrack(tmp_path / "absent.pth")


def test_fused_and_exact_attention_agree():
    torch.manual_seed(0)
    model = OneStreamTracker(TrackerConfig(embed_dim=DIM, depth=DEPTH, num_heads=HEADS, head_channels=C,
                                           template_size=Z, search_size=X)).eval()
    template, search = torch.randn(2, 3, Z, Z), torch.randn(2, 3, X, X)
    with torch.no_grad():
        fused = model(template, search)
        model.set_fused_attention(False)
        exact = model(template, search)
    assert all(not block.attn.fused_attn for block in model.blocks)
    assert torch.allclose(fused["score_map"], exact["score_map"], atol=1e-5)


def test_forward_features_are_block_outputs():
    torch.manual_seed(0)
    model = OneStreamTracker(TrackerConfig(embed_dim=DIM, depth=3, num_heads=HEADS, head_channels=C,
                                           template_size=Z, search_size=X)).eval()
    template, search = torch.randn(1, 3, Z, Z), torch.randn(1, 3, X, X)
    with torch.no_grad():
        last, feats = model.forward_features(template, search, after_blocks=[0, 2])
        tokens = model.embed(template, search)
        after0 = model.run_blocks(tokens, 0, 1)
        after2 = model.run_blocks(after0, 1, 3)
        assert torch.equal(feats[0], after0) and torch.equal(feats[1], after2) and torch.equal(last, after2)
        assert torch.allclose(model.forward_head(last)["score_map"], model(template, search)["score_map"])
    with pytest.raises(IndexError):
        model.forward_features(template, search, after_blocks=[3])


def test_init_from_mae_vit_interpolates_position_embeddings(tmp_path):
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=224, patch_size=16, embed_dim=DIM, depth=DEPTH, num_heads=HEADS)
    sd = vit.state_dict()
    sd["decoder_embed.weight"] = torch.zeros(4, DIM)
    torch.save({"model": sd}, tmp_path / "mae.pth")
    model = init_from_vit(tmp_path / "mae.pth", template_size=Z, search_size=X, head_channels=C,
                          num_heads=HEADS)
    assert model.config.depth == DEPTH and model.config.embed_dim == DIM
    grid = sd["pos_embed"][:, 1:].reshape(1, 14, 14, DIM).permute(0, 3, 1, 2)
    expect_z = F.interpolate(grid, size=(Z // 16, Z // 16), mode="bicubic", align_corners=False)
    assert torch.allclose(model.pos_embed_z, expect_z.flatten(2).transpose(1, 2), atol=1e-6)
    assert model.pos_embed_x.shape == (1, (X // 16) ** 2, DIM)
    assert torch.equal(model.blocks[1].mlp.fc2.weight, sd["blocks.1.mlp.fc2.weight"])
    assert torch.equal(model.patch_embed.proj.weight, sd["patch_embed.proj.weight"])
    model2 = load_teacher("vit", tmp_path / "mae.pth", template_size=Z, search_size=X, head_channels=C)
    assert torch.equal(model2.norm.weight, sd["norm.weight"])


def test_ct_ray_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = OneStreamTracker(TrackerConfig(embed_dim=DIM, depth=DEPTH, num_heads=HEADS, head_channels=C,
                                           template_size=Z, search_size=X))
    save_tracker(tmp_path / "t.pt", model, {"kind": "teacher", "auc": 61.5})
    loaded, meta = load_tracker(tmp_path / "t.pt")
    assert meta == {"kind": "teacher", "auc": 61.5}
    assert loaded.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert not list(tmp_path.glob(".*tmp"))
    torch.save({"format": "something-else"}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="not a ct-ray tracker checkpoint"):
        load_tracker(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="unknown teacher kind"):
        load_teacher("mystery", tmp_path / "t.pt")


def test_config_rejects_impossible_values():
    with pytest.raises(ValueError, match="num_heads"):
        TrackerConfig(embed_dim=30, num_heads=4)
    with pytest.raises(ValueError, match="search_size"):
        TrackerConfig(search_size=250)
    with pytest.raises(ValueError, match="depth"):
        TrackerConfig(depth=0)
    with pytest.raises(ValueError, match="unknown TrackerConfig keys"):
        TrackerConfig.from_dict({"embed_dim": 64, "widht": 3})


def test_fresh_head_starts_at_its_priors():
    """A fresh center head scores each of the F*F cells near 1 / (F*F - 1) and predicts the target's size in a search
    crop (1 / search_factor), so its focal loss starts small instead of near 12 (zero biases: 0.5 everywhere)."""
    from ct_ray.compress.losses import focal_loss, gaussian_heatmap

    torch.manual_seed(0)
    model = OneStreamTracker(TrackerConfig(embed_dim=DIM, depth=DEPTH, num_heads=HEADS, head_channels=C,
                                           template_size=Z, search_size=X)).eval()
    cells = model.feat_size ** 2
    with torch.no_grad():
        out = model(torch.randn(4, 3, Z, Z), torch.randn(4, 3, X, X))
    assert out["score_map"].mean().item() == pytest.approx(1.0 / (cells - 1), rel=0.5)
    assert out["size_map"].mean().item() == pytest.approx(1.0 / model.config.search_factor, rel=0.1)
    targets = torch.tensor([[0.5, 0.5, 0.25, 0.25]]).repeat(4, 1)
    fresh = focal_loss(out["score_map"], gaussian_heatmap(targets, model.feat_size)).item()
    assert fresh < 5.0
    model.box_head.conv5_ctr.bias.data.zero_()
    with torch.no_grad():
        flat = model(torch.randn(4, 3, Z, Z), torch.randn(4, 3, X, X))
    assert focal_loss(flat["score_map"], gaussian_heatmap(targets, model.feat_size)).item() > 2 * fresh
