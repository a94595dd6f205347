"""Weighted ELBO training for VAEs (paper §4.1 eqs. 1-2, appendix A.3), model-agnostic.

A model is any ``flax.linen.Module`` with two methods over a batch:

* ``encode(x) -> (mean, logvar)``, each ``(B, D)``: the Gaussian posterior q(z|x);
* ``decode(z) -> logits``: parameters of p(x|z) for ``z (B, D)``; the likelihood function
  turns ``(logits, x)`` into ``log p(x|z)`` per example;
* optionally ``decode_train(z, x) -> logits``: the training-time parameters of p(x|z) when
  they depend on ``x`` itself (teacher forcing of an autoregressive decoder); the ELBO uses it
  in place of ``decode`` when the model has it.

Training follows optax/blackjax: :func:`make_train_step` captures the model, optimiser and
hyperparameters and returns a pure ``step(key, state, batch, loss_weights)``; :func:`fit`
scans that step over a static-shape plan of minibatches (``wrjax.resampling``) gathered by
index from data that stays on the device. :func:`train` is the one training loop around it
(every task's pretraining): chunks of ``fit``, a host-side :class:`History`, validation
metrics, progress lines, a per-chunk hook (checkpoints, learning-rate changes), a time limit,
and resuming.

All computation is float32 (see ``wrjax.precision``).
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from wrjax._checks import check_int, check_weights
from wrjax.resampling import weighted_batches
from wrjax.typing import PyTree

__all__ = [
    "bernoulli_log_likelihood",
    "categorical_log_likelihood",
    "gaussian_kl",
    "free_bits_kl",
    "ElboTerms",
    "elbo_terms",
    "weighted_elbo_loss",
    "TrainState",
    "TrainInfo",
    "init_train_state",
    "make_train_step",
    "beta_schedule",
    "fit",
    "train",
    "History",
    "encode_mean",
    "decode_logits",
]

_F32 = jnp.float32
Likelihood = Callable[[jax.Array, Any], jax.Array]


def bernoulli_log_likelihood(logits: jax.Array, x: jax.Array) -> jax.Array:
    """``log p(x | logits)`` of independent Bernoullis, summed over all but the batch axis.

    Args:
      logits: ``(B, ...)`` pre-sigmoid values.
      x: ``(B, ...)`` targets in {0, 1} (any dtype).

    Returns:
      ``(B,)`` float32 log-likelihoods in nats.
    """
    x = x.astype(_F32)
    # -softplus(-l) = log sigmoid(l), -softplus(l) = log(1 - sigmoid(l)); stable for large |l|.
    ll = -optax.sigmoid_binary_cross_entropy(logits.astype(_F32), x)
    return ll.reshape(ll.shape[0], -1).sum(axis=1)


def categorical_log_likelihood(
    logits: jax.Array, targets: jax.Array, step_mask: jax.Array | None = None
) -> jax.Array:
    """``log p(targets | logits)`` of a sequence of categoricals, summed over valid steps.

    Args:
      logits: ``(B, T, V)``; any invalid choices should already be set to a large negative
        value (e.g. a grammar mask).
      targets: ``(B, T)`` int class indices, or ``(B, T, V)`` one-hot.
      step_mask: optional ``(B, T)`` bool/float; steps with 0 do not count (padding).

    Returns:
      ``(B,)`` float32 log-likelihoods in nats.
    """
    logits = logits.astype(_F32)
    if targets.ndim == logits.ndim:
        targets = jnp.argmax(targets, axis=-1)
    ll = -optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    if step_mask is not None:
        ll = ll * step_mask.astype(_F32)
    return ll.sum(axis=1)


def gaussian_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """``KL(N(mean, exp(logvar)) || N(0, I))`` per example, ``(B, D) -> (B,)``, in nats."""
    return 0.5 * jnp.sum(jnp.exp(logvar) + jnp.square(mean) - 1.0 - logvar, axis=-1)


class ElboTerms(NamedTuple):
    """Per-example ELBO and its parts, each ``(B,)`` float32 (nats)."""

    elbo: jax.Array  # log_lik - beta * kl
    log_lik: jax.Array
    kl: jax.Array


def encode_mean(model: nn.Module, params: PyTree, x: Any) -> jax.Array:
    """The posterior mean ``E[z | x]``, ``(B, D)``: the paper's inverse model ``q(x)``."""
    mean, _ = model.apply({"params": params}, x, method=model.encode)
    return mean


