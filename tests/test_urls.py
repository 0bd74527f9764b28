"""``http(s)://`` inputs: their output names, the download's limits and every way it fails.

A real HTTP server runs on the loopback address (127.0.0.1, a free port) in a thread and
serves a few images plus one handler per failure; no other address is ever contacted
(``_loopback_only`` refuses any other, and proxies from the environment are switched off).
Every handler ends by itself, within seconds, and the server is shut down at teardown.
"""

from __future__ import annotations

import http.client
import io
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from smoothgrad_cli import remote, render
from smoothgrad_cli.cli import app
from smoothgrad_cli.images import ImageError, InputImage, discover, load_image

FAST = ["-n", "2", "--batch-size", "2", "--device", "cpu", "-q", "--json"]
PREMATURE_END = "truncated or corrupt image (JPEG data truncated: premature end of data segment)"
#: how long the slow handlers keep the client waiting, at most (the client gives up sooner)
SLOW_S = 5.0


def noise(seed: int, size: int = 32) -> Image.Image:
    array = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(array, "RGB")


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


# --- the server -------------------------------------------------------------------------------


@dataclass
class Server:
    base: str  # http://127.0.0.1:PORT
    folder: Path  # what /img/… serves
    requests: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return self.base + path

    @property
    def host(self) -> str:  # the folder below OUT/urls/ for this server
        return self.base.removeprefix("http://")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("served")
    (folder / "cat.png").write_bytes(encoded(noise(1), "PNG"))
    (folder / "dog.jpg").write_bytes(encoded(noise(2, 64), "JPEG"))
    whole = encoded(noise(3, 64), "JPEG")
    stop = threading.Event()  # set at teardown: a handler still waiting ends at once
    served = Server("", folder)
    # path → (body, Content-Type, Content-Length: None the body's, -1 none, else a lie)
    fixed = {
        "/big.png": (b"x" * 5000, "image/png", None),  # over the limit the test sets
        "/big-unsized.png": (b"x" * 5000, "image/png", -1),  # HTTP/1.0: ends at the close
        "/cut-short.png": (b"x" * 100, "image/png", 1000),
        "/empty.png": (b"", "image/png", None),
        "/text.png": (b"<html>not a picture</html>", "text/html; charset=utf-8", None),
        "/truncated.jpg": (whole[: len(whole) // 2], "image/jpeg", None),
    }
    redirects = {
        "/redirect": "/img/cat.png",
        "/redirect-file": "file:///etc/passwd",
        "/redirect-loop": "/redirect-loop",
    }

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet: pytest shows stderr of failures
            pass

        def reply(self, body: bytes, kind: str = "image/png", length: int | None = None):
            self.send_response(200)
            self.send_header("Content-Type", kind)
            if length != -1:
                self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            self.wfile.write(body)

        def redirect(self, where: str) -> None:
            self.send_response(302)
            self.send_header("Location", where)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            served.requests.append(self.path)
            path = urlsplit(self.path).path
            try:
                if path.startswith("/img/"):  # any folder: the file of that name
                    file = folder / path.rsplit("/", 1)[-1]
                    if not file.is_file():
                        return self.send_error(404)
                    kind = "image/jpeg" if file.suffix == ".jpg" else "image/png"
                    return self.reply(file.read_bytes(), kind)
                if path == "/slow.png":  # no answer at all until long after the timeout
                    stop.wait(SLOW_S)
                    return None
                if path == "/slow-body.png":  # headers, a little data, then nothing
                    self.reply(b"\x89PNG", length=1000)
                    self.wfile.flush()
                    stop.wait(SLOW_S)
                    return None
                if path == "/trickle.png":  # a byte at a time, each well within the timeout
                    self.reply(b"", length=200)
                    for _ in range(200):
                        if stop.wait(0.02):
                            return None
                        self.wfile.write(b"x")
                        self.wfile.flush()
                    return None
                if path in fixed:
                    return self.reply(*fixed[path])
                if path in redirects:
                    return self.redirect(redirects[path])
                return self.send_error(404)
            except OSError:  # the client gave up (a timeout, a refused size): nothing to do
                return None

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    served.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield served
    finally:
        stop.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch):
    """No proxy from the environment, and no connection anywhere but 127.0.0.1."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    real = socket.create_connection

    def loopback(address, *args, **kwargs):
        assert address[0] == "127.0.0.1", f"the tests tried to reach {address}"
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", loopback)


@pytest.fixture
def quick(monkeypatch):
    """Time limits short enough for a test: 0.5 s to wait for data, 1 s for a download."""
    monkeypatch.setattr(remote, "TIMEOUT", 0.5)
    monkeypatch.setattr(remote, "DEADLINE", 1.0)


@pytest.fixture
def refused_port():
    """A port on 127.0.0.1 bound but not listening: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# --- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "relative"),
    [
        ("https://example.org/a/cat.jpg?x=1#top", "urls/example.org/a/cat.jpg"),
        ("HTTPS://Example.ORG:443/a//b/./cat.jpg", "urls/example.org/a/b/cat.jpg"),
        ("http://127.0.0.1:8000/cat.png", "urls/127.0.0.1:8000/cat.png"),
        ("http://[::1]:8080/cat.png", "urls/[::1]:8080/cat.png"),
        ("https://h/../../etc/x.png", "urls/h/etc/x.png"),
        ("https://h/a/%2e%2e/%2E%2E/x.png", "urls/h/x.png"),
        ("https://h/a%2F..%2Fb.png", "urls/h/a%2F..%2Fb.png"),  # an escaped / is no separator
        ("https://h/caf%C3%A9%20noir.png", "urls/h/café noir.png"),
        ("https://h/bad%0Aname%1B%FF.png", "urls/h/bad%0Aname%1B%FF.png"),
        ("https://h/gallery/", "urls/h/gallery/index"),
        ("https://h", "urls/h/index"),
        ("https://h/a/..", "urls/h/index"),
    ],
)
def test_url_output_names(url, relative):
    assert remote.output_relative(url).as_posix() == relative


