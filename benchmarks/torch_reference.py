"""The PyTorch reference for the shapes VAEs' train step (imports torch and numpy, never jax).

The same models as ``wrjax.tasks.shapes.make_model`` (``squares2d``: the authors' ShapesVAE;
``dsprites``: the paper's appendix C.4 VAE), written the way a PyTorch user would: ``Conv2d``
encoder, ``ConvTranspose2d(k, s, (k-1)//2, output_padding=s-1)`` decoder, the Bernoulli ELBO
(batch mean), ``torch.optim.Adam(lr=1e-3)``, eager mode, ``torch.get_num_threads()`` threads.

Two uses:

* imported (``benchmarks/decoder_grad.py`` with ``--torch-path``): :func:`torch_step_ms`;
* as a timing server in its own virtual environment, so that torch's numpy never meets
  jax's (``benchmarks/train_step.py --torch-python VENV/bin/python`` starts it)::

      python benchmarks/torch_reference.py --serve squares2d

  reads lines ``time N`` on stdin, answers each with ``{"ms": [...]}`` (N timed steps, each
  in milliseconds) on stdout; the first line it prints is ``{"ready": ..., "torch": ...}``.

Make the environment (torch is not a wrjax dependency; on this project's machines
``torch==2.13.0`` is the CPU build on local disk)::

    python -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch==2.13.0 numpy
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np


def build_step(preset: str, batch_np: np.ndarray):
    """``(step, torch_version)``: ``step()`` runs one Adam step of ``preset`` on ``batch_np``
    (``(B, 64, 64)`` in {0, 1}). Raises ``ImportError`` without torch."""
    import torch
    from torch import nn

    torch.manual_seed(0)

    def conv(cin, cout, k, s):
        return nn.Conv2d(cin, cout, k, stride=s, padding=(k - 1) // 2)

    def convt(cin, cout, k, s):
        p = (k - 1) // 2
        return nn.ConvTranspose2d(cin, cout, k, stride=s, padding=p, output_padding=s - 1)

    if preset == "squares2d":
        enc_c = [(1, 4, 3, 1), (4, 8, 5, 2), (8, 8, 3, 1), (8, 16, 5, 2), (16, 16, 3, 1), (16, 16, 3, 1),
                 (16, 16, 5, 2), (16, 16, 3, 1), (16, 16, 3, 1), (16, 16, 5, 2), (16, 16, 3, 1)]
        enc_fc, d = [256, 32], 2
        dec_fc, start = [32, 256], (16, 4, 4)
        dec_c = [(16, 32, 3, 1), (32, 32, 5, 2), (32, 32, 3, 1), (32, 16, 5, 2), (16, 16, 3, 1),
                 (16, 16, 3, 1), (16, 16, 5, 2), (16, 8, 3, 1), (8, 8, 3, 1), (8, 8, 5, 2), (8, 1, 3, 1)]
    elif preset == "dsprites":
        enc_c = [(1, 32, 5, 2), (32, 64, 5, 2), (64, 128, 5, 2)]
        enc_fc, d = [8192, 4096, 1024], 5
        dec_fc, start = [1024, 4096, 8192], (128, 8, 8)
        dec_c = [(128, 64, 5, 2), (64, 32, 5, 2), (32, 1, 5, 2)]
    else:
        raise ValueError(f"unknown preset {preset!r}; choose squares2d or dsprites")
    enc = []
    for cin, cout, k, s in enc_c:
        enc += [conv(cin, cout, k, s), nn.ReLU()]
    enc.append(nn.Flatten())
    for a, b in zip(enc_fc[:-1], enc_fc[1:]):
        enc += [nn.Linear(a, b), nn.ReLU()]
    enc.append(nn.Linear(enc_fc[-1], 2 * d))
    dec = []
    for a, b in zip([d] + dec_fc[:-1], dec_fc):
        dec += [nn.Linear(a, b), nn.ReLU()]
    dec.append(nn.Unflatten(1, start))
    for i, (cin, cout, k, s) in enumerate(dec_c):
        dec.append(convt(cin, cout, k, s) if s > 1 else conv(cin, cout, k, s))
        if i < len(dec_c) - 1:
            dec.append(nn.ReLU())
    enc, dec = nn.Sequential(*enc), nn.Sequential(*dec)
    params = list(enc.parameters()) + list(dec.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    x = torch.as_tensor(batch_np, dtype=torch.float32)[:, None]

    def step():
        out = enc(x)
        mu, logvar = out[:, :d], out[:, d:]
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        logits = dec(z)
        nll = nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum((1, 2, 3))
        kl = 0.5 * (logvar.exp() + mu**2 - 1 - logvar).sum(1)
        loss = (nll + kl).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    return step, torch.__version__


def timed_steps_ms(step, n: int) -> list[float]:
    """Run ``step`` ``n`` times; each step's wall time in milliseconds."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        times.append(1e3 * (time.perf_counter() - t0))
    return times


def torch_step_ms(preset: str, batch_np: np.ndarray, repeats: int):
    """Median milliseconds of one PyTorch Adam step of ``preset`` after 2 warm-up steps, and
    the torch version; ``None`` if torch does not import."""
    try:
        step, version = build_step(preset, batch_np)
    except ImportError:
        return None
    timed_steps_ms(step, 2)
    return statistics.median(timed_steps_ms(step, repeats)), version


def serve(preset: str, batch: int, seed: int) -> None:
    """The timing server of the module docstring."""
    import torch

    rng = np.random.default_rng(seed)
    step, version = build_step(preset, (rng.random((batch, 64, 64)) < 0.2).astype(np.uint8))
    timed_steps_ms(step, 3)  # warm-up: allocator, oneDNN primitive caches
    print(json.dumps({"ready": preset, "torch": version, "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if cmd[:1] == ["time"]:
            print(json.dumps({"ms": timed_steps_ms(step, int(cmd[1]))}), flush=True)
        elif cmd[:1] == ["quit"]:
            break


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--serve", choices=["squares2d", "dsprites"], required=True)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    serve(a.serve, a.batch, a.seed)