def decode_logits(model: nn.Module, params: PyTree, z: jax.Array) -> Any:
    """Decoder output (likelihood parameters) for latent points ``z (B, D)``."""
    return model.apply({"params": params}, z, method=model.decode)


def free_bits_kl(mean: jax.Array, logvar: jax.Array, free_bits: float) -> jax.Array:
    """``sum_d max(KL_d, free_bits)``, ``(B, D) -> (B,)``: the KL term with a floor per
    dimension (Kingma et al. 2016), so that no latent dimension is pushed all the way to the
    prior; ``free_bits = 0`` is the plain KL. The gradient is zero below the floor."""
    kl_d = 0.5 * (jnp.exp(logvar) + jnp.square(mean) - 1.0 - logvar)
    return jnp.sum(jnp.maximum(kl_d, free_bits), axis=-1)


def elbo_terms(
    key: jax.Array,
    params: PyTree,
    model: nn.Module,
    x: Any,
    *,
    beta: float | jax.Array = 1.0,
    likelihood: Likelihood = bernoulli_log_likelihood,
    latent_noise_std: float = 1.0,
    free_bits: float = 0.0,
) -> ElboTerms:
    """Single-sample reparameterised ELBO per example: ``log p(x|z) - beta KL(q(z|x) || p(z))``.

    Args:
      key: PRNG key for the reparameterisation noise.
      params: the model's ``params`` collection.
      model: a module with ``encode``/``decode`` (see the module docstring).
      x: a batch (array or pytree of arrays with leading axis ``B``).
      beta: KL weight (the beta-VAE objective; 1 is the ELBO).
      likelihood: ``(logits, x) -> (B,)`` log-likelihood.
      latent_noise_std: scale of the reparameterisation noise; 1 is the standard ELBO (the
        Keras grammar VAE of Kusner et al. used 0.01).
      free_bits: nats per latent dimension below which the KL is not penalised
        (:func:`free_bits_kl`); ``elbo`` uses the floored KL, ``kl`` reports the true one.
    """
    mean, logvar = model.apply({"params": params}, x, method=model.encode)
    eps = latent_noise_std * jax.random.normal(key, mean.shape, _F32)
    z = mean + jnp.exp(0.5 * logvar) * eps
    if hasattr(model, "decode_train"):
        logits = model.apply({"params": params}, z, x, method=model.decode_train)
    else:
        logits = model.apply({"params": params}, z, method=model.decode)
    log_lik = likelihood(logits, x)
    kl = gaussian_kl(mean, logvar)
    penalised = kl if free_bits == 0 else free_bits_kl(mean, logvar, free_bits)
    return ElboTerms(log_lik - beta * penalised, log_lik, kl)


def weighted_elbo_loss(neg_elbo: jax.Array, loss_weights: jax.Array) -> jax.Array:
    """Minibatch estimate of eq. 2: ``mean_j(loss_weights_j * (-ELBO_j))``.

    ``loss_weights_j = N w_j`` for dataset weights ``w`` summing to 1 over ``N`` points (or
    1 when the batch was *sampled* with ``p ∝ w``). Uniform weights give exactly the
    unweighted mean loss, so learning rates carry over between weighted and unweighted runs.
    """
    if neg_elbo.shape != loss_weights.shape:
        raise ValueError(f"shape mismatch: {neg_elbo.shape} vs {loss_weights.shape}")
    return jnp.mean(loss_weights * neg_elbo)


class TrainState(NamedTuple):
    """State of VAE training: parameters, optimiser state and the step count."""

    params: PyTree
    opt_state: optax.OptState
    step: jax.Array  # () int32, number of updates taken


class TrainInfo(NamedTuple):
    """Diagnostics of one step (or, from :func:`fit`, stacked over steps)."""

    loss: jax.Array  # weighted -ELBO (the optimised quantity)
    log_lik: jax.Array  # unweighted batch mean of log p(x|z)
    kl: jax.Array  # unweighted batch mean of KL
    beta: jax.Array


