#!/usr/bin/env python3
"""A lean Zuul-like Nodepool client for benchmarks.

It walks the same protocol as zuul_client.py (and Zuul 14) for every request:
create /nodepool/requests/<PPP>- with Zuul's JSON, wait for fulfilled or
failed, lock every node (a kazoo-compatible lock contender
<uuidhex>__lock__<seq> under <node>/lock), delete the request, set the nodes
in-use with Zuul's user_data, then used, and unlock. What it leaves out is the
cost that is the client's and not the launcher's:

- no thread per request: every ZooKeeper call is kazoo's *_async form and the
  steps chain in completion callbacks, so one kazoo connection runs all
  requests in flight;
- no extra reads: the request's data from its data watch is used directly (no
  second get), each node is read once and its in-use and used records are
  written from that one read;
- the lock is one create plus one children listing when uncontended (kazoo's
  Lock recipe also checks the parent path and arms watches).

Keeps --outstanding requests in flight until --count are done (or submits
them all at once with --outstanding equal to --count) and prints one JSON
summary line like zuul_client.py, plus the raw latencies with --latencies.

Usage: zuul_client_fast.py --hosts H[/chroot] --labels a,b --count N
                           [--outstanding K] [--priority 200] [--timeout 300]
"""

import argparse
import json
import sys
import threading
import time
import uuid

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

SYSTEM_ID = uuid.uuid4().hex
TRACE_ID = 215112374629468731405815305233457823345
LOCK_MARK = "__lock__"


def request_json(labels, tenant):
    now = time.time()
    return {
        "requestor_data": {
            "build_set_uuid": uuid.uuid4().hex, "tenant_name": tenant,
            "pipeline_name": "check", "job_uuid": uuid.uuid4().hex,
            "job_name": "tox",
            "span_info": {"name": "RequestNodes", "trace_id": TRACE_ID,
                          "span_id": 13451738231587532214, "trace_flags": 1,
                          "start_time": time.time_ns(), "parent": None},
        },
        "node_types": labels, "requestor": SYSTEM_ID,
        "created_time": now, "provider": None, "state": "requested",
        "state_time": now, "relative_priority": 0,
        "event_id": uuid.uuid4().hex, "tenant_name": tenant,
    }


class Bench:
    def __init__(self, zk, labels, priority, count, outstanding):
        self.zk = zk
        self.labels = labels
        self.priority = priority
        self.count = count
        self.outstanding = outstanding
        self.mutex = threading.Lock()
        self.all_done = threading.Event()
        self.submitted = 0
        self.finished = 0
        self.latencies = []
        self.errors = []

    # --- bookkeeping -----------------------------------------------------

    def error(self, msg):
        with self.mutex:
            self.errors.append(msg)

    def submit_more(self):
        """Submits requests until `outstanding` are in flight."""
        while True:
            with self.mutex:
                in_flight = self.submitted - self.finished
                if self.submitted >= self.count or in_flight >= self.outstanding:
                    return
                self.submitted += 1
            Request(self).start()

    def request_done(self, latency=None):
        with self.mutex:
            self.finished += 1
            if latency is not None:
                self.latencies.append(latency)
            last = self.finished >= self.count
        if last:
            self.all_done.set()
        else:
            self.submit_more()


