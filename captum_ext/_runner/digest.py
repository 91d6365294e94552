"""Content fingerprints: a SHA-256 digest of what determines a cached result.

:func:`fingerprint` digests tensor bytes; the byte code, constants, defaults, closure values and
referenced globals of functions (lambdas and closures included); dataclass fields; object
attributes; every class attribute of user classes (data as well as methods); user modules by
their file *and* the module attributes a function reads (``config.EPOCHS``), or by their file
plus their data attributes when a module is met as a value. Code from the standard library and
from installed distributions is identified by name, version and the hash of the distribution's
``RECORD`` (so a reinstall from a changed folder is seen); an *editable* or local-folder install
(``pip install -e .``) is user code and digested by content like a script. Anything that cannot
be digested raises :class:`UnfingerprintableError`, which names the ``cache_key`` escape hatch.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import importlib.metadata
import json
import os
import sys
import types
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["UnfingerprintableError", "fingerprint"]


class UnfingerprintableError(TypeError):
    """An object that determines a cached result cannot be digested by content."""


@functools.lru_cache(maxsize=1)
def _distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _user_install(dist: importlib.metadata.Distribution) -> bool:
    """Whether ``dist`` was installed from a local folder (editable or not): its code is the user's."""
    try:
        text = dist.read_text("direct_url.json")
    except OSError:  # pragma: no cover - unreadable metadata
        return False
    if not text:
        return False
    try:
        info = json.loads(text)
    except ValueError:
        return True  # unreadable: digest by content, the safe side
    return bool(info.get("dir_info", {}).get("editable")) or str(info.get("url", "")).startswith("file:")


@functools.lru_cache(maxsize=256)
def _library(module: str | None) -> str | None:
    """An identity for stdlib / installed third-party modules; ``None`` for code we digest by content.

    ``captum_ext`` itself, modules of no installed distribution (scripts, ``__main__``, test files,
    notebooks) and distributions installed from a local folder (``pip install -e .``: edits to
    their code change no version) are digested by content. Other distributions are identified by
    ``name==version`` and the hash of their ``RECORD`` (the installed files' hashes).
    """
    if not module:
        return None
    top = module.split(".")[0]
    if top == "captum_ext" or module == "__main__":
        return None
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        return f"python=={sys.version_info[0]}.{sys.version_info[1]}"
    dists = _distributions().get(top)
    if not dists:
        return None
    try:
        dist = importlib.metadata.distribution(dists[0])
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return None
    if _user_install(dist):
        return None
    record = dist.read_text("RECORD") or ""
    return f"{dists[0]}=={dist.version} record={hashlib.sha256(record.encode()).hexdigest()[:16]}"


_CODE_ATTRS = (
    "co_argcount",
    "co_posonlyargcount",
    "co_kwonlyargcount",
    "co_flags",
    "co_code",
    "co_names",
    "co_varnames",
    "co_freevars",
    "co_cellvars",
)


#: class attributes that Python or the standard library add (not the user's state)
_CLASS_INTERNALS = frozenset({"_abc_impl", "_is_protocol", "_is_runtime_protocol"})


def _is_data(value: Any) -> bool:
    """Module attributes that are state rather than code defined or imported there."""
    return not isinstance(
        value,
        (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type, functools.partial),
    )


