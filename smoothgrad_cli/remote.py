"""Images given as ``http://`` or ``https://`` URLs: which inputs are URLs, where their
outputs go, and the download, bounded in time, size and redirects (standard library only).

Names. A URL's outputs go below ``OUT/urls/<host>/``, then the URL's path, one folder per
segment: ``https://example.org/a/cat.jpg?x=1`` → ``OUT/urls/example.org/a/cat.jpg.map.png``.
The fixed ``urls/`` folder keeps downloaded inputs apart from local ones: local files mirror
below their own common root, and a folder named after a host (``example.org/``, the layout
``wget -r`` makes) is a likely local input, while one named ``urls/<host>`` beside it is not.
A clash still possible is refused by ``images.discover``, never left to overwrite.

* The host is lower-cased, with its port when one is given that is not the scheme's default
  (``127.0.0.1:8000``, as ``wget -x`` names it); user names and passwords are refused.
* The query and the fragment are not part of the name.
* Each segment is percent-decoded, then dot segments are resolved as RFC 3986 says (a ``..``
  at the top goes nowhere: ``https://h/../../etc/x.png`` → ``urls/h/etc/x.png``) and empty
  ones are dropped, so nothing can leave ``OUT/urls/<host>/``. A decoded ``/`` and any
  character that is not printable (control characters, bytes that are not UTF-8) stay
  percent-escaped (``%2F``, ``%0A``): a name never holds a separator, a newline or an escape.
* A path that ends in ``/`` (or is empty) names its image ``index``.
* A folder segment too long for a file name is shortened like long file names are
  (``outputs.output_stem``); the file name itself is shortened by ``outputs.output_names``.
"""

from __future__ import annotations

import http.client
import re
import socket
import ssl
import string
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urljoin, urlsplit, urlunsplit

from . import __version__, interrupt
from .outputs import output_stem

#: the only schemes downloaded, for inputs and for redirects alike
SCHEMES = ("http", "https")
#: the folder below the output folder that holds the outputs of every URL
URL_FOLDER = "urls"
#: the name of the image at a URL whose path ends in ``/``
INDEX = "index"
#: seconds to connect, and to wait for each piece of the response (tests lower it)
TIMEOUT = 30.0
#: seconds a whole download may take: a server that trickles a byte at a time to stay under
#: ``TIMEOUT`` still ends (checked between reads, so it can be passed by one ``TIMEOUT``)
DEADLINE = 300.0
#: a body larger than this is refused, from its Content-Length or once that much has come
MAX_BYTES = 64 * 1024 * 1024
#: redirects followed, at most, before the download is given up
MAX_REDIRECTS = 5

USER_AGENT = f"smoothgrad/{__version__} (Python urllib)"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_CHUNK = 1 << 16
#: seconds between two looks at whether the run is stopping, while a download is waited for
_POLL = 0.1
_MIB = 1024 * 1024


class DownloadError(Exception):
    """A URL whose image could not be downloaded; the message is the one-line reason."""


def scheme_of(spec: str) -> str | None:
    """The lower-cased scheme of an input spelt ``scheme://…``, else ``None`` (a path)."""
    found = _SCHEME.match(spec)
    return found.group(1).lower() if found else None


def is_url(spec: str) -> bool:
    """Whether the input ``spec`` is a URL this tool downloads (``http://``, ``https://``)."""
    return scheme_of(spec) in SCHEMES


def unsupported_scheme(scheme: str) -> str:
    return f"unsupported URL scheme {scheme!r} (only http:// and https:// are downloaded)"


