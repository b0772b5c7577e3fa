"""The documentation as a newcomer sees it (issue 14, item 8): the site that
Sphinx builds from docs/ (warnings are errors, references checked: ``-W -n``)
opened in a real browser, headless Chromium.  Every page renders its main
content, the API pages list every documented class and its members, and
every internal link leads to an existing file and, for an anchor, to an
element that has that id once the page is rendered.

Skips when Sphinx with the docs extra (``pip install -e '.[docs]'``) or
Chromium (Debian's ``chromium``) is missing, unless IOCPORT_DOCS_REQUIRE=1
(CI's ``=== Docs`` block), where a missing one fails.  IOCPORT_DOCS_HTML
names a site already built to check instead of building one (CI builds it
first, in sight).
"""
import concurrent.futures
import importlib.util
import inspect
import os
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

import iocport
from conftest import CHILD_CWD, TREE, child_env, needs_tree

pytestmark = needs_tree("docs", "examples", "ARCHITECTURE.md", "CHANGELOG.md")

REQUIRE = os.environ.get("IOCPORT_DOCS_REQUIRE") == "1"
# What a page must show once rendered, beyond a heading and some text.
EXPECTED_TEXT = {
    "index.html": "whole messages",
    "guide/quickstart.html": "with iocport.Server(on_message) as server:",
    "guide/warehouse.html": "def store(self, conn, tag, record):",
    "guide/backends.html": "kernel.io_uring_disabled",
    "guide/threading.html": "with iocport.Port(concurrency=2) as port:",
    "guide/architecture.html": "company, file by file",
    "changelog.html": "Changelog",
    "api/port.html": "with Port(concurrency=2) as port:",
}