def test_a_long_folder_segment_is_shortened_like_a_long_file_name():
    relative = remote.output_relative("https://h/" + "d" * 300 + "/cat.png")
    folder = relative.parts[2]
    assert len(folder.encode()) <= 255 and folder.startswith("d" * 100) and "~" in folder
    assert relative.name == "cat.png"


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("file:///etc/passwd", "unsupported URL scheme 'file'"),
        ("ftp://example.org/cat.jpg", "unsupported URL scheme 'ftp'"),
        ("https://user:secret@example.org/cat.jpg", "user name or password"),
        ("https://example.org:99999/cat.jpg", "invalid URL (Port out of range"),
        ("http:///cat.jpg", "invalid URL (no host)"),
    ],
)
def test_refused_urls_are_missing_inputs_with_their_reason(spec, reason):
    found, missing = discover([spec])
    assert found == []
    assert [m.path for m in missing] == [spec] and reason in missing[0].reason
    assert "\n" not in missing[0].reason


def test_urls_and_files_together_keep_their_order_and_places(tmp_path, server):
    (tmp_path / "photos" / "example.org").mkdir(parents=True)
    (tmp_path / "photos" / "example.org" / "cat.jpg").write_bytes(b"x")
    (tmp_path / "photos" / "top.jpg").write_bytes(b"x")
    url, served = "https://example.org/cat.jpg?size=big", server.url("/img/cat.png")
    before = len(server.requests)
    found, missing = discover([str(tmp_path / "photos"), url, url, served])
    assert missing == []
    # a local folder named after the host has its own place: the URL's go below urls/
    assert [(image.path, image.relative.as_posix(), image.url) for image in found] == [
        (tmp_path / "photos/example.org/cat.jpg", "example.org/cat.jpg", None),
        (tmp_path / "photos/top.jpg", "top.jpg", None),
        (url, "urls/example.org/cat.jpg", url),  # as given, once
        (served, f"urls/{server.host}/img/cat.png", served),
    ]
    assert len(server.requests) == before  # discovery downloads nothing


def test_outputs_that_would_clash_are_refused_not_overwritten(tmp_path):
    clash = tmp_path / "in" / "urls" / "h" / "cat.jpg"
    clash.parent.mkdir(parents=True)
    clash.write_bytes(b"x")
    (tmp_path / "in" / "other.jpg").write_bytes(b"x")
    inputs = [
        str(tmp_path / "in"),
        "https://h/cat.jpg",
        "https://h/a.png?v=1",
        "https://h/a.png?v=2",
    ]
    found, missing = discover(inputs)
    assert [image.relative.as_posix() for image in found] == [
        "other.jpg", "urls/h/cat.jpg", "urls/h/a.png",
    ]  # fmt: skip
    assert found[1].path == clash  # the file came first
    assert [m.path for m in missing] == ["https://h/cat.jpg", "https://h/a.png?v=2"]
    assert missing[0].reason == (
        f"not explained: its outputs would overwrite those of {clash} (both named urls/h/cat.jpg)"
    )
    assert "https://h/a.png?v=1" in missing[1].reason