def init_train_state(params: PyTree, optimizer: optax.GradientTransformation) -> TrainState:
    """A fresh :class:`TrainState` (use it again with old params to reset the optimiser)."""
    return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))


def make_train_step(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    *,
    beta: float | Callable[[jax.Array], jax.Array] = 1.0,
    likelihood: Likelihood = bernoulli_log_likelihood,
    latent_noise_std: float = 1.0,
    free_bits: float = 0.0,
) -> Callable[[jax.Array, TrainState, Any, jax.Array], tuple[TrainState, TrainInfo]]:
    """Build the pure weighted-ELBO update ``step(key, state, batch, loss_weights)``.

    Args:
      model: a module with ``encode``/``decode``.
      optimizer: any optax transformation.
      beta: KL weight, a constant or an optax-style schedule of ``state.step`` (e.g. the
        authors' shapes warm-up; see ``beta_schedule``).
      likelihood: ``(logits, batch) -> (B,)`` log-likelihood.
      latent_noise_std: reparameterisation noise scale (1 = standard ELBO).
      free_bits: KL floor in nats per latent dimension (see :func:`free_bits_kl`).

    Returns:
      ``step(key, state, batch, loss_weights) -> (state, TrainInfo)``, pure and unjitted:
      jit it, or let :func:`fit` scan it.
    """
    beta_fn = beta if callable(beta) else (lambda _: jnp.asarray(beta, _F32))

    def loss_fn(params, key, batch, loss_weights, beta_now):
        terms = elbo_terms(
            key,
            params,
            model,
            batch,
            beta=beta_now,
            likelihood=likelihood,
            latent_noise_std=latent_noise_std,
            free_bits=free_bits,
        )
        loss = weighted_elbo_loss(-terms.elbo, loss_weights)
        return loss, terms

    def step(key, state: TrainState, batch, loss_weights):
        beta_now = jnp.asarray(beta_fn(state.step), _F32)
        (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, key, batch, loss_weights, beta_now
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        info = TrainInfo(loss, terms.log_lik.mean(), terms.kl.mean(), beta_now)
        return TrainState(params, opt_state, state.step + 1), info

    return step


def beta_schedule(
    beta_start: float = 1e-6,
    beta_final: float = 10.0,
    *,
    warmup_steps: int = 1000,
    every: int = 10,
    factor: float = 1.1,
) -> Callable[[jax.Array], jax.Array]:
    """The authors' shapes beta warm-up: ``beta_start`` for ``warmup_steps``, then times
    ``factor`` every ``every`` steps, capped at ``beta_final``. Returns ``step -> beta``."""

    def fn(step):
        n = jnp.maximum(step - warmup_steps, 0) // every
        return jnp.minimum(beta_start * jnp.power(factor, n.astype(_F32)), beta_final)

    return fn


def fit(key, state, step_fn, data, weights, *, num_steps, batch_size, mode="epoch", mask=None,
        batch_sharding=None):
    """Run ``num_steps`` weighted training steps in one ``lax.scan`` (one compiled program).

    Checks its concrete inputs first (``ValueError``): ``weights`` has one entry per row of
    ``data``, finite, ``>= 0``, not all zero on valid rows. Then :func:`fit_unchecked`, which
    documents the arguments.
    """
    _check_fit_inputs(data, weights, mask, num_steps, batch_size)
    return fit_unchecked(key, state, step_fn, data, weights, num_steps=num_steps, batch_size=batch_size,
                         mode=mode, mask=mask, batch_sharding=batch_sharding)  # fmt: skip


def _check_fit_inputs(data, weights, mask, num_steps, batch_size) -> None:
    rows = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in jax.tree.leaves(data)}
    if len(rows) != 1 or None in rows:
        raise ValueError(f"data leaves must share one leading axis, got sizes {sorted(map(str, rows))}")
    check_weights(weights, rows.pop(), mask)
    check_int("num_steps", num_steps, minimum=0)
    check_int("batch_size", batch_size, minimum=1)


