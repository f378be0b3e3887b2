"""Module tree of the prior networks: keys and shapes against a manifest written from the documented structure,
plus forward-pass rules (block order, view embedding, pixel-head layout) against independent computations."""

import math

import pytest
import torch
import torch.nn.functional as F

from core.errors import CheckpointError, Pixel3DMMError
from core.network import NetworkCfg, PixelNetwork, get_config


def _vit_b16_dino_manifest() -> dict[str, tuple[int, ...]]:
    """DINO ViT-B/16 (timm, no classifier head): 768 wide, 12 blocks, 224/16 = 14 -> 196 + 1 tokens."""
    c = 768
    keys = {
        "img_encoder.model.cls_token": (1, 1, c),
        "img_encoder.model.pos_embed": (1, 197, c),
        "img_encoder.model.patch_embed.proj.weight": (c, 3, 16, 16),
        "img_encoder.model.patch_embed.proj.bias": (c,),
        "img_encoder.model.norm.weight": (c,),
        "img_encoder.model.norm.bias": (c,),
    }
    for i in range(12):
        p = f"img_encoder.model.blocks.{i}."
        keys.update({
            p + "norm1.weight": (c,), p + "norm1.bias": (c,),
            p + "attn.qkv.weight": (3 * c, c), p + "attn.qkv.bias": (3 * c,),
            p + "attn.proj.weight": (c, c), p + "attn.proj.bias": (c,),
            p + "norm2.weight": (c,), p + "norm2.bias": (c,),
            p + "mlp.fc1.weight": (4 * c, c), p + "mlp.fc1.bias": (4 * c,),
            p + "mlp.fc2.weight": (c, 4 * c), p + "mlp.fc2.bias": (c,),
        })
    return keys


def _head_manifest(c: int, e: int, layers: int, n_views: int, view_dim: int, p: int) -> dict[str, tuple[int, ...]]:
    """Head modules as described in pixel3dmm.md section 1.2 (ModLN = LayerNorm + (SiLU, Linear))."""
    cin = c + (view_dim if n_views > 1 else 0)
    keys = {
        "dir_norm.norm.weight": (c,), "dir_norm.norm.bias": (c,),
        "dir_norm.mlp.1.weight": (2 * c, 32), "dir_norm.mlp.1.bias": (2 * c,),
        "dir_norm_uv.norm.weight": (c,), "dir_norm_uv.norm.bias": (c,),
        "dir_norm_uv.mlp.1.weight": (2 * c, c), "dir_norm_uv.mlp.1.bias": (2 * c,),
        "uv_enc_mlp.1.weight": (c, 24), "uv_enc_mlp.1.bias": (c,),
        "vol_decoder.down_proj.weight": (e, cin), "vol_decoder.down_proj.bias": (e,),
        "vol_decoder.norm.weight": (e,), "vol_decoder.norm.bias": (e,),
        "token_2_patch_content.weight": (4 * p, e), "token_2_patch_content.bias": (4 * p,),
    }
    if n_views > 1:
        keys["view_embed"] = (1, n_views, view_dim, 1, 1)
    for i in (1, 2, 3):
        keys[f"t_conv{i}.weight"] = (e, e, 2, 2)
        keys[f"t_conv{i}.bias"] = (e,)
    for i in range(layers):
        q = f"vol_decoder.layers.{i}."
        for n in (1, 2, 3, 4):
            keys[q + f"norm{n}.weight"] = (e,)
            keys[q + f"norm{n}.bias"] = (e,)
        for a in ("self_attn", "self_attn2"):
            keys[q + a + ".in_proj_weight"] = (3 * e, e)
            keys[q + a + ".out_proj.weight"] = (e, e)
        for m in ("mlp", "mlp2"):
            keys.update({q + m + ".0.weight": (4 * e, e), q + m + ".0.bias": (4 * e,),
                         q + m + ".3.weight": (e, 4 * e), q + m + ".3.bias": (e,)})
    return keys


