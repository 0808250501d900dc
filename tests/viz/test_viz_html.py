"""The interactive HTML page (attnkit.viz.write_html), checked in a real headless Chromium.

The browser tests skip where no Chromium (or no Playwright) is found, unless
ATTNKIT_REQUIRE_BROWSER=1 is set: then they fail (CI sets it). Playwright's own browsers are not
used: the page is opened in the system's Chromium, found on PATH.
"""

import json
import os
import re
import shutil

import pytest
import torch

from attnkit import AttentionError
from attnkit.viz import View, write_html

TRICKY = ["<b>&amp;", "</script>", "\"'quotes'\"", "<!--"]  # tokens that must stay text


def raises(message):
    return pytest.raises(AttentionError, match=re.escape(message))


def distributions(*shape: int) -> torch.Tensor:
    """Softmax over random scores: (L, H, Tq, Tk) rows that sum to 1."""
    return torch.softmax(3 * torch.randn(*shape), dim=-1)


@pytest.fixture
def views():
    torch.manual_seed(0)
    source = ["the", "cat", *TRICKY, "sat"]  # Tk = 7
    target = ["le", "chat", "</script>", "<b>&amp;", "s'est", "assis"]  # Tq = 6
    return [
        View("encoder self-attention", source, source, distributions(2, 3, 7, 7)),
        View("cross-attention", target, source, distributions(2, 3, 6, 7), layers=["first", "second"]),
    ]


