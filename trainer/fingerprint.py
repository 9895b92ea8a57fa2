"""A short hash of what an object given in Python computes or holds (a model class, data arrays, a
task, an optimizer), so that a run trained with one resumes only with the same one again: the same
object defined again in a new session has the same fingerprint, a changed one another."""
import dataclasses
import dis
import functools
import hashlib
import os
import site
import sys
import sysconfig
import types

import jax
import numpy as np

# What a class attribute or a global named by code can be and still be hashed as a value: numbers,
# strings, containers, arrays, a partial (`Conv3 = partial(nn.Conv, kernel_size=(3, 3))`).
VALUES = (str, bytes, int, float, complex, type(None), tuple, list, dict, set, frozenset,
          np.ndarray, jax.Array, functools.partial)

# The standard library and the installed packages: their code's globals are never followed (a
# model that calls nnx.relu is not walked into flax, which would be slow and changes by version).
LIBRARIES = tuple({os.path.join(os.path.realpath(path), "") for path in (
    *site.getsitepackages(), site.getusersitepackages(),
    *(sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")))})


def users_own(module):
    """Whether the module named `module` is the user's own: __main__ (a notebook, a script) or a
    file outside the standard library and the installed packages."""
    path = getattr(sys.modules.get(module), "__file__", None)
    return module == "__main__" or bool(path) and not os.path.realpath(path).startswith(LIBRARIES)


def global_names(code):
    """The globals that `code` and the code nested in it (lambdas, comprehensions) read; not every
    one of co_names, which also holds attribute names (self.hidden is no global `hidden`)."""
    return [name for const in code.co_consts if isinstance(const, types.CodeType)
            for name in global_names(const)] + [
        instruction.argval for instruction in dis.get_instructions(code)
        if instruction.opname == "LOAD_GLOBAL"]


def fingerprint(value):
    """A short hash of what `value` computes or holds: of functions and classes their bytecode, the
    names and constants it uses, their defaults, the values their closures hold, the values their
    classes hold and the functions, classes and values of the user's own module they read; the
    bytes of arrays, the fields of dataclasses and the items of containers. Nothing that differs
    between two processes running the same code (ids, the order of sets, line numbers) is hashed."""
    digest = hashlib.sha256()
    seen = set()  # the functions and classes fed already: a class that names itself, a cycle

    def feed(item, level):
        if level > 8:
            return
        if isinstance(item, (types.FunctionType, type)):
            if id(item) in seen:
                digest.update(item.__qualname__.encode())
                return
            seen.add(id(item))
        if isinstance(item, (np.ndarray, jax.Array)):
            array = np.asarray(item)
            digest.update(f"{array.dtype}{array.shape}".encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        elif isinstance(item, (str, bytes, int, float, complex, bool, type(None))):
            digest.update(repr(item).encode())
        elif isinstance(item, (set, frozenset)):  # in an order that no hash seed changes
            digest.update("".join(sorted(fingerprint(element) for element in item)).encode())
        elif isinstance(item, functools.partial):
            feed(item.func, level + 1)
            feed(item.args, level + 1)
            feed(item.keywords, level + 1)
        elif isinstance(item, types.FunctionType):
            feed(item.__code__, level)  # its code is the function itself, not a step away
            feed(item.__defaults__, level + 1)
            feed(item.__kwdefaults__, level + 1)
            for cell in item.__closure__ or ():
                try:
                    feed(cell.cell_contents, level + 1)
                except ValueError:  # an empty cell
                    pass
            # What it reads from its module, when that is the user's (the module it was defined
            # in: a wrapper from functools.wraps, such as linen's, has the library's globals): the
            # functions and classes defined there or in __main__, and values (HIDDEN = 16).
            module = item.__globals__.get("__name__")
            if users_own(module):
                for name in dict.fromkeys(global_names(item.__code__)):
                    read = item.__globals__.get(name)
                    if (isinstance(read, VALUES) or isinstance(read, (types.FunctionType, type))
                            and read.__module__ in (module, "__main__")):
                        digest.update(name.encode())
                        feed(read, level + 1)
        elif isinstance(item, types.CodeType):
            digest.update(item.co_code)
            feed(item.co_names, level + 1)  # what its bytecode's indices name: self.a, nnx.relu
            feed([c for c in item.co_consts if not isinstance(c, types.CodeType)], level + 1)
            for const in item.co_consts:
                if isinstance(const, types.CodeType):
                    feed(const, level + 1)
        elif isinstance(item, type):
            digest.update(item.__qualname__.encode())
            for base in item.__bases__:  # the user's own walked, a library's named
                named = f"{base.__module__}.{base.__qualname__}"
                feed(base if users_own(base.__module__) else named, level + 1)
            for name, member in sorted(vars(item).items()):
                if isinstance(member, (types.FunctionType, staticmethod, classmethod, property)):
                    digest.update(name.encode())
                    feed(getattr(member, "__func__", getattr(member, "fget", member)), level + 1)
                elif isinstance(member, VALUES) and not name.startswith("__"):
                    # rate: float = 0.1; dunders are Python's bookkeeping (__module__, __doc__)
                    digest.update(name.encode())
                    feed(member, level + 1)
            if "__dataclass_fields__" in vars(item):  # a default_factory is no class attribute
                feed({field.name: (field.default, field.default_factory)
                      for field in dataclasses.fields(item)}, level + 1)
        elif isinstance(item, dict):
            for key in sorted(item, key=repr):
                feed(key, level + 1)
                feed(item[key], level + 1)
        elif isinstance(item, (list, tuple)):
            for element in item:
                feed(element, level + 1)
        elif dataclasses.is_dataclass(item):
            feed(type(item), level + 1)
            feed({f.name: getattr(item, f.name) for f in dataclasses.fields(item)}, level + 1)
        else:  # any other object: its class and its attributes
            feed(type(item), level + 1)
            feed(getattr(item, "__dict__", {}), level + 1)

    feed(value, 0)
    return digest.hexdigest()[:8]
