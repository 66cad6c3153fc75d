#!/usr/bin/env python3
"""A client that uses Nodepool exactly as Zuul 14's scheduler and executor do.

For each request: create /nodepool/requests/<PPP>- (persistent, sequential)
with Zuul's JSON; wait until it is fulfilled or failed (data watch); check the
node list against node_types; lock every node (kazoo Lock, blocking, 30 s)
after checking allocated_to; delete the request; set the nodes in-use with
Zuul's user_data; then used; unlock. Keeps --outstanding requests in flight
until --count are done. Prints one JSON summary line.

Usage: zuul_client.py --hosts H[/chroot] --labels a,b --count N
                      [--outstanding K] [--priority 200]
"""

import argparse
import json
import sys
import threading
import time
import uuid

from kazoo.client import KazooClient
from kazoo.recipe.lock import Lock

SYSTEM_ID = uuid.uuid4().hex
TRACE_ID = 215112374629468731405815305233457823345


def request_json(labels, tenant):
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
        "created_time": time.time(), "provider": None, "state": "requested",
        "state_time": time.time(), "relative_priority": 0,
        "event_id": uuid.uuid4().hex, "tenant_name": tenant,
    }


def one(zk, labels, priority, results, errors):
    start = time.monotonic()
    path = zk.create("/nodepool/requests/%s-" % priority,
                     json.dumps(request_json(labels, "tenant")).encode(),
                     sequence=True, makepath=True)
    rid = path.rsplit("/", 1)[1]
    done = threading.Event()

    def watch(data, stat, event=None):
        if data:
            state = json.loads(data)["state"]
            if state in ("fulfilled", "failed"):
                done.set()
                return False
        return True

    zk.DataWatch(path, watch)
    if not done.wait(120):
        errors.append("timeout %s" % rid)
        zk.delete(path)
        return
    latency = time.monotonic() - start
    req = json.loads(zk.get(path)[0])
    if req["state"] != "fulfilled":
        errors.append("failed %s" % rid)
        zk.delete(path)
        return
    if req["requestor_data"]["span_info"]["trace_id"] != TRACE_ID:
        errors.append("trace id corrupted")
    nodes = req["nodes"]
    if len(nodes) != len(labels):
        errors.append("node count mismatch %s" % rid)
    locks = []
    for nid, label in zip(nodes, labels):
        npath = "/nodepool/nodes/%s" % nid
        node = json.loads(zk.get(npath)[0])
        if node["allocated_to"] != rid or label not in node["type"] or node["state"] != "ready":
            errors.append("bad node %s for %s: %s" % (nid, rid, node["state"]))
        lock = Lock(zk, npath + "/lock")
        if not lock.acquire(timeout=30):
            errors.append("cannot lock %s" % nid)
        locks.append((npath, lock))
    zk.delete(path)
    for state, extra in (("in-use", {"user_data": {"zuul_system": SYSTEM_ID, "project_name": "p"}}),
                         ("used", {})):
        for npath, _ in locks:
            node = json.loads(zk.get(npath)[0])
            node.update(extra)
            node["state"] = state
            node["state_time"] = time.time()
            zk.set(npath, json.dumps(node).encode())
    for _, lock in locks:
        lock.release()
    results.append(latency)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", required=True)
    ap.add_argument("--labels", required=True)
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--outstanding", type=int, default=1)
    ap.add_argument("--priority", default="200")
    opts = ap.parse_args()
    zk = KazooClient(hosts=opts.hosts, timeout=10)
    zk.start(timeout=30)
    labels = opts.labels.split(",")
    results, errors = [], []
    sem = threading.Semaphore(opts.outstanding)
    threads = []
    t0 = time.monotonic()

    def run():
        try:
            one(zk, labels, opts.priority, results, errors)
        except Exception as e:  # noqa: BLE001 - reported in the summary
            errors.append(repr(e))
        finally:
            sem.release()

    for _ in range(opts.count):
        sem.acquire()
        t = threading.Thread(target=run)
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    results.sort()
    pct = lambda p: results[int((len(results) - 1) * p)] if results else None  # noqa: E731
    print(json.dumps({"done": len(results), "errors": errors[:10], "error_count": len(errors),
                      "elapsed": elapsed, "rate": len(results) / elapsed if elapsed else 0,
                      "p50": pct(0.5), "p95": pct(0.95), "p99": pct(0.99)}))
    zk.stop()
    sys.exit(0 if not errors else 1)


if __name__ == "__main__":
    main()
