"""ONNX export and the onnxruntime engine: the portable fallback of the int8 engine.

Two graphs, both taking ``image`` float [B, 3, H, W] in [0, 1] (H, W multiples of 8, any size) and
returning ``score`` [B, 1, H/8, W/8], ``coords`` [B, 2, H/8, W/8] and ``desc`` [B, D, H/4, W/4]
(float32, the :class:`~zippy.models.KeypointNet` contract):

* **fp32** (:func:`export_fp32`): the fake-quantized network itself, exported by torch's TorchScript
  ONNX exporter (``torch.onnx.export(..., dynamo=False)``, opset 17; the dynamo exporter needs the
  onnxscript package). Fake quantization of activations becomes QuantizeLinear / DequantizeLinear
  pairs; weights are stored already fake-quantized (8-bit) or as +-1 (binary). Works for every backbone.
* **int8** (:func:`export_int8`): written node by node from :func:`zippy.quant.int8.convert`, so it
  holds exactly the integer weights, trained grids and tables of the int8 engine, and computes what it
  computes: every 8-bit conv as ``ConvInteger`` (exact int32 accumulators), then the float32 tail of
  :mod:`zippy.quant.exact` (multiply, add, activation, the consumer's quantizer: clip, divide, round
  half to even) where the chain feeds the binary layers, or the folded scale and bias elsewhere; binary
  convs as ``QLinearConv`` / ``ConvInteger`` on b = (x < 0) with +-1 weights; the binary branches and
  grid changes as table lookups (``Gather``). Exact on every CPU by construction: each 8-bit conv reads
  its uint8 inputs as two halves <= 128 (``a = s >> 1``, ``b = s - a``, see
  :class:`zippy.quant.int8.Int8Conv`), so kernels that add u8 x s8 products in pairs with int16 saturation
  (x86 without VNNI: ONNX Runtime's MLAS U8S8 kernels, like oneDNN's) still give the exact integers.
  Zippypoint only.

:class:`OnnxNet` runs either graph with onnxruntime as a drop-in for the torch network.
"""

from __future__ import annotations

import copy
import io
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

__all__ = ["OPSET", "OnnxNet", "export_fp32", "export_int8", "onnx_bytes"]

OPSET = 17
IR_VERSION = 9  # onnxruntime 1.17+ reads it
INPUT = "image"
OUTPUTS = ("score", "coords", "desc")


# ------------------------------------------------------------------------------------------------ fp32


def _export_ready(model: nn.Module) -> nn.Module:
    """A copy whose weights are stored as the fake-quantized network uses them (same outputs)."""
    from zippy.quant.exact import IntegerConvChain
    from zippy.quant.layers import BinaryConv2d, QConv2d, weight_fake_quant

    m = copy.deepcopy(model).eval()
    # the integer-exact chains (stem, pools, shortcut) stay exact: their integer weights become constants
    chain_convs = {id(c[0]) for c in m.modules() if isinstance(c, IntegerConvChain)}
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, QConv2d) and mod.quant_enabled and id(mod) not in chain_convs:
                mod.weight.copy_(weight_fake_quant(mod.weight, mod.bits))
                mod.quant_enabled = False  # per-channel [-127, 127] fake quant has no ONNX form
            elif isinstance(mod, BinaryConv2d):
                mod.weight.copy_(torch.where(mod.weight >= 0, 1.0, -1.0))
    return m


def _fp32_bytes(model: nn.Module, example_hw: tuple[int, int] = (64, 96)) -> bytes:
    m = _export_ready(model)
    x = torch.rand(1, 3, *example_hw)
    dyn = {INPUT: {0: "batch", 2: "height", 3: "width"}}
    dyn.update({k: {0: "batch", 2: f"{k}_h", 3: f"{k}_w"} for k in OUTPUTS})
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # the TorchScript exporter warns that it is legacy and that traced Python bools become constants
        # (the fake quantizers' enabled / initialized flags: constants by design here)
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _DictToTuple(m),
            (x,),
            buf,
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT],
            output_names=list(OUTPUTS),
            dynamic_axes=dyn,
        )
    return buf.getvalue()


