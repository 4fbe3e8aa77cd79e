"""Skeleton graphs and the ST-GCN "spatial" partitioning of their adjacency."""
from __future__ import annotations

from dataclasses import dataclass

import torch

# NTU RGB+D inward edges (child -> parent, towards the spine joint 21), 1-based as in the dataset.
NTU_INWARD_EDGES_1BASED = (
    (1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9),
    (11, 10), (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18),
    (20, 19), (22, 23), (23, 8), (24, 25), (25, 12),
)


@dataclass(frozen=True)
class Graph:
    """A skeleton: ``num_joints`` joints and inward edges ``(i, j)`` (0-based, i points towards j)."""

    num_joints: int
    inward_edges: tuple[tuple[int, int], ...]

    def __post_init__(self):
        if self.num_joints < 1:
            raise ValueError(f"Graph needs at least one joint, got num_joints={self.num_joints}")
        for edge in self.inward_edges:
            if len(edge) != 2 or not all(0 <= j < self.num_joints for j in edge):
                raise ValueError(
                    f"Graph edge {edge} is not a pair of 0-based joint indices in [0, {self.num_joints})"
                )
        object.__setattr__(self, "inward_edges", tuple(tuple(e) for e in self.inward_edges))

    def spatial_adjacency(self) -> torch.Tensor:
        """The (3, V, V) stack [I, norm(E_in), norm(E_out)] of ST-GCN's spatial partitioning."""
        v = self.num_joints
        inward = torch.zeros(v, v, dtype=torch.float64)
        for i, j in self.inward_edges:
            inward[j, i] = 1.0
        outward = inward.t()
        return torch.stack([torch.eye(v, dtype=torch.float64), _normalise_columns(inward),
                            _normalise_columns(outward)]).float()


def _normalise_columns(edges: torch.Tensor) -> torch.Tensor:
    """E·diag(1/colsum), leaving empty columns zero."""
    colsum = edges.sum(0)
    return edges * torch.where(colsum > 0, colsum.reciprocal(), torch.zeros_like(colsum))


def ntu_graph() -> Graph:
    """The 25-joint NTU RGB+D skeleton."""
    return Graph(25, tuple((i - 1, j - 1) for i, j in NTU_INWARD_EDGES_1BASED))
