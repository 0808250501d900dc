"""Sphinx configuration: MyST pages, the API from the docstrings, the CLI from argparse, and a
gallery of examples executed at build time. Build with ``bash docs/build.sh``."""

import os
import sys
from pathlib import Path

import attnkit

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

os.environ.setdefault("MPLBACKEND", "Agg")

project = "attnkit"
author = "attnkit contributors"
copyright = "attnkit contributors, MIT license"
release = getattr(attnkit, "__version__", "")

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinxarg.ext",
    "sphinx_gallery.gen_gallery",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "examples/README.txt", "Thumbs.db", ".DS_Store"]
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3
# myst.domains: sphinx-argparse's domain cannot answer MyST's "any" lookups (harmless: links are resolved
# by the std domain)
suppress_warnings = ["myst.header", "myst.domains"]

autosummary_generate = True
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "description"
autodoc_member_order = "bysource"

html_theme = "furo"
html_title = "attnkit"


sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "gallery",
    "filename_pattern": r"/plot_",
    "image_scrapers": ("matplotlib", "pictures"),
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "abort_on_example_error": True,
    # its timing pages need jQuery, which Sphinx no longer ships: a script error in the browser
    "write_computation_times": False,
}


# Docstrings whose reStructuredText does not parse yet (``|x - y|`` read as a substitution, an
# indented continuation read as a block quote). Their warnings are shown but not fatal, module by
# module, until the docstring is fixed in src/: remove a name here once its docstring is fixed.
# not a docstring's fault: the type hint `Vocab` of Encoder has two targets, because attnkit.data
# re-exports attnkit.data.vocab.Vocab and the recursive API reference documents both
DOCSTRINGS_TO_FIX = ("attnkit.tasks.classify.data.Encoder",)


class _NotFatal:
    """Let the warnings of ``DOCSTRINGS_TO_FIX`` through as plain log lines (not errors under -W)."""

    def filter(self, record):
        from sphinx.util.logging import get_node_location

        where = getattr(record, "location", "") or ""
        where = where if isinstance(where, str) else str(get_node_location(where) or where)
        text = record.getMessage()
        known = any(f"docstring of {name}" in where for name in DOCSTRINGS_TO_FIX) or any(
            f"generated/{name.rsplit('.', 1)[0]}.rst" in where or f"generated/{name}.rst" in where
            for name in DOCSTRINGS_TO_FIX
        )
        # attnkit.modules re-exports capture, the function of the module attnkit.modules.capture
        known = known or "duplicate object description of attnkit.modules.capture" in text
        if known and record.levelno >= 30:
            record.levelno, record.levelname = 20, "INFO"
            record.msg = "(docstring to fix, not fatal) WARNING: " + str(record.msg)
        return True


def setup(app):
    import logging

    for handler in logging.getLogger("sphinx").handlers:
        handler.filters.insert(0, _NotFatal())
