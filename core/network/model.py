"""Module tree of the Pixel3DMM prior network (UV or normal predictor), rebuilt from its configuration.

Attribute names match the reference implementation so that a published state dict (keys without the Lightning
``net.`` prefix) loads with strict key matching::

    img_encoder.model            timm ViT built with pretrained=False, dynamic_img_size=True
    img_encoder.processor        ImageNet-style normalisation from timm's data config (no state)
    dir_norm, dir_norm_uv        ModLN: .norm LayerNorm(C), .mlp = (SiLU, Linear)          unused at inference
    uv_enc_mlp                   (SiLU, Linear(24, C))                                     unused at inference
    patch_pos_enc                (1, C, 32, 32), only with use_pos_enc
    view_embed                   (1, n_views, 16, 1, 1), only with n_views > 1
    vol_decoder.down_proj        Linear(C [+16], E)
    vol_decoder.layers.N         GroupAttBlock: norm1..4, self_attn, self_attn2, mlp, mlp2
    vol_decoder.norm             LayerNorm(E, eps 1e-6)                                   unused at inference
    t_conv1, t_conv2, t_conv3    ConvTranspose2d(E, E, 2, stride 2), each followed by GELU: 32 -> 64 -> 128 -> 256
    token_2_patch_content        Linear(E, 2*2*P), then unpatchify with patch 2 to 512 x 512
    t_conv3_conf, token_2_patch_conf   only with pred_conf                                  unused at inference

``C`` is the backbone width, ``E`` the head width and ``P`` the prediction channels. Modules that the reference
builds but never uses at inference are built too, so a strict load leaves nothing silently dropped.
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, Pixel3DMMError
from .config import IMAGE_SIZE, TOKEN_GRID, NetworkCfg

#: Side of the square patch each upsampled position expands into.
PIXEL_PATCH = 2


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` with constants from timm's data config; contributes no state-dict keys."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` of shape (B, 3, H, W)."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std


class DinoWrapper(nn.Module):
    """timm ViT backbone that returns patch tokens without the class token.

    Parameters
    ----------
    model_name : str
        timm model name read from the checkpoint's configuration.
    """

    def __init__(self, model_name: str):
        super().__init__()
        try:
            self.model = timm.create_model(model_name, pretrained=False, dynamic_img_size=True)
        except RuntimeError as exc:
            raise CheckpointError(
                f"The checkpoint names the backbone '{model_name}', which this timm version does not know; update "
                "the add-on or use the published checkpoints."
            ) from exc
        prefix = getattr(self.model, "num_prefix_tokens", None)
        patch = getattr(getattr(self.model, "patch_embed", None), "patch_size", None)
        if prefix != 1 or patch is None or tuple(patch) != (IMAGE_SIZE // TOKEN_GRID,) * 2:
            raise CheckpointError(
                f"The backbone '{model_name}' is not a patch-16 ViT with a single class token, which the network "
                "head requires; use the published uv.ckpt or normals.ckpt."
            )
        data_cfg = timm.data.resolve_model_data_config(self.model)
        self.processor = Normalize(data_cfg["mean"], data_cfg["std"])

    @property
    def num_features(self) -> int:
        """Backbone token width ``C``."""
        return int(self.model.num_features)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Map images (B, 3, H, W) in [0, 1] to patch tokens (B, L, C), class token dropped."""
        return self.model.forward_features(self.processor(image))[:, 1:]


class ModLN(nn.Module):
    """Adaptive LayerNorm of the reference (built for strict loading; unused by the published networks)."""

    def __init__(self, inner_dim: int, mod_dim: int, eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(inner_dim, eps=eps)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(mod_dim, inner_dim * 2))


