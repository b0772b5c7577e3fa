"""Every public callable of iocport and iocport._iocport has a signature
that inspect.signature() reads, and its parameters are the ones its .pyi
stub declares (issue 14, item 7).

The extension's functions, methods and types carry theirs as text
signatures: a docstring that starts ``name($self, a, b=0, /)\\n--\\n\\n``,
CPython's convention for builtins, which inspect.signature(), help() and
IDEs read.  Without one, inspect.signature() raises ValueError.

Parameters are compared by name, kind (positional-only, keyword-only, ...)
and whether they have a default, and the default itself where the stub
spells it (not ``...``).  The methods' first parameter (self) is left out:
a builtin's is positional-only, a stub's need not be.  stubtest (CI's
``=== Typing`` block) checks the types; this checks what a reader sees.
"""
import ast
import inspect
from pathlib import Path

import pytest

import iocport
from iocport import _iocport, framing, server

# The stubs beside the modules they describe (installed with the package).
STUB_DIR = Path(iocport.__file__).resolve().parent
MODULES = {"_iocport": _iocport, "framing": framing, "server": server}
# Dunder methods a reader calls through syntax (with, async with) and that have stubs.
DUNDERS = ("__enter__", "__exit__", "__aenter__", "__aexit__")
FUNCTION_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef)
NO_DEFAULT = object()
UNKNOWN = object()   # a stub default spelled `...` (or an expression)
KINDS = inspect.Parameter


def stub_params(fn):
    """[(name, kind, default)] of a stub's ast.FunctionDef; default is
    NO_DEFAULT, UNKNOWN or the literal value."""
    a = fn.args

    def value(node):
        if node is None:
            return NO_DEFAULT
        if isinstance(node, ast.Constant) and node.value is not Ellipsis:
            return node.value
        return UNKNOWN

    positional = a.posonlyargs + a.args
    defaults = [None] * (len(positional) - len(a.defaults)) + a.defaults
    out = [(p.arg, KINDS.POSITIONAL_ONLY if i < len(a.posonlyargs)
            else KINDS.POSITIONAL_OR_KEYWORD, value(d))
           for i, (p, d) in enumerate(zip(positional, defaults))]
    if a.vararg:
        out.append((a.vararg.arg, KINDS.VAR_POSITIONAL, NO_DEFAULT))
    out += [(p.arg, KINDS.KEYWORD_ONLY, value(d))
            for p, d in zip(a.kwonlyargs, a.kw_defaults)]
    if a.kwarg:
        out.append((a.kwarg.arg, KINDS.VAR_KEYWORD, NO_DEFAULT))
    return out


def read_stub(name):
    """{function: params} and {class: {method: params}} of one stub."""
    tree = ast.parse((STUB_DIR / f"{name}.pyi").read_text())
    functions, classes = {}, {}
    for node in tree.body:
        if isinstance(node, FUNCTION_DEFS):
            functions[node.name] = stub_params(node)
        elif isinstance(node, ast.ClassDef):
            classes[node.name] = {m.name: stub_params(m) for m in node.body
                                  if isinstance(m, FUNCTION_DEFS)}
    return functions, classes


def runtime_params(obj):
    return [(p.name, p.kind, NO_DEFAULT if p.default is p.empty else p.default)
            for p in inspect.signature(obj).parameters.values()]


def public(module):
    names = getattr(module, "__all__", None) or dir(module)
    return [n for n in names if not n.startswith("_")]


def cases():
    """(id, runtime callable, stub params or None, drop self): every public
    function, class and method of the modules with stubs."""
    out = []
    for modname, module in MODULES.items():
        functions, classes = read_stub(modname)
        for name in public(module):
            obj = getattr(module, name)
            where = f"{modname}.{name}"
            if inspect.isroutine(obj):
                assert name in functions, f"{where} has no stub"
                out.append((where, obj, functions[name], False))
            if not isinstance(obj, type):
                continue
            assert name in classes, f"{where} has no stub"
            methods = classes[name]
            if issubclass(obj, BaseException):
                # CPython's exceptions carry no text signature
                # (inspect.signature(ValueError) fails too); ours take
                # BaseException's arguments, which their stubs keep.
                assert not {"__init__", "__new__"} & set(methods), where
            else:
                ctor = methods.get("__init__", methods.get("__new__"))
                out.append((where, obj, ctor[1:] if ctor else None, False))
            for attr, value in vars(obj).items():
                if (attr.startswith("_") and attr not in DUNDERS) or \
                        not inspect.isroutine(value):
                    continue
                assert attr in methods, f"{where}.{attr} has no stub"
                out.append((f"{where}.{attr}", value, methods[attr], True))
    return out


CASES = cases()


def test_every_export_is_covered():
    """Every name iocport exports is one of the objects checked here (or a
    constant), so nothing public escapes the check."""
    checked = {id(getattr(m, n)) for m in MODULES.values() for n in public(m)}
    for name in iocport.__all__:
        obj = getattr(iocport, name)
        if callable(obj):
            assert id(obj) in checked, f"iocport.{name} is not checked"


def test_the_extension_has_text_signatures():
    """Not inspect's fallbacks: the extension's own docstrings say them."""
    assert _iocport.Port.__text_signature__ == "(concurrency=0)"
    assert _iocport.Connection.send.__text_signature__ == "($self, data, /)"
    assert _iocport.backends.__text_signature__ == "($module, /)"
    # ... and the docstrings read without their header
    assert not _iocport.Port.__doc__.startswith("Port(")
    assert not _iocport.File.write.__doc__.startswith("write(")


@pytest.mark.parametrize("where, obj, stub, is_method", CASES,
                         ids=[c[0] for c in CASES])
def test_signature_matches_stub(where, obj, stub, is_method):
    params = runtime_params(obj)      # raises ValueError without a signature
    if stub is None:
        return    # a constructor the stub inherits (Packet: tuple's)
    if is_method:
        params, stub = params[1:], stub[1:]
    assert [(n, k) for n, k, _ in params] == [(n, k) for n, k, _ in stub], where
    for (name, _, got), (_, _, want) in zip(params, stub):
        assert (got is NO_DEFAULT) == (want is NO_DEFAULT), f"{where}: {name}'s default"
        if want not in (NO_DEFAULT, UNKNOWN):
            assert got == want, f"{where}: {name}={got!r}, the stub says {want!r}"
