"""A toy of weighted training: a 2-D-latent VAE on 8 binary prototypes whose score is
their index. Rank weighting (eq. 3) with small k makes the model spend its capacity on the
best prototypes: their reconstruction log-likelihood rises, the worst ones' falls.

Run:  python experiments/toy_weighting.py
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import wrjax
from wrjax.tasks.toy import BitVAE, init_params


def main():
    rng = np.random.default_rng(0)
    protos = rng.random((8, 64)) < 0.5
    labels = np.arange(2048) % 8
    x = jnp.asarray(protos[labels], jnp.float32)
    scores = jnp.asarray(labels, jnp.float32)  # prototype 7 is the best
    model = BitVAE(length=64, latent_dim=2, hidden=32)  # the toy task's MLP VAE
    key = jax.random.key(0)
    params = init_params(key, model)
    opt = optax.adam(3e-3)
    step = wrjax.make_train_step(model, opt, beta=0.5)
    print("k      " + " ".join(f"proto{i:d}" for i in range(8)) + "   (mean log p(x|z), nats)")
    for k in (np.inf, 1e-1, 1e-3):
        w = wrjax.rank_weights(scores, k)
        state, _ = wrjax.fit(key, wrjax.init_train_state(params, opt), step, x, w,
                             num_steps=600, batch_size=64)
        ll = wrjax.elbo_terms(key, state.params, model, x[:8]).log_lik
        print(f"{k:<6g} " + " ".join(f"{float(v):6.1f}" for v in ll))


if __name__ == "__main__":
    main()
