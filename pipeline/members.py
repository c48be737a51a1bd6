"""Member layout: members = checkpoints x perturbation pairs x signs, and the work units.

Numbering (a bijection, documented in docs/engine.md)::

    n_per_ckpt = 2 * n_pairs            (1 for the unperturbed control: pair 0, sign 0)
    number     = checkpoint * n_per_ckpt + 2 * pair + (sign < 0)
    checkpoint = number // n_per_ckpt;  pair = (number % n_per_ckpt) // 2;  sign = +1 if even else -1

A **work unit** is ``(init index, checkpoint, block)``: members
``[block * B, (block + 1) * B)`` of one checkpoint at one init time, ``B`` (the member block, the
batch) an even divisor of ``n_per_ckpt`` so that no pair is split and every unit owns whole chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MemberLayout:
    """Bijection between member numbers and ``(checkpoint, pair, sign)``."""

    n_checkpoints: int
    n_pairs: int  # 0 means the unperturbed control (one member per checkpoint)

    @property
    def per_checkpoint(self) -> int:
        return 1 if self.n_pairs == 0 else 2 * self.n_pairs

    @property
    def size(self) -> int:
        return self.n_checkpoints * self.per_checkpoint

    def number(self, checkpoint: int, pair: int, sign: int) -> int:
        """Member number of ``(checkpoint, pair, sign)``."""
        if self.n_pairs == 0:
            if pair != 0 or sign != 0:
                raise ValueError("the control has pair 0 and sign 0")
            return checkpoint
        if not (0 <= pair < self.n_pairs and sign in (1, -1) and 0 <= checkpoint < self.n_checkpoints):
            raise ValueError(f"no member ({checkpoint}, {pair}, {sign})")
        return checkpoint * self.per_checkpoint + 2 * pair + (1 if sign < 0 else 0)

    def decompose(self, number: np.ndarray | int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(checkpoint, pair, sign)`` arrays of member ``number`` (vectorised)."""
        n = np.asarray(number, dtype=np.int64)
        if np.any((n < 0) | (n >= self.size)):
            raise ValueError("member number out of range")
        ckpt = n // self.per_checkpoint
        if self.n_pairs == 0:
            return ckpt, np.zeros_like(n), np.zeros_like(n)
        local = n % self.per_checkpoint
        return ckpt, local // 2, np.where(local % 2 == 0, 1, -1)

    def coords(self) -> dict[str, np.ndarray]:
        """Coordinates ``checkpoint``, ``pair``, ``sign`` on ``number``."""
        n = np.arange(self.size)
        c, p, s = self.decompose(n)
        return {
            "number": n,
            "checkpoint": c.astype(np.int32),
            "pair": p.astype(np.int32),
            "sign": s.astype(np.int8),
        }


def block_size_for(requested: int, per_checkpoint: int) -> int:
    """Largest valid member block ``<= requested``: a divisor of ``per_checkpoint``, even when paired."""
    if per_checkpoint == 1:
        return 1
    best = 2
    for b in range(2, per_checkpoint + 1, 2):
        if per_checkpoint % b == 0 and b <= max(requested, 2):
            best = b
    return best


@dataclass(frozen=True, order=True)
class WorkUnit:
    """One work unit: init index, checkpoint index, member block index (see module docstring)."""

    checkpoint: int
    init: int
    block: int

    @property
    def name(self) -> str:
        return f"t{self.init:05d}-c{self.checkpoint:03d}-b{self.block:05d}"

    def members(self, layout: MemberLayout, block_size: int) -> np.ndarray:
        start = self.checkpoint * layout.per_checkpoint + self.block * block_size
        return np.arange(start, start + block_size)

    def pairs(self, block_size: int) -> np.ndarray:
        return np.arange(self.block * block_size // 2, (self.block + 1) * block_size // 2)


def work_units(n_inits: int, layout: MemberLayout, block_size: int) -> list[WorkUnit]:
    """All work units, checkpoint-major (so a contiguous shard loads few checkpoints)."""
    nb = layout.per_checkpoint // block_size
    return [WorkUnit(c, i, b) for c in range(layout.n_checkpoints) for i in range(n_inits) for b in range(nb)]


def shard_units(units: list[WorkUnit], shard: tuple[int, int]) -> list[WorkUnit]:
    """Disjoint contiguous split of ``units``: shard ``i`` of ``N`` gets ``units[i*U//N:(i+1)*U//N]``."""
    i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"bad shard {i}/{n}")
    u = len(units)
    return units[i * u // n : (i + 1) * u // n]


def parse_shard(text: str | None, environ: dict[str, str] | None = None) -> tuple[int, int]:
    """``"i/N"``, else ``SLURM_ARRAY_TASK_ID`` / ``SLURM_ARRAY_TASK_COUNT``
    (offset by ``SLURM_ARRAY_TASK_MIN``), else ``(0, 1)``."""
    import os

    from data_catalog.errors import UserError

    env = os.environ if environ is None else environ
    if text:
        try:
            a, b = text.split("/")
            i, n = int(a), int(b)
        except ValueError:
            raise UserError(f"--shard must look like i/N, got {text!r}") from None
    elif "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        i = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        n = int(env["SLURM_ARRAY_TASK_COUNT"])
    else:
        return (0, 1)
    if not (n >= 1 and 0 <= i < n):
        raise UserError(f"shard {i}/{n} is out of range (need 0 <= i < N)")
    return (i, n)
