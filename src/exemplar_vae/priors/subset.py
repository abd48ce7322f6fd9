"""A keyed pseudo-random subset of M of N exemplars, drawn without O(N) work.

The exemplar prior's training form uses, at every step, a fresh uniformly random subset of M of the N
exemplars (without replacement, exactly M members). ``torch.randperm(N)[:M]`` costs O(N) time and memory
per step, and in multi-process training every process must draw the same subset. Instead a shared integer
key selects a pseudo-random permutation pi of {0, ..., N - 1}, and the subset is

    S = {pi(i) : i < M}.

Membership of any id j is the O(1) test ``pi^{-1}(j) < M`` (``contains``), which is all retrieval augmented
training needs for the ids it sees; the members themselves can be listed in O(M) (``members``) for the
exact prior. Every process that builds the subset from the same key (``subset_key(seed, epoch, step)``)
gets the same subset, on any device.

Construction. pi is a balanced Feistel network on 2h bits (the smallest even width with 2^(2h) >= N,
h >= 1): a value is split into halves (L, R) of h bits and each round maps (L, R) -> (R, L xor F(R, k_r))
with a keyed round function F. By Luby and Rackoff (1988) a Feistel network with enough rounds (3, or 4
for the strong form) of a pseudo-random function is a pseudo-random permutation of the 2^(2h) values; the
default is 6 rounds. Cycle-walking makes it a bijection of [0, N): the network is applied again while the
value is >= N, which follows pi's cycle on [0, 2^(2h)) to the next value inside [0, N); the inverse walks
the same cycle backwards. Since 2^(2h) < 4N the expected number of walks is below 4.

The round keys come from the 63-bit key through splitmix64 (in Python integers, masked to 64 bits). F
mixes the h-bit R with two 32-bit round-key words through two rounds of a multiply-xorshift hash on 32
bits and keeps its top h bits.

The network runs in numpy on the host, whatever the ids' device: unsigned 32-bit arithmetic wraps modulo
2^32 as the hash needs, and a pass is ~200 operations on a few thousand ids, where each tensor operation's
dispatch (or, on a GPU, kernel launch) would cost more than its arithmetic. The ids go to the host once
and the result comes back to their device.
"""

from __future__ import annotations

import operator

import numpy as np
import torch
from torch import Tensor

from exemplar_vae.errors import ConfigError

__all__ = ["KeyedSubset", "subset_key"]

_MASK32 = (1 << 32) - 1
_MASK63 = (1 << 63) - 1
_MASK64 = (1 << 64) - 1
_GOLDEN64 = 0x9E3779B97F4A7C15
_MAX_TOTAL = 1 << 62  # 2h <= 62 keeps every value, and every intermediate product, inside int64
# The multipliers of the 32-bit multiply-xorshift hash (C. Wellons' "lowbias32").
_HASH_MUL1 = 0x7FEB352D
_HASH_MUL2 = 0x846CA68B


def _splitmix64(x: int) -> int:
    """The splitmix64 finaliser (Steele, Lea, Flood 2014) of a 64-bit value, in Python integers."""
    z = x & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def subset_key(seed: int, epoch: int, step: int) -> int:
    """A well-mixed 63-bit key for the subset of training step ``step`` of epoch ``epoch`` of a run seeded
    ``seed``: every process of a distributed run derives the same key, hence the same subset.

    Each number is mixed in by its own splitmix64 pass (integers of any sign are taken modulo 2^64), so
    keys of neighbouring steps, epochs or seeds are unrelated. Returns an int in [0, 2^63).
    """
    z = _splitmix64(operator.index(seed) ^ 0x6A09E667F3BCC908)
    z = _splitmix64(z ^ _splitmix64(operator.index(epoch) + _GOLDEN64))
    z = _splitmix64(z ^ _splitmix64(operator.index(step) + 2 * _GOLDEN64))
    return z & _MASK63


_U32_16, _U32_15 = np.uint32(16), np.uint32(15)


