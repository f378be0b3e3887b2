"""FLAME UV template: per-corner and per-vertex UVs, left/right mirror index, OBJ reading."""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import AssetInvalidError, AssetMissingError, TopologyMismatchError

log = logging.getLogger(__name__)

_MIRROR_CHUNK = 1024


@dataclass(frozen=True)
class UVTemplate:
    """A FLAME-topology mesh with texture coordinates.

    Attributes
    ----------
    vertices : (V, 3) float64 template positions (metres).
    faces : (F, 3) int64 triangle vertex indices.
    uv : (T, 2) float64 texture coordinates ``vt`` in OBJ/Blender convention (u right, v up), T >= V (seams).
    uv_faces : (F, 3) int64 index into ``uv`` of each triangle corner.
    vertex_uv : (V, 2) float64 per-vertex UV in the network convention ``(u, 1 - v)`` (the ``vt`` of the last
        corner that uses the vertex, in face order; Pixel3DMM's ``flame_uv_coords.npy`` is built this way).
    mirror_index : (V,) int64 vertex nearest to each vertex reflected through x = 0.
    mirror_residual : largest distance (metres) between a reflected vertex and its mirror vertex.
    uv_mirror_axis : mean over vertices of ``(u + u[mirror_index]) / 2`` (real FLAME: about 0.4964).
    source : path or description.
    """

    vertices: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    uv_faces: np.ndarray
    vertex_uv: np.ndarray
    mirror_index: np.ndarray
    mirror_residual: float
    uv_mirror_axis: float
    source: str

    @property
    def corner_uv(self) -> np.ndarray:
        """(F, 3, 2) UV of each triangle corner, OBJ/Blender convention (u, v)."""
        return self.uv[self.uv_faces]

    @classmethod
    def from_arrays(
        cls, vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray, uv_faces: np.ndarray, source: str
    ) -> UVTemplate:
        """Derive per-vertex UVs and the mirror index from mesh arrays.

        Parameters
        ----------
        vertices : (V, 3). faces : (F, 3). uv : (T, 2) OBJ convention. uv_faces : (F, 3).
        source : path or description used in messages.
        """
        vertices = np.asarray(vertices, dtype=np.float64)
        faces = np.asarray(faces, dtype=np.int64)
        uv = np.asarray(uv, dtype=np.float64)
        uv_faces = np.asarray(uv_faces, dtype=np.int64)
        v = vertices.shape[0]
        if faces.shape != uv_faces.shape or faces.ndim != 2 or faces.shape[1] != 3:
            raise AssetInvalidError(
                f"The UV template {source} needs texture coordinates on every triangle corner; "
                "export it again as a triangulated OBJ with UVs."
            )
        if faces.min() < 0 or faces.max() >= v or uv_faces.min() < 0 or uv_faces.max() >= uv.shape[0]:
            raise AssetInvalidError(
                f"The UV template {source} has faces that index missing vertices or UVs; export it again."
            )
        used = np.zeros(v, dtype=bool)
        used[faces.ravel()] = True
        if not used.all():
            raise AssetInvalidError(
                f"The UV template {source} has {int((~used).sum())} vertices without UVs; export it again."
            )
        # Last corner in face order wins: reverse, then take the first occurrence of each vertex.
        flat_v, flat_t = faces.ravel()[::-1], uv_faces.ravel()[::-1]
        _, first = np.unique(flat_v, return_index=True)
        per_vertex = uv[flat_t[first]]
        vertex_uv = np.stack((per_vertex[:, 0], 1.0 - per_vertex[:, 1]), axis=1)
        mirror_index, residual = mirror_vertex_index(vertices)
        axis = float(np.mean(0.5 * (vertex_uv[:, 0] + vertex_uv[mirror_index, 0])))
        return cls(vertices, faces, uv, uv_faces, vertex_uv, mirror_index, residual, axis, source)


def check_topology(uv_template: UVTemplate, faces, n_vertices: int) -> None:
    """Raise :class:`TopologyMismatchError` unless ``uv_template`` has the FLAME model's triangles and vertex count.

    Parameters
    ----------
    uv_template : the UV template
    faces : (F, 3) integer triangles of the FLAME model (numpy array or tensor)
    n_vertices : V of the FLAME model
    """
    faces = np.asarray(faces.cpu() if hasattr(faces, "cpu") else faces)
    if uv_template.vertex_uv.shape[0] != n_vertices or not np.array_equal(uv_template.faces, faces):
        raise TopologyMismatchError(
            f"The UV template {Path(uv_template.source).name} does not match the FLAME model's mesh "
            f"({uv_template.vertex_uv.shape[0]} vertices and {len(uv_template.faces)} triangles against {n_vertices} "
            f"and {len(faces)}); choose the head_template.obj that belongs to this FLAME release."
        )


def mirror_vertex_index(vertices: np.ndarray) -> tuple[np.ndarray, float]:
    """Nearest vertex to each vertex reflected through the plane x = 0.

    Parameters
    ----------
    vertices : (V, 3).

    Returns
    -------
    index : (V,) int64. residual : largest distance from a reflected vertex to its match (metres).
    """
    pts = np.asarray(vertices, dtype=np.float64)
    reflected = pts * np.array([-1.0, 1.0, 1.0])
    sq = (pts * pts).sum(1)
    index = np.empty(len(pts), dtype=np.int64)
    best = np.empty(len(pts))
    for start in range(0, len(pts), _MIRROR_CHUNK):
        q = reflected[start : start + _MIRROR_CHUNK]
        idx = (sq[None, :] - 2.0 * (q @ pts.T)).argmin(1)  # |q - p|^2 minus the constant |q|^2
        index[start : start + len(q)] = idx
        best[start : start + len(q)] = np.linalg.norm(q - pts[idx], axis=1)
    return index, float(best.max(initial=0.0))