def test_a_path_with_another_scheme_that_exists_is_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s3:" / "bucket").mkdir(parents=True)
    (tmp_path / "s3:" / "bucket" / "x.png").write_bytes(b"x")
    found, missing = discover(["s3://bucket/x.png"])
    assert missing == [] and found[0].url is None and found[0].relative.name == "x.png"


# --- downloads --------------------------------------------------------------------------------


def test_a_download_decodes_exactly_as_the_file_does(server):
    for name in ("cat.png", "dog.jpg"):
        from_file = np.asarray(load_image(server.folder / name))
        url = server.url(f"/img/{name}")
        image = InputImage(url, remote.output_relative(url), url=url)
        assert np.array_equal(np.asarray(load_image(image)), from_file)
        assert np.array_equal(np.asarray(load_image(url)), from_file)  # a str URL too
    followed = load_image(server.url("/redirect"))  # → /img/cat.png
    assert np.array_equal(np.asarray(followed), np.asarray(load_image(server.folder / "cat.png")))


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/img/missing.png", "HTTP 404 Not Found"),
        ("/slow.png", "timed out after 0.5 s waiting for data"),
        ("/slow-body.png", "timed out after 0.5 s waiting for data"),
        ("/trickle.png", "timed out: the download took more than 1 s"),
        ("/big.png", "too large to download: larger than 1,000 bytes"),
        ("/big-unsized.png", "too large to download: larger than 1,000 bytes"),
        ("/cut-short.png", "download cut short (100 of 1,000 bytes)"),
        ("/empty.png", "empty response (0 bytes)"),
        ("/text.png", "not an image file Pillow can read (the server sent text/html)"),
        ("/truncated.jpg", PREMATURE_END),
        (
            "/redirect-file",
            "redirected to file:///etc/passwd: unsupported URL scheme 'file' "
            "(only http:// and https:// are downloaded)",
        ),
        ("/redirect-loop", "more than 5 redirects (the last to {base}/redirect-loop)"),
    ],
)
def test_every_failed_download_is_one_line_naming_what_happened(
    server, quick, monkeypatch, path, reason
):
    if path.startswith("/big"):
        monkeypatch.setattr(remote, "MAX_BYTES", 1000)  # the images served are larger
    with pytest.raises(ImageError) as caught:
        load_image(server.url(path))
    assert str(caught.value) == reason.format(base=server.base)


def test_connection_refused(refused_port, quick):
    with pytest.raises(ImageError, match=r"^connection refused$"):
        load_image(f"http://127.0.0.1:{refused_port}/cat.png")


def test_max_pixels_applies_to_downloads(server):
    with pytest.raises(ImageError, match="refused before decoding: 1,024 pixels exceeds"):
        load_image(server.url("/img/cat.png"), max_pixels=1000)


def test_a_stopping_run_does_not_wait_for_a_download(server, monkeypatch):
    # Ctrl-C or kill: the decode thread gives up at once, not after the 30 s timeout
    monkeypatch.setattr(remote.interrupt, "stopping", lambda: True)
    started = time.monotonic()
    with pytest.raises(ImageError, match="^interrupted$"):
        load_image(server.url("/slow.png"))
    # not a speed: the server holds its answer SLOW_S seconds, and the client did not wait
    assert time.monotonic() - started < SLOW_S


def test_a_download_is_given_up_once_its_stop_is_set(server):
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    with pytest.raises(ImageError, match="^not waited for: the run stopped$"):
        load_image(server.url("/slow.png"), stop=stop)
    # not a speed: the server holds its answer SLOW_S seconds, and the client did not wait
    assert time.monotonic() - started < SLOW_S