def _hash32(x: np.ndarray) -> np.ndarray:
    """A bijective multiply-xorshift hash of 32-bit values ("lowbias32"): [n] uint32 -> [n] uint32 (the
    products wrap modulo 2^32)."""
    x = x ^ (x >> _U32_16)
    x *= np.uint32(_HASH_MUL1)
    x ^= x >> _U32_15
    x *= np.uint32(_HASH_MUL2)
    x ^= x >> _U32_16
    return x


class KeyedSubset:
    """The subset {pi(i) : i < M} of range(N) under a keyed pseudo-random permutation pi.

    Args:
        num_total: N >= 1, the number of exemplars (at most 2^62).
        size: M, 1 <= M <= N, the number of members.
        key: the 63-bit key (an int in [0, 2^63)) selecting the permutation; see ``subset_key`` and
            ``draw``.
        rounds: the number of Feistel rounds (>= 1; 4 or more for a strong pseudo-random permutation).

    Raises:
        ConfigError: an argument out of range.

    The object is immutable. All methods take and return tensors on the input's device; ids are integer
    tensors of any shape with values in [0, N) and are computed in int64.
    """

    __slots__ = ("_num_total", "_size", "_key", "_rounds", "_half_bits", "_round_keys")
    _num_total: int
    _size: int
    _key: int
    _rounds: int
    _half_bits: int  # h: values have 2h bits
    _round_keys: tuple[tuple[int, int], ...]  # per round, two 32-bit words

    def __init__(self, num_total: int, size: int, key: int, rounds: int = 6) -> None:
        try:
            num_total, size, key, rounds = (operator.index(v) for v in (num_total, size, key, rounds))
        except TypeError:
            raise ConfigError(
                f"subset num_total, size, key and rounds must be integers, got {num_total!r}, {size!r}, "
                f"{key!r}, {rounds!r}"
            ) from None
        if not 1 <= num_total <= _MAX_TOTAL:
            raise ConfigError(f"subset num_total must be in [1, 2^62], got {num_total}")
        if not 1 <= size <= num_total:
            raise ConfigError(f"subset size must be in [1, num_total={num_total}], got {size}")
        if not 0 <= key <= _MASK63:
            raise ConfigError(f"subset key must be an int in [0, 2^63), got {key}")
        if rounds < 1:
            raise ConfigError(f"subset rounds must be >= 1, got {rounds}")
        bits = max(2, (num_total - 1).bit_length())
        bits += bits % 2
        round_keys: list[tuple[int, int]] = []
        state = key
        for _ in range(rounds):
            state = (state + _GOLDEN64) & _MASK64
            z = _splitmix64(state)
            round_keys.append((z & _MASK32, z >> 32))
        for name, value in (
            ("_num_total", num_total),
            ("_size", size),
            ("_key", key),
            ("_rounds", rounds),
            ("_half_bits", bits // 2),
            ("_round_keys", tuple(round_keys)),
        ):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    @classmethod
    def draw(cls, num_total: int, size: int, generator: torch.Generator, rounds: int = 6) -> KeyedSubset:
        """A subset whose key is one ``torch.randint(0, 2**62, (1,), generator=generator)`` draw (so a caller
        can pass its per-step generator; the generator advances by that one draw)."""
        key = torch.randint(0, 2**62, (1,), generator=generator, device=generator.device)
        return cls(num_total, size, int(key.item()), rounds)

    @property
    def num_total(self) -> int:
        """N, the size of the permuted range."""
        return self._num_total

    @property
    def size(self) -> int:
        """M, the number of members."""
        return self._size

    @property
    def key(self) -> int:
        """The 63-bit key."""
        return self._key

    @property
    def rounds(self) -> int:
        """The number of Feistel rounds."""
        return self._rounds

    def __repr__(self) -> str:
        return (
            f"KeyedSubset(num_total={self._num_total}, size={self._size}, key={self._key}, "
            f"rounds={self._rounds})"
        )

    def __len__(self) -> int:
        """M, the number of members."""
        return self.size

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KeyedSubset):
            return NotImplemented
        return self._state() == other._state()

    def __hash__(self) -> int:
        return hash(self._state())

    def _state(self) -> tuple[int, int, int, int]:
        return (self._num_total, self._size, self._key, self._rounds)

    # --- the Feistel network on [0, 2^(2h)), in numpy on the host ---

    def _round_function(self, right: np.ndarray, keys: tuple[int, int]) -> np.ndarray:
        """F(R, k): [n] uint32 h-bit values -> [n] uint32 h-bit values."""
        x = _hash32(right ^ np.uint32(keys[0]))
        x = _hash32(x ^ np.uint32(keys[1]))
        return x >> np.uint32(32 - self._half_bits)

    def _halves(self, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[n] uint64 2h-bit values -> their high and low h bits, [n] uint32 each."""
        h = np.uint64(self._half_bits)
        return (v >> h).astype(np.uint32), (v & np.uint64((1 << self._half_bits) - 1)).astype(np.uint32)

    def _joined(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        return (left.astype(np.uint64) << np.uint64(self._half_bits)) | right.astype(np.uint64)

    def _encrypt(self, v: np.ndarray) -> np.ndarray:
        """One pass of the network forward: [n] uint64 in [0, 2^(2h)) -> [n]."""
        left, right = self._halves(v)
        for keys in self._round_keys:
            left, right = right, left ^ self._round_function(right, keys)
        return self._joined(left, right)

    def _decrypt(self, v: np.ndarray) -> np.ndarray:
        """One pass of the network backward (the inverse of ``_encrypt``): [n] -> [n]."""
        left, right = self._halves(v)
        for keys in reversed(self._round_keys):
            left, right = right ^ self._round_function(left, keys), left
        return self._joined(left, right)

    def _walk_host(self, values: np.ndarray, forward: bool) -> np.ndarray:
        """Cycle-walk [n] int64 ids in [0, N): one pass, then again on the entries still >= N only."""
        step = self._encrypt if forward else self._decrypt
        out = step(values.astype(np.uint64))
        pending = np.flatnonzero(out >= self._num_total)
        while pending.size > 0:
            again = step(out[pending])
            out[pending] = again
            pending = pending[again >= self._num_total]
        return out.astype(np.int64)

    def _walk(self, ids: Tensor, forward: bool) -> Tensor:
        """``_walk_host`` of integer ids of any shape and device: [..] -> [..] int64 on ids' device."""
        if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            raise ConfigError(f"subset ids must be an integer tensor, got dtype {ids.dtype}")
        host = ids.detach().reshape(-1).to("cpu", torch.int64).numpy()
        if host.size and (host.min() < 0 or host.max() >= self._num_total):
            raise ConfigError(
                f"subset ids must lie in [0, {self._num_total}), got values in [{host.min()}, {host.max()}]"
            )
        out = self._walk_host(host, forward) if host.size else host
        return torch.from_numpy(out).to(ids.device).reshape(ids.shape)

    # --- the public operations ---

    def permute(self, i: Tensor) -> Tensor:
        """pi(i): [..] integer ids in [0, N) -> [..] int64 in [0, N), on i's device."""
        return self._walk(i, forward=True)

    def inverse(self, j: Tensor) -> Tensor:
        """pi^{-1}(j): [..] integer ids in [0, N) -> [..] int64 in [0, N), on j's device."""
        return self._walk(j, forward=False)

    def members(self, device: torch.device | str | None = None) -> Tensor:
        """The M members pi(0), ..., pi(M - 1): [M] int64, distinct, in [0, N). O(M) time and memory."""
        members = self._walk_host(np.arange(self._size, dtype=np.int64), forward=True)
        return torch.from_numpy(members).to(device)

    def contains(self, ids: Tensor) -> Tensor:
        """Membership ``pi^{-1}(ids) < M``: [..] integer ids in [0, N) -> [..] bool. O(len(ids)) work."""
        return self.inverse(ids) < self._size
