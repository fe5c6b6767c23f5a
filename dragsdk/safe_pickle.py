"""Reading untrusted pickles (DragBench ``meta_data.pkl``, RegionDrag ``meta_data_region.pkl``).

A pickle is a program: its opcodes look up globals, call them (``REDUCE``) and hash keys (``SETITEMS``). Blocking
foreign globals is not enough, since ``bytes(2*10**8)`` or a dict keyed by a tuple of tuples sharing references
(hashing it visits 10⁹ nodes) costs gigabytes or minutes with allow-listed names only. :func:`restricted_load`
therefore passes four gates, each before anything the file chooses can run:

1. **Size**: the file is at most :func:`dragsdk.io.max_sample_bytes` (``DRAGSDK_MAX_SAMPLE_MB``, default 32 MiB)
   and holds at most :data:`MAX_OPCODES` opcodes.
2. **Opcodes**, scanned with :func:`pickletools.genops` (nothing is executed): opcodes that build instances of
   arbitrary classes or reach outside the file (``INST``, ``OBJ``, ``NEWOBJ``, ``NEWOBJ_EX``, ``EXT1/2/4``,
   ``PERSID``, ``BINPERSID``, out-of-band buffers) are refused; memo indices are bounded by the opcodes read so
   far; a stack simulation counts the elements of every value as a tree (shared references counted each time),
   so no value exceeds :data:`MAX_ELEMENTS` and no dict key or set item exceeds :data:`MAX_KEY_ELEMENTS`.
3. **Calls**: the only callables a pickle can reach are the ones numpy arrays and plain containers are rebuilt
   with, each wrapped to check its arguments: ``numpy...multiarray._reconstruct`` (an empty array, as numpy
   writes it), ``numpy.dtype`` (plain numeric types), ``numpy...multiarray.scalar``,
   ``numpy...numeric._frombuffer`` (protocol 5), ``_codecs.encode(str, "latin1")`` (protocol 0–2 bytes) and the
   builtin containers and scalars applied to an already-built value (never ``bytes(n)`` or ``list(range(n))``).
   An array's state (``BUILD``) must hold exactly the bytes its shape and dtype need.
4. **Result**: the unpickled value is copied as a tree of dicts, lists, tuples, sets, strings, bytes, numbers,
   None and numeric arrays, at most :data:`MAX_DEPTH` deep.

Every refusal is one line naming the file and the opcode or name (cut to a few dozen characters), never the
payload.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SpecError, UnsafePickleError

MAX_OPCODES = 500_000
"""Opcodes a sample pickle may hold (DragBench files hold a few hundred)."""
MAX_ELEMENTS = 2_000_000
"""Elements of any one value, counted as a tree (a shared reference counts each time it is reached)."""
MAX_KEY_ELEMENTS = 1_000
"""Elements of a dict key or set item (hashing visits each one)."""
MAX_DEPTH = 32
"""Nesting depth of the unpickled value."""

_REFUSED_OPCODES = {
    "INST",
    "OBJ",
    "NEWOBJ",
    "NEWOBJ_EX",
    "EXT1",
    "EXT2",
    "EXT4",
    "PERSID",
    "BINPERSID",
    "NEXT_BUFFER",
    "READONLY_BUFFER",
}
_MEMO_PUT = {"PUT", "BINPUT", "LONG_BINPUT"}
_MEMO_GET = {"GET", "BINGET", "LONG_BINGET"}
_DTYPE_KINDS = "biufc"  # bool, signed, unsigned, float, complex: no objects, strings, voids or records
_LATIN1 = {"latin1", "latin-1", "iso-8859-1", "iso8859-1"}


def _short(name: Any, n: int = 40) -> str:
    """A global's name, cut to ``n`` characters, quoted."""
    s = name if isinstance(name, str) else type(name).__name__
    return repr(s if len(s) <= n else s[:n] + "…")


