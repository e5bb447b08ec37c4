"""Builds the optional C kernels ``sctrain.audio._cpu_kernels`` (all other metadata is in pyproject.toml).

``optional=True``: without a C compiler or Python headers the install still succeeds, and the front end uses
its PyTorch ops on the CPU too (``python -m sctrain.audio.cpu_kernels`` says which is in use).
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("sctrain.audio._cpu_kernels", ["sctrain/audio/csrc/cpu_kernels.c"],
                             extra_compile_args=["-O3"],
                             optional=True)])
