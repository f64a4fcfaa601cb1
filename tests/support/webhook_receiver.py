"""Test webhook endpoint: records every POST as one JSON line and checks its Standard Webhooks
signature with the reference library (PyPI `standardwebhooks`).

    .venv/bin/python tests/support/webhook_receiver.py --port 0 --secret whsec_... --out FILE \
        [--fail-first N]

Prints "READY <port>" once listening. POST (any path) -> 204 if the signature verifies, 400 if
not; the first N POSTs are answered 503 instead (to exercise retries). GET /healthz -> 200.
"""
import argparse
import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--secret", required=True, help="whsec_<base64>")
    ap.add_argument("--out", required=True, help="JSON-lines file, appended to")
    ap.add_argument("--fail-first", type=int, default=0, metavar="N")
    args = ap.parse_args()

    try:
        # The library base64-decodes the secret here; a bad one would otherwise surface as a
        # verification failure on every request.
        webhook = Webhook(args.secret)
    except Exception as e:  # noqa: BLE001 - binascii.Error, RuntimeError
        ap.error(f"bad --secret: {e}")

    lock = threading.Lock()  # one counter and one file shared by the handler threads
    state = {"posts": 0}
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
            self.reply(200 if self.path == "/healthz" else 404)

        def do_POST(self):
            body = self.read_body()
            # Taken before verification/locking so latency measurements see arrival time.
            arrived = time.time()
            headers = {k.lower(): v for k, v in self.headers.items()}
            with lock:
                state["posts"] += 1
                forced = state["posts"] <= args.fail_first
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
            }
            with lock:
                out.write(json.dumps(rec) + "\n")
                out.flush()  # the test reads the file while we run
            self.reply(503 if forced else 204 if verified else 400)

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True  # don't let a stuck client block shutdown
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