class GroupAttBlock(nn.Module):
    """Head transformer block with two attention/MLP rounds and a re-normalised residual stream.

    Order: ``x = norm1(x); x += attn(x); x += mlp(norm2(x)); x = norm3(x); x += attn2(x); x += mlp2(norm4(x))``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=0.0, bias=False, batch_first=True)
        self.self_attn2 = nn.MultiheadAttention(dim, num_heads, dropout=0.0, bias=False, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, dim),
                                 nn.Dropout(0.0))
        self.mlp2 = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, dim),
                                  nn.Dropout(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, N, E) -> (B, N, E); attention is global over all N tokens of one batch element."""
        x = self.norm1(x)
        x = x + _self_attention(self.self_attn, x)
        x = x + self.mlp(self.norm2(x))
        x = self.norm3(x)
        x = x + _self_attention(self.self_attn2, x)
        return x + self.mlp2(self.norm4(x))


def _self_attention(mha: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    """Bias-free multi-head self-attention with ``mha``'s weights, batch-first, via scaled_dot_product_attention.

    Same mathematics as ``mha(x, x, x, need_weights=False)[0]`` (packed q/k/v projection, softmax(q k^T / sqrt(d)),
    output projection) without the module's sequence-first transposes, which cost a third of the head's time on CPU.

    Parameters
    ----------
    mha : nn.MultiheadAttention
        Built with ``bias=False`` and ``batch_first=True``; it holds ``in_proj_weight`` (3E, E) and
        ``out_proj.weight`` (E, E).
    x : torch.Tensor
        (B, N, E) tokens.
    """
    b, n, e = x.shape
    heads = mha.num_heads
    qkv = F.linear(x, mha.in_proj_weight).view(b, n, 3, heads, e // heads).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
    return F.linear(out.transpose(1, 2).reshape(b, n, e), mha.out_proj.weight)


def _upsample_2x(conv: nn.ConvTranspose2d, x: torch.Tensor) -> torch.Tensor:
    """``ConvTranspose2d(kernel 2, stride 2)`` on channels-last input, computed as one matrix product.

    Each input pixel ``(i, j)`` writes the 2 x 2 block ``(2i + p, 2j + q)``:
    ``y[2i+p, 2j+q, o] = bias[o] + sum_c x[i, j, c] * W[c, o, p, q]``, which equals the module's output with
    ``output_size = 2 x input size``.

    Parameters
    ----------
    conv : nn.ConvTranspose2d
        Weight (Cin, Cout, 2, 2) and bias (Cout,).
    x : torch.Tensor
        (B, H, W, Cin).

    Returns
    -------
    torch.Tensor
        (B, 2H, 2W, Cout).
    """
    b, h, w, _ = x.shape
    cout = conv.out_channels
    weight = conv.weight.permute(2, 3, 1, 0).reshape(4 * cout, -1)  # rows ordered (p, q, o)
    y = F.linear(x, weight, conv.bias.repeat(4)).view(b, h, w, 2, 2, cout)
    return y.permute(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, cout)


class VolTransformer(nn.Module):
    """Channel projection to width ``E`` followed by ``num_layers`` :class:`GroupAttBlock` s."""

    def __init__(self, embed_dim: int, image_feat_dim: int, num_layers: int, num_heads: int, eps: float = 1e-6):
        super().__init__()
        self.down_proj = nn.Linear(image_feat_dim, embed_dim)
        self.layers = nn.ModuleList(GroupAttBlock(embed_dim, num_heads) for _ in range(num_layers))
        self.norm = nn.LayerNorm(embed_dim, eps=eps)  # present in the checkpoints, never applied

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Channels-last tokens (B, N, Cin) -> (B, N, E)."""
        x = self.down_proj(tokens)
        for layer in self.layers:
            x = layer(x)
        return x


class PixelNetwork(nn.Module):
    """One Pixel3DMM prior network: image (B, 3, 512, 512) in [0, 1] -> raw prediction (B, D, 512, 512).

    ``D`` is ``cfg.prediction_dim``; the first ``cfg.output_channels`` channels are the UV map or the normals,
    with no output activation. Decoding to UV and unit normals lives in :mod:`.inference`.

    Parameters
    ----------
    cfg : NetworkCfg
        Architecture read from the checkpoint; unsupported configurations raise :class:`CheckpointError`.
    """

    def __init__(self, cfg: NetworkCfg):
        super().__init__()
        cfg.check_supported()
        self.cfg = cfg
        self.img_encoder = DinoWrapper(cfg.encoder_backbone)
        feat = self.img_encoder.num_features
        emb = cfg.embedding_dim
        self.dir_norm = ModLN(feat, 16 * 2, eps=1e-6)
        self.dir_norm_uv = ModLN(feat, feat, eps=1e-6)
        self.uv_enc_mlp = nn.Sequential(nn.SiLU(), nn.Linear(24, feat))
        if cfg.use_pos_enc:
            self.patch_pos_enc = nn.Parameter(torch.zeros(1, feat, TOKEN_GRID, TOKEN_GRID))
        in_dim = feat
        if cfg.n_views > 1:
            self.view_embed = nn.Parameter(torch.zeros(1, cfg.n_views, cfg.view_embed_dim, 1, 1))
            in_dim += cfg.view_embed_dim
        self.vol_decoder = VolTransformer(emb, in_dim, cfg.num_layers, cfg.num_heads)
        self.t_conv1 = nn.ConvTranspose2d(emb, emb, 2, stride=2)
        self.t_conv2 = nn.ConvTranspose2d(emb, emb, 2, stride=2)
        self.t_conv3 = nn.ConvTranspose2d(emb, emb, 2, stride=2)
        self.token_2_patch_content = nn.Linear(emb, PIXEL_PATCH**2 * cfg.prediction_dim)
        if cfg.pred_conf:
            self.t_conv3_conf = nn.ConvTranspose2d(emb, emb, 2, stride=2)
            self.token_2_patch_conf = nn.Linear(emb, PIXEL_PATCH**2)
        self.eval()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Predict raw maps.

        Parameters
        ----------
        image : torch.Tensor
            (B, 3, 512, 512) RGB in [0, 1].

        Returns
        -------
        torch.Tensor
            (B, D, 512, 512) raw network output, ``D = cfg.prediction_dim``.
        """
        b, _, h, w = image.shape
        tokens = self.img_encoder(image)  # (B, L, C), row-major over the token grid
        size = int((h * w / tokens.shape[1]) ** 0.5)
        gh, gw = h // size, w // size
        if self.cfg.use_pos_enc:
            grid = tokens.transpose(1, 2).reshape(b, -1, gh, gw) + self.patch_pos_enc
            tokens = grid.flatten(2).transpose(1, 2)
        if self.cfg.n_views > 1:
            # A single input view: the reference takes view_embed[:, :1], i.e. the FIRST view's embedding,
            # and concatenates it after the backbone channels.
            view = self.view_embed[0, 0, :, 0, 0].to(tokens.dtype)
            tokens = torch.cat((tokens, view.expand(b, tokens.shape[1], -1)), dim=2)
        if (gh, gw) != (TOKEN_GRID, TOKEN_GRID):
            raise Pixel3DMMError(
                f"The network needs a {IMAGE_SIZE}x{IMAGE_SIZE} input (a {TOKEN_GRID}x{TOKEN_GRID} token grid), got "
                f"{h}x{w}; pass the 512x512 face crop."
            )
        x = self.vol_decoder(tokens).view(b, gh, gw, -1)  # channels-last (B, 32, 32, E)
        for conv in (self.t_conv1, self.t_conv2, self.t_conv3):  # 32 -> 64 -> 128 -> 256, as hard-coded upstream
            x = F.gelu(_upsample_2x(conv, x))
        side = x.shape[1]
        x = self.token_2_patch_content(x)  # (B, 256, 256, 2*2*D)
        x = x.view(b, side, side, PIXEL_PATCH, PIXEL_PATCH, -1)
        return torch.einsum("bhwpqc->bchpwq", x).reshape(b, -1, side * PIXEL_PATCH, side * PIXEL_PATCH)


def build_network(cfg: NetworkCfg) -> PixelNetwork:
    """Build the module tree for ``cfg`` in eval mode with freshly initialised weights (CPU, float32)."""
    return PixelNetwork(cfg)