@functools.partial(
    jax.jit, static_argnames=("step_fn", "num_steps", "batch_size", "mode", "batch_sharding")
)
def fit_unchecked(
    key: jax.Array,
    state: TrainState,
    step_fn: Callable,
    data: PyTree,
    weights: jax.Array,
    *,
    num_steps: int,
    batch_size: int,
    mode: Literal["sample", "epoch"] = "epoch",
    mask: jax.Array | None = None,
    batch_sharding: jax.sharding.Sharding | None = None,
) -> tuple[TrainState, TrainInfo]:
    """Run ``num_steps`` weighted training steps in one ``lax.scan`` (one compiled program).

    Args:
      key: PRNG key (split into the batch plan and per-step keys).
      state: the :class:`TrainState` to continue from (fine-tuning), or a fresh one.
      step_fn: from :func:`make_train_step`.
      data: pytree of device arrays with leading axis ``N`` (a fixed-capacity buffer).
      weights: ``(N,)`` dataset weights, any scale, 0 on padding (e.g. ``rank_weights`` or
        the copy weights of ``duplicate_copies`` with ``data`` gathered accordingly).
      num_steps: number of updates; a fraction of an epoch is ``ceil(frac * N / B)``.
      batch_size: minibatch size.
      mode: ``"epoch"`` (weights in the loss) or ``"sample"`` (``p ∝ w``, unweighted loss).
      mask: optional ``(N,)`` bool of valid slots.
      batch_sharding: data parallelism: a sharding of each minibatch's leading axis over
        devices (:func:`wrjax.parallel.batch_sharding`); with the state replicated, XLA then
        computes each device's share of the batch and all-reduces the gradient. ``None``
        (default) leaves placement to XLA (one device).

    Returns:
      ``(state, info)`` with ``info`` fields of shape ``(num_steps,)``.

    The data size, the weights and the mask are traced: a buffer that fills up, or new
    weights after each retrain, reuse the compiled program.
    """
    plan_key, steps_key = jax.random.split(key)
    plan = weighted_batches(
        plan_key, weights, num_steps=num_steps, batch_size=batch_size, mode=mode, mask=mask
    )
    step_keys = jax.random.split(steps_key, num_steps)

    def body(state, xs):
        k, idx, lw = xs
        batch = jax.tree.map(lambda a: a[idx], data)
        if batch_sharding is not None:
            batch, lw = jax.lax.with_sharding_constraint((batch, lw), batch_sharding)
        return step_fn(k, state, batch, lw)

    return jax.lax.scan(body, state, (step_keys, plan.indices, plan.loss_weights))


class History(NamedTuple):
    """What :func:`train` did, host values, one entry per chunk of updates.

    Save it with the state (``history._asdict()`` is JSON) and pass it back to resume;
    :meth:`from_dict` reads it back (also an older record without ``metrics``).
    """

    step: list[int]  # updates done at the end of the chunk (``state.step``)
    loss: list[float]  # mean optimised loss (weighted -ELBO) over the chunk's updates
    log_lik: list[float]  # mean log p(x|z)
    kl: list[float]  # mean KL
    beta: list[float]  # beta of the chunk's last update
    seconds: list[float]  # wall time since the first call started (compilation included)
    metrics: list[dict]  # validate(state) after the chunk ({} without validate)

    @classmethod
    def empty(cls) -> "History":
        return cls([], [], [], [], [], [], [])

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        n = len(d["step"])
        return cls(*(list(d.get(f, [{}] * n if f == "metrics" else [])) for f in cls._fields))


