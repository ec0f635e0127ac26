"""CUDA-backed ops. Each op is one public function (its math in the docstring), ``<op>_reference`` in plain
PyTorch (the spec and the CPU path) and a Triton kernel, used on CUDA where it was measured to be faster."""

from mmzoo.ops.maxsim import HAS_TRITON, token_max_sim, token_max_sim_reference, triton_pays_off

__all__ = ["HAS_TRITON", "token_max_sim", "token_max_sim_reference", "triton_pays_off"]