def test_fail_fast_leaves_no_download_to_wait_for_at_exit(server, tmp_path, monkeypatch):
    """--fail-fast ends the run at a bad file while a URL is still downloading in a decode
    thread: that thread must end now, not hold the process up to the timeout as it exits."""
    from smoothgrad_cli import images

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    real = images._load_file

    def once_the_download_is_under_way(path, max_pixels):
        if path == bad:  # fail only once the slow URL has been asked for
            give_up = time.monotonic() + SLOW_S
            while "/slow.png" not in server.requests and time.monotonic() < give_up:
                time.sleep(0.01)
        return real(path, max_pixels)

    monkeypatch.setattr(images, "_load_file", once_the_download_is_under_way)
    result = CliRunner().invoke(
        app, ["explain", str(bad), server.url("/slow.png"), "-o", str(tmp_path / "out"),
              "--fail-fast", *FAST],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "/slow.png" in server.requests
    for thread in [t for t in threading.enumerate() if t.name.startswith("decode")]:
        thread.join(timeout=SLOW_S / 2)  # the server would hold it SLOW_S
        assert not thread.is_alive(), "a decode thread still waits for its download"


def test_the_guard_sees_every_connection():
    # what _loopback_only relies on: http.client connects through socket.create_connection
    assert http.client.HTTPConnection("127.0.0.1")._create_connection is socket.create_connection


def test_the_default_limits():
    assert remote.TIMEOUT == 30 and remote.MAX_BYTES == 64 * 1024 * 1024
    assert remote.MAX_REDIRECTS == 5 and remote.SCHEMES == ("http", "https")


# --- through the command line -----------------------------------------------------------------


def run(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_explain_urls_and_a_file(tmp_path, server, quick, refused_port):
    out = tmp_path / "out"
    local = tmp_path / "local.png"
    noise(9).save(local)
    good = server.url("/img/cat.png?v=1")
    bad = {
        server.url("/img/missing.png"): "HTTP 404 Not Found",
        server.url("/slow.png"): "timed out after 0.5 s waiting for data",
        server.url("/text.png"): "not an image file Pillow can read (the server sent text/html)",
        f"http://127.0.0.1:{refused_port}/x.png": "connection refused",
        "file:///etc/passwd": remote.unsupported_scheme("file"),
    }
    result = run("explain", good, str(local), *bad, "-o", str(out), *FAST)
    assert result.exit_code == 1, result.output
    errors = sorted(line for line in result.stderr.splitlines() if line.startswith("error:"))
    assert errors == sorted(f"error: {url}: {reason}" for url, reason in bad.items())
    lines = {line["input"]: line for line in map(json.loads, result.stdout.splitlines())}
    assert lines[good]["status"] == "ok" and lines[str(local)]["status"] == "ok"
    the_map = out / "urls" / server.host / "img" / "cat.png.map.png"
    assert lines[good]["maps"][0]["outputs"] == {"map": str(the_map)}
    assert Image.open(the_map).size == (224, 224)
    assert (out / "local.png.map.png").is_file()
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    by_input = {entry["input"]: entry for entry in manifest}
    assert by_input[good]["status"] == "ok"
    assert by_input[good]["relative"] == f"urls/{server.host}/img/cat.png"
    assert {url: by_input[url]["error"] for url in bad} == bad

    # resumed: done from the manifest, without downloading it again
    before = len(server.requests)
    again = run("explain", good, "-o", str(out), *FAST, "--skip-existing")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["status"] == "skipped"
    assert len(server.requests) == before


def test_urls_are_downloaded_as_they_are_decoded_not_all_first(tmp_path, server, monkeypatch):
    urls = [server.url(f"/img/{i}/cat.png") for i in range(12)]
    at_first_map = []
    real_save = render.save_png
    start = len(server.requests)

    def save(picture, path):
        if not at_first_map:  # how many had been asked for when the first map was written
            at_first_map.append(len(server.requests) - start)
        return real_save(picture, path)

    monkeypatch.setattr(render, "save_png", save)
    result = run("explain", *urls, "-o", str(tmp_path), *FAST, "--workers", "1")
    assert result.exit_code == 0, result.output
    assert len(server.requests) - start == 12
    # a lookahead of a few (decode queue + the writes the model may run ahead of), not all
    assert at_first_map[0] <= 8


def test_predict_urls_a_bad_one_failing_alone(server, quick):
    good, bad = server.url("/img/dog.jpg"), server.url("/redirect-file")
    result = run("predict", good, bad, "--json", "--device", "cpu", "--top-k", "2")
    assert result.exit_code == 1, result.output
    lines = {line["input"]: line for line in map(json.loads, result.stdout.splitlines())}
    assert lines[good]["status"] == "ok" and lines[bad]["status"] == "error"
    assert [p["rank"] for p in lines[good]["predictions"]] == [1, 2]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    reason = "redirected to file:///etc/passwd: " + remote.unsupported_scheme("file")
    assert errors == [f"error: {bad}: {reason}"]
