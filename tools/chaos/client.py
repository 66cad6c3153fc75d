#!/usr/bin/env python3
"""A Zuul-like Nodepool client for the chaos suite, writing a history.

It walks Zuul 14's protocol (spec zk-protocol 5.1) for every request, and
survives the faults the suite injects (connection loss, a ZooKeeper restart
or leader change) the way Zuul does: every ZooKeeper call is retried on the
same session.

For each request:

1. create ``/nodepool/requests/<PPP>-`` (persistent, sequential) with Zuul's
   JSON; the request carries a unique ``job_uuid``, so a create whose reply
   was lost is found again instead of being made twice;
2. wait until it is ``fulfilled`` or ``failed`` (data watch, plus a read
   every few seconds as a safety net, which Zuul does not need but a checker
   that must not miss an answer does); every later change of the request is
   logged too (a second fulfilment is a double);
3. failed: delete it. Fulfilled: read each node, require ``ready`` and
   ``allocated_to == request`` (else ``bad-node``, and the nodes are given
   back as Zuul does), lock each node (kazoo Lock, 30 s);
4. delete the request, set the nodes ``in-use`` with Zuul's ``user_data``,
   hold them for the job time, set them ``used`` (only if still ``in-use``),
   unlock.

Keeps --outstanding requests in flight until --count are done, then prints
one JSON summary line. Every step goes to the --history file (history.py).

Usage: client.py --hosts H[/chroot] --labels a,b[;c] --count N --history F
                 [--outstanding K] [--job-time S] [--timeout S] [--tls CA,CERT,KEY]
"""

import argparse
import json
import os
import random
import sys
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from history import HistoryLog  # noqa: E402
from kazoo.client import KazooClient, KazooState  # noqa: E402
from kazoo.exceptions import (  # noqa: E402
    ConnectionClosedError, ConnectionLoss, NoNodeError, OperationTimeoutError, SessionExpiredError)
from kazoo.recipe.lock import Lock  # noqa: E402
from kazoo.retry import KazooRetry  # noqa: E402

SYSTEM_ID = uuid.uuid4().hex
TRACE_ID = 215112374629468731405815305233457823345
RETRYABLE = (ConnectionLoss, OperationTimeoutError, ConnectionClosedError, SessionExpiredError)


def request_json(labels, tenant, job_uuid):
    now = time.time()
    return {
        "requestor_data": {
            "build_set_uuid": uuid.uuid4().hex, "tenant_name": tenant,
            "pipeline_name": "check", "job_uuid": job_uuid,
            "job_name": "chaos",
            "span_info": {"name": "RequestNodes", "trace_id": TRACE_ID,
                          "span_id": 13451738231587532214, "trace_flags": 1,
                          "start_time": time.time_ns(), "parent": None},
        },
        "node_types": labels, "requestor": SYSTEM_ID,
        "created_time": now, "provider": None, "state": "requested",
        "state_time": now, "relative_priority": 0,
        "event_id": uuid.uuid4().hex, "tenant_name": tenant,
    }


