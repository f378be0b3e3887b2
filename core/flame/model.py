"""The FLAME layer: buffers only, one stateless forward (smplx "Layer" style; the fitter owns parameters)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import nn

from .data import FlameData
from .lbs import blend_shapes, lbs
from .rotation import as_rotation_matrix

_ROTATION_FIELDS = ("global_pose", "neck_pose", "jaw_pose", "eye_pose_left", "eye_pose_right")
_IDENTITY_6D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
#: The model's buffers, in registration order.
_BUFFERS = (
    "v_template", "dirs", "posedirs", "J_regressor", "j_template", "j_dirs", "lbs_weights", "eyelids", "faces", "parents",
)


#: FlameParams fields that may have batch 1 next to a batch of poses.
_COEFFICIENT_FIELDS = ("shape", "expression")


@dataclass
class FlameParams:
    """Inputs of :meth:`FlameModel.forward`. Any field may be None, meaning zeros or the identity rotation.

    Attributes
    ----------
    shape : (B, <=Ns) identity coefficients (missing trailing columns count as zero).
    expression : (B, <=Ne) expression coefficients.
    global_pose, neck_pose, jaw_pose, eye_pose_left, eye_pose_right : rotations of joints 0..4, each
        (B, 3) axis-angle, (B, 6) 6D (first two matrix columns) or (B, 3, 3) matrices.
    eyelids : (B, 2) left and right eyelid coefficients (needs a model with eyelid blendshapes).
    translation : (B, 3) added to vertices and joints after skinning.
    """

    shape: torch.Tensor | None = None
    expression: torch.Tensor | None = None
    global_pose: torch.Tensor | None = None
    neck_pose: torch.Tensor | None = None
    jaw_pose: torch.Tensor | None = None
    eye_pose_left: torch.Tensor | None = None
    eye_pose_right: torch.Tensor | None = None
    eyelids: torch.Tensor | None = None
    translation: torch.Tensor | None = None

    @property
    def batch_size(self) -> int | None:
        """B, the largest batch given (None when every field is None). Every field has batch B, except that
        ``shape`` and ``expression`` may have batch 1 (one identity and expression in B poses).

        Raises
        ------
        ValueError when the fields' batch sizes disagree otherwise.
        """
        sizes = {f.name: int(getattr(self, f.name).shape[0]) for f in fields(self) if getattr(self, f.name) is not None}
        if not sizes:
            return None
        batch = max(sizes.values())
        if any(b != batch and not (n in _COEFFICIENT_FIELDS and b == 1) for n, b in sizes.items()):
            raise ValueError(
                f"FLAME parameters must share one batch size (shape and expression may also have batch 1), got {sizes}."
            )
        return batch

    @classmethod
    def zeros(
        cls,
        batch: int,
        n_shape: int,
        n_expr: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        rotation: str = "axis_angle",
        eyelids: bool = False,
    ) -> FlameParams:
        """Neutral parameters as real tensors (zero coefficients, identity rotations, zero translation).

        Parameters
        ----------
        batch, n_shape, n_expr : sizes B, Ns, Ne.
        device, dtype : where the tensors live (defaults: torch's defaults).
        rotation : "axis_angle" -> (B, 3) zeros, "6d" -> (B, 6) identity, "matrix" -> (B, 3, 3) identity.
        eyelids : also create (B, 2) zero eyelid coefficients.
        """
        kw = {"device": device, "dtype": dtype}
        if rotation not in ("axis_angle", "6d", "matrix"):
            raise ValueError(f"Unknown rotation representation '{rotation}'; use axis_angle, 6d or matrix.")

        def identity() -> torch.Tensor:
            if rotation == "axis_angle":
                return torch.zeros(batch, 3, **kw)
            if rotation == "6d":
                return torch.tensor(_IDENTITY_6D, **kw).repeat(batch, 1)
            return torch.eye(3, **kw).repeat(batch, 1, 1)

        return cls(
            shape=torch.zeros(batch, n_shape, **kw),
            expression=torch.zeros(batch, n_expr, **kw),
            eyelids=torch.zeros(batch, 2, **kw) if eyelids else None,
            translation=torch.zeros(batch, 3, **kw),
            **{name: identity() for name in _ROTATION_FIELDS},
        )


@dataclass
class FlameOutput:
    """Result of :meth:`FlameModel.forward`.

    Attributes
    ----------
    vertices : (B, V, 3) posed vertices (after LBS, eyelids and translation).
    joints : (B, J, 3) posed joint locations.
    joint_transforms : (B, J, 4, 4) world transform of each joint frame (rotation = accumulated rotation,
        translation = posed joint location), translation included.
    vertices_shaped : (B, V, 3) template plus identity and expression offsets, unposed, no translation.
    """

    vertices: torch.Tensor
    joints: torch.Tensor
    joint_transforms: torch.Tensor
    vertices_shaped: torch.Tensor


class FlameModel(nn.Module):
    """FLAME as a module that holds only buffers (they follow ``.to(device, dtype)``).

    Buffers: ``v_template`` (V,3), ``dirs`` (V,3,Ns+Ne) identity then expression blendshapes, ``posedirs``
    (V,3,36), ``J_regressor`` (J,V) (None on a :meth:`restricted` copy), ``j_template`` (J,3) and ``j_dirs``
    (J,3,Ns+Ne) (the regressor applied to the template and the blendshapes: the joints without the vertices),
    ``lbs_weights`` (V,J), ``faces`` (F,3) int64, ``parents`` (J,) int64 and ``eyelids`` (2,V,3) or None. Joint
    order: 0 root, 1 neck, 2 jaw, 3 left eye, 4 right eye.
    """

    def __init__(
        self,
        data: FlameData,
        n_shape: int | None = None,
        n_expr: int | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.n_shape = data.n_shape if n_shape is None else int(n_shape)
        self.n_expr = data.n_expr if n_expr is None else int(n_expr)
        if not (0 <= self.n_shape <= data.n_shape and 0 <= self.n_expr <= data.n_expr):
            raise ValueError(
                f"The model has {data.n_shape} shape and {data.n_expr} expression components; "
                f"ask for at most that many (got {self.n_shape} and {self.n_expr})."
            )
        self.release = data.release
        self._parents = tuple(int(p) for p in data.parents)
        #: Indices of this model's vertices in the full model (None: this is the full model; see :meth:`restricted`).
        self.vertex_ids: torch.Tensor | None = None
        dtype = dtype or torch.get_default_dtype()
        dirs = np.concatenate((data.shapedirs[..., : self.n_shape], data.exprdirs[..., : self.n_expr]), axis=2)
        arrays = {
            "v_template": data.v_template, "dirs": dirs, "posedirs": data.posedirs, "J_regressor": data.J_regressor,
            "j_template": data.J_regressor @ data.v_template, "j_dirs": np.einsum("jv,vck->jck", data.J_regressor, dirs),
            "lbs_weights": data.weights, "eyelids": data.eyelids, "faces": data.faces, "parents": data.parents,
        }
        for name in _BUFFERS:
            array = arrays[name]
            as_dtype = torch.int64 if name in ("faces", "parents") else dtype
            tensor = None if array is None else torch.as_tensor(np.ascontiguousarray(array)).to(as_dtype)
            self.register_buffer(name, tensor, persistent=False)

    def _with_buffers(self, vertex_ids: torch.Tensor | None, **replaced: torch.Tensor) -> FlameModel:
        """A new model whose buffers are this one's, except the ones given (registered on it explicitly)."""
        new = FlameModel.__new__(FlameModel)
        nn.Module.__init__(new)
        new.n_shape, new.n_expr, new.release, new._parents = self.n_shape, self.n_expr, self.release, self._parents
        new.vertex_ids = vertex_ids
        for name in _BUFFERS:
            new.register_buffer(name, replaced[name] if name in replaced else getattr(self, name), persistent=False)
        return new

    def component_major(self) -> FlameModel:
        """The same model (sharing every other buffer) with the blendshape bases stored component-major.

        ``blend_shapes`` multiplies by ``dirs.reshape(V * 3, K).T``; with the bases laid out as contiguous (K, V * 3)
        rows that transpose is contiguous and the CPU GEMM of every forward and backward pass runs about 3x faster
        (what the fitter runs). The values (and the (V, 3, K) shapes) are unchanged.
        """
        def relaid(dirs: torch.Tensor) -> torch.Tensor:
            v, c, k = dirs.shape
            return dirs.reshape(v * c, k).T.contiguous().T.view(v, c, k)

        return self._with_buffers(self.vertex_ids, dirs=relaid(self.dirs), posedirs=relaid(self.posedirs))

    @property
    def shapedirs(self) -> torch.Tensor:
        """(V, 3, Ns) identity blendshapes (a view of ``dirs``)."""
        return self.dirs[..., : self.n_shape]

    @property
    def exprdirs(self) -> torch.Tensor:
        """(V, 3, Ne) expression blendshapes (a view of ``dirs``)."""
        return self.dirs[..., self.n_shape :]

    @property
    def has_eyelids(self) -> bool:
        """True when eyelid blendshapes are loaded."""
        return self.eyelids is not None

    def _coeffs(self, value: torch.Tensor | None, size: int, name: str, batch: int) -> torch.Tensor:
        ref = self.v_template
        if value is None:
            return ref.new_zeros(batch, size)
        if value.ndim != 2 or value.shape[1] > size:
            raise ValueError(
                f"'{name}' must have shape (B, <= {size}), got {tuple(value.shape)}; use fewer components."
            )
        return torch.nn.functional.pad(value, (0, size - value.shape[1]))

    def _shape_expression(self, params: FlameParams, default_batch: int = 1) -> torch.Tensor:
        """(B, Ns + Ne) identity then expression coefficients, zero-padded, in the column order of ``dirs``, B the
        larger of the two fields' batches (``default_batch`` when both are None; a field with batch 1 is repeated
        to B)."""
        given = [v.shape[0] for v in (params.shape, params.expression) if v is not None]
        batch = max(given, default=default_batch)
        parts = (
            self._coeffs(params.shape, self.n_shape, "shape", batch),
            self._coeffs(params.expression, self.n_expr, "expression", batch),
        )
        return torch.cat([c.expand(batch, -1) for c in parts], dim=1)

    def forward(self, params: FlameParams) -> FlameOutput:
        """Pose and shape the head.

        Parameters
        ----------
        params : :class:`FlameParams` with batch size B (B = 1 when every field is None). ``shape`` and
            ``expression`` may also have batch 1 while the other fields have B: one identity and expression in
            several poses, whose blendshapes are then formed once.

        Returns
        -------
        :class:`FlameOutput` with vertices (B,V,3), joints (B,J,3), joint_transforms (B,J,4,4) and
        vertices_shaped (B,V,3), or (1,V,3) when the coefficients have batch 1.
        """
        batch = params.batch_size or 1
        coeffs = self._shape_expression(params, batch)
        eye = torch.eye(3, dtype=coeffs.dtype, device=coeffs.device).expand(batch, 3, 3)
        rot_mats = torch.stack(
            [
                eye if getattr(params, name) is None else as_rotation_matrix(getattr(params, name))
                for name in _ROTATION_FIELDS
            ],
            dim=1,
        )
        vertices, joints, world, v_shaped = lbs(
            coeffs,
            rot_mats,
            self.v_template,
            self.dirs,
            self.posedirs,
            self.j_template,
            self.j_dirs,
            self._parents,
            self.lbs_weights,
        )
        if params.eyelids is not None:
            if self.eyelids is None:
                raise ValueError("This FLAME model has no eyelid blendshapes; pass eyelids=None.")
            vertices = vertices + blend_shapes(params.eyelids, self.eyelids.permute(1, 2, 0))
        if params.translation is not None:
            t = params.translation
            vertices = vertices + t[:, None]
            joints = joints + t[:, None]
            shift = torch.zeros_like(world)
            shift[..., :3, 3] = t[:, None]
            world = world + shift
        return FlameOutput(vertices=vertices, joints=joints, joint_transforms=world, vertices_shaped=v_shaped)

    def neutral(self, shape: torch.Tensor | None = None) -> torch.Tensor:
        """Identity-only head: zero expression, zero pose, no translation.

        Parameters
        ----------
        shape : (B, <=Ns) identity coefficients, or None for the template.

        Returns
        -------
        (B, V, 3) vertices (B = 1 when ``shape`` is None).
        """
        if shape is None:
            return self.v_template[None]
        coeffs = self._coeffs(shape, self.n_shape, "shape", shape.shape[0])
        return self.v_template + blend_shapes(coeffs, self.shapedirs)

    def shaped(self, params: FlameParams) -> torch.Tensor:
        """(B, V, 3) template plus identity and expression offsets: ``forward(params).vertices_shaped`` without
        the pose (and at a fraction of its cost)."""
        coeffs = self._shape_expression(params)
        return self.v_template + blend_shapes(coeffs, self.dirs)

    def restricted(self, vertex_ids: torch.Tensor) -> FlameModel:
        """A copy that evaluates only some vertices, exactly as the full model does.

        The copy keeps the given vertices, in increasing order, listed in its ``vertex_ids``; its ``faces`` are the
        triangles whose corners it all keeps, renumbered. Its joints are exact without the other vertices: they come
        from ``j_template`` and ``j_dirs`` (shared); it has no ``J_regressor``. The vertex buffers are slices
        (copies) of this model's.

        Parameters
        ----------
        vertex_ids : (n,) integer tensor of vertex indices (any order, repeats allowed)

        Returns
        -------
        FlameModel whose ``forward(params).vertices[:, i]`` equals this model's ``vertices[:, vertex_ids[i]]``
        for the copy's own ``vertex_ids``.
        """
        n_vert = self.v_template.shape[0]
        ids = torch.as_tensor(vertex_ids, device=self.v_template.device).long().reshape(-1)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n_vert):
            raise ValueError(f"vertex_ids must lie in [0, {n_vert}).")
        ids = torch.unique(ids)
        local = torch.full((n_vert,), -1, dtype=torch.long, device=ids.device)
        local[ids] = torch.arange(ids.numel(), device=ids.device)
        kept = (local[self.faces] >= 0).all(1)
        replaced = {name: getattr(self, name).index_select(0, ids) for name in ("v_template", "dirs", "posedirs", "lbs_weights")}
        replaced["J_regressor"] = None
        if self.eyelids is not None:
            replaced["eyelids"] = self.eyelids.index_select(1, ids)
        replaced["faces"] = local[self.faces[kept]]
        return self._with_buffers(ids, **replaced)