class _DictToTuple(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.net(x)
        return tuple(out[k] for k in OUTPUTS)


def export_fp32(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write the fp32 ONNX graph of ``model`` (any backbone) to ``path`` (atomic)."""
    return _write(path, _fp32_bytes(model))


# ------------------------------------------------------------------------------------------------ int8


class _Graph:
    """A small helper to write an ONNX graph node by node."""

    def __init__(self):
        from onnx import TensorProto, helper, numpy_helper

        self.helper, self.numpy_helper, self.TP = helper, numpy_helper, TensorProto
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._n = 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def const(self, value: np.ndarray, hint: str = "c") -> str:
        name = self.name(hint)
        self.inits.append(self.numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], hint: str | None = None, **attrs: Any) -> str:
        out = self.name(hint or op.lower())
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def quant(self, x: str, grid: Any) -> str:
        s, z = self.const(np.float32(grid.scale), "scale"), self.const(np.uint8(grid.zero_point), "zp")
        return self.node("QuantizeLinear", [x, s, z])

    def dequant(self, q: str, grid: Any) -> str:
        s, z = self.const(np.float32(grid.scale), "scale"), self.const(np.uint8(grid.zero_point), "zp")
        return self.node("DequantizeLinear", [q, s, z])

    def regrid(self, q: str, g_in: Any, g_out: Any) -> str:
        return q if g_in == g_out else self.quant(self.dequant(q, g_in), g_out)

    def channel(self, v: torch.Tensor | np.ndarray, hint: str) -> str:
        return self.const(np.asarray(v, np.float32).reshape(1, -1, 1, 1), hint)

    def channel_int(self, v: torch.Tensor | np.ndarray, hint: str = "ci") -> str:
        return self.const(np.round(np.asarray(v, np.float64)).astype(np.int32).reshape(1, -1, 1, 1), hint)


def _f32(g: _Graph, v: float, hint: str = "f") -> str:
    return g.const(np.float32(v), hint)


def _conv_integer(g: _Graph, q: str, n: torch.Tensor, zp: int, pad: int) -> str:
    """float32 [B, O, H, W] = sum((q - zp) * n), exact: a float ``Conv`` of the integers q - zp (uint8 q) with
    the integer weights n int8 [O, I, k, k]. In the chains that feed the binary layers every product and
    partial sum is an integer below 2^24 (:func:`zippy.quant.exact.accumulator_bound`, checked when the int8
    network is built), so float32 holds it exactly in any summation order, on every kernel; in the heads a
    sum beyond 2^24 could round at float32 precision, as the model's own float heads do. Zero padding is the
    real zero, as the model's. (ONNX Runtime's ``ConvInteger`` is exact
    too, with the inputs split in halves <= 128 for the x86 kernels without VNNI, but ran 10x slower here.)
    The ``Round`` after it is a no-op that keeps the optimizer from folding the next multiply into the weights.
    """
    x = g.node("Sub", [g.node("Cast", [q], to=g.TP.FLOAT), _f32(g, zp, "zp")])
    w = g.const(n.float().numpy(), "w")
    return g.node("Round", [g.node("Conv", [x, w], pads=[pad] * 4)])


def _affine_act(g: _Graph, acc: str, m: Any, b: Any, act: str) -> str:
    """float32 ``act(acc * m + b)`` of an exact float32 accumulator with per-channel m, b, operation by operation as
    :func:`zippy.quant.exact.tail_reference` (a multiply then an add, never fused; hard-swish written out)."""
    v = g.node("Add", [g.node("Mul", [acc, g.channel(m, "m")]), g.channel(b, "b")])
    if act == "relu":
        return g.node("Relu", [v])
    if act == "hardswish":
        c = g.node("Clip", [g.node("Add", [v, _f32(g, 3.0)]), _f32(g, 0.0), _f32(g, 6.0)])
        return g.node("Div", [g.node("Mul", [v, c]), _f32(g, 6.0)])
    if act != "none":
        raise ValueError(f"unsupported activation {act!r}")
    return v


def _quantize(g: _Graph, v: str, grid: Any) -> str:
    """float32 -> uint8 on ``grid`` as the model's fake quantizer rounds: clip to the grid's range, divide by the
    float32 scale, round half to even, add the zero point (:func:`zippy.quant.exact.quantize_tail`)."""
    s, zp = grid.scale, grid.zero_point
    v = g.node("Clip", [v, _f32(g, (0 - zp) * s, "lo"), _f32(g, (255 - zp) * s, "hi")])
    v = g.node("Add", [g.node("Round", [g.node("Div", [v, _f32(g, s, "scale")])]), _f32(g, zp, "zp")])
    return g.node("Cast", [v], to=g.TP.UINT8)


def _exact_chain(g: _Graph, q: str, chain: Any) -> str:
    """An :class:`~zippy.quant.int8.ExactConv` / :class:`~zippy.quant.int8.ExactStem` (dense): uint8 on its
    output grid, the same integers and float32 steps, so the same bits."""
    from zippy.quant.int8 import ExactStem

    if isinstance(chain, ExactStem):
        c = chain.out_channels
        n, m, b, pad = chain.n, chain.m[:c], chain.b[:c], 1
    else:
        n, m, b, pad = chain.acc.weight_int8, chain.m, chain.b, chain.acc.padding[0]
    acc = _conv_integer(g, q, n, chain.grid_in.zero_point, pad)
    return _quantize(g, _affine_act(g, acc, m, b, chain.act), chain.grid_out)


def _int8_conv(g: _Graph, q: str, conv: Any) -> str:
    """An :class:`~zippy.quant.int8.Int8Conv` (folded BatchNorm): ``act(s_in * s_w * acc + bias)``, float32, or
    uint8 on its output grid."""
    m = conv.grid_in.scale * conv.w_scale64.numpy()
    b = conv.bias64.numpy() if conv.bias64 is not None else np.zeros(conv.out_channels)
    acc = _conv_integer(g, q, conv.weight_int8, conv.grid_in.zero_point, conv.padding[0])
    v = _affine_act(g, acc, m, b, conv.act)
    return v if conv.grid_out is None else _quantize(g, v, conv.grid_out)


def _lut(g: _Graph, q: str, table: np.ndarray, channels: int | None = None) -> str:
    """uint8 q -> table[q] (one table), or table[c, q] per channel (table [C, K])."""
    idx = g.node("Cast", [q], to=g.TP.INT32)
    if channels is not None:
        k = table.shape[1]
        offsets = (np.arange(channels, dtype=np.int32) * k).reshape(1, -1, 1, 1)
        idx = g.node("Add", [idx, g.const(offsets, "off")])
    return g.node("Gather", [g.const(np.ascontiguousarray(table).reshape(-1).astype(np.uint8), "lut"), idx])


def _regrid(g: _Graph, q: str, regrid: Any) -> str:
    return q if regrid.identity else _lut(g, q, regrid.lut.reshape(-1))


def _binary_residual(g: _Graph, x: str, block: Any) -> str:
    res_zp = block.grid_res.zero_point
    conv = block.conv
    b = g.node("Cast", [g.node("Less", [x, g.const(np.uint8(res_zp), "zp")])], to=g.TP.UINT8)
    if block.clamp_uint8:
        # weights -s with scale 2 == weights -2s with scale 1: the bias sum(s) is then an exact int32,
        # and the uint8 output with scale 1 is clamp(y, 0, 255), exactly as the int8 engine's
        one, zero = g.const(np.float32(1.0), "one"), g.const(np.uint8(0), "zp")
        w = g.const((2 * conv.weight_int8.to(torch.int16)).to(torch.int8).numpy(), "wbin")
        y = g.node(
            "QLinearConv",
            [
                b,
                one,
                zero,
                w,
                g.const(np.ones(conv.out_channels, np.float32), "ws"),
                g.const(np.zeros(conv.out_channels, np.int8), "wzp"),
                one,
                zero,
                g.const(np.round(conv.bias.numpy()).astype(np.int32), "bias"),
            ],
            pads=[conv.padding[0]] * 4,
        )
        r = _lut(g, y, block.h_lut, conv.out_channels)
    else:  # ranges above 255: y as a float conv of b in {0, 1} (small integers: exact), then the tables
        w = g.const((2 * conv.weight_int8.float()).numpy(), "wbin")  # -2s, bias sum(s) (see binary_conv)
        y = g.node("Conv", [g.node("Cast", [b], to=g.TP.FLOAT), w, g.const(conv.bias.numpy(), "bias")], pads=[1] * 4)
        k = block.h_lut.shape[1]
        y = g.node("Cast", [g.node("Clip", [y, _f32(g, 0.0, "lo"), _f32(g, k - 1, "hi")])], to=g.TP.INT32)
        offsets = (np.arange(conv.out_channels, dtype=np.int32) * k).reshape(1, -1, 1, 1)
        table = block.h_lut.reshape(-1).astype(np.uint8)
        r = g.node("Gather", [g.const(table, "lut"), g.node("Add", [y, g.const(offsets, "off")])])
    s = x if block.shortcut is None else _exact_chain(g, _regrid(g, x, block.shortcut[0]), block.shortcut[1])
    t = g.node("Add", [g.node("Cast", [s], to=g.TP.INT32), g.node("Cast", [r], to=g.TP.INT32)])
    t = g.node("Sub", [t, g.const(np.int32(res_zp), "zp")])
    t = g.node("Clip", [t, g.const(np.int32(0), "lo"), g.const(np.int32(255), "hi")])
    return g.node("Cast", [t], to=g.TP.UINT8)


def _float_conv(g: _Graph, x: str, fc: Any) -> str:
    o = fc.out_channels
    w = fc.taps.view(-1, 3, 3, o).permute(3, 0, 1, 2).contiguous()  # back to [O, C, 3, 3]
    b = np.asarray(fc.bias, np.float32)
    return g.node("Conv", [x, g.const(w.numpy(), "w"), g.const(b, "b")], pads=[1, 1, 1, 1])


def _tail(g: _Graph, logits: str, offsets: str, cfg: Any) -> tuple[str, str]:
    """Sigmoid + border mask, and cell centres + tanh offsets clipped to the image (KeypointNet's tail)."""
    tp = g.TP
    i64 = lambda v: g.const(np.asarray(v, np.int64), "i")  # noqa: E731
    shape = g.node("Shape", [logits])
    hw = g.node("Slice", [shape, i64([2]), i64([4])])
    inner = g.node("Concat", [i64([1, 1]), g.node("Sub", [hw, i64([2, 2])])], axis=0)
    ones = g.node("ConstantOfShape", [inner], value=g.numpy_helper.from_array(np.ones(1, np.float32)))
    mask = g.node("Pad", [ones, i64([0, 0, 1, 1, 0, 0, 1, 1])])
    score = g.node("Mul", [g.node("Sigmoid", [logits]), mask])

    cell = int(cfg.cell)
    step = (cell - 1) / 2.0
    img_shape = g.node("Shape", [INPUT])
    offset = g.node("Mul", [g.node("Tanh", [offsets]), g.const(np.float32(cfg.cross_ratio * step), "k")])
    coords = []
    for axis, (dim, img_dim) in enumerate(((3, 3), (2, 2))):  # x: width axis, y: height axis
        n = g.node("Squeeze", [g.node("Slice", [shape, i64([dim]), i64([dim + 1])]), i64([0])])
        r = g.node("Cast", [g.node("Range", [i64(0), n, i64(1)])], to=tp.FLOAT)
        base = g.node("Add", [g.node("Mul", [r, g.const(np.float32(cell), "cell")]), g.const(np.float32(step), "st")])
        base = g.node("Reshape", [base, i64([1, 1, 1, -1] if axis == 0 else [1, 1, -1, 1])])
        o = g.node("Slice", [offset, i64([axis]), i64([axis + 1]), i64([1])])
        size = g.node("Squeeze", [g.node("Slice", [img_shape, i64([img_dim]), i64([img_dim + 1])]), i64([0])])
        hi = g.node("Sub", [g.node("Cast", [size], to=tp.FLOAT), g.const(np.float32(1.0), "one")])
        coords.append(g.node("Clip", [g.node("Add", [base, o]), g.const(np.float32(0.0), "zero"), hi]))
    return score, g.node("Concat", coords, axis=1)


def _int8_bytes(model: nn.Module) -> bytes:
    from zippy.quant.int8 import convert

    net = convert(model, path="split")  # the structure only: no kernel runs here
    g = _Graph()
    gi = net.grid_image  # quantize_image: round(x / scale) + zp as the stem computes it (x * (1 / scale))
    q = g.node("Round", [g.node("Mul", [INPUT, _f32(g, 1.0 / gi.scale, "inv")])])
    q = g.node("Clip", [g.node("Add", [q, _f32(g, gi.zero_point, "zp")]), _f32(g, 0.0), _f32(g, 255.0)])
    q = _exact_chain(g, g.node("Cast", [q], to=g.TP.UINT8), net.stem)
    for regrid, pool, blocks in net.stages:
        s2d = g.node("SpaceToDepth", [q], blocksize=2)  # channel order (dy, dx, c), as the int8 engine's
        q = _exact_chain(g, _regrid(g, s2d, regrid), pool)
        for block in blocks:
            q = _binary_residual(g, q, block)
    for block in net.block8:
        q = _binary_residual(g, q, block)
    heads = []
    for regrid, conv, out in (
        (net.score_in, net.score_conv, net.score_out),
        (net.position_in, net.position_conv, net.position_out),
    ):
        heads.append(_float_conv(g, _int8_conv(g, _regrid(g, q, regrid), conv), out))
    score, coords = _tail(g, heads[0], heads[1], net.cfg)
    c0, c1, c2 = net.desc_convs
    d = _int8_conv(g, _regrid(g, q, net.desc_in), c0)
    d = g.node("DepthToSpace", [d], blocksize=2, mode="DCR")  # c0's channels are in (dy, dx, c) order
    desc = _int8_conv(g, _int8_conv(g, d, c1), c2)  # float descriptor map
    h = g.helper
    outputs = []
    shapes = (
        ["batch", 1, "cells_h", "cells_w"],
        ["batch", 2, "cells_h", "cells_w"],
        ["batch", c2.out_channels, "desc_h", "desc_w"],
    )
    for name, src, shape in zip(OUTPUTS, (score, coords, desc), shapes):
        g.nodes.append(h.make_node("Identity", [src], [name], name=name))
        outputs.append(h.make_tensor_value_info(name, g.TP.FLOAT, shape))
    graph = h.make_graph(
        g.nodes,
        "zippypoint_int8",
        [h.make_tensor_value_info(INPUT, g.TP.FLOAT, ["batch", 3, "height", "width"])],
        outputs,
        g.inits,
    )
    onnx_model = h.make_model(graph, opset_imports=[h.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx_model.producer_name = "zippy"
    import onnx

    onnx.checker.check_model(onnx_model)
    return onnx_model.SerializeToString()


def export_int8(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write the int8 ONNX graph of a trained zippypoint ``model`` to ``path`` (atomic).

    Raises:
        ValueError: the model cannot be converted to int8 (the message says why).
    """
    return _write(path, _int8_bytes(model))


def onnx_bytes(model: nn.Module, *, int8: bool) -> bytes:
    """The serialized ONNX graph (int8 or fp32) of ``model``."""
    return _int8_bytes(model) if int8 else _fp32_bytes(model)


def _write(path: str | os.PathLike, data: bytes) -> Path:
    from zippy.io import write_bytes

    return write_bytes(path, data)


# ------------------------------------------------------------------------------------------------ engine


class OnnxNet:
    """onnxruntime drop-in for the torch network: float [B, 3, H, W] -> {score, coords, desc} (torch float32).

    Args:
        model: a KeypointNet (exported here, in memory) or the path / bytes of an exported ONNX graph.
        int8: for a KeypointNet: True for the int8 graph, False for fp32, None (default) for int8 when
            :func:`zippy.quant.int8.unsupported_reason` allows it (ignoring the missing x86 kernels,
            which onnxruntime does not need), else fp32.
        threads: onnxruntime intra-op threads (default: torch.get_num_threads()).

    Attributes:
        int8: whether the graph is the int8 one (None when loaded from a file or bytes).
    """

    def __init__(
        self,
        model: nn.Module | str | os.PathLike | bytes,
        *,
        int8: bool | None = None,
        threads: int | None = None,
    ):
        import onnxruntime as ort

        self.int8: bool | None = None
        if isinstance(model, nn.Module):
            if int8 is None:
                int8 = _int8_possible(model)
            self.int8 = bool(int8)
            data = onnx_bytes(model, int8=self.int8)
        elif isinstance(model, bytes):
            data = model
        else:
            path = Path(model)
            if not path.is_file():
                raise FileNotFoundError(f"ONNX file not found: {path}")
            data = path.read_bytes()
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads or torch.get_num_threads())
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.ort_session = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
        names = [o.name for o in self.ort_session.get_outputs()]
        if sorted(names) != sorted(OUTPUTS):
            raise ValueError(f"ONNX graph outputs {names}, expected {list(OUTPUTS)}")

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected float [B, 3, H, W], got {x.dtype} {list(x.shape)}")
        if x.shape[-2] % 8 or x.shape[-1] % 8:
            raise ValueError(f"input size must be a multiple of 8, got {x.shape[-1]}x{x.shape[-2]}")
        out = self.ort_session.run(list(OUTPUTS), {INPUT: x.detach().float().contiguous().numpy()})
        return {k: torch.from_numpy(v) for k, v in zip(OUTPUTS, out)}


def _int8_possible(model: nn.Module) -> bool:
    from zippy.models import KeypointNet
    from zippy.quant import int8

    if not isinstance(model, KeypointNet):
        return False
    reason = int8.model_unsupported_reason(model)
    if reason is not None:
        log.debug("onnx engine: fp32 graph (%s)", reason)
    return reason is None
