"""campusG's profile page in a real browser: headless Chromium (Debian's ``chromium``) loads a
small page served here from the frontend's origin, which fetches the history and writes what it
got into the DOM; Chromium's ``--dump-dom`` is what the test reads. CORS is the browser's to
enforce, so only a browser shows that another origin's page cannot read the answer.

Chromium missing is a failure naming the fix (``make test`` installs it), never a skip.
"""

from __future__ import annotations

import contextlib
import html
import json
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from local.stack import control as stack
from local.stack.issuer import session_token
from local.stack.settings import LocalSettings

pytestmark = pytest.mark.integration

# The page writes "status=<code> <body>" or "fetch failed: <error>" into #out.
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>profile</title></head>
<body><h1>History</h1><pre id="out">pending</pre>
<script>
const out = document.getElementById("out");
const headers = {headers};
fetch({url}, Object.keys(headers).length ? {{headers}} : undefined)
  .then(async (r) => {{ out.textContent = "status=" + r.status + " " + (await r.text()); }})
  .catch((e) => {{ out.textContent = "fetch failed: " + e; }});
</script></body></html>
"""
# campusG's profile.tsx, unmodified: fetch(`${base}/history/${user.id}`), no token
PROFILE_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>profile.tsx</title></head>
<body><pre id="out">pending</pre>
<script>
const API_URL = {api_url};
const userId = {user_id};
fetch(`${{API_URL}}/history/${{userId}}`)
  .then((r) => r.json())
  .then((data) => {{ out.textContent = "spent=" + data.totalSpent + " count=" + data.spentCount; }})
  .catch((e) => {{ out.textContent = "fetch failed: " + e; }});
</script></body></html>
"""


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail(
            "chromium not found: run `make chromium` (apt-get install -y chromium; `make test` runs it)",
            pytrace=False,
        )
    return found


class Pages:
    """Static pages served on 127.0.0.1:<port>; ``pages[path] = html``."""

    def __init__(self, port: int) -> None:
        pages: dict[str, str] = {}
        self.pages = pages

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = pages.get(urlsplit(self.path).path)
                data = (body or "not found").encode()
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve(local_settings: LocalSettings) -> Iterator[Callable[[int], Pages]]:
    made: list[Pages] = []

    def factory(port: int) -> Pages:
        try:
            pages = Pages(port)
        except OSError as exc:
            pytest.fail(
                f"cannot serve the test page on 127.0.0.1:{port} ({exc}): free the port, or set "
                "FRONTEND_ORIGINS to another origin and restart the stack (`make local-down local-up`)",
                pytrace=False,
            )
        made.append(pages)
        return pages

    yield factory
    for pages in made:
        pages.close()


@pytest.fixture(scope="module")
def faces(local_settings: LocalSettings) -> LocalSettings:
    for name, port in (
        ("api-gateway", local_settings.api_port),
        ("public-api", local_settings.public_api_port),
        ("issuer", local_settings.issuer_port),
    ):
        if not stack.port_open(port):
            pytest.fail(f"local stack not running ({name} down): run `make local-up`", pytrace=False)
    return local_settings


@pytest.fixture
def frontend_origin(local_settings: LocalSettings) -> str:
    """The allowed origin (the first of FRONTEND_ORIGINS, http://localhost:5173 by default)."""
    return local_settings.frontend_origins.split(",")[0].strip().rstrip("/")


@pytest.fixture
def customer(make_services: Callable[..., Any]) -> str:
    """A fresh customer who spent 12.99 (one AUTHORIZED payment)."""
    services = make_services()
    user = f"user_{uuid.uuid4().hex[:10]}"
    services.db.execute(
        "INSERT INTO payments (payment_id, order_id, clerk_user_id, status, amount_cents, currency)"
        " VALUES (CAST(:p AS uuid), :o, :c, 'AUTHORIZED', 1299, 'sgd')",
        p=str(uuid.uuid4()),
        o=f"browser-{uuid.uuid4()}",
        c=user,
    )
    return user


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def page(url: str, token: str | None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return PAGE.format(url=json.dumps(url), headers=json.dumps(headers))


def browse(url: str, tmp_path: Path, name: str) -> str:
    """The text of #out once the page's fetch has settled; a screenshot is kept beside it."""
    binary = chromium()
    common = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={tmp_path / ('profile-' + name)}",
        "--virtual-time-budget=5000",
    ]
    result = subprocess.run(
        [*common, "--dump-dom", url], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    shot = tmp_path / f"{name}.png"
    with contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run(
            [*common, "--window-size=900,400", f"--screenshot={shot}", url],
            capture_output=True,
            timeout=60,
            check=False,
        )
    assert shot.is_file() and shot.stat().st_size > 0, f"no screenshot at {shot}"
    dom = result.stdout
    start = dom.index('<pre id="out">') + len('<pre id="out">')
    return html.unescape(dom[start : dom.index("</pre>", start)])


def test_the_frontend_origin_reads_its_history_with_a_token(
    faces: LocalSettings, frontend_origin: str, serve: Callable[[int], Pages], customer: str, tmp_path: Path
) -> None:
    origin = urlsplit(frontend_origin)
    pages = serve(origin.port or 80)
    pages.pages["/profile"] = page(f"{faces.public_api_url}/history/{customer}", session_token(customer))
    shown = browse(f"{frontend_origin}/profile", tmp_path, "allowed")
    assert shown.startswith("status=200 "), shown
    body = json.loads(shown.removeprefix("status=200 "))
    assert (body["userId"], body["totalSpent"], body["spentCount"]) == (customer, 12.99, 1)


def test_another_origin_is_blocked_by_the_browser(
    faces: LocalSettings, serve: Callable[[int], Pages], customer: str, tmp_path: Path
) -> None:
    pages = serve(_free_port())
    other_origin = f"http://127.0.0.1:{pages.port}"
    # a valid token (azp the frontend's): only CORS stands between this page and the totals
    pages.pages["/profile"] = page(f"{faces.public_api_url}/history/{customer}", session_token(customer))
    shown = browse(f"{other_origin}/profile", tmp_path, "blocked")
    assert shown.startswith("fetch failed: TypeError"), shown
    assert "12.99" not in shown


def test_without_a_token_the_page_shows_the_401(
    faces: LocalSettings, frontend_origin: str, serve: Callable[[int], Pages], customer: str, tmp_path: Path
) -> None:
    pages = serve(urlsplit(frontend_origin).port or 80)
    pages.pages["/profile"] = page(f"{faces.public_api_url}/history/{customer}", None)
    shown = browse(f"{frontend_origin}/profile", tmp_path, "no-token")
    assert shown.startswith("status=401 "), shown
    assert json.loads(shown.removeprefix("status=401 "))["error"] == "MISSING_TOKEN"


def test_campusg_profile_fetch_unmodified_works_on_the_private_face(
    faces: LocalSettings, frontend_origin: str, serve: Callable[[int], Pages], customer: str, tmp_path: Path
) -> None:
    pages = serve(urlsplit(frontend_origin).port or 80)
    pages.pages["/profile"] = PROFILE_PAGE.format(
        api_url=json.dumps(faces.api_url), user_id=json.dumps(customer)
    )
    shown = browse(f"{frontend_origin}/profile", tmp_path, "private-face")
    assert shown == "spent=12.99 count=1", shown