class Client:
    def __init__(self, opts):
        self.opts = opts
        self.hist = HistoryLog(opts.history)
        kw = {}
        if opts.tls:
            ca, cert, key = opts.tls.split(",")
            kw = dict(use_ssl=True, ca=ca, certfile=cert, keyfile=key, verify_certs=True)
        self.zk = KazooClient(
            hosts=opts.hosts, timeout=opts.session_timeout,
            connection_retry=KazooRetry(max_tries=-1, delay=0.2, max_delay=1.0),
            **kw)
        self.zk.add_listener(self.on_state)
        self.session_epoch = 0
        self.lost_at = None
        self.deadline = time.time() + opts.timeout
        self.label_sets = [s.split(",") for s in opts.labels.split(";")]
        self.mutex = threading.Lock()
        self.done = 0
        self.fulfilled = 0
        self.errors = 0
        self.latencies = []
        self.rng = random.Random(opts.seed)

    # --- ZooKeeper with retries ---------------------------------------

    def on_state(self, state):
        if state == KazooState.LOST:
            self.session_epoch += 1
            self.lost_at = time.time()
            self.hist.log("client-session", state="lost")
        elif state == KazooState.SUSPENDED:
            self.hist.log("client-session", state="suspended")
        else:
            self.hist.log("client-session", state="connected")

    def retry(self, fn, *args, **kw):
        """Calls fn until it stops failing with a connection error, or the
        run's deadline passes."""
        while True:
            try:
                return fn(*args, **kw)
            except RETRYABLE:
                if time.time() > self.deadline:
                    raise
                time.sleep(0.2)

    def find_request(self, prefix, job_uuid):
        """A request of ours whose create reply was lost, if it exists."""
        for child in self.retry(self.zk.get_children, "/nodepool/requests"):
            if not child.startswith(prefix + "-"):
                continue
            try:
                data, _ = self.retry(self.zk.get, "/nodepool/requests/" + child)
            except NoNodeError:
                continue
            try:
                if json.loads(data)["requestor_data"]["job_uuid"] == job_uuid:
                    return child
            except (ValueError, KeyError, TypeError):
                continue
        return None

    def create_request(self, labels):
        job_uuid = uuid.uuid4().hex
        data = json.dumps(request_json(labels, "tenant", job_uuid)).encode()
        prefix = self.opts.priority
        while True:
            try:
                path = self.zk.create("/nodepool/requests/%s-" % prefix, data,
                                      sequence=True, makepath=True)
                return path.rsplit("/", 1)[1]
            except NoNodeError:
                # The chroot itself is missing on the server we talk to (a
                # follower that has not seen its creation yet): kazoo's
                # makepath cannot create it. Nothing was created; try again.
                if time.time() > self.deadline:
                    raise
                time.sleep(0.2)
            except RETRYABLE:
                if time.time() > self.deadline:
                    raise
                time.sleep(0.2)
                try:
                    found = self.find_request(prefix, job_uuid)
                except RETRYABLE:
                    continue
                if found:
                    return found

    # --- one request ----------------------------------------------------

    def wait_answer(self, rid):
        """Waits for fulfilled/failed; returns the request's dict, or None
        at the deadline (after deleting it: a cancel) or if it vanished."""
        path = "/nodepool/requests/" + rid
        changed = threading.Event()

        def watch(event):
            changed.set()

        while time.time() < self.deadline:
            changed.clear()
            try:
                data, _ = self.retry(self.zk.get, path, watch=watch)
            except NoNodeError:
                self.hist.log("client-fail", req=rid, why="request vanished before its answer")
                return None
            try:
                req = json.loads(data)
            except ValueError:
                req = {}
            if req.get("state") in ("fulfilled", "failed"):
                return req
            changed.wait(2.0)
        self.hist.log("cancel", req=rid, why="no answer before the run's deadline")
        try:
            self.retry(self.zk.delete, path)
        except (NoNodeError,) + RETRYABLE:
            pass
        return None

    def watch_after_answer(self, rid, first):
        """Logs any later change of an answered request (until it is deleted)."""
        path = "/nodepool/requests/" + rid
        seen = [(first.get("state"), first.get("nodes"))]

        def on_data(data, stat, event=None):
            if data is None:
                return False
            try:
                req = json.loads(data)
            except ValueError:
                return True
            key = (req.get("state"), req.get("nodes"))
            if key not in seen:
                seen.append(key)
                self.hist.log("answer", req=rid, state=req.get("state"), nodes=req.get("nodes"),
                              declined_by=req.get("declined_by"), again=True)
            return True

        try:
            self.zk.DataWatch(path, on_data)
        except RETRYABLE:
            pass

    def one(self, labels):
        start = time.time()
        rid = self.create_request(labels)
        self.hist.log("submit", req=rid, labels=labels)
        req = self.wait_answer(rid)
        if req is None:
            return False
        self.hist.log("answer", req=rid, state=req["state"], nodes=req.get("nodes"),
                      declined_by=req.get("declined_by"))
        with self.mutex:
            self.latencies.append(time.time() - start)
        path = "/nodepool/requests/" + rid
        if req["state"] != "fulfilled":
            self.retry(self._delete_quietly, path)
            return False
        self.watch_after_answer(rid, req)
        nodes = req.get("nodes") or []
        if len(nodes) != len(labels):
            self.hist.log("client-fail", req=rid, why="node count mismatch")
            self.retry(self._delete_quietly, path)
            return False
        locks = []
        ok = True
        for nid, label in zip(nodes, labels):
            npath = "/nodepool/nodes/" + nid
            try:
                data, _ = self.retry(self.zk.get, npath)
                node = json.loads(data)
            except (NoNodeError, ValueError):
                self.hist.log("client-fail", req=rid, node=nid, why="node missing")
                ok = False
                break
            if node.get("allocated_to") != rid or node.get("state") != "ready" or label not in node.get("type", []):
                self.hist.log("bad-node", req=rid, node=nid, allocated_to=node.get("allocated_to"),
                              state=node.get("state"), why="node not ready for this request")
                ok = False
                break
            lock = Lock(self.zk, npath + "/lock")
            try:
                got = self.retry(lock.acquire, timeout=30)
            except RETRYABLE:
                got = False
            if not got:
                self.hist.log("client-fail", req=rid, node=nid, why="cannot lock node in 30 s")
                ok = False
                break
            self.hist.log("lock", req=rid, node=nid, provider=node.get("provider"),
                          hostname=node.get("hostname"), epoch=self.session_epoch)
            locks.append((nid, npath, lock, self.session_epoch))
        # Zuul deletes the request whether locking worked or not.
        self.retry(self._delete_quietly, path)
        if not ok:
            self.release(rid, locks)
            return False
        self.set_nodes(rid, locks, "in-use", {"user_data": {"zuul_system": SYSTEM_ID, "project_name": "p"}})
        time.sleep(self.job_time())
        self.set_nodes(rid, locks, "used", {}, only_from="in-use")
        self.release(rid, locks)
        return True

    def job_time(self):
        lo, hi = self.opts.job_time
        with self.mutex:
            return self.rng.uniform(lo, hi)

    def _delete_quietly(self, path):
        try:
            self.zk.delete(path)
        except NoNodeError:
            pass

    def held(self, rid, nid, epoch):
        """Whether our lock on the node is still ours (same session)."""
        if epoch != self.session_epoch:
            self.hist.log("lost-lock", req=rid, node=nid, since=self.lost_at)
            return False
        return True

    def set_nodes(self, rid, locks, state, extra, only_from=None):
        for nid, npath, _lock, epoch in locks:
            if not self.held(rid, nid, epoch):
                continue
            try:
                data, _ = self.retry(self.zk.get, npath)
                node = json.loads(data)
            except (NoNodeError, ValueError):
                self.hist.log("client-fail", req=rid, node=nid, why="node vanished while in use")
                continue
            if only_from and node.get("state") != only_from:
                continue
            node.update(extra)
            node["state"] = state
            node["state_time"] = time.time()
            self.retry(self.zk.set, npath, json.dumps(node).encode())
            self.hist.log("return" if state == "used" else state, req=rid, node=nid)

    def release(self, rid, locks):
        for nid, _npath, lock, epoch in locks:
            if epoch != self.session_epoch:
                continue
            # The unlock is logged with the moment release was called: the
            # lock was held at least until then, and perhaps a little longer
            # (the reply's way back). Logged after the call returned, a peer
            # that took the lock in between looked like an overlap.
            called = time.time()
            try:
                self.retry(lock.release)
            except (NoNodeError,) + RETRYABLE:
                pass
            self.hist.log("unlock", at=called, req=rid, node=nid)

    # --- the run ----------------------------------------------------------

    def run(self):
        self.zk.start(timeout=60)
        sem = threading.Semaphore(self.opts.outstanding)
        threads = []
        t0 = time.time()

        def go(i):
            labels = self.label_sets[i % len(self.label_sets)]
            try:
                ok = self.one(labels)
                with self.mutex:
                    self.fulfilled += 1 if ok else 0
            except Exception as e:  # noqa: BLE001 - recorded in the history
                self.hist.log("client-error", error=repr(e))
                with self.mutex:
                    self.errors += 1
            finally:
                with self.mutex:
                    self.done += 1
                sem.release()

        for i in range(self.opts.count):
            sem.acquire()
            if time.time() > self.deadline:
                sem.release()
                break
            t = threading.Thread(target=go, args=(i,), daemon=True)
            t.start()
            threads.append(t)
        for t in threads:
            t.join(max(0.0, self.deadline + 60 - time.time()))
        elapsed = time.time() - t0
        lat = sorted(self.latencies)
        pct = lambda p: lat[int((len(lat) - 1) * p)] if lat else None  # noqa: E731
        print(json.dumps({"done": self.done, "fulfilled": self.fulfilled, "errors": self.errors,
                          "elapsed": elapsed, "p50": pct(0.5), "p99": pct(0.99)}))
        sys.stdout.flush()
        try:
            self.zk.stop()
            self.zk.close()
        except Exception:  # noqa: BLE001
            pass
        self.hist.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", required=True)
    ap.add_argument("--tls", help="CA,CERT,KEY for a TLS connection")
    ap.add_argument("--labels", required=True,
                    help="labels of one request, comma-separated; several sets separated by ';' are used in turn")
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--outstanding", type=int, default=20)
    ap.add_argument("--priority", default="200")
    ap.add_argument("--job-time", type=lambda s: tuple(float(x) for x in s.split(",")), default=(0.05, 0.2),
                    help="MIN,MAX seconds a job holds its nodes")
    ap.add_argument("--timeout", type=float, default=600.0, help="the whole run's deadline")
    ap.add_argument("--session-timeout", type=float, default=40.0)
    ap.add_argument("--history", required=True)
    ap.add_argument("--seed", type=int, default=1)
    opts = ap.parse_args()
    Client(opts).run()


if __name__ == "__main__":
    main()
