"""The experiment a bare model name stands for, where no config file says otherwise.

`cnn bench resnet20` times, and `cnn summarize resnet20` compiles, this step: the family's usual
augmentation (CIFAR-style crop and flip for the CIFAR families, random-resized crop and flip for
the ImageNet ones) and SGD with momentum 0.9 and weight decay 1e-4.
"""

from __future__ import annotations

from typing import Any


def bare_model_raw(name: str) -> dict[str, Any]:
    """The raw config (before validation) of a bare model name's experiment."""
    from cnncli.models import get_spec

    spec = get_spec(name)  # unknown names raise ModelError here
    small = spec.family in ("cifar_resnet", "cifar_plain")
    augment = {"random_crop_padding": 4, "flip": True} if small else {"random_resized_crop": True, "flip": True}
    return {"model": {"name": name}, "data": {"augment": augment},
            "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}}