def need(ok, what):
    if not ok:
        if REQUIRE:
            pytest.fail(f"{what} (IOCPORT_DOCS_REQUIRE=1)")
        pytest.skip(what)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The built site: IOCPORT_DOCS_HTML, or a build of docs/ made here."""
    given = os.environ.get("IOCPORT_DOCS_HTML")
    if given:
        return Path(given)
    need(all(importlib.util.find_spec(m) for m in ("sphinx", "myst_parser", "furo")),
         "Sphinx, myst-parser and furo are not installed: pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("docs-html")
    # A child python, from a directory of its own: autodoc imports the
    # iocport under test, built in place or installed.
    r = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q",
         "-b", "html", "-d", str(out / ".doctrees"), str(TREE / "docs"), str(out)],
        cwd=CHILD_CWD, env=child_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"sphinx-build failed:\n{r.stdout}\n{r.stderr}"
    return out


@pytest.fixture(scope="module")
def chromium():
    path = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
    need(path, "chromium is not installed (apt-get install chromium)")
    return path


class Page(HTMLParser):
    """What the rendered DOM of a page holds: its ids (anchors), links, and
    the text of its main content and of its first heading there."""

    def __init__(self):
        super().__init__()
        self.ids, self.links = set(), []
        self.main_depth = 0          # > 0 inside <article role="main">
        self.main_found = False
        self.heading, self.in_h1 = "", False
        self.text = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("id", "name" if tag == "a" else None):
            if key and a.get(key):
                self.ids.add(a[key])
        # links, and what the page loads (styles, scripts, images)
        if tag in ("a", "link") and a.get("href") is not None:
            self.links.append(a["href"])
        if tag in ("script", "img") and a.get("src"):
            self.links.append(a["src"])
        if self.main_depth:
            self.main_depth += tag == "article"
        elif tag == "article" and a.get("role") == "main":
            self.main_depth, self.main_found = 1, True
        if tag == "h1" and self.main_depth:
            self.in_h1 = True

    def handle_endtag(self, tag):
        if tag == "article" and self.main_depth:
            self.main_depth -= 1
        if tag == "h1":
            self.in_h1 = False

    def handle_data(self, data):
        if self.main_depth:
            self.text.append(data)
            if self.in_h1:
                self.heading += data

    @property
    def main_text(self):
        return " ".join(" ".join(self.text).split())

    def shows(self, text):
        """True if the main content shows `text`, whitespace aside
        (highlighted code and signatures are split into many elements)."""
        return "".join(text.split()) in "".join(self.main_text.split())


def render(chromium, page):
    """The DOM of `page` after Chromium has loaded it and run its scripts."""
    with tempfile.TemporaryDirectory(prefix="iocport-chromium-") as profile:
        r = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}",
             "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"chromium failed on {page}:\n{r.stderr[-2000:]}"
    return r.stdout


@pytest.fixture(scope="module")
def pages(site, chromium):
    """{path relative to the site: Page} for every HTML page of the site."""
    files = sorted(p for p in site.rglob("*.html")
                   if not p.relative_to(site).parts[0].startswith("_"))
    assert files, f"no HTML pages in {site}"
    # Two browsers at a time: the machine has two cores.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        doms = pool.map(lambda p: render(chromium, p), files)
        out = {}
        for path, dom in zip(files, doms):
            page = Page()
            page.feed(dom)
            out[path.relative_to(site).as_posix()] = page
    return out


def test_every_page_renders_its_main_content(pages):
    for name in EXPECTED_TEXT:
        assert name in pages, f"{name} was not built"
    for name, page in pages.items():
        assert page.main_found, f"{name}: no main content in the rendered page"
        if name == "search.html":
            continue      # a search form: its results come with a query
        assert page.heading.strip(), f"{name}: no heading in the main content"
        if name != "genindex.html":
            assert len(page.main_text) > 200, f"{name}: {page.main_text!r}"
        if name in EXPECTED_TEXT:
            assert page.shows(EXPECTED_TEXT[name]), \
                f"{name}: {EXPECTED_TEXT[name]!r} not shown"


def documented(cls):
    """The members of `cls` the reference documents: its own methods,
    properties and attributes."""
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if inspect.isroutine(value) or inspect.isdatadescriptor(value):
            yield name


def test_the_api_pages_list_every_class_and_member(pages):
    api = {name: page for name, page in pages.items() if name.startswith("api/")}
    anchors = set().union(*(page.ids for page in api.values()))
    missing = []
    for name in iocport.__all__:
        obj = getattr(iocport, name)
        if f"iocport.{name}" not in anchors:
            missing.append(name)
        if isinstance(obj, type):
            missing += [f"{name}.{m}" for m in documented(obj)
                        if f"iocport.{name}.{m}" not in anchors]
    assert not missing, f"not in the API reference: {missing}"
    # the signatures are shown (the extension's come from its text signatures)
    for shown in ("Port(concurrency=0)", "post(key=0, nbytes=0, value=None)",
                  "send(data, /)", "write(data, offset=None, callback=None)",
                  "listen(host='127.0.0.1', port=0, *, backlog=1024, reuse_port=False, ssl=None)"):
        assert any(page.shows(shown) for page in api.values()), f"{shown!r} not shown"
    for reason in iocport.CLOSE_REASONS:
        assert reason in pages["api/errors.html"].main_text, f"close reason {reason}"


def test_every_internal_link_resolves(site, pages):
    checked, broken = 0, []
    for name, page in pages.items():
        for href in page.links:
            url = urlsplit(href)
            if url.scheme or url.netloc or href.startswith("mailto:"):
                continue      # external: not this site's to check
            target = (site / name).parent / unquote(url.path) if url.path else site / name
            target = Path(os.path.normpath(target))
            if target.is_dir():
                target /= "index.html"
            checked += 1
            rel = target.relative_to(site).as_posix() if target.is_relative_to(site) else None
            if rel is None or not target.is_file():
                broken.append(f"{name}: {href} (no such file)")
            elif url.fragment and rel.endswith(".html"):
                anchor = unquote(url.fragment)
                if rel not in pages or anchor not in pages[rel].ids:
                    broken.append(f"{name}: {href} (no #{anchor} in {rel})")
    assert not broken, "broken links:\n" + "\n".join(broken)
    assert checked > 100, f"only {checked} internal links"
