"""Sphinx configuration: the user guide (Markdown, through myst-parser) and
the API reference (autodoc, from the docstrings of the iocport installed or
built in place: the extension must be importable).

    pip install -e '.[docs]'
    sphinx-build -W --keep-going -n docs build/docs    # then open build/docs/index.html
"""
import iocport

project = "iocport"
author = "iocport developers"
copyright = "iocport developers"
release = version = iocport.__version__

extensions = ["sphinx.ext.autodoc", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]

# The docstrings are plain text that help() shows too: `name` in them is
# code, not a cross-reference.
default_role = "literal"
autodoc_member_order = "bysource"
autodoc_inherit_docstrings = False      # not tuple's and object's own
# Anchors on the Markdown pages' headings (#choosing-a-backend), to level 3.
myst_heading_anchors = 3

html_theme = "furo"
html_title = f"iocport {release}"
