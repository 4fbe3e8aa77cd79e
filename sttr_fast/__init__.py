"""sttr_fast: the ST-TR skeleton action-recognition network with fused attention kernels."""
from . import ops
from .attention import SpatialSelfAttention, TemporalSelfAttention
from .checkpoint import convert_official_state_dict, load_official_checkpoint
from .graph import Graph, ntu_graph
from .model import STTR
from .ops import available_backends

__version__ = "0.1.0"

__all__ = ["STTR", "SpatialSelfAttention", "TemporalSelfAttention", "Graph", "ntu_graph", "ops",
           "available_backends", "convert_official_state_dict", "load_official_checkpoint"]
