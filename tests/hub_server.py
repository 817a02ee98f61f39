"""A local stand-in for the Hugging Face Hub: the HTTP routes huggingface_hub's
snapshot_download uses (repo info, tree listing, file resolve), serving small repos held
in memory. It counts file downloads, can throttle them, and can gate a repo behind a token.

    with HubServer({"acme/tiny": {"config.json": b"{}"}}) as hub:
        os.environ["HF_ENDPOINT"] = hub.url
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_INFO = re.compile(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?$")
_TREE = re.compile(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?$")
_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


class HubServer:
    def __init__(
        self,
        repos: dict[str, dict[str, bytes]],
        *,
        gated: frozenset[str] = frozenset(),
        token: str = "hf_test_token",
        chunk_delay_s: float = 0.0,
        chunk_size: int = 64 * 1024,
    ):
        self.repos = repos
        self.gated = gated
        self.token = token
        self.chunk_delay_s = chunk_delay_s
        self.chunk_size = chunk_size
        # (repo, filename) -> GET requests that sent the file's bytes.
        self.downloads: Counter[tuple[str, str]] = Counter()
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                hub._handle(self, head=False)

            def do_HEAD(self) -> None:
                hub._handle(self, head=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def file_downloads(self, repo: str) -> int:
        with self._lock:
            return sum(n for (r, _), n in self.downloads.items() if r == repo)

    # -- routes -----------------------------------------------------------------------------

    def _handle(self, req: BaseHTTPRequestHandler, head: bool) -> None:
        path = unquote(urlsplit(req.path).path)
        with self._lock:
            self.requests.append(("HEAD" if head else "GET", path))
        if m := _TREE.match(path):
            repo = m.group(1)
            if self._refused(req, repo):
                return
            prefix = (m.group(3) or "").strip("/")
            files = self.repos[repo]
            entries = [
                {"type": "file", "oid": _oid(data), "size": len(data), "path": name}
                for name, data in sorted(files.items())
                if not prefix or name.startswith(prefix + "/")
            ]
            self._json(req, entries, head)
        elif m := _INFO.match(path):
            repo = m.group(1)
            if self._refused(req, repo):
                return
            info = {
                "id": repo,
                "modelId": repo,
                "sha": COMMIT,
                "private": False,
                "gated": "manual" if repo in self.gated else False,
                "siblings": [{"rfilename": name} for name in sorted(self.repos[repo])],
            }
            self._json(req, info, head)
        elif m := _RESOLVE.match(path):
            repo, name = m.group(1), m.group(3)
            if self._refused(req, repo):
                return
            data = self.repos[repo].get(name)
            if data is None:
                self._error(req, 404, "EntryNotFound", f"{name} not in {repo}")
                return
            req.send_response(200)
            req.send_header("Content-Type", "application/octet-stream")
            req.send_header("Content-Length", str(len(data)))
            req.send_header("ETag", f'"{_oid(data)}"')
            req.send_header("X-Repo-Commit", COMMIT)
            req.end_headers()
            if head:
                return
            for start in range(0, len(data), self.chunk_size):
                if self.chunk_delay_s:
                    time.sleep(self.chunk_delay_s)
                req.wfile.write(data[start : start + self.chunk_size])
            with self._lock:
                self.downloads[(repo, name)] += 1
        else:
            self._error(req, 404, "RepoNotFound", f"no route {path}")

    def _refused(self, req: BaseHTTPRequestHandler, repo: str) -> bool:
        if repo not in self.repos:
            self._error(req, 404, "RepoNotFound", "Repository not found")
            return True
        if repo in self.gated and req.headers.get("Authorization") != f"Bearer {self.token}":
            self._error(req, 401, "GatedRepo", "Access to this model is restricted")
            return True
        return False

    def _json(self, req: BaseHTTPRequestHandler, body: Any, head: bool) -> None:
        data = json.dumps(body).encode()
        req.send_response(200)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        if not head:
            req.wfile.write(data)

    def _error(self, req: BaseHTTPRequestHandler, status: int, code: str, message: str) -> None:
        data = json.dumps({"error": message}).encode()
        req.send_response(status)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        req.send_header("X-Error-Code", code)
        req.send_header("X-Error-Message", message)
        req.end_headers()
        if req.command != "HEAD":
            req.wfile.write(data)


def _oid(data: bytes) -> str:
    # The git blob id, as the Hub reports for files not stored in LFS.
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
