"""CUDA-backed ops. Each op is one public function (its math in the docstring), ``<op>_reference`` in plain
PyTorch (the spec and the CPU path) and a Triton kernel used for CUDA tensors when Triton is importable."""

from mmzoo.ops.maxsim import HAS_TRITON, token_max_sim, token_max_sim_reference

__all__ = ["HAS_TRITON", "token_max_sim", "token_max_sim_reference"]
