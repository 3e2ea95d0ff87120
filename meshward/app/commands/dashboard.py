"""`meshward dashboard`: open serve's web page with a one-time login code, never a token.

It trades the operator's credential for a one-time login code (`POST /api/v1/session/code`,
valid 60 s, single use) and prints (and opens) `URL/login#code=CODE`: the code travels in the
URL fragment (never sent to a server, a proxy or a log), the page redeems it for an HttpOnly
session cookie and removes it from the address bar. The long-lived token stays in its file.

Standalone: `--url http://meshward:9193 --api-token-file /var/lib/meshward/api-token`.
In a cluster: without `--url` it runs `kubectl port-forward` to serve's Service (RBAC on
`pods/portforward` in meshward's namespace decides who may), and the credential is a token
for the audience `meshward` (e.g. `kubectl create token SA --audience meshward` into a file),
with `create sessions.meshward.io` granted; it keeps forwarding until Ctrl-C.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import webbrowser

from meshward.app.commands import UsageError
from meshward.runtime.client import ApiClient, ApiError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "dashboard",
        help="open serve's web page with a one-time login code (no token in the browser)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("--url", help="serve's HTTP URL (default: kubectl port-forward to the Service)")
    p.add_argument(
        "--api-token-file",
        help="file holding the credential to trade (default: env MESHWARD_API_TOKEN or "
        "MESHWARD_API_TOKEN_FILE)",
    )
    p.add_argument("--namespace", default="meshward", help="serve's namespace (port-forward)")
    p.add_argument("--service", default="meshward", help="serve's Service (port-forward)")
    p.add_argument("--kubeconfig", help="kubeconfig for kubectl port-forward")
    p.add_argument("--no-browser", action="store_true", help="print the link only")
    p.set_defaults(func=run)


def login_link(base_url: str, client: ApiClient) -> str:
    """A one-time login link for the page at `base_url`."""
    try:
        doc = client.request("POST", "/api/v1/session/code")
    except ApiError as exc:
        raise UsageError(f"cannot get a login code: {exc}") from None
    code = doc.get("code") if isinstance(doc, dict) else None
    if not isinstance(code, str) or not code:
        raise UsageError("cannot get a login code: the answer carries none")
    return f"{base_url.rstrip('/')}/login#code={code}"


def _port_forward(args: argparse.Namespace) -> tuple[subprocess.Popen[str], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = ["kubectl", "port-forward", "--namespace", args.namespace]
    if args.kubeconfig:
        cmd += ["--kubeconfig", args.kubeconfig]
    cmd += [f"svc/{args.service}", f"{port}:9193"]
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except OSError as exc:
        raise UsageError(f"cannot run kubectl: {exc.strerror or exc}") from None
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "Forwarding from 127.0.0.1:PORT -> 9193", or "" if it died
    if not line.startswith("Forwarding from"):
        proc.kill()
        err = proc.stderr.read() if proc.stderr else ""
        raise UsageError(f"kubectl port-forward failed: {(err or line).strip()[:300]}")
    return proc, f"http://127.0.0.1:{port}"


def run(args: argparse.Namespace) -> int:
    forward = None
    if args.url:
        if not args.url.startswith(("http://", "https://")):
            raise UsageError(f"--url {args.url!r} must be an http:// or https:// URL")
        base = args.url
    else:
        forward, base = _port_forward(args)
    try:
        link = login_link(base, ApiClient.configured(base, args.api_token_file))
        print(f"meshward: {link}  (one-time, valid 60 s)", flush=True)
        if not args.no_browser:
            webbrowser.open(link)
        if forward is not None:
            print("forwarding; Ctrl-C stops", file=sys.stderr, flush=True)
            forward.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if forward is not None and forward.poll() is None:
            forward.terminate()
            forward.wait(5)
    return 0
