"""Run numpy's BLAS on one thread for a while (GPTQ's many small Cholesky factorisations).

OpenBLAS spreads even a 256×256 factorisation over every core, and its threads spin while
waiting: on this project's shared 2-core machine (load ~15) one 256×256 Cholesky took 100 ms
with the default threads and 3 ms with one. GPTQ makes thousands of small products, which one
thread does best anyway. threadpoolctl does this in general; ptq only needs OpenBLAS (the BLAS
numpy's wheels ship), found through ctypes; anything else is left as it is.
"""

from __future__ import annotations

import ctypes
import glob
import os
from collections.abc import Iterator
from contextlib import contextmanager

import numpy

_PREFIXES = ("scipy_openblas", "openblas")
_SUFFIXES = ("64_", "")


def _openblas():
    root = os.path.dirname(numpy.__file__)
    for path in sorted(glob.glob(os.path.join(root, "..", "numpy.libs", "*openblas*")) +
                       glob.glob(os.path.join(root, ".libs", "*openblas*"))):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in _PREFIXES:
            for suffix in _SUFFIXES:
                get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                set_ = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                if get is not None and set_ is not None:
                    return get, set_
    return None


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    try:
        found = _openblas()
    except Exception:  # an unusual numpy build: leave its BLAS alone
        found = None
    if found is None:
        yield
        return
    get, set_ = found
    before = int(get())
    set_(1)
    try:
        yield
    finally:
        set_(before)
