"""Which PyTorch tensor is which cnn parameter, and how each is laid out.

A layout is a list of `Entry`s, one per tensor of the PyTorch state dict: its key there, the
path of the cnn variable (("params", "layer1", 0, "conv1", "kernel")) and the `kind` of
conversion between the two layouts:

  conv     torch OIHW          <-> cnn HWIO
  linear   torch [out, in]     <-> cnn [in, out]
  flat     the first dense layer after a conv stack: torch flattens NCHW ([out, C*H*W]), cnn
           NHWC ([H*W*C, out]); `grid` = (C, H, W). timm's VGG holds this layer as a 7x7
           convolution ([out, C, H, W], `four_d`).
  conv1x1  a dense layer held as a 1x1 convolution (timm's VGG): [out, in, 1, 1] <-> [in, out]
  vector   biases and BatchNorm vectors, unchanged

BatchNorm: weight -> scale, bias -> bias, running_mean -> mean, running_var -> var;
`num_batches_tracked` has no cnn counterpart (see convert.py).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cnncli.errors import ModelError

SOURCES = ("torchvision", "timm")


@dataclasses.dataclass(frozen=True)
class Entry:
    torch_key: str
    path: tuple  # ("params" | "batch_stats", module path..., leaf name)
    kind: str  # conv | linear | flat | conv1x1 | vector
    grid: tuple[int, int, int] | None = None  # (C, H, W) of a flat entry
    four_d: bool = False


def to_cnn(e: Entry, w: np.ndarray) -> np.ndarray:
    if e.kind == "conv":
        return w.transpose(2, 3, 1, 0)
    if e.kind == "linear":
        return w.T
    if e.kind == "conv1x1":
        return w[:, :, 0, 0].T
    if e.kind == "flat":
        c, h, wd = e.grid
        return w.reshape(w.shape[0], c, h, wd).transpose(2, 3, 1, 0).reshape(h * wd * c, w.shape[0])
    return w


def to_torch(e: Entry, k: np.ndarray) -> np.ndarray:
    if e.kind == "conv":
        return k.transpose(3, 2, 0, 1)
    if e.kind == "linear":
        return k.T
    if e.kind == "conv1x1":
        return k.T[:, :, None, None]
    if e.kind == "flat":
        _, h, wd = e.grid
        c = k.shape[0] // (h * wd)  # from the kernel: a narrower model (width option) has fewer channels
        w = k.reshape(h, wd, c, k.shape[1]).transpose(3, 2, 0, 1)
        return w if e.four_d else w.reshape(k.shape[1], c * h * wd)
    return k


def torch_shape(e: Entry, cnn_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape the PyTorch tensor must have for a cnn variable of `cnn_shape`."""
    s = tuple(cnn_shape)
    if e.kind == "conv":
        return (s[3], s[2], s[0], s[1])
    if e.kind == "linear":
        return (s[1], s[0])
    if e.kind == "conv1x1":
        return (s[1], s[0], 1, 1)
    if e.kind == "flat":
        c, h, w = e.grid
        return (s[1], c, h, w) if e.four_d else (s[1], c * h * w)
    return s


def _conv(key: str, path: tuple, bias: bool = True) -> list[Entry]:
    out = [Entry(f"{key}.weight", ("params", *path, "kernel"), "conv")]
    if bias:
        out.append(Entry(f"{key}.bias", ("params", *path, "bias"), "vector"))
    return out


def _dense(key: str, path: tuple, kind: str = "linear", grid=None, four_d=False) -> list[Entry]:
    return [Entry(f"{key}.weight", ("params", *path, "kernel"), kind, grid, four_d),
            Entry(f"{key}.bias", ("params", *path, "bias"), "vector")]


def _bn(key: str, path: tuple) -> list[Entry]:
    return [Entry(f"{key}.weight", ("params", *path, "scale"), "vector"),
            Entry(f"{key}.bias", ("params", *path, "bias"), "vector"),
            Entry(f"{key}.running_mean", ("batch_stats", *path, "mean"), "vector"),
            Entry(f"{key}.running_var", ("batch_stats", *path, "var"), "vector")]


