"""Cross-check against the compiler: lower and compile the real training step, read XLA's figures.

The state is built with `jax.eval_shape`, so nothing of the model's size is allocated: XLA
compiles for shapes only, with XLA's own convolutions and batch norm (never the oneDNN custom
calls of cnncli.kernels, whose work XLA cannot count). What the backend does not report comes
back as None, and a compilation that fails is reported, never raised.
"""

from __future__ import annotations

from typing import Any

from cnncli.errors import one_line
from cnncli.kernels import xla_kernels


def _memory(compiled: Any) -> dict[str, int] | None:
    try:
        stats = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - backends without memory analysis raise various errors
        return None
    if stats is None:
        return None
    fields = {"argument_bytes": "argument_size_in_bytes", "output_bytes": "output_size_in_bytes",
              "alias_bytes": "alias_size_in_bytes", "temp_bytes": "temp_size_in_bytes"}
    out = {k: getattr(stats, attr, None) for k, attr in fields.items()}
    if any(v is None for v in out.values()):
        return None
    out = {k: int(v) for k, v in out.items()}
    # Donated state is aliased to the output: count it once.
    out["peak_bytes"] = out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"] + out["temp_bytes"]
    return out


def compile_train_step(model: Any, *, batch_size: int, optimizer: Any, augment: Any = None,
                       mean: list[float] | None = None, std: list[float] | None = None, devices: int = 1,
                       shard_params: bool = False) -> dict[str, Any]:
    """Compile the training step of `model` (abstract is fine) for one batch; XLA's figures.

    optimizer: a cnncli.config.OptimizerConfig. Returns {flops, argument_bytes, output_bytes,
    alias_bytes, temp_bytes, peak_bytes, backend, note}; a figure the backend does not give
    is None and `note` says why. With `devices` > 1 the step is compiled as training runs it,
    over a `data` mesh of the first `devices` devices (the batch split, the state replicated or,
    with `shard_params`, split), and the figures are one device's; a machine with fewer devices
    gives only the note.
    """
    import jax
    import jax.numpy as jnp

    from cnncli.config import AugmentConfig, ScheduleConfig
    from cnncli.train.optim import build_optimizer, build_schedule
    from cnncli.train.state import init_train_state, split_model
    from cnncli.train.step import make_train_step
    from cnncli.train.xla_cost import gpu_leaves_out_convolutions, xla_flops

    h, w, c = model.input_shape
    schedule = build_schedule(ScheduleConfig(), optimizer.lr, 1, 1)
    tx = build_optimizer(optimizer, schedule)
    parts, params, batch_stats = split_model(model)
    state = jax.eval_shape(lambda p, s: init_train_state(p, s, tx, ema=False), params, batch_stats)
    augment = augment or AugmentConfig()
    mean = mean or [0.5] * c
    std = std or [0.25] * c

    # The model parts go in as arguments so that an abstract model's RNG state is traced, not baked in.
    def step(parts, state, images, labels):
        train_step = make_train_step(parts, tx, schedule, num_classes=model.num_classes, augment=augment,
                                     mean=mean, std=std, seed=0)
        return train_step(state, images, labels)

    result: dict[str, Any] = {"flops": None, "argument_bytes": None, "output_bytes": None, "alias_bytes": None,
                              "temp_bytes": None, "peak_bytes": None, "backend": jax.default_backend(), "note": None}
    if devices > jax.device_count():
        hint = (f" (on CPU: XLA_FLAGS=--xla_force_host_platform_device_count={devices})"
                if jax.default_backend() == "cpu" else "")
        result["note"] = (f"not compiled: {devices} devices asked for, this machine has {jax.device_count()}"
                          f"{hint}")
        return result
    images = jax.ShapeDtypeStruct((batch_size, h, w, c), jnp.uint8)
    labels = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
    jitted = jax.jit(step, donate_argnums=(1,))
    if devices > 1:
        from cnncli.distributed import batch_sharding, make_mesh, replicated, state_shardings

        mesh = make_mesh(devices)
        shardings = state_shardings(mesh, state, shard=shard_params)
        state = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), state, shardings)
        images, labels = (jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=batch_sharding(mesh)) for a in (images, labels))
        jitted = jax.jit(step, donate_argnums=(1,), in_shardings=(replicated(mesh), shardings, batch_sharding(mesh),
                                                                   batch_sharding(mesh)),
                         out_shardings=(shardings, replicated(mesh)))
    try:
        with xla_kernels():  # a custom call's work is invisible to XLA's cost and memory analysis
            compiled = jitted.lower(parts, state, images, labels).compile()
    except Exception as exc:  # noqa: BLE001 - report any compiler failure (e.g. out of memory) instead of failing
        result["note"] = f"compilation failed: {one_line(exc, limit=200)}"
        return result
    result["flops"] = xla_flops(compiled)
    memory = _memory(compiled)
    if memory is not None:
        result.update(memory)
    missing = [k for k, v in (("cost_analysis", result["flops"]), ("memory_analysis", memory)) if v is None]
    if gpu_leaves_out_convolutions():
        result["note"] = ("no FLOP cross-check on a GPU: XLA's cost analysis there leaves out the convolutions "
                          "cuDNN runs" + ("" if memory is not None else "; the backend gives no memory_analysis"))
    elif missing:
        result["note"] = f"the {result['backend']} backend gives no {' or '.join(missing)}"
    return result