@pytest.mark.parametrize(("name", "channels"), [("uv", 2), ("normals", 3)])
def test_published_tree_matches_manifest(name, channels):
    cfg = get_config(name)
    with torch.device("meta"):
        net = PixelNetwork(cfg)
    got = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    want = _vit_b16_dino_manifest() | _head_manifest(768, cfg.embedding_dim, cfg.num_layers, cfg.n_views,
                                                      cfg.view_embed_dim, channels)
    assert sorted(set(got) - set(want)) == []
    assert sorted(set(want) - set(got)) == []
    assert {k: s for k, s in got.items() if want[k] != s} == {}


def test_optional_modules_follow_the_configuration():
    base = get_config("tiny")
    with torch.device("meta"):
        plain = PixelNetwork(NetworkCfg(**{**base.to_dict(), "n_views": 1}))
        extra = PixelNetwork(NetworkCfg(**{**base.to_dict(), "use_pos_enc": True, "pred_conf": True,
                                           "pred_disentangled": True}))
    keys = set(plain.state_dict())
    assert "view_embed" not in keys and "patch_pos_enc" not in keys
    assert plain.state_dict()["vol_decoder.down_proj.weight"].shape[1] == plain.img_encoder.num_features
    sd = extra.state_dict()
    assert sd["patch_pos_enc"].shape == (1, 64, 32, 32)
    assert sd["t_conv3_conf.weight"].shape == (32, 32, 2, 2)
    assert sd["token_2_patch_conf.weight"].shape == (4, 32)
    assert sd["token_2_patch_content.weight"].shape == (4 * 4, 32)  # uv (2) + disentangled (2)


@pytest.mark.parametrize("field", ["use_uv_enc", "use_plucker", "prior_input"])
def test_configurations_needing_extra_inputs_are_refused(field):
    with pytest.raises(CheckpointError, match=field):
        PixelNetwork(NetworkCfg(**{**get_config("tiny").to_dict(), field: True}))


def test_unknown_backbone_is_refused():
    with pytest.raises(CheckpointError, match="no_such_vit"):
        PixelNetwork(NetworkCfg(**{**get_config("tiny").to_dict(), "encoder_backbone": "no_such_vit"}))


