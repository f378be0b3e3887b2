"""Architecture configuration of the Pixel3DMM prior networks and the named registry.

A published checkpoint carries its own configuration (``ckpt["hyper_parameters"]["cfg"]``, an OmegaConf
DictConfig). :meth:`NetworkCfg.from_lightning_cfg` reads the keys the network needs from that configuration once it
has been turned into plain Python containers (see :mod:`.checkpoint`). Where each key lives:

- ``cfg.model.*``: ``encoder_backbone``, ``feature_map_type``, ``prediction_type``, ``embedding_dim``,
  ``num_layers``, ``num_heads``, ``view_embed_dim``, ``conv_dec``, ``use_pos_enc``, ``use_uv_enc``,
  ``use_plucker``, ``prior_input``, ``pred_disentangled``, ``pred_conf``, ``n_facial_components``,
  ``finetune_backbone``;
- ``cfg.n_views`` at the top level (the reference network reads ``self.cfg.n_views``). A ``cfg.model.n_views``
  is accepted as a fallback when the top-level key is absent, since both placements occur in configs of this
  family; the top level wins when both exist.

The registry holds ``uv`` and ``normals`` (published-like: DINO ViT-B/16 backbone and the ``base.yaml`` template
values for the head; the real values always come from the checkpoint) and ``tiny`` (timm's ``test_vit``
backbone and a one-layer head, for fast tests).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import CheckpointError

#: Prediction types this add-on can decode, with their channel counts.
PREDICTION_CHANNELS = {"uv_map": 2, "normals": 3}

#: Input side length the reference network is built for (its upsampler output sizes are hard-coded).
IMAGE_SIZE = 512
#: Token grid side the upsampler expects (512 / patch 16).
TOKEN_GRID = 32


@dataclass(frozen=True)
class NetworkCfg:
    """Architecture of one prior network (UV or normals), as stored in its checkpoint.

    Attributes
    ----------
    encoder_backbone : str
        timm model name of the ViT backbone, e.g. ``"vit_base_patch16_224.dino"``.
    prediction_type : str
        ``"uv_map"`` (2 output channels) or ``"normals"`` (3 output channels).
    embedding_dim : int
        Width ``E`` of the head transformer, upsampler and pixel head.
    num_layers, num_heads : int
        Head transformer depth and attention heads (``num_heads`` is not inferable from weight shapes).
    n_views : int
        Views the network was trained with; ``> 1`` adds the learned view embedding (concatenated to the
        backbone features; inference uses the first view's embedding).
    view_embed_dim : int
        Channels of the view embedding.
    feature_map_type : str
        Backbone family; only ``"DINO"`` (a timm ViT) is supported.
    conv_dec, use_pos_enc, use_uv_enc, use_plucker, prior_input, pred_disentangled, pred_conf : bool
        Optional modules and paths of the reference network.
    n_facial_components : int
        Number of learned FLAME-parameter tokens (0 for the pixel predictors).
    finetune_backbone : bool
        Training-time flag, kept for the record; it does not change inference.
    """

    encoder_backbone: str
    prediction_type: str
    embedding_dim: int = 256
    num_layers: int = 6
    num_heads: int = 8
    n_views: int = 2
    view_embed_dim: int = 16
    feature_map_type: str = "DINO"
    conv_dec: bool = True
    use_pos_enc: bool = False
    use_uv_enc: bool = False
    use_plucker: bool = False
    prior_input: bool = False
    pred_disentangled: bool = False
    pred_conf: bool = False
    n_facial_components: int = 0
    finetune_backbone: bool = False

    @property
    def output_channels(self) -> int:
        """Channels ``P`` of the main prediction (2 for UV, 3 for normals)."""
        return PREDICTION_CHANNELS[self.prediction_type]

    @property
    def prediction_dim(self) -> int:
        """Channels the pixel head produces: ``P``, doubled by ``pred_disentangled``."""
        return self.output_channels * (2 if self.pred_disentangled else 1)

    def check_supported(self) -> None:
        """Raise :class:`CheckpointError` when this configuration needs inputs or paths the add-on lacks."""
        if self.prediction_type not in PREDICTION_CHANNELS:
            raise CheckpointError(
                f"The checkpoint predicts '{self.prediction_type}', but only 'uv_map' and 'normals' networks are "
                "supported; use the published uv.ckpt or normals.ckpt."
            )
        if self.feature_map_type != "DINO":
            raise CheckpointError(
                f"The checkpoint uses a '{self.feature_map_type}' backbone, but only DINO (timm ViT) backbones are "
                "supported; use the published uv.ckpt or normals.ckpt."
            )
        unsupported = [name for name in ("use_uv_enc", "use_plucker", "prior_input") if getattr(self, name)]
        if unsupported or self.n_facial_components > 0 or not self.conv_dec:
            what = ", ".join(unsupported) or ("n_facial_components" if self.n_facial_components else "conv_dec=False")
            raise CheckpointError(
                f"The checkpoint was trained with {what}, which needs inputs this add-on cannot provide; use the "
                "published uv.ckpt or normals.ckpt."
            )
        if self.embedding_dim % self.num_heads:
            raise CheckpointError(
                f"The checkpoint configuration is inconsistent (embedding_dim {self.embedding_dim} is not divisible "
                f"by num_heads {self.num_heads}); download the checkpoint again."
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dictionary of all fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "NetworkCfg":
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`CheckpointError`."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise CheckpointError(
                f"The converted network file has unknown configuration keys {unknown}; convert the checkpoint again."
            )
        try:
            return cls(**dict(data))
        except TypeError as exc:
            raise CheckpointError(
                "The converted network file has an incomplete configuration; convert the checkpoint again."
            ) from exc

    @classmethod
    def from_lightning_cfg(cls, cfg: Mapping[str, Any]) -> "NetworkCfg":
        """Read the network configuration from a checkpoint's plain ``hyper_parameters["cfg"]``.

        Parameters
        ----------
        cfg : mapping
            The training configuration with a ``model`` section (see the module docstring for key placement).
            Keys the reference network treats as optional default to the values it assumes when absent.
        """
        model = cfg.get("model") if isinstance(cfg, Mapping) else None
        if not isinstance(model, Mapping):
            raise CheckpointError(
                "The checkpoint's configuration has no 'model' section, so it is not a Pixel3DMM network; use the "
                "published uv.ckpt or normals.ckpt."
            )
        n_views = cfg.get("n_views", model.get("n_views", 1))
        required = ("encoder_backbone", "prediction_type", "embedding_dim", "num_layers", "num_heads")
        missing = [key for key in required if model.get(key) is None]
        if missing:
            raise CheckpointError(
                f"The checkpoint's configuration lacks model.{missing[0]}, so the network cannot be rebuilt; "
                "download the checkpoint again."
            )
        prediction_type = model["prediction_type"]
        if isinstance(prediction_type, (list, tuple)):
            prediction_type = ",".join(str(p) for p in prediction_type)
        try:
            return cls(
                encoder_backbone=str(model["encoder_backbone"]),
                prediction_type=str(prediction_type),
                embedding_dim=int(model["embedding_dim"]),
                num_layers=int(model["num_layers"]),
                num_heads=int(model["num_heads"]),
                n_views=int(n_views),
                view_embed_dim=int(model.get("view_embed_dim", 16)),
                feature_map_type=str(model.get("feature_map_type", "DINO")),
                conv_dec=bool(model.get("conv_dec", True)),
                use_pos_enc=bool(model.get("use_pos_enc", False)),
                use_uv_enc=bool(model.get("use_uv_enc", False)),
                use_plucker=bool(model.get("use_plucker", False)),
                prior_input=bool(model.get("prior_input", False)),
                pred_disentangled=bool(model.get("pred_disentangled", False)),
                pred_conf=bool(model.get("pred_conf", False)),
                n_facial_components=int(model.get("n_facial_components", 0) or 0),
                finetune_backbone=bool(model.get("finetune_backbone", False)),
            )
        except (TypeError, ValueError) as exc:
            raise CheckpointError(
                "The checkpoint's network configuration has values of the wrong type; download the checkpoint again."
            ) from exc


_PUBLISHED_HEAD = dict(embedding_dim=256, num_layers=6, num_heads=8, n_views=2, view_embed_dim=16)

#: Named configurations: ``uv`` and ``normals`` mirror the published networks, ``tiny`` is for tests.
CONFIGS: dict[str, NetworkCfg] = {
    "uv": NetworkCfg(encoder_backbone="vit_base_patch16_224.dino", prediction_type="uv_map", **_PUBLISHED_HEAD),
    "normals": NetworkCfg(encoder_backbone="vit_base_patch16_224.dino", prediction_type="normals", **_PUBLISHED_HEAD),
    "tiny": NetworkCfg(
        encoder_backbone="test_vit", prediction_type="uv_map", embedding_dim=32, num_layers=1, num_heads=2,
        n_views=2, view_embed_dim=16,
    ),
}


def get_config(name: str, prediction_type: str | None = None) -> NetworkCfg:
    """Return the named configuration, optionally with another ``prediction_type``.

    Raises
    ------
    KeyError
        For an unknown name.
    """
    if name not in CONFIGS:
        raise KeyError(f"unknown network configuration {name!r}; choose one of {sorted(CONFIGS)}")
    cfg = CONFIGS[name]
    if prediction_type is not None:
        cfg = dataclasses.replace(cfg, prediction_type=prediction_type)
    return cfg
