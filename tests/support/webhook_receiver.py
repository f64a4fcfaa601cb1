"""Test webhook endpoint: records every POST as one JSON line and checks its Standard Webhooks
signature with the reference library (PyPI `standardwebhooks`).

    .venv/bin/python tests/support/webhook_receiver.py --port 0 --secret whsec_... --out FILE \
        [--fail-first N] [--tls-cert PEM --tls-key PEM [--client-ca PEM]]

Prints "READY <port>" once listening. POST (any path) -> 204 if the signature verifies, 400 if
not; the first N POSTs are answered 503 instead (to exercise retries). GET /healthz -> 200.

Behaviour per path can be changed while running, to play a receiver that fails, throttles,
is gone or is slow: GET /_mode?path=/x&status=500&delay=0&retry_after=2&count=N makes the next
N POSTs to /x (all of them without count) wait `delay` seconds, then answer `status` (with a
Retry-After header when given) instead of the verdict. GET /_mode?path=/x&reset=1 restores it.
With --tls-cert the receiver speaks HTTPS; with --client-ca it requires a client certificate
signed by that CA.
"""
import argparse
import json
import signal
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from standardwebhooks import Webhook


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--secret", required=True, help="whsec_<base64>")
    ap.add_argument("--out", required=True, help="JSON-lines file, appended to")
    ap.add_argument("--fail-first", type=int, default=0, metavar="N")
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--client-ca")
    args = ap.parse_args()

    try:
        # The library base64-decodes the secret here; a bad one would otherwise surface as a
        # verification failure on every request.
        webhook = Webhook(args.secret)
    except Exception as e:  # noqa: BLE001 - binascii.Error, RuntimeError
        ap.error(f"bad --secret: {e}")

    lock = threading.Lock()  # one counter and one file shared by the handler threads
    state = {"posts": 0, "modes": {}}
    out = open(args.out, "a", encoding="utf-8")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like a real endpoint behind a proxy

        def log_message(self, *_):
            pass  # the JSON lines are the log

        def reply(self, code):
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def read_body(self):
            if "chunked" not in (self.headers.get("Transfer-Encoding") or "").lower():
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))
            # Streaming HTTP clients may send chunked bodies; http.server does not decode them.
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()

        def do_GET(self):
            url = urlparse(self.path)
            if url.path == "/_mode":
                q = {k: v[0] for k, v in parse_qs(url.query).items()}
                with lock:
                    if q.get("reset"):
                        state["modes"].pop(q["path"], None)
                    else:
                        state["modes"][q["path"]] = {
                            "status": int(q.get("status", 204)),
                            "delay": float(q.get("delay", 0)),
                            "retry_after": q.get("retry_after"),
                            "count": int(q["count"]) if "count" in q else None,
                        }
                self.reply(200)
                return
            self.reply(200 if self.path == "/healthz" else 404)

        def do_POST(self):
            body = self.read_body()
            # Taken before verification/locking so latency measurements see arrival time.
            arrived = time.time()
            headers = {k.lower(): v for k, v in self.headers.items()}
            with lock:
                state["posts"] += 1
                forced = state["posts"] <= args.fail_first
                mode = state["modes"].get(self.path)
                if mode is not None and mode["count"] is not None:
                    mode["count"] -= 1
                    if mode["count"] <= 0:
                        state["modes"].pop(self.path, None)
                mode = dict(mode) if mode else None
            try:
                # verify() checks the 5-minute timestamp tolerance and any "v1,..." entry of the
                # space-separated signature list, then json.loads the body: a correctly signed
                # non-JSON body therefore also ends up as verified=false.
                webhook.verify(body, headers)
                verified, error = True, None
            except Exception as e:  # noqa: BLE001 - any failure is a reject
                verified, error = False, f"{type(e).__name__}: {e}"
            text = body.decode("utf-8", errors="replace")
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = text
            rec = {
                "arrived_unix": arrived,
                "path": self.path,
                "verified": verified,
                "error": error,
                "webhook_id": headers.get("webhook-id"),
                "webhook_timestamp": headers.get("webhook-timestamp"),
                "signature": headers.get("webhook-signature"),
                "body": parsed,
                "forced_failure": forced,  # always present: a stable schema for the test
                "mode": mode,
            }
            with lock:
                out.write(json.dumps(rec) + "\n")
                out.flush()  # the test reads the file while we run
            if mode is not None:
                time.sleep(mode["delay"])
                self.send_response(mode["status"])
                if mode["retry_after"] is not None:
                    self.send_header("Retry-After", mode["retry_after"])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.reply(503 if forced else 204 if verified else 400)

    ThreadingHTTPServer.allow_reuse_address = True  # restartable on the same port
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True  # don't let a stuck client block shutdown
    if args.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        if args.client_ca:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(args.client_ca)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(f"READY {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    # SIGTERM -> KeyboardInterrupt so both signals shut down the same clean way.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