class _Hasher:
    def __init__(self, what: str) -> None:
        self.h = hashlib.sha256()
        self.what = what
        self.stack: list[int] = []

    def put(self, *parts: Any) -> None:
        for p in parts:
            self.h.update(p if isinstance(p, bytes) else str(p).encode())
            self.h.update(b"\x00")

    def refuse(self, obj: Any, why: str) -> None:
        raise UnfingerprintableError(
            f"cannot fingerprint {self.what} for the cache: {type(obj).__module__}.{type(obj).__qualname__} "
            f"{why}. Pass cache_key='...' (a string that you change whenever this object changes) "
            "or run without cache_dir."
        )

    def feed(self, obj: Any) -> None:  # noqa: C901 - one dispatch table
        if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
            self.put(type(obj).__name__, repr(obj))
            return
        if isinstance(obj, (torch.dtype, torch.device, torch.layout, torch.memory_format, range, slice)):
            self.put(type(obj).__name__, repr(obj))
            return
        if obj is Ellipsis or obj is NotImplemented:
            self.put(repr(obj))
            return
        if isinstance(obj, Path):
            self.put("path", str(obj))
            return
        if isinstance(obj, enum.Enum):
            self.feed(type(obj))
            self.put("enum", obj.name)
            return
        if isinstance(obj, Tensor):
            self.tensor(obj)
            return
        if type(obj).__module__ == "numpy" or type(obj).__module__.startswith("numpy."):
            if hasattr(obj, "tobytes") and hasattr(obj, "dtype"):
                self.put("ndarray", str(obj.dtype), repr(getattr(obj, "shape", ())), obj.tobytes())
                return
        if id(obj) in self.stack:
            self.put("cycle", self.stack.index(id(obj)))
            return
        self.stack.append(id(obj))
        try:
            self._feed_container(obj)
        finally:
            self.stack.pop()

    def _feed_container(self, obj: Any) -> None:  # noqa: C901
        if isinstance(obj, (tuple, list)):
            self.put(type(obj).__name__, len(obj))
            for o in obj:
                self.feed(o)
            return
        if isinstance(obj, dict):
            self.put("dict", len(obj))
            for k in sorted(obj, key=repr):
                self.feed(k)
                self.feed(obj[k])
            return
        if isinstance(obj, (set, frozenset)):
            self.put("set", len(obj))
            for sub in sorted(fingerprint(o, self.what) for o in obj):
                self.put(sub)
            return
        if isinstance(obj, types.CodeType):
            self.code(obj)
            return
        if isinstance(obj, functools.partial):
            self.put("partial")
            self.feed(obj.func)
            self.feed(obj.args)
            self.feed(obj.keywords)
            return
        if isinstance(obj, types.MethodType):
            self.put("method")
            self.feed(obj.__func__)
            self.feed(obj.__self__)
            return
        if isinstance(obj, types.FunctionType):
            self.function(obj)
            return
        if isinstance(obj, types.ModuleType):
            self.module(obj)
            return
        if isinstance(obj, type):
            self.klass(obj)
            return
        if isinstance(obj, (types.BuiltinFunctionType, types.BuiltinMethodType)):
            self.named(obj)
            return
        if isinstance(obj, (property, staticmethod, classmethod)):
            self.put(type(obj).__name__)
            for f in (getattr(obj, "fget", None), getattr(obj, "fset", None), getattr(obj, "__func__", None)):
                if f is not None:
                    self.feed(f)
            return
        if isinstance(obj, torch.Generator):
            self.put("generator", str(obj.device))
            self.tensor(obj.get_state())
            return
        self.instance(obj)

    def tensor(self, t: Tensor) -> None:
        t = t.detach()
        if t.is_sparse or t.layout != torch.strided:
            t = t.to_dense()
        t = t.to("cpu").contiguous()
        self.put("tensor", str(t.dtype), tuple(t.shape))
        if t.dtype == torch.bool:
            t = t.to(torch.uint8)
        self.h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())

    def named(self, obj: Any) -> None:
        module = getattr(obj, "__module__", None) or getattr(type(obj), "__module__", None)
        lib = _library(module)
        name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
        if lib is None or name is None:
            self.refuse(obj, "is built-in code outside the standard library and installed packages")
        self.put("named", module, name, lib)

    def code(self, code: types.CodeType) -> None:
        self.put("code", *(repr(getattr(code, a, None)) for a in _CODE_ATTRS))
        table = getattr(code, "co_exceptiontable", None)
        if table is not None:
            self.put(table)
        self.put("consts", len(code.co_consts))
        for c in code.co_consts:
            self.feed(c)

    def _global_names(self, code: types.CodeType) -> set[str]:
        names = set(code.co_names)
        for c in code.co_consts:
            if isinstance(c, types.CodeType):
                names |= self._global_names(c)
        return names

    def function(self, fn: types.FunctionType) -> None:
        lib = _library(fn.__module__)
        if lib is not None:
            self.put("function", fn.__module__, fn.__qualname__, lib)
            return
        self.put("function", fn.__module__, fn.__qualname__)
        self.code(fn.__code__)
        self.feed(fn.__defaults__)
        self.feed(fn.__kwdefaults__)
        cells = fn.__closure__ or ()
        self.put("closure", len(cells))
        for cell in cells:
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                self.put("empty-cell")
                continue
            self.feed(value)
        names = self._global_names(fn.__code__)
        used = sorted(n for n in names if n in fn.__globals__)
        self.put("globals", len(used))
        for name in used:
            self.put(name)
            value = fn.__globals__[name]
            if isinstance(value, types.ModuleType) and _library(value.__name__) is None:
                self.module(value, read=names)  # ``config.EPOCHS``: the attributes the code may read
            else:
                self.feed(value)

    def module(self, mod: types.ModuleType, read: set[str] | None = None) -> None:
        """A user module: its file, plus the attributes in ``read`` (the names a function's code
        uses), or, met as a value, every data attribute (not functions, classes or modules, which
        its file holds): an attribute changed in memory (``config.EPOCHS = 20``) changes the key."""
        lib = _library(mod.__name__)
        if lib is not None:
            self.put("module", mod.__name__, lib)
            return
        path = getattr(mod, "__file__", None)
        if path is None or not os.path.exists(path):
            self.refuse(mod, "has no source file to digest")
        self.put("module", mod.__name__, hashlib.sha256(Path(path).read_bytes()).hexdigest())
        if id(mod) in self.stack:
            return
        self.stack.append(id(mod))
        try:
            state = vars(mod)
            if read is None:
                names = [n for n in state if not n.startswith("__") and _is_data(state[n])]
            else:
                names = [n for n in read if n in state and not isinstance(state[n], types.ModuleType)]
            self.put("attributes", len(names))
            for name in sorted(names):
                self.put(name)
                self.feed(state[name])
        finally:
            self.stack.pop()

    def klass(self, cls: type) -> None:
        lib = _library(cls.__module__)
        if lib is not None:
            self.put("class", cls.__module__, cls.__qualname__, lib)
            return
        self.put("class", cls.__module__, cls.__qualname__)
        for base in cls.__bases__:
            self.feed(base)
        for name in sorted(cls.__dict__):
            value = cls.__dict__[name]
            if isinstance(value, (types.FunctionType, property, staticmethod, classmethod)):
                self.put(name)
                self.feed(value)
            elif not (name.startswith("__") or name in _CLASS_INTERNALS):  # every class attribute
                self.put(name)
                self.feed(value)

    def instance(self, obj: Any) -> None:
        cls = type(obj)
        self.feed(cls)
        if dataclasses.is_dataclass(obj):
            for f in dataclasses.fields(obj):
                self.put(f.name)
                self.feed(getattr(obj, f.name))
            return
        state: dict[str, Any] = {}
        if hasattr(obj, "__dict__"):
            state.update(vars(obj))
        for klass in cls.__mro__:
            for slot in getattr(klass, "__slots__", ()):
                if slot not in ("__dict__", "__weakref__") and hasattr(obj, slot):
                    state[slot] = getattr(obj, slot)
        if not state and not hasattr(obj, "__dict__"):
            self.refuse(obj, "exposes no state (no __dict__ or __slots__) to digest")
        self.feed(state)


def fingerprint(obj: Any, what: str = "an object") -> str:
    """SHA-256 hex digest of ``obj`` by content (see the module doc), the same in every process.

    Args:
        obj: tensors, numbers, strings, containers, functions (code, defaults, closure values and
            referenced globals), classes, dataclass instances and plain objects, nested freely.
        what: how to name the object in the error message.

    Returns:
        A 64-character hex digest.

    Raises:
        UnfingerprintableError: (a ``TypeError``) for an object whose content cannot be read;
            the message names the ``cache_key`` escape hatch.

    Examples:
        >>> def make(epochs):
        ...     return lambda: epochs
        >>> fingerprint(make(1)) == fingerprint(make(1)), fingerprint(make(1)) == fingerprint(make(60))
        (True, False)
    """
    h = _Hasher(what)
    h.feed(obj)
    return h.h.hexdigest()
