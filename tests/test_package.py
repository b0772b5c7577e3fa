"""The package as a newcomer meets it: importing from a source tree whose
extension is not built says so (issue 14, item 1), one version, and the
base exception class (item 9)."""
import importlib.metadata
import re
import shutil
import subprocess
import sys

import pytest

import iocport

from conftest import IOCPORT_HOME, child_env

pytestmark = pytest.mark.timeout(60)


def _tree(tmp_path, *, checkout=True, other_so=None):
    """A copy of the iocport under test's Python files (no extension) in
    tmp_path/iocport, with setup.py and src/ beside it when `checkout`."""
    pkg = tmp_path / "iocport"
    shutil.copytree(IOCPORT_HOME / "iocport", pkg,
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    if checkout:
        (tmp_path / "setup.py").write_text("")
        (tmp_path / "src").mkdir()
    if other_so:
        (pkg / other_so).write_bytes(b"")
    return tmp_path


def _run(cwd, *args):
    # The working directory comes first on sys.path (for -c and -m): the
    # copy shadows any other iocport, as the source tree does after `pip
    # install .`.  -S: no site-packages, where an editable install's finder
    # would hand the copy the real extension (iocport._iocport).
    return subprocess.run([sys.executable, "-S", *args], cwd=cwd,
                          env=child_env(PYTHONPATH=None), capture_output=True,
                          text=True, timeout=50)


@pytest.mark.parametrize("args", [["-c", "import iocport"],
                                  ["-m", "iocport", "--help"]])
def test_source_tree_without_extension_says_what_to_do(tmp_path, args):
    tree = _tree(tmp_path)
    p = _run(tree, *args)
    assert p.returncode == 1
    # (-m wraps it: "Error while finding module specification ... (ImportError: ...)")
    text = p.stderr[p.stderr.index("ImportError: "):]
    assert text.startswith(f"ImportError: iocport is being imported from its "
                           f"source tree, {tree}, whose iocport/ has no "
                           f"extension built for this Python"), p.stderr
    assert "installed with `pip install .`" in text
    assert "start Python from another directory" in text
    assert "build the extension in it: `pip install -e .`" in text
    assert "ModuleNotFoundError" not in p.stderr    # one error, not a chain


def test_source_tree_with_another_pythons_extension_names_it(tmp_path):
    other = "_iocport.cpython-39-x86_64-linux-gnu.so"
    p = _run(_tree(tmp_path, other_so=other), "-c", "import iocport")
    assert p.returncode == 1
    assert f"(it holds {other}: built for another Python)" in p.stderr, p.stderr


def test_copy_outside_a_source_tree_keeps_the_plain_error(tmp_path):
    # Not a checkout (no setup.py and src/ beside it): the ordinary error.
    p = _run(_tree(tmp_path, checkout=False), "-c", "import iocport")
    assert p.returncode == 1
    assert ("ModuleNotFoundError: No module named 'iocport._iocport'"
            in p.stderr), p.stderr
    assert "source tree" not in p.stderr


def test_one_version():
    assert re.fullmatch(r"\d+\.\d+\.\d+((a|b|rc)\d+)?(\.dev\d+)?",
                        iocport.__version__)
    try:
        installed = importlib.metadata.version("iocport")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("iocport is not installed (a build in place): no metadata")
    assert installed == iocport.__version__


def test_error_is_the_base_of_iocports_own_exceptions():
    assert "Error" in iocport.__all__
    assert issubclass(iocport.Error, Exception)
    assert iocport.Error.__doc__
    # Under Error, and still under the builtin each used to derive from.
    assert issubclass(iocport.PortClosedError, iocport.Error)
    assert issubclass(iocport.PortClosedError, RuntimeError)
    assert issubclass(iocport.FramingError, iocport.Error)
    assert issubclass(iocport.FramingError, ValueError)


def test_error_catches_port_closed_and_framing_errors():
    port = iocport.Port()
    port.close()
    with pytest.raises(iocport.Error) as info:
        port.get(timeout=0)
    assert type(info.value) is iocport.PortClosedError
    try:
        port.post()
    except RuntimeError as exc:               # existing clauses still work
        assert isinstance(exc, iocport.PortClosedError)
    else:
        pytest.fail("post() on a closed port did not raise")

    framer = iocport.Framer(iocport.LengthPrefixed(1, max_size=4))
    with pytest.raises(iocport.Error) as info:
        framer.feed(b"\x02ok\x09")
    assert type(info.value) is iocport.FramingError
    assert info.value.messages == [b"ok"]
    with pytest.raises(ValueError):
        framer.feed(b"")
