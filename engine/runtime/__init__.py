"""Running pruned layers fast on this machine: sparse kernels, dense paths, execution helpers.

csr (our Numba CSR kernels), modules (drop-in SparseLinear/SparseConv2d; kernels plug in by name
in ``KERNELS``), dense (oneDNN and the fastest dense path), semi24 (NVIDIA 2:4; imported on its
own), execution (threads, layer inputs, forward passes).
"""

from engine.runtime.csr import CSRWeight, spmm, spmm_feature_major
from engine.runtime.dense import OneDNNLinear, dense_linear_paths, densify_fast, fastest_dense_linear
from engine.runtime.modules import KERNELS, SparseConv2d, SparseLinear, sparse_module, sparsify_module

__all__ = [
    "CSRWeight",
    "KERNELS",
    "OneDNNLinear",
    "SparseConv2d",
    "SparseLinear",
    "dense_linear_paths",
    "densify_fast",
    "fastest_dense_linear",
    "sparse_module",
    "sparsify_module",
    "spmm",
    "spmm_feature_major",
]
