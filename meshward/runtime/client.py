"""The one client of meshward's HTTP API (`meshward serve`): used by the node tap, the demo and
the tests.

Blocking, on urllib.request: the node tap's writer and mode poller are threads, the demo calls
it from a thread, and a blocking call with a timeout is the simplest thing that cannot hang.
JSON in and out; every failure is one `ApiError` with the HTTP status (None when nothing
answered) and the server's one-line reason, so callers branch on `status`, not on urllib's
exception tree.

serve asks for a bearer token on every route but the probes. The token is given directly, or
read from a file (`token_file`: the standalone `api-token` beside the store, or a Kubernetes
ServiceAccount token, which the kubelet rotates: the file is read again when it changes); it is
sent as `Authorization` and never appears in a message, a repr or a log line.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

MAX_ANSWER = 64 << 20  # bytes read from one answer: the allowlist document is the largest
TOKEN_ENV = "MESHWARD_API_TOKEN"  # the standalone API token, for serve and its clients alike
TOKEN_FILE_ENV = "MESHWARD_API_TOKEN_FILE"


class ApiError(Exception):
    """A call that failed: `status` is the HTTP status, None when the server did not answer."""

    def __init__(self, method: str, path: str, status: int | None, reason: str) -> None:
        where = f"{method} {path}"
        super().__init__(f"{where}: HTTP {status}: {reason}" if status else f"{where}: {reason}")
        self.status = status
        self.reason = reason

    @property
    def retryable(self) -> bool:
        """Worth sending again later: anything but a refusal of the request itself (a 4xx other
        than 429, slow down)."""
        return self.status is None or not 400 <= self.status < 500 or self.status == 429


class ApiClient:
    """Calls to one `meshward serve` at `base_url` (e.g. http://meshward:8080)."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float = 10.0,
        *,
        token_file: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._token = token
        self._token_file = token_file
        self._file_seen: tuple[float, str] | None = None  # (mtime, token) of the file's last read

    @classmethod
    def configured(
        cls,
        base_url: str,
        token_file: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> ApiClient:
        """A client with the token from `token_file`, else `$MESHWARD_API_TOKEN`, else
        `$MESHWARD_API_TOKEN_FILE` (none: calls go out without one and serve refuses them)."""
        env = dict(os.environ) if env is None else env
        path = token_file or (None if env.get(TOKEN_ENV) else env.get(TOKEN_FILE_ENV) or None)
        if path:
            return cls(base_url, timeout=timeout, token_file=path)
        return cls(base_url, env.get(TOKEN_ENV) or None, timeout)

    def __repr__(self) -> str:
        return f"ApiClient({self.base_url!r})"  # never the token

    def _bearer(self, method: str, path: str) -> str | None:
        """The token to send: the given one, or the file's (read again when it changed)."""
        if self._token or not self._token_file:
            return self._token
        try:
            mtime = os.stat(self._token_file).st_mtime
            if self._file_seen is None or self._file_seen[0] != mtime:
                with open(self._token_file, encoding="utf-8") as f:
                    self._file_seen = (mtime, f.read(16384).strip())
        except OSError as exc:
            raise ApiError(
                method, path, None, f"API token file {self._token_file}: {exc.strerror or exc}"
            ) from None
        return self._file_seen[1] or None

    def request(
        self,
        method: str,
        path: str,
        doc: Any = None,
        *,
        body: bytes | None = None,
        timeout: float | None = None,
    ) -> Any:
        """One call: `doc` is sent as JSON (or `body` as is); a JSON answer (or one with no
        content type) comes back parsed, any other as text (/metrics). ApiError on an error
        status, no answer, or a broken JSON answer."""
        data = json.dumps(doc).encode() if doc is not None else body
        headers = {"content-type": "application/json"} if data is not None else {}
        token = self._bearer(method, path)
        if token:
            headers["authorization"] = f"Bearer {token}"
        req = urllib.request.Request(
            self.base_url + path, data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                raw = resp.read(MAX_ANSWER)
                kind = resp.headers.get("content-type", "")
        except urllib.error.HTTPError as exc:
            raise ApiError(method, path, exc.code, _reason(exc)) from None
        except (OSError, ValueError) as exc:  # URLError, refused, timed out, bad URL
            reason = _one_line(str(getattr(exc, "reason", exc)))
            raise ApiError(method, path, None, reason) from None
        if kind and not kind.startswith("application/json"):
            return raw.decode("utf-8", "replace")
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            raise ApiError(method, path, None, "the answer is not JSON") from None

    def get(self, path: str, **query: object) -> Any:
        given = {k: v for k, v in query.items() if v is not None}
        return self.request("GET", path + ("?" + urllib.parse.urlencode(given) if given else ""))

    # -- the API's routes (meshward/app/api.py) ------------------------------------------------
    def ready(self) -> bool:
        """Whether /readyz answers 200 (False while starting, draining or unreachable)."""
        try:
            self.request("GET", "/readyz", timeout=min(self.timeout, 1.0))
        except ApiError:
            return False
        return True

    def metrics_text(self) -> str:
        """The Prometheus exposition of /metrics."""
        return str(self.request("GET", "/metrics"))

    def alerts(self, limit: int = 100, namespace: str | None = None) -> list[dict[str, Any]]:
        return list(self.get("/api/v1/alerts", limit=limit, namespace=namespace)["alerts"])

    def allowlist(self, destination: str | None = None) -> dict[str, Any]:
        return dict(self.get("/api/v1/allowlist", destination=destination))

    def modes(self) -> dict[str, Any]:
        """{"default": mode, "modes": {namespace: mode}}."""
        return dict(self.get("/api/v1/modes"))

    def set_mode(self, namespace: str, mode: str) -> dict[str, Any]:
        path = "/api/v1/modes/" + urllib.parse.quote(namespace, safe="")
        return dict(self.request("PUT", path, {"mode": mode}))

    def readiness(
        self, namespace: str, mode: str = "enforce", har: bytes | None = None, **query: object
    ) -> dict[str, Any]:
        """The enforce-readiness report of a namespace: its recent calls replayed, or `har`'s."""
        path = "/api/v1/readiness/" + urllib.parse.quote(namespace, safe="")
        given = {k: v for k, v in {"mode": mode, **query}.items() if v is not None}
        path += "?" + urllib.parse.urlencode(given)
        if har is None:
            return dict(self.request("GET", path))
        return dict(self.request("POST", path, body=har, timeout=max(self.timeout, 60.0)))

    def post_observations(self, items: list[dict[str, Any]] | bytes) -> dict[str, int]:
        """A batch (observation dicts, or ready JSON / JSON Lines bytes) -> accepted/rejected."""
        if isinstance(items, bytes):
            return dict(self.request("POST", "/api/v1/observations", body=items))
        return dict(self.request("POST", "/api/v1/observations", items))

    def post_findings(self, findings: list[dict[str, Any]]) -> dict[str, int]:
        """The controller's mesh guard findings (meshward.core.meshguard.Finding dicts) ->
        accepted/rejected; serve keeps them as alerts."""
        return dict(self.request("POST", "/api/v1/findings", findings))

    def exchanges(self, limit: int = 100) -> list[dict[str, Any]]:
        return list(self.get("/api/v1/exchanges", limit=limit)["exchanges"])


def _reason(exc: urllib.error.HTTPError) -> str:
    """The server's one-line reason: {"error": ...} from the API, else the first line."""
    try:
        text = exc.read(64 << 10).decode("utf-8", "replace")
    except OSError:
        text = ""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        text = doc["error"]
    return _one_line(text) or str(exc.reason)


def _one_line(text: str) -> str:
    return " ".join(text.strip().splitlines()[:1])[:200]
