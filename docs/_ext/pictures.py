"""Sphinx-gallery scraper for the pictures an example saves with :mod:`attnkit.viz.static` (which
closes its matplotlib figures, so the matplotlib scraper cannot see them): every PNG the example's
code block wrote into the example's folder is moved into the gallery, in the order written."""

import shutil
from pathlib import Path


def new_pictures(block, block_vars, gallery_conf):
    from sphinx_gallery.scrapers import figure_rst

    folder = Path(block_vars["src_file"]).parent
    written = []
    for png in sorted(folder.glob("*.png"), key=lambda p: p.stat().st_mtime):
        target = next(block_vars["image_path_iterator"])
        shutil.move(str(png), target)
        written.append(target)
    return figure_rst(written, gallery_conf["src_dir"])


def _get_sg_image_scraper():
    """How sphinx-gallery finds this scraper from its name in ``image_scrapers`` ("pictures")."""
    return new_pictures
