"""PyTorch reference for `cnn bench`: the same networks and the same training step, in
PyTorch's best setting for the device.

The step: SGD with momentum 0.9 and weight decay 1e-4 (on every parameter, as cnn's default
`decay_norm_and_bias: true`), softmax cross-entropy, BatchNorm in training mode, one batch
already on the device. Channels-last memory format; AMP bfloat16 on GPU; `torch.compile`
optionally (its compile time is reported). Module names mirror cnn's models (conv1, bn1,
layer1.0.conv2, fc, ...) so weights can be copied across by name.

    python benchmarks/torch_reference.py resnet20 --batch-size 128 [--compile] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

# name -> (input size, classes)
MODELS = {"resnet20": (32, 10), "resnet18": (224, 1000), "resnet50": (224, 1000), "vgg16": (224, 1000)}
VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class CifarBlock(nn.Module):
    """Basic block with option-A shortcuts: stride-2 subsampling, new channels zero (appended last)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride, self.extra = stride, cout - cin

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        s = x[:, :, :: self.stride, :: self.stride]
        if self.extra:
            s = F.pad(s, (0, 0, 0, 0, 0, self.extra))
        return F.relu(y + s)


class CifarResNet(nn.Module):
    def __init__(self, depth: int = 20, num_classes: int = 10):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        cin = 16
        for i, w in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                blocks.append(CifarBlock(cin, w, 2 if i > 0 and j == 0 else 1))
                cin = w
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean((2, 3)))


class Basic(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.proj = self.proj_bn = None
        if stride != 1 or cin != width:
            self.proj = nn.Conv2d(cin, width, 1, stride, bias=False)
            self.proj_bn = nn.BatchNorm2d(width)

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        s = x if self.proj is None else self.proj_bn(self.proj(x))
        return F.relu(y + s)


class Bottleneck(nn.Module):
    """v1.5: the stride sits on the 3x3 convolution."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.proj = self.proj_bn = None
        if stride != 1 or cin != cout:
            self.proj = nn.Conv2d(cin, cout, 1, stride, bias=False)
            self.proj_bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        s = x if self.proj is None else self.proj_bn(self.proj(x))
        return F.relu(y + s)


class ResNet(nn.Module):
    def __init__(self, block, layers, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for i, (n, width) in enumerate(zip(layers, (64, 128, 256, 512))):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, width, 2 if i > 0 and j == 0 else 1))
                cin = width * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean((2, 3)))


class VGG(nn.Module):
    def __init__(self, cfg=VGG16, num_classes: int = 1000):
        super().__init__()
        layers, cin = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, 1, 1), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(nn.Linear(cin * 49, 4096), nn.ReLU(True), nn.Dropout(0.5),
                                        nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(0.5),
                                        nn.Linear(4096, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def build_model(name: str, num_classes: int | None = None) -> nn.Module:
    classes = num_classes or MODELS[name][1]
    if name == "resnet20":
        return CifarResNet(20, classes)
    if name == "resnet18":
        return ResNet(Basic, [2, 2, 2, 2], classes)
    if name == "resnet50":
        return ResNet(Bottleneck, [3, 4, 6, 3], classes)
    if name == "vgg16":
        return VGG(VGG16, classes)
    raise SystemExit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


def load_cnn_weights(model: nn.Module, params, batch_stats) -> None:
    """Copy a cnn model's params and BatchNorm statistics (nnx states) into the same-named torch modules."""
    import jax
    import numpy as np

    rename = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
    target = model.state_dict()
    for tree in (params, batch_stats):
        for path, value in jax.tree_util.tree_leaves_with_path(tree):
            keys = [str(getattr(k, "key", getattr(k, "idx", None))) for k in path
                    if not (hasattr(k, "name") and k.name == "value")]
            name = ".".join(keys[:-1] + [rename[keys[-1]]])
            array = np.asarray(value, np.float32)
            if keys[-1] == "kernel":
                array = array.transpose(3, 2, 0, 1) if array.ndim == 4 else array.T  # HWIO -> OIHW, (in, out) -> (out, in)
            if target[name].shape != array.shape:
                raise ValueError(f"{name}: torch {tuple(target[name].shape)} vs cnn {array.shape}")
            target[name].copy_(torch.from_numpy(np.array(array, np.float32, copy=True)))


def make_optimizer(model: nn.Module, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 1e-4):
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


def make_step(model: nn.Module, opt, amp_dtype: torch.dtype | None, device_type: str):
    """step(x, y) -> loss: forward in training mode, cross-entropy, backward, SGD update."""

    def step(x, y):
        with torch.autocast(device_type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)
            loss = F.cross_entropy(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(name: str, batch_size: int, steps: int = 20, warmup: int = 2, windows: int = 5, dtype: str = "auto",
          compile_model: bool = False, device: str | None = None, input_size: int | None = None) -> dict:
    """Time the reference training step; returns images/s, step time and compile time."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    size = input_size or MODELS[name][0]
    torch.manual_seed(0)
    model = build_model(name).to(dev).to(memory_format=torch.channels_last).train()
    opt = make_optimizer(model)
    amp = {"auto": torch.bfloat16 if dev.type == "cuda" else None, "bfloat16": torch.bfloat16,
           "float32": None}[dtype]
    if compile_model:
        model = torch.compile(model)
    step = make_step(model, opt, amp, dev.type)
    x = torch.randn(batch_size, 3, size, size, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, MODELS[name][1], (batch_size,), device=dev)
    start = time.perf_counter()
    step(x, y)  # first call: torch.compile's compilation (or eager warm-up)
    _sync(dev)
    first_s = time.perf_counter() - start
    for _ in range(warmup):
        loss = step(x, y)
    _sync(dev)
    windows = max(1, min(windows, steps))
    per = [steps // windows + (1 if i < steps % windows else 0) for i in range(windows)]
    times = []
    for n in per:
        start = time.perf_counter()
        for _ in range(n):
            loss = step(x, y)
        _sync(dev)
        times.append((time.perf_counter() - start) / n)
    step_s = statistics.median(times)
    kind = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return {"model": name, "batch_size": batch_size, "input_size": size,
            "dtype": "bfloat16 (autocast)" if amp is not None else "float32", "compiled": compile_model,
            "device": {"type": dev.type, "kind": kind, "threads": torch.get_num_threads()},
            "compile_time_s": first_s if compile_model else None, "first_step_s": first_s,
            "step_time_ms": step_s * 1e3, "step_time_ms_spread": (max(times) - min(times)) * 1e3,
            "images_per_second": batch_size / step_s, "final_loss": float(loss),
            "torch_version": torch.__version__}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=sorted(MODELS))
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--input-size", type=int, default=None)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                    help="auto: AMP bfloat16 on GPU, float32 on CPU")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (compile time reported)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    r = bench(args.model, args.batch_size, args.steps, args.warmup, dtype=args.dtype, compile_model=args.compile,
              device=args.device, input_size=args.input_size)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"{r['model']} b{r['batch_size']} {r['dtype']} on {r['device']['kind']}"
              f"{' (compiled)' if r['compiled'] else ''}: {r['images_per_second']:.1f} images/s, "
              f"{r['step_time_ms']:.2f} ms/step, first step {r['first_step_s']:.1f} s", file=sys.stdout)


if __name__ == "__main__":
    main()
