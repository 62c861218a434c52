"""Pure train and eval steps of (state, batch). The loop jit-compiles them once, donating the state."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from cnncli.config import AugmentConfig
from cnncli.data.augment import augment_train, preprocess_eval
from cnncli.train.state import ModelParts, TrainState


def cross_entropy(logits: jax.Array, labels: jax.Array, num_classes: int, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross-entropy with optional label smoothing, in float32 or wider (a float64
    model keeps float64)."""
    targets = jax.nn.one_hot(labels, num_classes)
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), targets)


def forward(parts: ModelParts, params, batch_stats, x, *, train: bool, dropout_key=None):
    """Run the model; returns (logits, updated batch_stats)."""
    graph = parts.train_graph if train else parts.eval_graph
    model = nnx.merge(graph, params, batch_stats, parts.rng_state, copy=True)
    if train and dropout_key is not None and jax.tree.leaves(parts.rng_state):
        nnx.reseed(model, dropout=dropout_key)
    logits = model(x)
    new_stats = nnx.state(model, nnx.BatchStat) if train else batch_stats
    return logits, new_stats


def make_train_step(parts: ModelParts, tx: optax.GradientTransformation, schedule: Callable, *, num_classes: int,
                    augment: AugmentConfig, mean, std, seed: int, label_smoothing: float = 0.0,
                    grad_accum_steps: int = 1, ema_decay: float | None = None, stop_on_nonfinite: bool = True,
                    input_size: int | None = None) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, dict]]:
    """Build train_step(state, images_uint8, labels) -> (state, metrics).

    The step's randomness (augmentation, dropout) is fold_in(seed, step): a resumed run
    draws exactly what an uninterrupted one would. A step whose loss or gradient norm is
    not finite leaves the state unchanged and is counted; with `stop_on_nonfinite`, no update
    is applied after the first such step either, so the state stays at the last good step
    until the loop notices and stops. `input_size`: the model's input side, when the batches come
    larger (a pack's stored side) and are cropped/resized to it here, on the device.
    """
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    base_key = jax.random.key(seed)

    def loss_fn(params, batch_stats, x, y, dropout_key):
        logits, new_stats = forward(parts, params, batch_stats, x, train=True, dropout_key=dropout_key)
        loss = cross_entropy(logits, y, num_classes, label_smoothing).mean()
        return loss, (logits, new_stats)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, images: jax.Array, labels: jax.Array):
        key = jax.random.fold_in(base_key, state.step)
        aug_key, drop_key = jax.random.split(key)
        x = augment_train(aug_key, images, augment, mean, std, input_size)
        if grad_accum_steps == 1:
            (loss, (logits, new_stats)), grads = grad_fn(state.params, state.batch_stats, x, labels, drop_key)
            correct = jnp.sum(jnp.argmax(logits, -1) == labels)
        else:
            micro = x.shape[0] // grad_accum_steps
            xs = x.reshape(grad_accum_steps, micro, *x.shape[1:])
            ys = labels.reshape(grad_accum_steps, micro)

            def body(carry, inp):
                stats, g_sum, l_sum, c_sum = carry
                xb, yb, i = inp
                (l, (lg, stats)), g = grad_fn(state.params, stats, xb, yb, jax.random.fold_in(drop_key, i))
                g_sum = jax.tree.map(jnp.add, g_sum, g)
                c_sum = c_sum + jnp.sum(jnp.argmax(lg, -1) == yb, dtype=jnp.int32)
                return (stats, g_sum, l_sum + l.astype(l_sum.dtype), c_sum), None

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            loss_dtype = jnp.result_type(jnp.float32, *jax.tree.leaves(state.params))  # f64 params: f64
            init = (state.batch_stats, zeros, jnp.zeros((), loss_dtype), jnp.zeros((), jnp.int32))
            (new_stats, grads, loss, correct), _ = jax.lax.scan(
                body, init, (xs, ys, jnp.arange(grad_accum_steps)))
            grads = jax.tree.map(lambda g: g / grad_accum_steps, grads)
            loss = loss / grad_accum_steps
        grad_norm = optax.global_norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        updates = jax.tree.map(lambda u: u * state.lr_scale, updates)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema_params
        if ema is not None:
            ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, params)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new = state.replace(step=state.step + 1, params=params, batch_stats=new_stats, opt_state=opt_state,
                            ema_params=ema)
        apply = finite & (state.first_nonfinite_step < 0) if stop_on_nonfinite else finite
        kept = state.replace(step=state.step + 1)
        new = jax.tree.map(lambda a, b: jnp.where(apply, a, b), new, kept)
        new = new.replace(
            nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32),
            first_nonfinite_step=jnp.where((state.first_nonfinite_step < 0) & ~finite, state.step,
                                           state.first_nonfinite_step),
        )
        metrics = {
            "loss": loss,
            "accuracy": correct / labels.shape[0],
            "grad_norm": grad_norm,
            "lr": schedule(state.step) * state.lr_scale,
        }
        return new, metrics

    return train_step


def make_eval_step(parts: ModelParts, *, num_classes: int, mean, std, input_size: int | None = None) -> Callable:
    """Build eval_step(params, batch_stats, images_uint8, labels, mask) -> per-batch sums and logits.

    Masked (padding) examples contribute nothing to the sums. Batches larger than `input_size`
    (a pack's stored side) are resized to it on the device.
    """
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)

    def eval_step(params, batch_stats, images, labels, mask):
        x = preprocess_eval(images, mean, std, input_size)
        logits, _ = forward(parts, params, batch_stats, x, train=False)
        loss = cross_entropy(logits, labels, num_classes)
        k = min(5, num_classes)
        topk = jax.lax.top_k(logits, k)[1]
        top1 = topk[:, 0] == labels
        top5 = jnp.any(topk == labels[:, None], axis=-1)
        m = mask.astype(jnp.float32)
        sums = {
            "loss": jnp.sum(loss * m),
            "correct": jnp.sum(top1 * m),
            "correct_top5": jnp.sum(top5 * m),
            "count": jnp.sum(m),
        }
        return sums, logits

    return eval_step
