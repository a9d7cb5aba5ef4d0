"""Layer descriptors: the structural facts of one OFA layer, shared by every
per-layer consumer (analytic MACs/params, lookup-table keys, predictor features).

Counts follow `torchprofile.profile_macs` on the real OFA subnet in eval mode:
convolutions and linears, affine BatchNorm (one per output element), the
elementwise multiplications of h-swish and SE, and average pools / means (one per
output element). OFA's own "FLOPs" counter counts only convolutions and linears,
so its numbers are a few percent lower.
"""
from __future__ import annotations

from dataclasses import dataclass


def make_divisible(v: float, divisor: int = 8, min_val: int | None = None) -> int:
    """OFA's channel rounding (nearest multiple of `divisor`, never below 90 % of v)."""
    min_val = divisor if min_val is None else min_val
    new_v = max(min_val, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def conv_out(size: int, stride: int) -> int:
    """Spatial size after a 'same'-padded convolution with odd kernel."""
    return (size - 1) // stride + 1


@dataclass(frozen=True)
class ConvLayer:
    """conv(k, stride, no bias) -> BN -> act, as OFA's ConvLayer (or a bare conv if bn=False)."""
    kind = "conv"
    h_in: int
    c_in: int
    c_out: int
    kernel: int = 1
    stride: int = 1
    act: str = "relu"
    bn: bool = True

    @property
    def h_out(self) -> int:
        return conv_out(self.h_in, self.stride)


@dataclass(frozen=True)
class MBConvLayer:
    """Inverted residual: [1x1 expand] -> depthwise kxk -> [SE] -> 1x1 project (BN after each conv)."""
    kind = "mbconv"
    h_in: int
    c_in: int
    c_out: int
    mid: int
    kernel: int
    stride: int
    act: str
    se: bool
    residual: bool
    expand_conv: bool = True  # False for OFA's first block (expand ratio 1)

    @property
    def h_out(self) -> int:
        return conv_out(self.h_in, self.stride)


@dataclass(frozen=True)
class BottleneckLayer:
    """ResNet bottleneck: 1x1 -> 3x3(stride) -> 1x1, shortcut = identity or avgpool + 1x1 conv + BN."""
    kind = "bottleneck"
    h_in: int
    c_in: int
    c_out: int
    mid: int
    stride: int

    @property
    def h_out(self) -> int:
        return conv_out(self.h_in, self.stride)

    @property
    def downsample(self) -> bool:
        return self.stride != 1 or self.c_in != self.c_out


@dataclass(frozen=True)
class PoolLayer:
    """Global average pool (kind 'gap') or a kxk max pool (kind 'maxpool', zero MACs)."""
    kind = "pool"
    h_in: int
    c_in: int
    mode: str = "gap"
    kernel: int = 1
    stride: int = 1

    @property
    def h_out(self) -> int:
        return 1 if self.mode == "gap" else conv_out(self.h_in, self.stride)


@dataclass(frozen=True)
class LinearLayer:
    kind = "linear"
    c_in: int
    c_out: int
    h_in: int = 1


Layer = ConvLayer | MBConvLayer | BottleneckLayer | PoolLayer | LinearLayer


def _conv_macs(h_out: int, c_in: int, c_out: int, k: int, groups: int = 1) -> int:
    return h_out * h_out * c_out * (c_in // groups) * k * k


def _act_muls(act: str, numel: int) -> int:
    # h-swish is x * relu6(x + 3) / 6: one counted multiplication per element
    return numel if act == "h_swish" else 0


def _se_macs(h: int, c: int) -> tuple[int, int]:
    """(MACs, params) of OFA's SE module on an h x h x c map."""
    mid = make_divisible(c // 4)
    macs = c * h + c  # two chained means (over W, then H)
    macs += c * mid + mid * c  # reduce / expand 1x1 convs on 1x1 maps
    macs += h * h * c  # x * gate
    params = c * mid + mid + mid * c + c
    return macs, params


def layer_macs(layer: Layer) -> int:
    if isinstance(layer, ConvLayer):
        n_out = layer.h_out ** 2 * layer.c_out
        macs = _conv_macs(layer.h_out, layer.c_in, layer.c_out, layer.kernel)
        if layer.bn:
            macs += n_out
        return macs + _act_muls(layer.act, n_out)
    if isinstance(layer, MBConvLayer):
        h_in, h_out, mid = layer.h_in, layer.h_out, layer.mid
        macs = 0
        if layer.expand_conv:
            n = h_in * h_in * mid
            macs += _conv_macs(h_in, layer.c_in, mid, 1) + n + _act_muls(layer.act, n)
        n = h_out * h_out * mid
        macs += _conv_macs(h_out, mid, mid, layer.kernel, groups=mid) + n + _act_muls(layer.act, n)
        if layer.se:
            macs += _se_macs(h_out, mid)[0]
        macs += _conv_macs(h_out, mid, layer.c_out, 1) + h_out * h_out * layer.c_out
        return macs
    if isinstance(layer, BottleneckLayer):
        h_in, h_out, mid = layer.h_in, layer.h_out, layer.mid
        macs = _conv_macs(h_in, layer.c_in, mid, 1) + h_in * h_in * mid
        macs += _conv_macs(h_out, mid, mid, 3) + h_out * h_out * mid
        macs += _conv_macs(h_out, mid, layer.c_out, 1) + h_out * h_out * layer.c_out
        if layer.downsample:
            # OFA puts an avg pool (kernel = stride, even 1) before the 1x1 shortcut conv
            macs += h_out * h_out * layer.c_in
            macs += _conv_macs(h_out, layer.c_in, layer.c_out, 1) + h_out * h_out * layer.c_out
        return macs
    if isinstance(layer, PoolLayer):
        # OFA pools globally with two chained means (over W, then over H)
        return layer.c_in * layer.h_in + layer.c_in if layer.mode == "gap" else 0
    if isinstance(layer, LinearLayer):
        return layer.c_in * layer.c_out
    raise TypeError(f"unknown layer {layer!r}")


def layer_params(layer: Layer) -> int:
    if isinstance(layer, ConvLayer):
        p = layer.c_in * layer.c_out * layer.kernel ** 2
        return p + (2 * layer.c_out if layer.bn else 0)
    if isinstance(layer, MBConvLayer):
        mid = layer.mid
        p = (layer.c_in * mid + 2 * mid) if layer.expand_conv else 0
        p += mid * layer.kernel ** 2 + 2 * mid
        if layer.se:
            p += _se_macs(1, mid)[1]
        return p + mid * layer.c_out + 2 * layer.c_out
    if isinstance(layer, BottleneckLayer):
        mid = layer.mid
        p = layer.c_in * mid + 2 * mid + mid * mid * 9 + 2 * mid + mid * layer.c_out + 2 * layer.c_out
        if layer.downsample:
            p += layer.c_in * layer.c_out + 2 * layer.c_out
        return p
    if isinstance(layer, PoolLayer):
        return 0
    if isinstance(layer, LinearLayer):
        return layer.c_in * layer.c_out + layer.c_out
    raise TypeError(f"unknown layer {layer!r}")