def output_relative(url: str) -> Path:
    """Where the outputs of ``url`` go below the output folder (see the module's text).

    Raises ``ValueError`` with a one-line reason for a URL that cannot be downloaded."""
    scheme = scheme_of(url)
    if scheme not in SCHEMES:
        raise ValueError(unsupported_scheme(scheme or ""))
    parts = urlsplit(url)
    try:
        port = parts.port  # ValueError for a port that is not a number from 0 to 65535
    except ValueError as exc:
        raise ValueError(f"invalid URL ({exc})") from None
    if parts.username is not None or parts.password is not None:
        # urllib would send them nowhere useful, and they would land in file names
        raise ValueError("a user name or password in the URL is not supported")
    host = parts.hostname
    if not host:
        raise ValueError("invalid URL (no host)")
    if ":" in host:
        host = f"[{host}]"  # IPv6, written as in the URL
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        host = f"{host}:{port}"
    segments: list[str] = []
    raw = parts.path.split("/")
    for segment in (_decoded(piece) for piece in raw):
        if segment == "..":
            if segments:
                segments.pop()
        elif segment not in ("", "."):
            segments.append(segment)
    if not segments or _decoded(raw[-1]) in ("", ".", ".."):
        segments.append(INDEX)  # ".../" names a folder's default document
    folders = [output_stem(name) for name in (_safe(host), *segments[:-1])]
    return Path(URL_FOLDER, *folders, segments[-1])


def _decoded(segment: str) -> str:
    """One path segment with its percent-escapes decoded, except into characters that a
    file name must not hold or show (see the module's text): those keep their escape."""
    return _safe(unquote(segment, errors="surrogateescape"))


def _safe(text: str) -> str:
    out = []
    for char in text:
        if char == "/" or not char.isprintable():
            # a surrogate stands for a byte that was not UTF-8: escape the byte itself
            data = (
                bytes([ord(char) - 0xDC00])
                if 0xDC80 <= ord(char) <= 0xDCFF
                else char.encode("utf-8", "surrogatepass")
            )
            out.append("".join(f"%{byte:02X}" for byte in data))
        else:
            out.append(char)
    return "".join(out)


@dataclass(frozen=True)
class Download:
    data: bytes
    content_type: str | None  # as the server said, without parameters


def fetch(url: str, stop: threading.Event | None = None) -> Download:
    """The body of ``url``, or ``DownloadError`` with what happened, on one line.

    ``TIMEOUT`` bounds the connection and each wait for data, ``DEADLINE`` the whole
    download, ``MAX_BYTES`` its size and ``MAX_REDIRECTS`` the redirects (to http(s) only).
    Proxies set in the environment (``https_proxy`` …) are used, as urllib does.

    The download runs in a daemon thread of its own, which the caller waits for. A decode
    thread blocked in a socket read would hold the process up to ``TIMEOUT`` after Ctrl-C or
    ``kill`` (Python joins the pool's threads at exit), so once the run is stopping
    (``interrupt``'s handler says so), or once ``stop`` is set (a run ending early, as
    ``--fail-fast`` ends it), the caller gives up at once and the download is left to die
    with the process.
    """
    result: list[Download | BaseException] = []
    done = threading.Event()

    def download() -> None:
        try:
            result.append(_fetch(url))
        except BaseException as exc:  # handed to the caller, whatever it is
            result.append(exc)
        finally:
            done.set()

    threading.Thread(target=download, name="download", daemon=True).start()
    while not done.wait(_POLL):
        if interrupt.stopping():
            raise DownloadError("interrupted")
        if stop is not None and stop.is_set():
            raise DownloadError("not waited for: the run stopped")
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


def _fetch(url: str) -> Download:
    deadline = time.monotonic() + DEADLINE
    request = urllib.request.Request(_request_url(url), headers={"User-Agent": USER_AGENT})
    opener = urllib.request.build_opener(_Redirects())
    try:
        with opener.open(request, timeout=TIMEOUT) as response:
            return _read(response, deadline)
    except urllib.error.HTTPError as exc:
        exc.close()
        phrase = exc.reason if isinstance(exc.reason, str) and exc.reason else ""
        if not phrase:
            try:
                phrase = http.HTTPStatus(exc.code).phrase
            except ValueError:
                phrase = "(no reason given)"
        raise DownloadError(f"HTTP {exc.code} {phrase}") from None
    except urllib.error.URLError as exc:  # from connecting (or sending the request)
        raise DownloadError(_network_reason(exc.reason, "connecting")) from None
    except (OSError, http.client.HTTPException) as exc:  # from waiting for the response
        raise DownloadError(_network_reason(exc, "waiting for data")) from None
    except ValueError as exc:  # urllib refusing the URL itself
        raise DownloadError(f"invalid URL ({exc})") from None


