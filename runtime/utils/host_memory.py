"""Zero-filled host tensors whose pages the operating system supplies on first touch.

`torch.zeros` writes every byte when it is called, so each page of a large buffer is faulted
in and cleared up front: the KV pool of the benchmark model (4.8 GB of float32 for 64k token
slots) took 8.7 s of `Engine()`'s start on one 2-core VM and ~1.6 s on another, for slots
most workloads never reach. An anonymous memory map reads as zeros by the kernel's guarantee
and is backed page by page as it is written, so the pool costs nothing until it is used and
keeps the exact zeros `torch.zeros` gave (attention over a padded row multiplies zero
probabilities by values never written: zeros keep that product 0, garbage could make it NaN).

The price: memory promised but not yet touched does not show in the system's free memory, so
a second engine sizing its pool from that figure would promise the same bytes again. The
bytes of every live mapping are counted here for `kv_budget` to subtract (pages already
touched are then counted twice: a later pool comes out smaller, never overcommitted).
"""

from __future__ import annotations

import ctypes
import math
import mmap
import threading
import weakref

import torch

_lock = threading.Lock()
_reserved = 0  # bytes of live lazily zeroed buffers in this process


def lazily_zeroed(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A CPU tensor of zeros backed by an anonymous mapping; the tensor keeps the mapping alive."""
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes == 0 or not hasattr(mmap, "MAP_ANONYMOUS"):  # nothing to map, or not POSIX
        return torch.zeros(shape, dtype=dtype)
    # Private: the pages are this process's alone (a shared mapping would count as shmem).
    buffer = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    _add_reserved(nbytes)
    weakref.finalize(buffer, _add_reserved, -nbytes)  # when the last tensor on it is gone
    return torch.frombuffer(buffer, dtype=dtype).view(shape)


def reserved_bytes() -> int:
    """Bytes promised to live lazily zeroed buffers, touched or not."""
    return _reserved


def _add_reserved(delta: int) -> None:
    global _reserved
    with _lock:
        _reserved += delta


def drop_pages(tensor: torch.Tensor) -> int:
    """Give the pages wholly inside `tensor`'s memory back to the system (madvise
    MADV_DONTNEED): they read as zeros afterwards and are supplied again on first touch. The
    tensor stays valid at the same address. Returns the bytes given back (0 where the
    platform cannot, or for a tensor with no plain memory, such as a oneDNN-packed one)."""
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if advice is None or tensor.device.type != "cpu" or tensor.is_mkldnn:
        return 0
    storage = tensor.untyped_storage()
    start, size = storage.data_ptr(), storage.nbytes()
    first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE  # pages partly outside stay
    last = (start + size) // mmap.PAGESIZE * mmap.PAGESIZE
    if last <= first:
        return 0
    if _libc().madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), advice) != 0:
        raise OSError(ctypes.get_errno(), "madvise failed")
    return last - first


_LIBC: ctypes.CDLL | None = None


def _libc() -> ctypes.CDLL:
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
        _LIBC.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return _LIBC
