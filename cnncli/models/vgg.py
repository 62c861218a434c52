"""VGG (Simonyan & Zisserman 2015), configurations A (vgg11), B (vgg13), D (vgg16), E (vgg19).

3x3 convolutions with padding 1 (optionally followed by BatchNorm), 2x2/2 max pools,
adaptive average pooling to 7x7 (as torchvision, so that small inputs work), then
FC 4096 - FC 4096 - FC classes with ReLU and dropout after the two hidden layers.

Initialisation (torchvision): He normal (fan_out) convolutions with zero bias, dense
layers N(0, 0.01) with zero bias, BatchNorm 1/0.
"""

from __future__ import annotations

import jax
from flax import nnx

from cnncli.models.layers import AdaptiveAvgPool, BatchNorm, Conv, Dropout, Linear, MaxPool, bn, logits

CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}

fc_init = nnx.initializers.normal(0.01)


class VGG(nnx.Module):
    def __init__(self, cfg: list[int | str], batch_norm: bool, num_classes: int, in_channels: int, opts: dict,
                 *, rngs: nnx.Rngs):
        dtype = opts["dtype"]
        self.dtype = dtype
        layers = []
        in_ch = in_channels
        for v in cfg:
            if v == "M":
                layers.append(MaxPool(2, 2))
                continue
            out_ch = max(1, round(int(v) * opts["width"]))
            layers.append(Conv(in_ch, out_ch, 3, 1, 1, dtype=dtype, rngs=rngs))
            if batch_norm:
                layers.append(bn(out_ch, opts, rngs=rngs))
            in_ch = out_ch
        self.features = nnx.List(layers)
        self.batch_norm = batch_norm
        self.avgpool = AdaptiveAvgPool(7)
        hidden = max(1, round(4096 * opts["width"]))
        rate = 0.5 if opts["dropout"] is None else opts["dropout"]
        zeros = nnx.initializers.zeros_init()
        self.fc6 = Linear(in_ch * 49, hidden, dtype=dtype, kernel_init=fc_init, bias_init=zeros, rngs=rngs)
        self.drop6 = Dropout(rate, rngs=rngs)
        self.fc7 = Linear(hidden, hidden, dtype=dtype, kernel_init=fc_init, bias_init=zeros, rngs=rngs)
        self.drop7 = Dropout(rate, rngs=rngs)
        self.fc8 = Linear(hidden, num_classes, dtype=dtype, kernel_init=fc_init, bias_init=zeros, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        for layer in self.features:
            x = layer(x)
            if isinstance(layer, BatchNorm) or (isinstance(layer, Conv) and not self.batch_norm):
                x = nnx.relu(x)
        x = self.avgpool(x).reshape(x.shape[0], -1)
        x = self.drop6(nnx.relu(self.fc6(x)))
        x = self.drop7(nnx.relu(self.fc7(x)))
        return logits(self.fc8(x))