def _kind(value: Any) -> str:
    """What an argument is, never its content: ``a str of 5000 characters``, ``an int``."""
    t = type(value).__name__
    a = "an" if t[:1] in "aeiou" else "a"
    return (
        f"{a} {t} of length {len(value)}"
        if isinstance(value, str | bytes | bytearray | list | tuple | dict)
        else f"{a} {t}"
    )


class _Refused(Exception):
    """A gate refused the pickle; carries the one-line reason."""


# -- gate 2: the opcode scan -----------------------------------------------------------------------------------


def _scan(data: bytes) -> None:
    """Refuse the pickle from its opcodes alone (see the module docstring, gate 2)."""
    stack: list[int] = []  # each slot: the element count of the value there (-1: a mark)
    marks: list[int] = []
    memo: dict[int, int] = {}
    n_ops = 0
    for op, arg, pos in pickletools.genops(data):
        n_ops += 1
        name = op.name
        if n_ops > MAX_OPCODES:
            raise _Refused(f"holds more than {MAX_OPCODES} opcodes")
        if name in _REFUSED_OPCODES:
            raise _Refused(
                f"opcode {name} at byte {pos} is not allowed (it builds arbitrary objects or reads "
                "outside the file)"
            )
        if name == "GLOBAL" and len(str(arg)) > 200:
            raise _Refused(f"opcode GLOBAL at byte {pos} names a {len(str(arg))}-character global")
        if name in _MEMO_PUT or name == "MEMOIZE":
            idx = len(memo) if name == "MEMOIZE" else int(arg)
            if idx > n_ops:
                raise _Refused(f"opcode {name} at byte {pos} uses memo index {idx} after {n_ops} opcodes")
            if not stack or stack[-1] < 0:
                raise _Refused(f"opcode {name} at byte {pos} has nothing to memoize")
            memo[idx] = stack[-1]
            continue
        if name in _MEMO_GET:
            if int(arg) not in memo:
                raise _Refused(
                    f"opcode {name} at byte {pos} reads memo index {int(arg)}, which was never set"
                )
            stack.append(memo[int(arg)])
            continue
        if name == "MARK":
            marks.append(len(stack))
            stack.append(-1)
            continue
        if name in ("PROTO", "FRAME"):
            continue
        before = op.stack_before
        consumed: list[int] = []
        if pickletools.markobject in before:
            if not marks:
                raise _Refused(f"opcode {name} at byte {pos} has no mark")
            m = marks.pop()
            sliced = stack[m + 1 :]
            del stack[m:]
            k = before.index(pickletools.markobject)
            if name in ("SETITEMS", "DICT"):
                _check_keys(sliced[0::2], name, pos)
            elif name in ("ADDITEMS", "FROZENSET"):
                _check_keys(sliced, name, pos)
            consumed = sliced
        else:
            k = len(before)
            if name == "SETITEM" and len(stack) >= 2:
                _check_keys([stack[-2]], name, pos)
        if k > len(stack) or any(w < 0 for w in stack[len(stack) - k :]):
            raise _Refused(f"opcode {name} at byte {pos} finds too few values on the stack")
        if k:
            consumed = stack[-k:] + consumed
            del stack[-k:]
        size = 1 + sum(consumed)
        if size > MAX_ELEMENTS:
            raise _Refused(
                f"opcode {name} at byte {pos} builds a value of more than {MAX_ELEMENTS} elements "
                "(shared references counted each time)"
            )
        stack.extend([size] * len(op.stack_after))


def _check_keys(sizes: list[int], name: str, pos: int) -> None:
    if any(s > MAX_KEY_ELEMENTS for s in sizes):
        raise _Refused(f"opcode {name} at byte {pos} hashes a key of more than {MAX_KEY_ELEMENTS} elements")


# -- gate 3: the callables -------------------------------------------------------------------------------------


