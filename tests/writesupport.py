"""The small mask and partition the write tests store: a 16 x 16 detector and its geometry."""

from __future__ import annotations

import numpy as np

from xpcs_io.schemas import GeometryMetadata, MaskSchema, PartitionSchema

SHAPE = (16, 16)


def geometry() -> GeometryMetadata:
    """The detector geometry of ``SHAPE``, beam centre in the middle."""
    return GeometryMetadata(
        bcx=8.0, bcy=8.0, det_dist=5000.0, lambda_=1.54, pix_dim=0.075, shape=SHAPE
    )


def mask(rows: int = 1, description: str | None = "one call") -> MaskSchema:
    """A mask whose first ``rows`` rows are valid (``rows * 16`` pixels)."""
    m = np.zeros(SHAPE, np.uint8)
    m[:rows] = 1
    return MaskSchema(mask=m, metadata=geometry(), description=description)


def partition(metadata: GeometryMetadata | None = None) -> PartitionSchema:
    """One q bin holding every pixel of ``SHAPE``, with ``metadata`` (default ``geometry()``)."""
    pmap = np.ones(SHAPE, np.uint8)
    return PartitionSchema(
        partition_map=pmap,
        num_pts=1,
        val_list=np.array([0.01]),
        num_list=np.array([pmap.size]),
        metadata=metadata or geometry(),
    )
