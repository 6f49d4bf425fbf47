"""The in-memory image: a channels-first array plus its geometry.

Geometry convention (documented once, used everywhere)
-----------------------------------------------------
* ``array`` is channels first: ``(C, Y, X)`` for 2D, ``(C, Z, Y, X)`` for 3D. Axis order after the channel axis
  is the reverse of the physical ``(x, y, z)`` index order, exactly as ``SimpleITK.GetArrayFromImage`` gives.
* ``spacing``, ``origin`` and ``direction`` follow ITK/DICOM: physical (x, y[, z]) order, in millimetres, in the
  patient **LPS** frame (x grows to the patient's Left, y to Posterior, z to Superior). ``direction`` is the
  row-major ``dim x dim`` matrix whose column ``i`` is the world direction of index axis ``i``.
* NIfTI stores RAS; :mod:`medseg.io.nifti` flips x and y on the way in and out, so a NIfTI read and written back
  keeps its affine, and a DICOM series and the NIfTI converted from it compare equal here.
* 2D raster images (PNG, JPEG, TIFF) have no geometry of their own: spacing 1, origin 0, identity direction,
  unless the TIFF says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Image:
    """A channels-first array with its physical geometry (see the module docstring for conventions)."""

    array: np.ndarray
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        self.direction = tuple(float(d) for d in self.direction)
        dim = self.ndim
        if self.array.ndim != dim + 1:
            raise ValueError(f"array has shape {self.array.shape}; expected channels first plus {dim} axes")
        if len(self.origin) != dim or len(self.direction) != dim * dim:
            raise ValueError("spacing, origin and direction disagree on the number of dimensions")

    @classmethod
    def from_array(
        cls,
        array: np.ndarray,
        spacing: tuple[float, ...] | None = None,
        origin: tuple[float, ...] | None = None,
        direction: tuple[float, ...] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Image:
        """Wrap a channels-first array, with identity geometry where none is given."""
        dim = array.ndim - 1
        return cls(
            array=array,
            spacing=spacing if spacing is not None else (1.0,) * dim,
            origin=origin if origin is not None else (0.0,) * dim,
            direction=direction if direction is not None else tuple(np.eye(dim).ravel()),
            meta=dict(meta or {}),
        )

    @property
    def ndim(self) -> int:
        """Spatial dimensions (2 or 3)."""
        return len(self.spacing)

    @property
    def channels(self) -> int:
        return int(self.array.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape in array order (``(Y, X)`` or ``(Z, Y, X)``)."""
        return tuple(int(s) for s in self.array.shape[1:])

    @property
    def spacing_zyx(self) -> tuple[float, ...]:
        """Spacing in array-axis order, matching :attr:`shape`."""
        return tuple(reversed(self.spacing))

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64).reshape(self.ndim, self.ndim)

    def index_to_world(self) -> np.ndarray:
        """The ``(dim+1)x(dim+1)`` LPS affine from (x, y[, z]) voxel index to world millimetres."""
        dim = self.ndim
        affine = np.eye(dim + 1)
        affine[:dim, :dim] = self.direction_matrix * np.asarray(self.spacing)[None, :]
        affine[:dim, dim] = self.origin
        return affine

    def voxel_to_physical(self, index: np.ndarray | tuple[float, ...] | list[float]) -> np.ndarray:
        """Physical points (x, y[, z], LPS mm) of voxel indices given in array order (``(z,) y, x``).

        ``index`` has shape ``(dim,)`` or ``(n, dim)`` and may be fractional (a centroid); the voxel centre of
        index 0 lies at ``origin``.
        """
        points = np.asarray(index, dtype=np.float64)[..., ::-1]  # array order -> (x, y, z) index order
        affine = self.index_to_world()
        return points @ affine[:-1, :-1].T + affine[:-1, -1]

    def same_geometry(self, other: Image, atol: float = 1e-3) -> bool:
        """True when both images lie on the same voxel grid (shape, spacing, origin, direction)."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, rtol=1e-4, atol=atol)
            and np.allclose(self.origin, other.origin, rtol=1e-4, atol=atol)
            and np.allclose(self.direction, other.direction, atol=1e-4)
        )

    def geometry_difference(self, other: Image, atol: float = 1e-3) -> str | None:
        """A short human description of how the grids differ, or None when they match."""
        if self.shape != other.shape:
            return f"shape {fmt_shape(self.shape)} vs {fmt_shape(other.shape)}"
        if not np.allclose(self.spacing, other.spacing, rtol=1e-4, atol=atol):
            return f"spacing {fmt_tuple(self.spacing)} vs {fmt_tuple(other.spacing)}"
        if not np.allclose(self.origin, other.origin, rtol=1e-4, atol=atol):
            return f"origin {fmt_tuple(self.origin)} vs {fmt_tuple(other.origin)}"
        if not np.allclose(self.direction, other.direction, atol=1e-4):
            return "direction differs"
        return None

    def with_array(self, array: np.ndarray) -> Image:
        """Same geometry and metadata, new channels-first array (e.g. a label map for this scan)."""
        return Image(array, self.spacing, self.origin, self.direction, dict(self.meta))


def fmt_shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def fmt_tuple(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
