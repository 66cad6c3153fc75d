#!/usr/bin/env python3
"""A fault-injecting HTTP reverse proxy for the chaos suite's cloud scenarios.

It listens on 127.0.0.1 (one port per route) and forwards every request to
its route's upstream (moto, or one OpenStack service), and on the way, per
request and at random with the configured rates, it injects:

* ``5xx_before``: an HTTP 5xx answer instead of forwarding (the cloud never
  saw the call);
* ``5xx_after``: the call is forwarded, the cloud's real answer is dropped
  and a 5xx is sent instead: the cloud did the work, the client never heard;
* ``throttled``: a throttling answer without forwarding (AWS: HTTP 503 with
  the EC2 error code ``RequestLimitExceeded``, or ``ThrottlingException`` for
  the JSON protocols; OpenStack: HTTP 429 with ``Retry-After``);
* ``hung_before`` / ``hung_after``: the connection is held open with no
  answer for ``--hang-seconds`` (longer than any client timeout), before or
  after forwarding the call; released (closed without an answer) when the
  proxy shuts down.

Half of ``--error-rate`` goes to each 5xx kind, half of ``--hang-rate`` to
each hang kind. The proxy counts what it did and writes the counts as JSON
to ``--stats`` (every second and at exit), and one JSON line per injected
fault (time, kind, call) to ``--fault-log``. SIGUSR1 turns injection off,
SIGUSR2 on again; SIGTERM/SIGINT shut the proxy down (hung calls are
released first).

Only the standard library; threaded (one thread per client connection,
HTTP/1.1 keep-alive to the client, one upstream connection per call).

Usage: cloudproxy.py --flavor aws|openstack --route NAME=http://127.0.0.1:PORT
                     [--route ...] --ports-file F --stats F [--fault-log F]
                     [--error-rate 0.1] [--throttle-rate 0.05] [--hang-rate 0.01]
                     [--hang-seconds 600] [--retry-after 1] [--seed N]
                     [--exempt REGEX]
"""

import argparse
import collections
import http.client
import json
import os
import random
import re
import signal
import socket
import sys
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "trailers", "transfer-encoding", "upgrade", "content-length"}
KINDS = ("forwarded", "5xx_before", "5xx_after", "throttled", "hung_before", "hung_after")
ID_RE = re.compile(r"^(?:[0-9a-fA-F-]{32,36}|\d+|[a-z]+-[0-9a-f]{8,17}|req-[0-9a-f-]+)$")


class State:
    """What the proxy shares between its handler threads."""

    def __init__(self, opts):
        self.opts = opts
        self.lock = threading.Lock()
        self.rng = random.Random(opts.seed)
        self.enabled = True
        self.shutdown = threading.Event()
        self.counts = collections.Counter()
        self.by_op = collections.defaultdict(collections.Counter)
        self.open_hangs = 0
        self.hangs_released = 0
        self.upstream_errors = 0
        self.started = time.time()
        self.exempt = re.compile(opts.exempt) if opts.exempt else None
        self.fault_log = open(opts.fault_log, "a", encoding="utf-8") if opts.fault_log else None

    def choose(self, op):
        """The fate of one call."""
        o = self.opts
        with self.lock:
            r = self.rng.random()
            half = self.rng.random() < 0.5
            enabled = self.enabled and not (self.exempt and self.exempt.search(op))
        if not enabled:
            return "forwarded"
        if r < o.hang_rate:
            return "hung_before" if half else "hung_after"
        r -= o.hang_rate
        if r < o.throttle_rate:
            return "throttled"
        r -= o.throttle_rate
        if r < o.error_rate:
            return "5xx_before" if half else "5xx_after"
        return "forwarded"

    def record(self, kind, op, route, status=None, note=None):
        with self.lock:
            self.counts[kind] += 1
            self.counts["requests"] += 1
            self.by_op[op][kind] += 1
            if kind != "forwarded" and self.fault_log:
                self.fault_log.write(json.dumps({"t": time.time(), "kind": kind, "op": op, "route": route,
                                                 "status": status, "note": note}, sort_keys=True) + "\n")
                self.fault_log.flush()

    def snapshot(self):
        with self.lock:
            return {
                "requests": self.counts["requests"],
                "counts": {k: self.counts[k] for k in KINDS},
                "injected": sum(self.counts[k] for k in KINDS if k != "forwarded"),
                "open_hangs": self.open_hangs,
                "hangs_released": self.hangs_released,
                "upstream_errors": self.upstream_errors,
                "enabled": self.enabled,
                "rates": {"error": self.opts.error_rate, "throttle": self.opts.throttle_rate,
                          "hang": self.opts.hang_rate, "hang_seconds": self.opts.hang_seconds},
                "by_op": {op: dict(c) for op, c in sorted(self.by_op.items())},
                "seconds": time.time() - self.started,
            }

    def write_stats(self):
        if not self.opts.stats:
            return
        tmp = self.opts.stats + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.snapshot(), f, indent=1, sort_keys=True)
        os.replace(tmp, self.opts.stats)


