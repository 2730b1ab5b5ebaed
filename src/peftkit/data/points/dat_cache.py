"""Read pickled lists of numpy arrays without unpickling them: Point-BERT's ModelNet ``.dat`` caches.

A ``.dat`` cache is ``pickle.dump([points, labels])`` of numpy arrays. Unpickling runs whatever callables
the stream names, so a downloaded cache is never unpickled here. Instead :func:`read_array_pickle` walks the
opcode stream with ``pickletools.genops`` (which only parses) and interprets the small subset of opcodes
that lists, tuples, numbers, strings and numpy arrays use, building arrays with ``np.frombuffer``. Any other
opcode, and any global other than the numpy array / dtype constructors, is refused with a ``DataError``.

Numpy arrays appear in two forms: protocols 2-4 write ``_reconstruct(ndarray, (0,), b"b")`` followed by
``BUILD((1, shape, dtype, fortran_order, raw_bytes))``; protocol 5 writes
``_frombuffer(bytearray, dtype, shape, order)``. A dtype is ``dtype(code, False, True)`` followed by
``BUILD((3, byte_order, ...))``.
"""

from __future__ import annotations

import pickletools
from typing import Any

import numpy as np

from peftkit.core.errors import DataError

_RECONSTRUCT = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}
_FROMBUFFER = {("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}
_SCALAR = {("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}
_ALLOWED = _RECONSTRUCT | _FROMBUFFER | _SCALAR | {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}
_ONLY_ARRAYS = "a .dat cache holds numpy arrays only"

_PUSH_ARG = {"BININT", "BININT1", "BININT2", "INT", "LONG", "LONG1", "LONG4", "BINFLOAT", "FLOAT",
             "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINBYTES", "BINBYTES",
             "BINBYTES8", "SHORT_BINSTRING", "BINSTRING"}
_CONSTANTS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}
_IGNORED = {"PROTO", "FRAME"}


class _Global:
    """A refused-by-default callable named by the stream (only the allow-listed ones are ever applied)."""

    def __init__(self, module: str, name: str) -> None:
        self.key = (module, name)


class _Pending:
    """An object under construction: an empty array from ``_reconstruct`` or a dtype awaiting its state."""

    def __init__(self, kind: str, value: Any = None) -> None:
        self.kind, self.value = kind, value


def _global(module: str, name: str, where: str) -> _Global:
    if (module, name) not in _ALLOWED:
        raise DataError(f"{where}: refusing to unpickle {module}.{name} ({_ONLY_ARRAYS})")
    return _Global(module, name)


def _reduce(fn: Any, args: Any, where: str) -> Any:
    if not isinstance(fn, _Global) or not isinstance(args, tuple):
        raise DataError(f"{where}: malformed pickle (REDUCE of {type(fn).__name__})")
    if fn.key in _RECONSTRUCT:
        return _Pending("array")
    if fn.key == ("numpy", "dtype"):
        return _Pending("dtype", np.dtype(args[0]))
    if fn.key in _FROMBUFFER:
        buf, dtype, shape, order = args
        return np.frombuffer(bytes(buf), dtype=_resolved(dtype)).reshape(shape, order=order)
    if fn.key in _SCALAR:
        return np.frombuffer(args[1], dtype=_resolved(args[0]))[0]
    if fn.key == ("_codecs", "encode"):
        return str(args[0]).encode(str(args[1]))
    raise DataError(f"{where}: refusing to call {'.'.join(fn.key)}")


def _resolved(dtype: Any) -> np.dtype:
    return dtype.value if isinstance(dtype, _Pending) else np.dtype(dtype)


def _build(obj: Any, state: Any, where: str) -> Any:
    if isinstance(obj, _Pending) and obj.kind == "dtype":
        order = state[1] if isinstance(state, tuple) and len(state) > 1 else "|"
        return obj.value.newbyteorder(order) if order in ("<", ">") else obj.value
    if isinstance(obj, _Pending) and obj.kind == "array":
        _, shape, dtype, fortran, raw = state
        if not isinstance(raw, (bytes, bytearray)):
            raise DataError(f"{where}: an array of Python objects cannot be read from a .dat cache")
        return np.frombuffer(bytes(raw), dtype=_resolved(dtype)).reshape(shape, order="F" if fortran else "C")
    raise DataError(f"{where}: malformed pickle (BUILD on {type(obj).__name__})")


def _pop_mark(stack: list[Any], marks: list[int]) -> list[Any]:
    start = marks.pop()
    items = stack[start:]
    del stack[start:]
    return items


def read_array_pickle(data: bytes, where: str) -> Any:
    """The lists / tuples of numpy arrays, numbers and strings pickled in ``data``; nothing is executed.

    Raises:
        DataError: a global other than numpy's array constructors, an opcode outside the subset, or a
            malformed stream (the message names ``where``).
    """
    stack: list[Any] = []
    marks: list[int] = []
    memo: dict[int, Any] = {}
    try:
        for op, arg, _ in pickletools.genops(data):
            name = op.name
            if name in _IGNORED:
                continue
            if name in _PUSH_ARG:
                stack.append(arg)
            elif name in _CONSTANTS:
                stack.append(_CONSTANTS[name])
            elif name == "BYTEARRAY8":
                stack.append(bytearray(arg))
            elif name == "EMPTY_LIST":
                stack.append([])
            elif name == "EMPTY_TUPLE":
                stack.append(())
            elif name == "MARK":
                marks.append(len(stack))
            elif name == "APPEND":
                value = stack.pop()
                stack[-1].append(value)
            elif name == "APPENDS":
                items = _pop_mark(stack, marks)
                stack[-1].extend(items)
            elif name in ("LIST", "TUPLE"):
                items = _pop_mark(stack, marks)
                stack.append(items if name == "LIST" else tuple(items))
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                n = int(name[-1])
                items = tuple(stack[-n:])
                del stack[-n:]
                stack.append(items)
            elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[int(arg)] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                stack.append(memo[int(arg)])
            elif name == "GLOBAL":
                module, _, attr = str(arg).partition(" ")
                stack.append(_global(module, attr, where))
            elif name == "STACK_GLOBAL":
                attr, module = stack.pop(), stack.pop()
                stack.append(_global(str(module), str(attr), where))
            elif name == "REDUCE":
                args = stack.pop()
                stack[-1] = _reduce(stack[-1], args, where)
            elif name == "BUILD":
                state = stack.pop()
                old = stack[-1]
                stack[-1] = _build(old, state, where)
                memo.update({k: stack[-1] for k, v in memo.items() if v is old})
            elif name == "STOP":
                return stack.pop()
            else:
                raise DataError(f"{where}: refusing pickle opcode {name} ({_ONLY_ARRAYS})")
    except DataError:
        raise
    except (ValueError, IndexError, KeyError, TypeError, AttributeError) as e:
        raise DataError(f"{where}: malformed pickle ({e})") from None
    raise DataError(f"{where}: truncated pickle (no STOP)")


__all__ = ["read_array_pickle"]