def _browser_or_skip():
    """The system Chromium, launched headless by Playwright; skip (or fail, if required) without it."""
    required = os.environ.get("ATTNKIT_REQUIRE_BROWSER") == "1"
    found = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright, reason = None, "the playwright package is not installed (pip install playwright)"
    else:
        reason = "no Chromium on PATH (looked for chromium, chromium-browser, google-chrome)"
    if sync_playwright is None or found is None:
        if required:
            pytest.fail(f"ATTNKIT_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    return sync_playwright, found


@pytest.fixture(scope="module")
def browser():
    sync_playwright, executable = _browser_or_skip()
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def weights_shown(page, side: str) -> list[float]:
    """The data-weight of every token on ``side``, in order (the numbers the page shows)."""
    shown = page.eval_on_selector_all(f'.token[data-side="{side}"]', "ts => ts.map(t => t.dataset.weight)")
    assert None not in shown, f"a {side} token has no data-weight"
    return [float(w) for w in shown]


def test_hover_shows_a_row_and_a_column_of_the_chosen_layer_and_head(views, browser, tmp_path):
    path = write_html(tmp_path / "attention.html", views, title="<i>two</i> views")
    page = browser.new_page()
    page.goto(path.as_uri())
    page.select_option("#view", label="cross-attention")
    page.select_option("#layer", label="second")
    page.select_option("#head", "2")
    w = views[1].weights[1, 2]  # (Tq, Tk)

    page.hover('.token[data-side="query"][data-index="3"]')
    assert weights_shown(page, "key") == pytest.approx(w[3].tolist(), abs=1e-4)
    shown = page.inner_text('.token[data-side="key"][data-index="0"] .weight')
    assert shown == f"{w[3, 0].item():.4f}"  # the number, 4 decimals, inside the key token

    page.hover('.token[data-side="key"][data-index="1"]')
    assert weights_shown(page, "query") == pytest.approx(w[:, 1].tolist(), abs=1e-4)

    page.select_option("#head", "mean")
    page.hover('.token[data-side="query"][data-index="3"]')
    assert weights_shown(page, "key") == pytest.approx(views[1].weights[1].mean(0)[3].tolist(), abs=1e-4)

    page.screenshot(path=tmp_path / "view.png")
    assert (tmp_path / "view.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page.close()


def test_tokens_are_text_not_markup(views, browser, tmp_path):
    path = write_html(tmp_path / "attention.html", views, title="<i>two</i> views")
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(e))
    page.goto(path.as_uri())
    page.select_option("#view", label="cross-attention")
    texts = page.eval_on_selector_all(".token .text", "ts => ts.map(t => t.textContent)")
    assert texts == views[1].queries + views[1].keys
    assert page.query_selector("b") is None and page.query_selector("i") is None
    assert page.inner_text("h1") == "<i>two</i> views"
    assert page.title() == "<i>two</i> views"
    assert errors == []
    page.close()


def test_click_keeps_a_token_while_the_head_changes(views, browser, tmp_path):
    path = write_html(tmp_path / "attention.html", views)
    page = browser.new_page()
    page.goto(path.as_uri())
    page.click('.token[data-side="key"][data-index="4"]')
    page.mouse.move(0, 0)  # leaving the token keeps it
    page.select_option("#layer", "1")
    page.select_option("#head", "1")
    assert weights_shown(page, "query") == pytest.approx(views[0].weights[1, 1, :, 4].tolist(), abs=1e-4)
    page.keyboard.press("Escape")
    assert page.eval_on_selector_all(".token[data-weight]", "ts => ts.length") == 0
    page.close()


def test_the_page_makes_no_request(views, browser, tmp_path):
    path = write_html(tmp_path / "attention.html", views)
    text = path.read_text(encoding="utf-8")
    for needle in ("http://", "https://", "src=", "<link", "@import", "url("):
        assert needle not in text, needle
    page = browser.new_page()
    requested, aborted = [], []

    def route(r):
        requested.append(r.request.url)
        if r.request.url == path.as_uri():
            r.continue_()
        else:
            aborted.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.goto(path.as_uri())
    page.hover('.token[data-side="query"][data-index="2"]')
    page.select_option("#view", "1")
    page.hover('.token[data-side="key"][data-index="2"]')
    page.wait_for_load_state("networkidle")
    assert requested == [path.as_uri()]
    assert aborted == []
    page.close()


def test_data_is_inline_json_rounded_to_4_decimals_and_cannot_close_the_script(views, tmp_path):
    text = write_html(tmp_path / "attention.html", views).read_text(encoding="utf-8")
    start = text.index('<script type="application/json" id="data">') + len('<script type="application/json" id="data">')
    inline = text[start : text.index("</script>", start)]
    assert "<" not in inline and ">" not in inline and "&" not in inline
    data = json.loads(inline)
    cross = data["views"][1]
    assert cross["queries"] == views[1].queries and cross["keys"] == views[1].keys
    assert cross["layers"] == ["first", "second"] and data["views"][0]["layers"] == ["layer 0", "layer 1"]
    stored = torch.tensor(cross["weights"], dtype=torch.float64)  # (L, H + 1, Tq, Tk): head H the mean
    w = views[1].weights.double()
    assert torch.allclose(stored[:, :3], w, atol=5e-5, rtol=0)
    assert torch.allclose(stored[:, 3], w.mean(1), atol=5e-5, rtol=0)
    assert all(len(repr(x).split(".")[-1]) <= 4 for x in stored.flatten().tolist())


def test_views_checks_shapes_against_tokens_and_layers():
    w = distributions(2, 3, 4, 5)
    with raises("View 'cross': weights has shape (2, 3, 4, 5) but expected (L, H, Tq=len(queries)=3, Tk=len(keys)=5)"):
        View("cross", list("abc"), list("vwxyz"), w)
    with raises("View 'cross': weights has shape (2, 3, 4, 5) but expected (L, H, Tq=len(queries)=4, Tk=len(keys)=6)"):
        View("cross", list("abcd"), list("uvwxyz"), w)
    with raises(
        "View 'cross': weights has shape (2, 3, 4, 5) but expected (L=len(layers)=3, H, Tq=len(queries)=4, Tk=len(keys)=5)"
    ):
        View("cross", list("abcd"), list("vwxyz"), w, layers=["a", "b", "c"])
    with raises("View 'self': weights has shape (3, 4, 4) but expected (L, H, Tq=len(queries)=4, Tk=len(keys)=4)"):
        View("self", list("abcd"), list("abcd"), distributions(3, 4, 4))
    with raises("View 'self': weights has shape (2, 0, 4, 4) but expected at least one layer and one head"):
        View("self", list("abcd"), list("abcd"), torch.zeros(2, 0, 4, 4))
    with raises("View 'self': weights must be a torch.Tensor of shape (L, H, Tq, Tk), got list"):
        View("self", ["a"], ["a"], [[[[1.0]]]])


def test_views_reject_nan():
    w = distributions(2, 3, 4, 4)
    w[1, 0, 2, 3] = float("nan")
    w[1, 2, 0, 0] = float("inf")
    with raises(
        "View 'self': weights has 2 NaN or infinite values (the first at (1, 0, 2, 3)) but expected finite weights"
    ):
        View("self", list("abcd"), list("abcd"), w)


def test_write_html_checks_path_and_views(tmp_path):
    view = View("self", list("ab"), list("ab"), distributions(1, 1, 2, 2))
    with raises(f"path {str(tmp_path / 'a.htm')!r} must end in .html"):
        write_html(tmp_path / "a.htm", view)
    with raises("views is empty but expected at least one View"):
        write_html(tmp_path / "a.html", [])
    with raises("views[1] must be a View, got Tensor"):
        write_html(tmp_path / "a.html", [view, view.weights])
    with raises("views must be a View or a list of Views, got Tensor"):
        write_html(tmp_path / "a.html", view.weights)
    assert not (tmp_path / "a.html").exists()