class Request:
    """One request's life, as a chain of async completions."""

    def __init__(self, bench):
        self.b = bench
        self.zk = bench.zk
        self.path = None
        self.rid = None
        self.start_t = None
        self.latency = None
        self.seen_final = False
        self.nodes = []        # [(path, dict)]
        self.locks = []        # lock contender paths
        self.pending = 0
        self.closed = False

    def fail(self, msg):
        if self.closed:
            return
        self.closed = True
        self.b.error(msg)
        if self.path:
            self.zk.delete_async(self.path)
        for lp in self.locks:
            self.zk.delete_async(lp)
        self.b.request_done()

    def guard(self, fn):
        """Wraps a completion callback so any exception fails the request."""
        def cb(async_result):
            try:
                fn(async_result)
            except Exception as e:  # noqa: BLE001 - reported in the summary
                self.fail("%s: %r" % (self.rid, e))
        return cb

    # 1. create the request
    def start(self):
        self.start_t = time.monotonic()
        data = json.dumps(request_json(self.b.labels, "tenant")).encode()
        self.zk.create_async("/nodepool/requests/%s-" % self.b.priority, data,
                             sequence=True, makepath=True).rawlink(self.guard(self.created))

    def created(self, ar):
        self.path = ar.get()
        self.rid = self.path.rsplit("/", 1)[1]
        self.read_request()

    # 2. wait for fulfilled/failed: read with a watch; the watch re-reads
    def read_request(self):
        self.zk.get_async(self.path, watch=self.watch).rawlink(self.guard(self.got_request))

    def watch(self, event):
        if not self.seen_final and not self.closed:
            self.read_request()

    def got_request(self, ar):
        if self.seen_final or self.closed:
            return
        data, _ = ar.get()
        req = json.loads(data)
        state = req["state"]
        if state not in ("fulfilled", "failed"):
            return
        self.seen_final = True
        self.latency = time.monotonic() - self.start_t
        if state != "fulfilled":
            return self.fail("failed %s" % self.rid)
        if req["requestor_data"]["span_info"]["trace_id"] != TRACE_ID:
            self.b.error("trace id corrupted")
        nodes = req["nodes"]
        if len(nodes) != len(self.b.labels):
            return self.fail("node count mismatch %s" % self.rid)
        # 3. read every node once
        self.pending = len(nodes)
        self.nodes = [None] * len(nodes)
        for i, nid in enumerate(nodes):
            npath = "/nodepool/nodes/%s" % nid
            self.zk.get_async(npath).rawlink(self.guard(
                lambda ar, i=i, npath=npath: self.got_node(ar, i, npath)))

    def got_node(self, ar, i, npath):
        data, _ = ar.get()
        node = json.loads(data)
        label = self.b.labels[i]
        if (node["allocated_to"] != self.rid or label not in node["type"]
                or node["state"] != "ready"):
            self.b.error("bad node %s for %s: %s" % (npath, self.rid, node["state"]))
        self.nodes[i] = (npath, node)
        self.pending -= 1
        if self.pending == 0:
            self.lock_nodes()

    # 4. lock every node (kazoo-compatible contender)
    def lock_nodes(self):
        self.pending = len(self.nodes)
        for npath, _ in self.nodes:
            self.zk.create_async("%s/lock/%s%s" % (npath, uuid.uuid4().hex, LOCK_MARK),
                                 b"", ephemeral=True, sequence=True,
                                 makepath=True).rawlink(self.guard(self.lock_created))

    def lock_created(self, ar):
        lpath = ar.get()
        self.locks.append(lpath)
        self.check_lock(lpath)

    def check_lock(self, lpath):
        parent, mine = lpath.rsplit("/", 1)
        self.zk.get_children_async(parent).rawlink(self.guard(
            lambda ar: self.got_contenders(ar, parent, mine)))

    def got_contenders(self, ar, parent, mine):
        seq = lambda n: n.rsplit(LOCK_MARK, 1)[-1]  # noqa: E731
        ahead = sorted((c for c in ar.get() if LOCK_MARK in c and seq(c) < seq(mine)), key=seq)
        if not ahead:
            self.pending -= 1
            if self.pending == 0:
                self.locked()
            return
        # Contended (the launcher still holds it): wait for our predecessor.
        pred = "%s/%s" % (parent, ahead[-1])
        lpath = "%s/%s" % (parent, mine)

        def gone(event):
            self.check_lock(lpath)

        def exists(ar2):
            if ar2.get() is None:
                self.check_lock(lpath)
        self.zk.exists_async(pred, watch=gone).rawlink(self.guard(exists))

    # 5. delete the request, 6. in-use, 7. used, 8. unlock
    def locked(self):
        self.zk.delete_async(self.path).rawlink(self.guard(self.request_deleted))

    def request_deleted(self, ar):
        try:
            ar.get()
        except NoNodeError:
            pass
        self.path = None
        self.set_nodes("in-use", {"user_data": {"zuul_system": SYSTEM_ID, "project_name": "p"}},
                       self.in_use)

    def set_nodes(self, state, extra, then):
        self.pending = len(self.nodes)

        def one_done(ar):
            ar.get()
            self.pending -= 1
            if self.pending == 0:
                then()
        for npath, node in self.nodes:
            node.update(extra)
            node["state"] = state
            node["state_time"] = time.time()
            self.zk.set_async(npath, json.dumps(node).encode()).rawlink(self.guard(one_done))

    def in_use(self):
        self.set_nodes("used", {}, self.used)

    def used(self):
        self.pending = len(self.locks)

        def unlocked(ar):
            ar.get()
            self.pending -= 1
            if self.pending == 0 and not self.closed:
                self.closed = True
                self.b.request_done(self.latency)
        for lp in self.locks:
            self.zk.delete_async(lp).rawlink(self.guard(unlocked))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", required=True)
    ap.add_argument("--labels", required=True)
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--outstanding", type=int, default=1)
    ap.add_argument("--priority", default="200")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--latencies", action="store_true", help="include every latency")
    opts = ap.parse_args()
    zk = KazooClient(hosts=opts.hosts, timeout=10)
    zk.start(timeout=30)
    b = Bench(zk, opts.labels.split(","), opts.priority, opts.count, opts.outstanding)
    t0 = time.monotonic()
    b.submit_more()
    finished = b.all_done.wait(opts.timeout)
    elapsed = time.monotonic() - t0
    with b.mutex:
        results = sorted(b.latencies)
        errors = list(b.errors)
        if not finished:
            errors.append("timeout after %.0fs: %d of %d finished" % (opts.timeout, b.finished, b.count))
    pct = lambda p: results[int((len(results) - 1) * p)] if results else None  # noqa: E731
    out = {"done": len(results), "errors": errors[:10], "error_count": len(errors),
           "elapsed": elapsed, "rate": len(results) / elapsed if elapsed else 0,
           "p50": pct(0.5), "p95": pct(0.95), "p99": pct(0.99)}
    if opts.latencies:
        out["latencies"] = results
    print(json.dumps(out))
    sys.stdout.flush()
    try:
        zk.stop()
    except Exception:  # noqa: BLE001
        pass
    sys.exit(0 if not errors else 1)


if __name__ == "__main__":
    main()
