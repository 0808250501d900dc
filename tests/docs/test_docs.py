"""The built documentation site, in headless Chromium: the index and every page load, no internal
link or image is broken, and the search finds ``MultiHeadAttention``.

Build the site first (``bash docs/build.sh``). Without ``docs/_build/html`` these tests skip, unless
ATTNKIT_REQUIRE_DOCS=1 (CI sets it after building): then they fail."""

import os
import shutil
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlparse

import pytest

SITE = Path(__file__).resolve().parents[2] / "docs" / "_build" / "html"
REQUIRED = os.environ.get("ATTNKIT_REQUIRE_DOCS") == "1"

pytestmark = pytest.mark.skipif(
    not (SITE / "index.html").exists() and not REQUIRED,
    reason="no built docs (bash docs/build.sh builds them; ATTNKIT_REQUIRE_DOCS=1 makes this a failure)",
)


def pages() -> list[Path]:
    """Every HTML page of the site but Sphinx's own (search, genindex) and the copied sources."""
    return sorted(p for p in SITE.rglob("*.html") if "_sources" not in p.parts and "_static" not in p.parts)


@pytest.fixture(scope="module")
def browser():
    assert (SITE / "index.html").exists(), f"ATTNKIT_REQUIRE_DOCS=1 but {SITE / 'index.html'} was not built"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed (it is in the test extra)") if REQUIRED else pytest.skip("no playwright")
    executable = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), "/usr/bin/chromium")
    if not Path(executable).exists():
        pytest.fail("no Chromium") if REQUIRED else pytest.skip("no Chromium")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def local_target(page_path: Path, url: str) -> Path | None:
    """The file an internal link or image points to, None for an external one."""
    parsed = urlparse(url)
    if parsed.scheme not in ("file", ""):
        return None  # http(s), mailto: not this test's business (the site needs no network)
    path = unquote(urldefrag(parsed.path).url)
    if not path:
        return None  # "#anchor" on the same page
    target = Path(path) if parsed.scheme == "file" else (page_path.parent / path)
    return target.resolve()


def test_the_index_and_every_page_load_with_no_broken_link_or_image(browser):
    found = pages()
    assert SITE / "index.html" in found and len(found) >= 20, [str(p.relative_to(SITE)) for p in found]
    expected = {"getting-started.html", "api.html", "cli.html", "g2p.html", "notes/transformer.html"}
    assert expected <= {str(p.relative_to(SITE)) for p in found}
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    broken: list[str] = []
    for path in found:
        errors.clear()
        response = page.goto(path.as_uri())
        assert response is not None and response.ok, path
        assert page.title(), f"{path} has no title"
        assert not errors, f"{path}: script errors {errors}"
        links = page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)")
        for url in links:
            target = local_target(path, url)
            if target is not None and not target.exists():
                broken.append(f"{path.relative_to(SITE)} -> {url}")
        # every image drawn: loaded, with a width (a missing file has naturalWidth 0)
        images = page.eval_on_selector_all("img", "els => els.map(e => [e.src, e.complete && e.naturalWidth > 0])")
        broken += [f"{path.relative_to(SITE)} -> image {src}" for src, ok in images if not ok]
    page.close()
    assert not broken, "\n".join(broken)


def test_the_gallery_pictures_were_made_by_the_build():
    pictures = list((SITE / "_images").glob("sphx_glr_plot_*.png"))
    assert len(pictures) >= 8, pictures


def test_search_finds_multiheadattention(browser):
    page = browser.new_page()
    page.goto((SITE / "search.html").as_uri() + "?q=MultiHeadAttention")
    # the search runs in the page (searchindex.js); it reports when it is done
    page.wait_for_selector("#search-results .search-summary", timeout=30_000)
    hits = page.eval_on_selector_all("#search-results li a", "els => els.map(e => e.textContent)")
    page.close()
    assert any("MultiHeadAttention" in hit for hit in hits), hits
