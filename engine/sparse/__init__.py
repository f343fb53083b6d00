"""CPU execution of unstructured-sparse layers, and the dense baselines they are measured against.

``engine.sparse.semi24`` (NVIDIA 2:4 sparse tensor cores) is imported on its own.
"""

from engine.sparse.csr import CSRWeight, spmm, spmm_feature_major
from engine.sparse.dense import OneDNNLinear, dense_linear_paths, densify_fast, fastest_dense_linear
from engine.sparse.modules import SparseConv2d, SparseLinear, sparsify_module

__all__ = [
    "CSRWeight",
    "OneDNNLinear",
    "SparseConv2d",
    "SparseLinear",
    "dense_linear_paths",
    "densify_fast",
    "fastest_dense_linear",
    "sparsify_module",
    "spmm",
    "spmm_feature_major",
]