def _request_url(url: str) -> str:
    """``url`` as it goes on the wire: a space or a non-ASCII character in its path or query
    percent-encoded (as a browser does; escapes already there are kept), no fragment."""
    scheme, netloc, path, query, _ = urlsplit(url)
    safe = string.punctuation
    return urlunsplit((scheme, netloc, quote(path, safe=safe), quote(query, safe=safe), ""))


def _read(response, deadline: float) -> Download:
    headers = response.headers
    length = (headers.get("Content-Length") or "").strip()
    declared = int(length) if length.isdigit() else None
    if declared is not None and declared > MAX_BYTES:
        raise DownloadError(f"too large to download: larger than {_size(MAX_BYTES)}")
    chunks, total = [], 0
    while True:
        if time.monotonic() > deadline:
            raise DownloadError(f"timed out: the download took more than {DEADLINE:g} s")
        try:
            chunk = response.read1(_CHUNK)  # one read at a time, so the deadline is checked
        except http.client.IncompleteRead:  # a chunked body cut off
            raise DownloadError(f"download cut short ({total:,} bytes came)") from None
        if not chunk:
            break
        total += len(chunk)
        if total > MAX_BYTES:
            raise DownloadError(f"too large to download: larger than {_size(MAX_BYTES)}")
        chunks.append(chunk)
    if declared is not None and total < declared:
        raise DownloadError(f"download cut short ({total:,} of {declared:,} bytes)")
    if total == 0:
        raise DownloadError("empty response (0 bytes)")
    content_type = headers.get_content_type() if "Content-Type" in headers else None
    return Download(b"".join(chunks), content_type)


def _size(n: int) -> str:
    return f"{n // _MIB} MiB" if n % _MIB == 0 else f"{n:,} bytes"


def _network_reason(reason, when: str) -> str:
    if isinstance(reason, TimeoutError):  # socket.timeout too
        return f"timed out after {TIMEOUT:g} s {when}"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, http.client.RemoteDisconnected):
        return "the server closed the connection without a response"
    if isinstance(reason, ConnectionResetError):
        return "connection reset by the server"
    if isinstance(reason, socket.gaierror):
        return f"host not found ({reason.strerror or reason})"
    if isinstance(reason, ssl.SSLCertVerificationError):
        return f"TLS certificate refused ({reason.verify_message or reason})"
    if isinstance(reason, ssl.SSLError):
        return f"TLS error ({reason.reason or reason})"
    if isinstance(reason, http.client.HTTPException):
        return f"not a valid HTTP response ({type(reason).__name__}: {reason})"
    if isinstance(reason, OSError):
        return f"cannot download ({reason.strerror or reason})"
    return f"cannot download ({reason})"


class _Redirects(urllib.request.HTTPRedirectHandler):
    """urllib's redirects, to http(s) only (urllib also takes ftp://), at most
    ``MAX_REDIRECTS`` of them, refused with a one-line reason of our own."""

    # urllib's own loop limits answer with a two-line message: ours come first.
    max_repeats = max_redirections = 1000

    def http_error_302(self, req, fp, code, msg, headers):
        target = headers.get("location") or headers.get("uri")
        if target is not None:
            absolute = urljoin(req.full_url, target.strip())
            scheme = urlsplit(absolute).scheme.lower()
            if scheme not in SCHEMES:
                fp.close()
                raise DownloadError(f"redirected to {absolute}: {unsupported_scheme(scheme)}")
            if getattr(req, "smoothgrad_hops", 0) >= MAX_REDIRECTS:
                fp.close()
                raise DownloadError(f"more than {MAX_REDIRECTS} redirects (the last to {absolute})")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            new.smoothgrad_hops = getattr(req, "smoothgrad_hops", 0) + 1
        return new