def _reference_block(block, x):
    """Independent GroupAttBlock: explicit multi-head attention from in_proj/out_proj weights."""
    def attn(mha, t):
        e = t.shape[-1]
        h = mha.num_heads
        q, k, v = (t @ mha.in_proj_weight.T).split(e, dim=-1)
        def heads(z):
            return z.reshape(z.shape[0], z.shape[1], h, e // h).transpose(1, 2)
        w = torch.softmax(heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(e // h), dim=-1)
        return (w @ heads(v)).transpose(1, 2).reshape(t.shape) @ mha.out_proj.weight.T
    def mlp(seq, t):
        return seq[3](F.gelu(seq[0](t)))
    x = block.norm1(x)
    x = x + attn(block.self_attn, x)
    x = x + mlp(block.mlp, block.norm2(x))
    x = block.norm3(x)
    x = x + attn(block.self_attn2, x)
    return x + mlp(block.mlp2, block.norm4(x))


def test_group_att_block_order_and_attention():
    torch.manual_seed(0)
    net = PixelNetwork(get_config("tiny"))
    block = net.vol_decoder.layers[0]
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.3)
        x = torch.randn(2, 40, 32)
        torch.testing.assert_close(block(x), _reference_block(block, x), rtol=1e-4, atol=1e-5)


def test_view_embedding_first_view_concatenated_after_features():
    torch.manual_seed(1)
    net = PixelNetwork(get_config("tiny"))
    with torch.no_grad():
        net.view_embed.normal_()
    seen = {}
    net.img_encoder.register_forward_hook(lambda m, i, o: seen.__setitem__("tokens", o))
    net.vol_decoder.down_proj.register_forward_pre_hook(lambda m, i: seen.__setitem__("cin", i[0]))
    with torch.inference_mode():
        net(torch.rand(1, 3, 512, 512))
    c = net.img_encoder.num_features
    assert seen["tokens"].shape == (1, 32 * 32, c)
    torch.testing.assert_close(seen["cin"][..., :c], seen["tokens"])
    first = net.view_embed[0, 0, :, 0, 0]
    torch.testing.assert_close(seen["cin"][..., c:], first.expand(1, 1024, -1))
    assert not torch.allclose(first, net.view_embed[0, 1, :, 0, 0])


def test_backbone_drops_class_token_and_normalises_with_timm_constants():
    net = PixelNetwork(get_config("tiny"))
    image = torch.rand(1, 3, 512, 512)
    mean = torch.tensor(net.img_encoder.model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(net.img_encoder.model.pretrained_cfg["std"]).view(1, 3, 1, 1)
    with torch.inference_mode():
        want = net.img_encoder.model.forward_features((image - mean) / std)[:, 1:]
        torch.testing.assert_close(net.img_encoder(image), want)


def test_pixel_head_unpatchify_layout():
    """Per upsampled position the head vector is (row-in-patch, col-in-patch, channel), channel fastest."""
    cfg = NetworkCfg(**{**get_config("tiny").to_dict(), "prediction_type": "normals"})
    net = PixelNetwork(cfg)
    h = w = 256
    p = 3
    code = torch.arange(h * w * 2 * 2 * p, dtype=torch.float32).reshape(1, h, w, 2, 2, p)
    net.token_2_patch_content.register_forward_hook(lambda m, i, o: code.reshape(1, h, w, 4 * p))
    with torch.inference_mode():
        out = net(torch.rand(1, 3, 512, 512))
    assert out.shape == (1, p, 512, 512)
    for (y, x, c) in [(0, 0, 0), (1, 0, 2), (0, 1, 1), (511, 511, 2), (300, 7, 1)]:
        assert out[0, c, y, x] == code[0, y // 2, x // 2, y % 2, x % 2, c]


def _straightforward_forward(net, image):
    """The reference forward written plainly with the torch modules (nn.MultiheadAttention calls,
    ConvTranspose2d with output_size, unpatchify as described in pixel3dmm.md section 1.2)."""
    b = image.shape[0]
    feats = net.img_encoder(image).transpose(1, 2).reshape(b, -1, 32, 32)  # B C h w
    feats = feats.reshape(b, 1, -1, 32, 32)
    emb = net.view_embed[:, :1].repeat(b, 1, 1, 32, 32)
    feats = torch.cat((feats, emb), dim=2)
    x = net.vol_decoder.down_proj(feats.permute(0, 1, 3, 4, 2)).reshape(b, 32 * 32, -1)
    for blk in net.vol_decoder.layers:
        x = blk.norm1(x)
        x = x + blk.self_attn(x, x, x, need_weights=False)[0]
        x = x + blk.mlp(blk.norm2(x))
        x = blk.norm3(x)
        x = x + blk.self_attn2(x, x, x, need_weights=False)[0]
        x = x + blk.mlp2(blk.norm4(x))
    x = x.reshape(b, 32, 32, -1).permute(0, 3, 1, 2)
    x = F.gelu(net.t_conv1(x, output_size=(64, 64)))
    x = F.gelu(net.t_conv2(x, output_size=(128, 128)))
    x = F.gelu(net.t_conv3(x, output_size=(256, 256)))
    x = net.token_2_patch_content(x.permute(0, 2, 3, 1).reshape(b, 256 * 256, -1))
    p = net.cfg.prediction_dim
    x = x.reshape(b, 256, 256, 2, 2, p)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(b, p, 512, 512)


def test_forward_matches_the_straightforward_module_forward():
    torch.manual_seed(2)
    net = PixelNetwork(get_config("tiny"))
    with torch.no_grad():
        net.view_embed.normal_()
        for conv in (net.t_conv1, net.t_conv2, net.t_conv3):
            conv.bias.normal_(0, 0.5)
        image = torch.rand(2, 3, 512, 512)
        torch.testing.assert_close(net(image), _straightforward_forward(net, image), rtol=1e-4, atol=1e-5)
        with pytest.raises(Pixel3DMMError, match="512x512"):
            net(torch.rand(1, 3, 256, 256))