def _plain_dtype(d: Any) -> np.dtype[Any]:
    try:
        dt = d if isinstance(d, np.dtype) else None
        if dt is None and isinstance(d, str | bytes) and len(d) <= 8:
            dt = np.dtype(d.decode("ascii") if isinstance(d, bytes) else d)
    except (TypeError, ValueError, UnicodeDecodeError):
        dt = None
    if dt is None or dt.kind not in _DTYPE_KINDS or dt.fields is not None or dt.subdtype is not None:
        raise _Refused(
            f"a numpy dtype ({_kind(d) if not isinstance(d, np.dtype) else d.kind + ' kind'}) is not a "
            "plain numeric type"
        )
    return dt


class _Array(np.ndarray):  # type: ignore[type-arg]
    """An ndarray whose pickled state (``BUILD``) is checked before numpy reads it."""

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 5):
            raise _Refused("an array's state is not numpy's (version, shape, dtype, fortran, data)")
        _, shape, dtype, _, raw = state
        dt = _plain_dtype(dtype)
        n = _count(shape)
        if not isinstance(raw, bytes | bytearray) or len(raw) != n * dt.itemsize:
            raise _Refused(f"an array's data is not the {n}×{dt.itemsize} bytes its shape and dtype need")
        super().__setstate__(state)


def _count(shape: Any) -> int:
    if not (isinstance(shape, tuple) and len(shape) <= 8 and all(type(s) is int and s >= 0 for s in shape)):
        raise _Refused("an array shape is not a tuple of at most 8 non-negative ints")
    n = 1
    for s in shape:
        n *= s
        if n > MAX_ELEMENTS * 64:
            raise _Refused(f"an array shape has more than {MAX_ELEMENTS * 64} elements")
    return n


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:  # type: ignore[type-arg]
    if subtype is not np.ndarray or _count(shape) != 0:
        raise _Refused("numpy _reconstruct is called with something other than an empty ndarray")
    _plain_dtype(dtype)
    return np.ndarray.__new__(_Array, shape, dtype)


def _dtype(name: Any, align: Any = False, copy: Any = False) -> np.dtype[Any]:
    dt = _plain_dtype(name)
    return np.dtype(dt, align=bool(align), copy=bool(copy))


def _scalar(dtype: Any, raw: Any = None) -> Any:
    dt = _plain_dtype(dtype)
    if not isinstance(raw, bytes) or len(raw) != dt.itemsize:
        raise _Refused("a numpy scalar's data is not its dtype's size")
    return np.frombuffer(raw, dt)[0]


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any = "C") -> np.ndarray:  # type: ignore[type-arg]
    dt = _plain_dtype(dtype)
    n = _count(shape)
    if not isinstance(buf, bytes | bytearray) or len(buf) != n * dt.itemsize or order not in ("C", "F"):
        raise _Refused("a protocol-5 array's buffer is not the bytes its shape and dtype need")
    return np.frombuffer(bytes(buf), dt).reshape(shape, order=order).copy()


def _encode(text: Any, encoding: Any = "utf-8") -> bytes:
    if not isinstance(text, str) or str(encoding).lower() not in _LATIN1:
        raise _Refused(
            "_codecs.encode is called other than with a str and 'latin1' (how protocol 0–2 write bytes)"
        )
    return text.encode("latin1")


_BUILT = (list, tuple, dict, set, frozenset, str, bytes, bytearray)


def _container(kind: type) -> Any:
    def build(*args: Any) -> Any:
        if len(args) == 0:
            return kind()
        if len(args) == 1 and isinstance(args[0], _BUILT):
            return kind(args[0])
        if (
            kind in (bytes, bytearray)
            and len(args) == 2
            and isinstance(args[0], str)
            and str(args[1]).lower() in _LATIN1
        ):
            return kind(args[0], "latin1")
        raise _Refused(
            f"builtins.{kind.__name__} is called with {_kind(args[0])}; only an "
            "already-built container or string is allowed"
        )

    return build