def train(
    key: jax.Array,
    state: TrainState,
    step_fn: Callable,
    data: PyTree,
    weights: jax.Array,
    *,
    num_steps: int,
    batch_size: int,
    mode: Literal["sample", "epoch"] = "epoch",
    mask: jax.Array | None = None,
    chunk_steps: int | None = None,
    chunk_key: Callable[[int], jax.Array] | None = None,
    history: History | None = None,
    validate: Callable[[TrainState], dict] | None = None,
    on_chunk: Callable[[TrainState, History], TrainState | None] | None = None,
    time_limit_s: float | None = None,
    progress: bool | str | None = None,
    batch_sharding: jax.sharding.Sharding | None = None,
) -> tuple[TrainState, History]:
    """The one training loop: ``fit`` in chunks, with history, validation, hooks and resuming.

    Trains from ``int(state.step)`` up to ``num_steps`` updates in all (a fresh state: exactly
    ``num_steps``), ``chunk_steps`` at a time (default: all in one chunk: exactly
    ``fit(chunk_key(state.step), ...)``). After each chunk it appends the chunk's
    means to the history, then calls ``validate`` and ``on_chunk``.

    Args:
      key, state, step_fn, data, weights, batch_size, mode, mask, batch_sharding: as
        :func:`fit` (checked once, here).
      num_steps: the step count to reach (``state.step`` counts the updates done).
      chunk_steps: updates per compiled ``fit`` call; the granularity of the history, the
        progress lines, ``on_chunk`` and ``time_limit_s``. ``None``: one chunk.
      chunk_key: ``chunk_key(steps_done) -> key`` of the chunk starting after ``steps_done``
        updates. Default ``fold_in(key, steps_done)``, so a resumed run draws the same
        batches as an uninterrupted one; e.g. ``lambda done: epoch_keys[done // spe]``
        reproduces one key per epoch, ``lambda done: key`` one ``fit`` call.
      history: the history of the run being resumed (appended to, in place); ``None``: new.
      validate: ``validate(state) -> dict`` of metrics after each chunk (``history.metrics``).
      on_chunk: ``on_chunk(state, history) -> state | None`` after each chunk (checkpoints;
        changes of the optimiser state such as a learning-rate plateau): a returned state
        replaces the current one.
      time_limit_s: stop after the chunk that passes this wall time (of this call).
      progress: ``None``/``False`` silent; ``True`` or a label: one flushed line per chunk.

    Returns:
      ``(state, history)``.

    Raises:
      FloatingPointError: a non-finite loss, naming the first step that had one.
    """
    _check_fit_inputs(data, weights, mask, num_steps, batch_size)
    if chunk_steps is not None:
        check_int("chunk_steps", chunk_steps, minimum=1)
    history = History.empty() if history is None else history
    if chunk_key is None:
        chunk_key = lambda done: jax.random.fold_in(key, done)  # noqa: E731
    label = progress if isinstance(progress, str) else ""
    start = time.perf_counter()
    offset = history.seconds[-1] if history.seconds else 0.0  # wall time of earlier calls
    done = int(state.step)
    while done < num_steps:
        n = min(chunk_steps or num_steps, num_steps - done)
        state, info = fit_unchecked(
            chunk_key(done), state, step_fn, data, weights, num_steps=n, batch_size=batch_size,
            mode=mode, mask=mask, batch_sharding=batch_sharding,
        )  # fmt: skip
        info = jax.tree.map(np.asarray, info)
        before, done = done, done + n
        finite = np.isfinite(info.loss)
        history.step.append(done)
        history.loss.append(float(info.loss.mean()))
        history.log_lik.append(float(info.log_lik.mean()))
        history.kl.append(float(info.kl.mean()))
        history.beta.append(float(info.beta[-1]))
        history.seconds.append(offset + time.perf_counter() - start)
        history.metrics.append(dict(validate(state)) if validate is not None and finite.all() else {})
        if progress:
            extra = "".join(f"  {k} {v:.4g}" if isinstance(v, (int, float)) else f"  {k} {v}"
                            for k, v in history.metrics[-1].items())
            print(f"{f'[{label}] ' if label else ''}step {done}/{num_steps}  "
                  f"loss {history.loss[-1]:.4g}  log_lik {history.log_lik[-1]:.4g}  "
                  f"kl {history.kl[-1]:.4g}  beta {history.beta[-1]:.3g}{extra}  "
                  f"{history.seconds[-1]:.1f} s", flush=True)
        if not finite.all():
            first = before + 1 + int(np.argmin(finite))
            raise FloatingPointError(
                f"non-finite loss {float(info.loss[first - before - 1])} at step {first} "
                f"(chunk of steps {before + 1}-{done})")
        if on_chunk is not None and (new := on_chunk(state, history)) is not None:
            state = new
        if time_limit_s is not None and time.perf_counter() - start >= time_limit_s:
            break
    return state, history
