"""Triton kernels of avfast, installed as ``avfast.kernels``.

Import these modules lazily from the op's triton backend: ``TRITON_INTERPRET`` must be set before the
first import for the kernels to run on CPU.
"""