def _scalar_type(kind: type) -> Any:
    def build(*args: Any) -> Any:
        if len(args) == 0:
            return kind()
        x = args[0]
        if (
            len(args) == 1
            and isinstance(x, str | bytes | int | float | bool)
            and (not isinstance(x, str | bytes) or len(x) <= 400)
        ):
            return kind(x)
        raise _Refused(
            f"builtins.{kind.__name__} is called with {_kind(x)}; only a short string or a number is allowed"
        )

    return build


_CALLABLES: dict[tuple[str, str], Any] = {
    **{(mod, "_reconstruct"): _reconstruct for mod in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(mod, "scalar"): _scalar for mod in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(mod, "_frombuffer"): _frombuffer for mod in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _encode,
    **{
        ("builtins", k.__name__): _container(k) for k in (list, tuple, dict, set, frozenset, bytes, bytearray)
    },
    **{("builtins", k.__name__): _scalar_type(k) for k in (int, float, str, bool, complex)},
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        key = ("builtins" if module == "__builtin__" else module, name)
        if key not in _CALLABLES:
            raise UnsafePickleError(
                f"pickle refers to {_short(module)}.{_short(name)}, which is not on the allow-list "
                "(builtins containers and numpy arrays only); nothing was run"
            )
        return _CALLABLES[key]

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("the pickle asks for a persistent object")


# -- gate 4: the result ----------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A tree copy of the unpickled value with only plain types (gate 4)."""
    budget = [MAX_ELEMENTS]

    def walk(v: Any, depth: int) -> Any:
        budget[0] -= 1
        if budget[0] < 0:
            raise _Refused(f"the value has more than {MAX_ELEMENTS} elements")
        if depth > MAX_DEPTH:
            raise _Refused(f"the value is nested more than {MAX_DEPTH} levels deep")
        if v is None or isinstance(v, bool | int | float | complex | str | bytes | np.generic):
            if isinstance(v, np.generic) and v.dtype.kind not in _DTYPE_KINDS:
                raise _Refused(f"a numpy scalar of dtype {_short(str(v.dtype))}")
            return v
        if isinstance(v, bytearray):
            return bytes(v)
        if isinstance(v, np.ndarray):
            _plain_dtype(v.dtype)
            return np.array(v, copy=True, subok=False)
        if isinstance(v, dict):
            return {walk(k, depth + 1): walk(x, depth + 1) for k, x in v.items()}
        if isinstance(v, list | tuple | set | frozenset):
            return type(v)(walk(x, depth + 1) for x in v)
        raise _Refused(f"the value holds a {_short(type(v).__name__)}")

    return walk(value, 0)


def restricted_load(path: str | os.PathLike[str], max_bytes: int | None = None) -> Any:
    """Unpickle an untrusted sample file: plain containers, numbers, strings and numeric numpy arrays only.

    Args:
        path: the pickle.
        max_bytes: size cap; default :func:`dragsdk.io.max_sample_bytes` (``DRAGSDK_MAX_SAMPLE_MB``).

    Raises:
        UnsafePickleError: a refused opcode, global, call, size or shape (module docstring); nothing was run.
        SpecError: (field: the file name) missing, unreadable, larger than the cap, or not a complete pickle.
    """
    from .io import read_capped

    p = Path(path)
    data = read_capped(p, p.name, max_bytes)
    try:
        _scan(data)
        value = _Unpickler(io.BytesIO(data)).load()
        return _plain(value)
    except _Refused as e:
        raise UnsafePickleError(f"{p.name}: {e}; nothing else in it was run") from None
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{p.name}: {e}") from None
    except RecursionError:
        raise UnsafePickleError(f"{p.name}: the value is nested too deeply") from None
    except (
        pickle.UnpicklingError,
        ValueError,
        TypeError,
        EOFError,
        KeyError,
        IndexError,
        AttributeError,
        MemoryError,
        OverflowError,
    ) as e:
        reason = str(e).splitlines()[0][:80] if str(e) else ""
        raise SpecError(
            p.name, f"not a readable pickle ({type(e).__name__}{': ' + reason if reason else ''})"
        ) from None