def op_name(flavor, method, path, headers, body):
    """A short name of the call, for the counts: the AWS action (query or
    JSON protocol), or the OpenStack method and path with ids elided."""
    if flavor == "aws":
        target = headers.get("X-Amz-Target")
        if target:
            return target.rsplit(".", 1)[-1]
        try:
            form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
            if form.get("Action"):
                return form["Action"][0]
        except ValueError:
            pass
        q = urllib.parse.urlsplit(path).query
        action = urllib.parse.parse_qs(q).get("Action")
        if action:
            return action[0]
        return "%s /%s" % (method, urllib.parse.urlsplit(path).path.lstrip("/").split("/")[0])
    parts = urllib.parse.urlsplit(path).path.split("/")
    return "%s %s" % (method, "/".join("{id}" if ID_RE.match(p) else p for p in parts))


def make_handler(state, route, upstream):
    up = urllib.parse.urlsplit(upstream)
    up_host, up_port = up.hostname, up.port or 80
    up_prefix = up.path.rstrip("/")
    flavor = state.opts.flavor

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "cloudproxy"
        sys_version = ""

        def log_message(self, fmt, *args):  # quiet: the fault log says what matters
            pass

        def _body(self):
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = b""
                while True:
                    line = self.rfile.readline()
                    size = int(line.split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return out
                    out += self.rfile.read(size)
                    self.rfile.readline()
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def _send(self, status, body, ctype, extra=()):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in extra:
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, kind):
            """An injected 5xx or throttling answer in the cloud's shape."""
            rid = str(uuid.uuid4())
            json_proto = bool(self.headers.get("X-Amz-Target"))
            if flavor == "aws":
                if kind == "throttled":
                    status, code = 503, ("ThrottlingException" if json_proto else "RequestLimitExceeded")
                    msg = "Request limit exceeded."
                else:
                    status, code = state.rng.choice([(500, "InternalError"), (503, "Unavailable")])
                    if json_proto:
                        code = "ServiceException"
                    msg = "An internal error has occurred (injected by cloudproxy)"
                if json_proto:
                    body = json.dumps({"__type": code, "message": msg}).encode()
                    self._send(status, body, "application/x-amz-json-1.1", [("x-amzn-RequestId", rid)])
                else:
                    body = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>%s</Code>"
                            "<Message>%s</Message></Error></Errors><RequestID>%s</RequestID></Response>" % (
                                code, msg, rid)).encode()
                    self._send(status, body, "text/xml;charset=UTF-8")
                return status
            if kind == "throttled":
                ra = str(state.opts.retry_after)
                body = json.dumps({"overLimit": {"code": 429, "message": "Over limit (injected by cloudproxy)",
                                                 "retryAfter": ra}}).encode()
                self._send(429, body, "application/json", [("Retry-After", ra),
                                                           ("X-Openstack-Request-Id", "req-" + rid)])
                return 429
            status = state.rng.choice([500, 502, 503])
            body = json.dumps({"computeFault" if status == 500 else "error": {
                "code": status, "message": "injected by cloudproxy"}}).encode()
            self._send(status, body, "application/json", [("X-Openstack-Request-Id", "req-" + rid)])
            return status

        def _hang(self):
            with state.lock:
                state.open_hangs += 1
            try:
                state.shutdown.wait(state.opts.hang_seconds)
            finally:
                with state.lock:
                    state.open_hangs -= 1
                    state.hangs_released += 1
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def _forward(self, body):
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            if body or self.command in ("POST", "PUT", "PATCH"):
                headers["Content-Length"] = str(len(body))
            conn = http.client.HTTPConnection(up_host, up_port, timeout=max(state.opts.hang_seconds, 600))
            try:
                conn.request(self.command, up_prefix + self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                return resp.status, resp.reason, resp.getheaders(), data
            finally:
                conn.close()

        def _handle(self):
            body = self._body()
            op = op_name(flavor, self.command, self.path, self.headers, body)
            kind = state.choose(op)
            if kind == "hung_before":
                state.record(kind, op, route)
                self._hang()
                return
            if kind in ("5xx_before", "throttled"):
                status = self._error(kind)
                state.record(kind, op, route, status)
                return
            try:
                status, reason, headers, data = self._forward(body)
            except (OSError, http.client.HTTPException) as e:
                with state.lock:
                    state.upstream_errors += 1
                self._send(502, json.dumps({"error": "upstream: %s" % e}).encode(), "application/json")
                state.record("forwarded", op, route, 502, "upstream error: %s" % e)
                return
            if kind == "hung_after":
                state.record(kind, op, route, status)
                self._hang()
                return
            if kind == "5xx_after":
                injected = self._error(kind)
                state.record(kind, op, route, injected, "real answer %d dropped" % status)
                return
            self.send_response(status, reason)
            for k, v in headers:
                if k.lower() not in HOP_BY_HOP:
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            state.record("forwarded", op, route, status)

        def do_GET(self):
            self._handle()

        do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_GET

    return Handler


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flavor", choices=("aws", "openstack"), required=True)
    ap.add_argument("--route", action="append", required=True, help="NAME=UPSTREAM-URL (one port each)")
    ap.add_argument("--ports-file", required=True, help="JSON {name: port} written once listening")
    ap.add_argument("--stats", help="JSON counts, rewritten every second and at exit")
    ap.add_argument("--fault-log", help="one JSON line per injected fault")
    ap.add_argument("--error-rate", type=float, default=0.10)
    ap.add_argument("--throttle-rate", type=float, default=0.05)
    ap.add_argument("--hang-rate", type=float, default=0.01)
    ap.add_argument("--hang-seconds", type=float, default=600.0)
    ap.add_argument("--retry-after", type=int, default=1)
    ap.add_argument("--exempt", help="regex of call names never faulted")
    ap.add_argument("--seed", type=int, default=1)
    opts = ap.parse_args()
    state = State(opts)
    servers = []
    ports = {}
    for r in opts.route:
        name, upstream = r.split("=", 1)
        srv = Server(("127.0.0.1", 0), make_handler(state, name, upstream))
        ports[name] = srv.server_address[1]
        servers.append(srv)
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    tmp = opts.ports_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump(ports, f)
    os.replace(tmp, opts.ports_file)
    print("cloudproxy: listening %s" % json.dumps(ports), flush=True)

    def stop(*_):
        state.shutdown.set()

    def toggle(on):
        def h(*_):
            with state.lock:
                state.enabled = on
            print("cloudproxy: injection %s" % ("on" if on else "off"), flush=True)
        return h

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGUSR1, toggle(False))
    signal.signal(signal.SIGUSR2, toggle(True))
    while not state.shutdown.wait(1.0):
        state.write_stats()
    # Hung calls see the event and close their connections.
    deadline = time.time() + 5
    while time.time() < deadline:
        with state.lock:
            if state.open_hangs == 0:
                break
        time.sleep(0.05)
    for srv in servers:
        srv.server_close()
    state.write_stats()
    print("cloudproxy: stopped: %s" % json.dumps(state.snapshot()["counts"]), flush=True)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