def _resnet(model) -> list[Entry]:
    entries = _conv("conv1", ("conv1",), bias=False) + _bn("bn1", ("bn1",))
    for stage in range(1, 5):
        for i, block in enumerate(getattr(model, f"layer{stage}")):
            key, path = f"layer{stage}.{i}", (f"layer{stage}", i)
            for n in (1, 2, 3):
                if hasattr(block, f"conv{n}"):
                    entries += _conv(f"{key}.conv{n}", (*path, f"conv{n}"), bias=False)
                    entries += _bn(f"{key}.bn{n}", (*path, f"bn{n}"))
            if block.downsample is not None:
                entries += _conv(f"{key}.downsample.0", (*path, "downsample"), bias=False)
                entries += _bn(f"{key}.downsample.1", (*path, "downsample_bn"))
    return entries + _dense("fc", ("fc",))


def _vgg(model, source: str) -> list[Entry]:
    from cnncli.models.layers import BatchNorm, Conv, MaxPool

    entries: list[Entry] = []
    t = 0  # index in torch's `features` Sequential, which also holds the ReLUs
    channels = 0
    for i, layer in enumerate(model.features):
        if isinstance(layer, Conv):
            entries += _conv(f"features.{t}", ("features", i))
            channels = layer.out_features
            t += 1 if model.batch_norm else 2  # conv [+ bn] + relu
        elif isinstance(layer, BatchNorm):
            entries += _bn(f"features.{t}", ("features", i))
            t += 2
        elif isinstance(layer, MaxPool):
            t += 1
    grid = (channels, model.avgpool.output_size, model.avgpool.output_size)
    if source == "timm":
        return (entries + _dense("pre_logits.fc1", ("fc6",), "flat", grid, four_d=True)
                + _dense("pre_logits.fc2", ("fc7",), "conv1x1") + _dense("head.fc", ("fc8",)))
    return (entries + _dense("classifier.0", ("fc6",), "flat", grid) + _dense("classifier.3", ("fc7",))
            + _dense("classifier.6", ("fc8",)))


def _alexnet_tv(model) -> list[Entry]:
    entries: list[Entry] = []
    for t, n in zip((0, 3, 6, 8, 10), range(1, 6)):
        entries += _conv(f"features.{t}", (f"conv{n}",))
    grid = (model.conv5.out_features, model.avgpool.output_size, model.avgpool.output_size)
    return (entries + _dense("classifier.1", ("fc6",), "flat", grid) + _dense("classifier.4", ("fc7",))
            + _dense("classifier.6", ("fc8",)))


def supported(name: str) -> bool:
    return name == "alexnet_tv" or name.startswith("vgg") or name in (
        "resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def layout(name: str, model, source: str = "torchvision") -> list[Entry]:
    """The entries of model `name` (an abstract cnn model of it) in `source`'s state-dict layout."""
    if source not in SOURCES:
        raise ModelError(f"unknown weights source {source!r}: expected one of {', '.join(SOURCES)}")
    if not supported(name):
        raise ModelError(f"no {source} layout for {name!r}: weights import supports vgg11-19 (and _bn), "
                         "resnet18-152 and alexnet_tv (torchvision's AlexNet)")
    if name.startswith("vgg"):
        return _vgg(model, source)
    if name == "alexnet_tv":
        if source != "torchvision":
            raise ModelError("timm has no AlexNet: import alexnet_tv weights --from torchvision")
        return _alexnet_tv(model)
    return _resnet(model)  # timm's ResNets name their tensors as torchvision does


def head_key(name: str, source: str = "torchvision") -> str:
    """The state-dict key of the classifier's weight (its rows are the classes)."""
    if name.startswith("vgg"):
        return "head.fc.weight" if source == "timm" else "classifier.6.weight"
    return "classifier.6.weight" if name == "alexnet_tv" else "fc.weight"


def first_conv_key(name: str) -> str:
    return "conv1.weight" if name.startswith("resnet") else "features.0.weight"
