"""Quantization: fake-quant / binary layers for training, and conversion to real int8 inference."""

from zippy.quant.layers import ActQuant, BinaryConv2d, QConv2d, set_fake_quant, sign_ste, weight_fake_quant

__all__ = ["ActQuant", "BinaryConv2d", "QConv2d", "set_fake_quant", "sign_ste", "weight_fake_quant"]
