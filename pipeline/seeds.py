"""Seed derivation: every random draw of the engine comes from one documented hash.

A member is a pure function of ``(run seed, init time, checkpoint index, pair index)``. The stream of
pair ``p`` of checkpoint ``k`` at init ``t`` is

``numpy.random.SeedSequence([run_seed, purpose, t_seconds + 2**40, k, p]).generate_state(1, uint64)[0]``

fed to ``torch.Generator("cpu").manual_seed``. ``t_seconds`` is the init time in whole seconds since
1970-01-01 (offset by ``2**40`` so that times before 1970 stay non-negative); ``purpose`` separates
independent uses (``PURPOSE_PERTURBATION`` = 0, ``PURPOSE_RANK_TIES`` = 1, ``PURPOSE_STOCHASTIC`` = 2 and
``PURPOSE_MODEL_NOISE`` = 3 (the noise inputs of a stochastic model), whose stream index is ``2 p`` for
the plus member of pair ``p`` and ``2 p + 1`` for the minus member). Draws are made on the CPU
and moved to the device, so the random numbers do not depend on the device.
"""

from __future__ import annotations

import numpy as np
import torch

PURPOSE_PERTURBATION = 0
PURPOSE_RANK_TIES = 1
PURPOSE_STOCHASTIC = 2  # stochastic forcing; "pair" is 2 x pair + (1 for the minus member)
PURPOSE_MODEL_NOISE = 3  # noise inputs of a stochastic model; "pair" as for PURPOSE_STOCHASTIC
_TIME_OFFSET = 2**40


def time_seconds(time: np.datetime64) -> int:
    """Whole seconds since the epoch, offset by ``2**40`` (non-negative for any plausible date)."""
    return int(np.asarray(time).astype("datetime64[s]").astype(np.int64)) + _TIME_OFFSET


def derive_seed(run_seed: int, time: np.datetime64, checkpoint: int, pair: int, purpose: int = 0) -> int:
    """64-bit seed of one (run seed, init time, checkpoint, pair, purpose) tuple (see module docstring)."""
    if run_seed < 0:
        raise ValueError("run seed must be non-negative")
    ss = np.random.SeedSequence([int(run_seed), int(purpose), time_seconds(time), int(checkpoint), int(pair)])
    return int(ss.generate_state(1, dtype=np.uint64)[0])


def generator(
    run_seed: int, time: np.datetime64, checkpoint: int, pair: int, purpose: int = 0
) -> torch.Generator:
    """A fresh CPU ``torch.Generator`` seeded by :func:`derive_seed`."""
    g = torch.Generator(device="cpu")
    g.manual_seed(derive_seed(run_seed, time, checkpoint, pair, purpose))
    return g