#: OBJ names looked for inside a zip (the FLAME texture-space download or a zip of the Pixel3DMM repository,
#: whose ``assets/`` folder holds ``head_template.obj``), in the order of preference.
ZIP_MEMBERS = ("head_template.obj", "head_template_mesh.obj")
_MAX_OBJ_BYTES = 64 << 20  # head_template.obj is 0.56 MB


def _zip_member(path: Path) -> str:
    """The UV template OBJ inside the zip ``path`` (shallowest, preferring ``assets/``), or a one-sentence error."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if not n.startswith("__MACOSX/")]
    except (zipfile.BadZipFile, OSError) as exc:
        raise AssetInvalidError(f"The UV template zip {path} is damaged or incomplete; download it again.") from exc
    for wanted in ZIP_MEMBERS:
        found = [n for n in names if n.rsplit("/", 1)[-1].lower() == wanted]
        if found:
            return min(found, key=lambda n: ("/assets/" not in f"/{n}", n.count("/"), n))
    raise AssetInvalidError(
        f"The zip {path.name} holds no head_template.obj; choose the FLAME texture-space download or the Pixel3DMM "
        "repository's assets/head_template.obj."
    )


def _read_text(path: Path) -> tuple[str, str]:
    """The OBJ text of ``path`` (a file, or the template inside a zip) and the name to use in messages."""
    with path.open("rb") as f:
        zipped = f.read(4) == b"PK\x03\x04"
    label = str(path)
    try:
        if zipped:
            member = _zip_member(path)
            label = f"{path}/{member}"
            with zipfile.ZipFile(path) as zf:
                info = zf.getinfo(member)
                if info.file_size > _MAX_OBJ_BYTES:
                    raise AssetInvalidError(f"The UV template {label} is far larger than head_template.obj; "
                                            "choose head_template.obj.")
                raw = zf.read(info)
        else:
            raw = path.read_bytes()
        return raw.decode("utf-8", errors="strict"), label
    except UnicodeDecodeError as exc:
        raise AssetInvalidError(f"The UV template {label} is not a text OBJ file; choose head_template.obj.") from exc
    except (zipfile.BadZipFile, OSError) as exc:
        raise AssetInvalidError(f"The UV template zip {path} is damaged or incomplete; download it again.") from exc


def load_uv_template(path: str | Path) -> UVTemplate:
    """Read a FLAME UV template OBJ (``head_template.obj``: ``v``, ``vt`` and ``f v/vt`` triangles).

    ``path`` may also be a zip holding it (see :data:`ZIP_MEMBERS`); it is read without extracting anything.

    Raises
    ------
    AssetMissingError : the file does not exist.
    AssetInvalidError : not a triangulated OBJ with UVs, or a zip without one.
    """
    path = Path(path)
    if not path.is_file():
        raise AssetMissingError(f"The UV template {path} does not exist; choose the FLAME head_template.obj.")
    text, label = _read_text(path)
    verts: list[list[float]] = []
    uvs: list[list[float]] = []
    tris: list[list[int]] = []
    uv_tris: list[list[int]] = []
    try:
        for line in text.splitlines():
            parts = line.split()
            if not parts:
                continue
            tag = parts[0]
            if tag == "v":
                verts.append([float(x) for x in parts[1:4]])
            elif tag == "vt":
                uvs.append([float(x) for x in parts[1:3]])
            elif tag == "f":
                corners = [c.split("/") for c in parts[1:]]
                if len(corners) != 3 or any(len(c) < 2 or not c[1] for c in corners):
                    raise ValueError("face is not a triangle with UVs")
                tris.append([int(c[0]) for c in corners])
                uv_tris.append([int(c[1]) for c in corners])
    except (ValueError, IndexError) as exc:
        raise AssetInvalidError(
            f"The UV template {label} is not a triangulated OBJ with UVs ({exc}); choose head_template.obj."
        ) from exc
    if not verts or not uvs or not tris or any(len(x) != 3 for x in verts) or any(len(x) != 2 for x in uvs):
        raise AssetInvalidError(f"The UV template {label} lacks vertices, UVs or faces; choose head_template.obj.")
    faces = np.asarray(tris, dtype=np.int64)
    uv_faces = np.asarray(uv_tris, dtype=np.int64)
    # OBJ indices are 1-based; negative ones count from the end.
    faces = np.where(faces < 0, faces + len(verts), faces - 1)
    uv_faces = np.where(uv_faces < 0, uv_faces + len(uvs), uv_faces - 1)
    template = UVTemplate.from_arrays(np.asarray(verts), faces, np.asarray(uvs), uv_faces, label)
    log.info(
        "UV template %s: %d vertices, %d UVs, %d faces, mirror residual %.2e m, UV mirror axis %.4f",
        label, len(verts), len(uvs), len(tris), template.mirror_residual, template.uv_mirror_axis,
    )
    return template


def write_obj(path: str | Path, template: UVTemplate) -> Path:
    """Write a template as an OBJ with ``v``, ``vt`` and ``f v/vt`` lines (the layout of head_template.obj)."""
    path = Path(path)
    lines = ["# FLAME-layout UV template written by pixel3dmm core"]
    lines += [f"v {x:.8f} {y:.8f} {z:.8f}" for x, y, z in template.vertices]
    lines += [f"vt {u:.8f} {v:.8f}" for u, v in template.uv]
    lines += [
        f"f {a + 1}/{ta + 1} {b + 1}/{tb + 1} {c + 1}/{tc + 1}"
        for (a, b, c), (ta, tb, tc) in zip(template.faces.tolist(), template.uv_faces.tolist())
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
