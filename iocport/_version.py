"""The version of iocport: the one place it is written.  pyproject.toml
reads it (setuptools' dynamic version); iocport.__version__ and
``python -m iocport --version`` show it."""
__version__ = "0.1.0"
