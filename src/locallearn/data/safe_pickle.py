"""The one way this project reads a pickle: an allow-list unpickler.

A pickle names the functions it calls to rebuild its objects; a crafted file can name
``os.system``. :func:`safe_load` resolves only the names listed here (to objects
fixed in this module, never by importing what the file names) and refuses the rest
with :class:`pickle.UnpicklingError`, so a data file can describe data but not run code.

Two lists: :data:`NUMPY` (CIFAR batches: dicts, lists, bytes and NumPy arrays) and
:data:`PLANETOID` (adds SciPy's CSR/CSC matrices and ``collections.defaultdict``, the
types inside Planetoid's ``ind.*`` files). Python 2 pickles name ``__builtin__`` and
``copy_reg``; both spellings are listed.
"""

from __future__ import annotations

import collections
import copyreg
import pickle
from collections.abc import Callable
from typing import IO, Any

import numpy as np


def _numpy_reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _numpy_scalar() -> Any:
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import scalar
    return scalar


def _numpy_frombuffer() -> Any:
    try:
        from numpy._core.numeric import _frombuffer
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.numeric import _frombuffer
    return _frombuffer


def _codecs_encode() -> Any:
    import codecs

    return codecs.encode


def _sparse(kind: str) -> Callable[[], Any]:
    def resolve() -> Any:
        import scipy.sparse

        return getattr(scipy.sparse, kind)
    return resolve


Resolver = Callable[[], Any]

NUMPY: dict[tuple[str, str], Resolver] = {
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    # Protocol 5 rebuilds an array from its raw buffer.
    ("numpy.core.numeric", "_frombuffer"): _numpy_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numpy_frombuffer,
    ("builtins", "bytes"): lambda: bytes,
    ("__builtin__", "bytes"): lambda: bytes,
    # Python 3 writes a Python 2 str/bytes in protocol 2 as _codecs.encode(text, "latin1").
    ("_codecs", "encode"): _codecs_encode,
}

PLANETOID: dict[tuple[str, str], Resolver] = {
    **NUMPY,
    **{(module, kind): _sparse(kind)
       for kind in ("csr_matrix", "csc_matrix")
       for module in ("scipy.sparse", f"scipy.sparse.{kind[:3]}",
                      f"scipy.sparse._{kind[:3]}")},
    ("collections", "defaultdict"): lambda: collections.defaultdict,
    ("builtins", "list"): lambda: list,
    ("__builtin__", "list"): lambda: list,
    # Protocols 0 and 1 rebuild an object as object.__new__(cls) then set its __dict__;
    # cls itself must pass this list too.
    ("copyreg", "_reconstructor"): lambda: copyreg._reconstructor,
    ("copy_reg", "_reconstructor"): lambda: copyreg._reconstructor,
    ("builtins", "object"): lambda: object,
    ("__builtin__", "object"): lambda: object,
}


class AllowListUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the names in ``allowed``."""

    def __init__(self, file: IO[bytes], allowed: dict[tuple[str, str], Resolver],
                 encoding: str = "ASCII") -> None:
        super().__init__(file, encoding=encoding)
        self.allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        resolve = self.allowed.get((module, name))
        if resolve is None:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return resolve()


def safe_load(file: IO[bytes], allowed: dict[tuple[str, str], Resolver],
              encoding: str = "ASCII") -> Any:
    """``pickle.load`` through the allow-list ``allowed`` (:data:`NUMPY` or :data:`PLANETOID`)."""
    return AllowListUnpickler(file, allowed, encoding=encoding).load()
