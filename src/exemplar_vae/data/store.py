"""A compact store of the training inputs (the exemplars), gathered by dataset index.

An Exemplar VAE gathers training rows by index every step (the minibatch, the retrieved exemplars)
and encodes every row once per epoch. :class:`ExemplarStore` holds the [N, D] rows once: as uint8
codes ``k`` (value ``k / 255``) when the data is 8-bit, else as float32; the backing array is a torch
tensor (CPU or CUDA) or a memory-mapped ``.npy`` file (only the gathered rows are read). Every read
returns float32 rows, converted exactly as the loaders do (``codes.to(torch.float32).div_(255.0)``), so
a compact store is bit-identical to the float tensor it replaces: at N = 1,000,000 and D = 784 it takes
784 MB instead of 3.1 GB (or nothing but page cache when memory-mapped).
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeAlias

import numpy as np
import torch
from torch import Tensor

from exemplar_vae.errors import DataError
from exemplar_vae.io import atomic_write

__all__ = ["ExemplarStore"]

# elements per block when checking or copying the whole array (16 MB of float32)
_BLOCK_ELEMENTS = 1 << 22

Array: TypeAlias = Tensor | np.ndarray


def _block_rows(dim: int) -> int:
    return max(1, _BLOCK_ELEMENTS // max(dim, 1))


def _decode(rows: Tensor) -> Tensor:
    """Float32 rows from uint8 codes (exactly as the loaders convert) or float32 rows (as they are)."""
    return rows.to(torch.float32).div_(255.0) if rows.dtype == torch.uint8 else rows


def _from_numpy(array: np.ndarray) -> Tensor:
    """A tensor of a (possibly read-only or memory-mapped) array, copying only when it must."""
    array = np.asarray(array)
    if not (array.flags.writeable and array.flags.c_contiguous):
        array = np.array(array, order="C", copy=True)
    return torch.from_numpy(array)


def _kind(data: Array) -> str | None:
    """ "uint8", "float32", or None for any other dtype (of a tensor or an array)."""
    if isinstance(data, Tensor):
        return {torch.uint8: "uint8", torch.float32: "float32"}.get(data.dtype)
    return {np.dtype(np.uint8): "uint8", np.dtype(np.float32): "float32"}.get(np.dtype(data.dtype))


def _check_rows(shape: tuple[int, ...], what: str) -> None:
    if len(shape) < 2 or shape[0] == 0 or int(np.prod(shape[1:])) == 0:
        raise DataError(
            f"{what} has shape {tuple(shape)}; expected a non-empty [N, D] (or [N, C, H, W]) array"
        )


class ExemplarStore:
    """[N, D] training inputs in [0, 1], held once (uint8 codes when 8-bit, else float32), read by row.

    Build one with :meth:`from_tensor`, :meth:`from_uint8` or :meth:`from_npy`. Reads
    (:meth:`gather`, :meth:`rows`, ``store[index]``, :meth:`float`) return float32 on :attr:`device`.
    A float32 store's :meth:`rows` and :meth:`float` may share memory with the backing tensor: do not
    modify them in place.

    Args:
        data: the backing array, [N, D] uint8 (value ``k / 255``) or float32: a torch tensor, or an
            ``np.memmap`` (read lazily, on the CPU).
    """

    def __init__(self, data: Array) -> None:
        if isinstance(data, np.ndarray) and not isinstance(data, np.memmap):
            data = _from_numpy(data)
        if _kind(data) is None:
            raise DataError(f"exemplar store: dtype {data.dtype} is neither uint8 nor float32")
        if data.ndim != 2:
            raise DataError(f"exemplar store: shape {tuple(data.shape)} is not [N, D]")
        _check_rows(tuple(data.shape), "exemplar store")
        self._data: Array = data

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_tensor(cls, x: Tensor, compact: bool = True) -> ExemplarStore:
        """A store of float rows: uint8 codes when every value is exactly k/255, else float32.

        Args:
            x: [N, D] floating values in [0, 1] (another float dtype is first cast to float32), on any
                device; the store lives there.
            compact: try uint8 codes; the check is bit for bit, in blocks of rows:
                ``round(x * 255).to(uint8).to(float32).div_(255.0)`` must reproduce ``x`` exactly. False
                keeps float32 rows of any value (no pass over the data; e.g. a prior's inputs that are
                not pixel values).

        Returns:
            The store; a float32 store shares ``x`` (no copy) when ``x`` is contiguous float32.

        Raises:
            DataError: ``x`` is not a non-empty 2-D float tensor, or has a value outside [0, 1] (or NaN).
        """
        if not isinstance(x, Tensor) or not x.is_floating_point():
            kind = x.dtype if isinstance(x, Tensor) else type(x).__name__
            raise DataError(
                f"exemplar store: from_tensor needs a float tensor, got {kind} (use from_uint8 for codes)"
            )
        if x.ndim != 2:
            raise DataError(f"exemplar store: from_tensor needs [N, D] rows, got shape {tuple(x.shape)}")
        _check_rows(tuple(x.shape), "exemplar store: from_tensor input")
        x = x.detach()
        if not compact:
            return cls(x.to(torch.float32).contiguous())
        codes: Tensor | None = torch.empty(x.shape, dtype=torch.uint8, device=x.device)
        step = _block_rows(x.shape[1])
        for start in range(0, x.shape[0], step):
            block = x[start : start + step].to(torch.float32)
            low, high = torch.aminmax(block)
            if not (low.item() >= 0.0 and high.item() <= 1.0):
                bad = low.item() if not low.item() >= 0.0 else high.item()
                raise DataError(f"exemplar store: from_tensor values must lie in [0, 1], found {bad:.6g}")
            if codes is not None:
                k = torch.round(block * 255.0).to(torch.uint8)
                back = k.to(torch.float32).div_(255.0)
                if torch.equal(back.view(torch.int32), block.contiguous().view(torch.int32)):
                    codes[start : start + step] = k
                else:
                    codes = None  # not 8-bit: keep float32, check the remaining range only
        if codes is not None:
            return cls(codes)
        return cls(x.to(torch.float32).contiguous())

    @classmethod
    def from_uint8(cls, codes: Array) -> ExemplarStore:
        """A compact store of uint8 codes ``k`` (value ``k / 255``).

        Args:
            codes: uint8 [N, D], [N, H, W] or [N, C, H, W] (flattened to [N, D]): a tensor (kept on its
                device, no copy when contiguous), an array, or an ``np.memmap`` (kept mapped).

        Raises:
            DataError: not uint8, or not a non-empty array of 2 to 4 dimensions.
        """
        if _kind(codes) != "uint8":
            raise DataError(f"exemplar store: from_uint8 needs uint8 codes, got {codes.dtype}")
        if not 2 <= codes.ndim <= 4:
            raise DataError(
                f"exemplar store: from_uint8 needs [N, D] or [N, C, H, W], got shape {tuple(codes.shape)}"
            )
        _check_rows(tuple(codes.shape), "exemplar store: from_uint8 input")
        n = codes.shape[0]
        if isinstance(codes, Tensor):
            return cls(codes.detach().reshape(n, -1).contiguous())
        return cls(codes.reshape(n, -1))

    @classmethod
    def from_npy(cls, path: str | Path, mmap: bool = True) -> ExemplarStore:
        """A store of a ``.npy`` file: uint8 codes (value ``k / 255``) or float32 values in [0, 1].

        The header (dtype, shape, size) is checked before anything large is read or allocated.

        Args:
            path: a ``.npy`` file of shape [N, D], [N, H, W] or [N, C, H, W] (flattened to [N, D]).
            mmap: map the file (``np.load(path, mmap_mode="r")``): only gathered rows are read, and a
                float32 file is scanned once, in blocks, for its range. Without it the file is loaded
                into a CPU tensor, and a float32 file that is 8-bit-exact becomes compact.

        Raises:
            DataError: the file is missing, not a .npy file, truncated, not uint8/float32, not 2 to 4
                dimensions, empty, or float values outside [0, 1]; the message names the file.
        """
        path = Path(path)
        if not path.is_file():
            raise DataError(f"exemplar file {path} does not exist")
        shape, fortran, dtype, offset = _read_npy_header(path)
        what = f"exemplar file {path}"
        if dtype not in (np.dtype(np.uint8), np.dtype(np.float32)):
            raise DataError(f"{what} holds {dtype}; expected uint8 codes (k/255) or float32 values in [0, 1]")
        if not 2 <= len(shape) <= 4:
            raise DataError(f"{what} has shape {shape}; expected [N, D], [N, H, W] or [N, C, H, W]")
        if shape[0] == 0 or int(np.prod(shape[1:])) == 0:
            raise DataError(f"{what} holds an empty array of shape {shape}")
        needed = offset + int(np.prod(shape)) * dtype.itemsize
        size = path.stat().st_size
        if size < needed:
            raise DataError(f"{what} is truncated: {size} bytes, the header {shape} {dtype} needs {needed}")
        if fortran and mmap:
            raise DataError(
                f"{what} is in Fortran order; re-save it with np.save(f, np.ascontiguousarray(a))"
            )
        try:
            array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise DataError(
                f"{what} is not readable: {str(err).splitlines()[0] if str(err) else err!r}"
            ) from err
        n = shape[0]
        if dtype == np.uint8:
            return cls.from_uint8(array.reshape(n, -1))
        flat = array.reshape(n, -1)
        step = _block_rows(flat.shape[1])
        for start in range(0, n, step):
            block = flat[start : start + step]
            low, high = float(block.min()), float(block.max())
            if not (low >= 0.0 and high <= 1.0):
                bad = low if not low >= 0.0 else high
                raise DataError(
                    f"{what} holds float values outside [0, 1], e.g. {bad:.6g} (rows from {start})"
                )
        return cls(flat) if mmap else cls.from_tensor(_from_numpy(flat))

    # ------------------------------------------------------------------ reads

    def gather(self, ids: Tensor) -> Tensor:
        """Rows by index, in the order given (repeats allowed).

        Args:
            ids: [B] integer ids (int64), on any device.

        Returns:
            [B, D] float32 on :attr:`device` (uint8 codes converted as ``codes.to(float32).div_(255.0)``).
        """
        if ids.dtype in (torch.bool,) or ids.is_floating_point() or ids.is_complex():
            raise TypeError(f"ExemplarStore.gather needs integer ids, got {ids.dtype}")
        if ids.ndim != 1:
            raise ValueError(f"ExemplarStore.gather needs [B] ids, got shape {tuple(ids.shape)}")
        data = self._data
        if isinstance(data, Tensor):
            return _decode(data.index_select(0, ids.to(device=data.device, dtype=torch.int64)))
        # memory-mapped: read each distinct row once, in file order, then restore the order asked for
        host = ids.detach().to(device="cpu", dtype=torch.int64).numpy()
        unique, inverse = np.unique(host, return_inverse=True)
        rows = torch.from_numpy(np.ascontiguousarray(data[unique]))
        return _decode(rows[torch.from_numpy(inverse.reshape(-1))])

    def rows(self, start: int, stop: int) -> Tensor:
        """The contiguous rows ``start:stop`` (for chunked encoding).

        Returns:
            [stop - start, D] float32 on :attr:`device` (a view of a float32 tensor store).

        Raises:
            IndexError: not ``0 <= start <= stop <= N``.
        """
        if not 0 <= start <= stop <= self.num_rows:
            raise IndexError(f"ExemplarStore.rows({start}, {stop}) is outside 0..{self.num_rows}")
        data = self._data
        if isinstance(data, Tensor):
            return _decode(data[start:stop])
        return _decode(torch.from_numpy(np.array(data[start:stop])))

    def __getitem__(self, index: int | slice | Tensor) -> Tensor:
        """Float32 rows like ``train_x[index]``: an int gives [D], a slice [n, D], an int tensor [*ids, D]
        (a bool tensor selects rows)."""
        if isinstance(index, Tensor):
            if index.dtype == torch.bool:
                return self.gather(index.to("cpu").nonzero().reshape(-1))
            if index.ndim == 0:
                return self[int(index.item())]
            return self.gather(index.reshape(-1)).reshape(*index.shape, self.dim)
        if isinstance(index, slice):
            start, stop, step = index.indices(self.num_rows)
            if step == 1:
                return self.rows(start, max(start, stop))
            return self.gather(torch.arange(start, stop, step, dtype=torch.int64))
        if isinstance(index, (int, np.integer)):
            i = int(index)
            if not -self.num_rows <= i < self.num_rows:
                raise IndexError(f"ExemplarStore index {i} is outside 0..{self.num_rows - 1}")
            i %= self.num_rows
            return self.rows(i, i + 1)[0]
        raise TypeError(f"ExemplarStore indices are ints, slices or tensors, not {type(index).__name__}")

    def float(self) -> Tensor:
        """All rows, [N, D] float32 on :attr:`device` (for small data; the backing tensor itself for a
        float32 tensor store)."""
        return self.rows(0, self.num_rows)

    # ------------------------------------------------------------------ description

    def __len__(self) -> int:
        return self.num_rows

    def __repr__(self) -> str:
        kind = "uint8" if self.compact else "float32"
        where = "memmap" if self.mapped_bytes else str(self.device)
        return f"ExemplarStore({self.num_rows} x {self.dim}, {kind}, {where})"

    @property
    def ndim(self) -> int:
        """2, like the [N, D] tensor the store stands for."""
        return 2

    @property
    def shape(self) -> tuple[int, int]:
        """(N, D)."""
        return (int(self._data.shape[0]), int(self._data.shape[1]))

    @property
    def num_rows(self) -> int:
        """N, the number of rows."""
        return int(self._data.shape[0])

    @property
    def dim(self) -> int:
        """D, the values per row."""
        return int(self._data.shape[1])

    @property
    def device(self) -> torch.device:
        """Where reads are returned: the backing tensor's device (the CPU for a memory map)."""
        return self._data.device if isinstance(self._data, Tensor) else torch.device("cpu")

    @property
    def compact(self) -> bool:
        """True for uint8 codes, False for float32 values."""
        return _kind(self._data) == "uint8"

    @property
    def nbytes(self) -> int:
        """Bytes held in (host or device) memory by the backing array; 0 for a memory map."""
        if isinstance(self._data, Tensor):
            return self._data.numel() * self._data.element_size()
        return 0

    @property
    def mapped_bytes(self) -> int:
        """Bytes of the memory-mapped file region (0 for a tensor store)."""
        return 0 if isinstance(self._data, Tensor) else int(self._data.nbytes)

    @property
    def backing(self) -> Array:
        """The backing array itself, [N, D] uint8 or float32 (a tensor, or an ``np.memmap``)."""
        return self._data

    # ------------------------------------------------------------------ new stores, files

    def to(self, device: str | torch.device) -> ExemplarStore:
        """This store as a tensor on ``device`` (the same tensor if already there); a memory map is
        copied in blocks of rows, keeping its dtype (uint8 codes stay compact)."""
        device = torch.device(device)
        data = self._data
        if isinstance(data, Tensor):
            return ExemplarStore(data.to(device))
        dtype = torch.uint8 if self.compact else torch.float32
        out = torch.empty(self.shape, dtype=dtype, device=device)
        step = _block_rows(self.dim)
        for start in range(0, self.num_rows, step):
            out[start : start + step].copy_(torch.from_numpy(np.array(data[start : start + step])))
        return ExemplarStore(out)

    def concat(self, extra: Tensor) -> ExemplarStore:
        """A new store with ``extra`` rows appended, on :attr:`device` (a memory map is read in).

        Args:
            extra: [n, D] float values in [0, 1].

        Returns:
            A compact store when this store is compact and ``extra`` is 8-bit-exact, else float32.

        Raises:
            DataError: ``extra`` has another width, or is not valid input to :meth:`from_tensor`.
        """
        if extra.ndim != 2 or extra.shape[1] != self.dim:
            raise DataError(
                f"exemplar store: cannot append rows of shape {tuple(extra.shape)} to {self.shape}"
            )
        added = ExemplarStore.from_tensor(extra.to(self.device), compact=self.compact)
        base = self if isinstance(self._data, Tensor) else self.to(self.device)
        assert isinstance(base._data, Tensor) and isinstance(added._data, Tensor)
        if added.compact:
            return ExemplarStore(torch.cat([base._data, added._data]))
        return ExemplarStore(torch.cat([base.float(), added._data]))

    def save_npy(self, path: str | Path) -> None:
        """Writes the backing array ([N, D] uint8 codes, or float32) to ``path`` atomically; the file
        reads back with :meth:`from_npy`."""
        data = self._data
        array = data.detach().cpu().numpy() if isinstance(data, Tensor) else data
        atomic_write(Path(path), lambda f: np.save(f, array))


def _read_npy_header(path: Path) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran_order, dtype, data offset) from a ``.npy`` header, reading nothing else.

    Raises:
        DataError: not a .npy file (no magic string, an unreadable or unsupported header).
    """
    fmt = np.lib.format
    try:
        with path.open("rb") as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = fmt.read_array_header_2_0(f)
            else:
                raise DataError(f"exemplar file {path} is a .npy file of unsupported version {version}")
            offset = f.tell()
    except (OSError, ValueError, EOFError, SyntaxError) as err:
        reason = str(err).splitlines()[0] if str(err) else repr(err)
        raise DataError(f"exemplar file {path} is not a .npy file: {reason}") from err
    return tuple(int(s) for s in shape), bool(fortran), np.dtype(dtype), offset


def as_tensor(x: Tensor | ExemplarStore) -> Tensor:
    """The [N, D] float32 values of a tensor or a store (a store is read whole: for code that needs
    every row at once, on data of ordinary size)."""
    return x.float() if isinstance(x, ExemplarStore) else x
