"""Pictures of attention.

- Static (matplotlib, from the ``viz`` extra, imported only when a picture is drawn):
  :func:`heatmap`, :func:`grid` (layers x heads), :func:`alignment` (seq2seq), :func:`document` (a hierarchical model's words and
  sentences), :func:`curves` (panels of lines: an experiment's measurements), PNG or SVG.
- Interactive: :func:`write_html`, one self-contained HTML page of :class:`View` s (no extra needed).
"""

from .html import View, write_html
from .static import Panel, alignment, curves, document, grid, heatmap

__all__ = ["Panel", "View", "alignment", "curves", "document", "grid", "heatmap", "write_html"]
