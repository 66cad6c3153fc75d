"""The history of a chaos run, and the checker that turns it into figures.

The Zuul-like client (client.py) appends one JSON object per line to a
history file for everything it does and sees: ``submit``, ``answer`` (the
request reached ``fulfilled`` or ``failed``; a later change of a request it
already saw answered is logged as ``answer`` again), ``lock`` (it holds a
node's lock; with the node's hostname), ``bad-node`` (a fulfilled request
named a node that was not ``ready`` and allocated to it), ``in-use``,
``return`` (node set ``used``), ``unlock``, ``lost-lock`` (its session went
away while it held node locks), ``cancel`` (it gave up waiting and deleted
the request), ``client-error``. The orchestrator appends ``fault`` events
(``t``: start, ``end``: when the fault was over, ``what``).

At the end of a run the orchestrator reads every request and node record in
ZooKeeper and every instance in the cloud; :func:`check` computes:

* **requests**, **fulfilled**, **failed** (with reasons);
* **lost**: submitted and never answered (nor deleted by anyone else);
* **double**: a request answered twice with different nodes, a node handed
  to a request while allocated to another, or two requests whose use of one
  node overlaps in time (for static hosts: more concurrent users of a host
  than it has slots). A use runs from ``lock`` (logged once the lock is
  held: no earlier than the real start) to ``unlock`` (logged with the
  moment release was called: no later than the real end), so an overlap
  found is certain, never an artefact of the client's own latency;
* **leaked**: cloud resources that carry Nodepool's tags for one of the
  run's providers but whose node (or upload) has no record in ZooKeeper,
  and static host slots that are not registered exactly once;
* **stuck**: records cleanup should have removed (nodes still ``used``,
  ``failed`` or ``deleting``, ``in-use`` nodes nobody holds, requests left
  behind by the run);
* **recovery**: for each fault, the time from its end to the next
  fulfilment; the worst one is reported.

Only the standard library: the checker runs wherever the history is.
"""

import collections
import json
import threading
import time

CLEANUP_STATES = ("used", "failed", "deleting", "deleted", "aborted")


class HistoryLog:
    """Appends events to a history file (thread-safe, one flush per event)."""

    def __init__(self, path):
        self.path = path
        self._f = open(path, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def log(self, ev, at=None, **fields):
        """`at`: the event's time when it is not now (e.g. an unlock is
        logged with the moment release was called; see `check`)."""
        rec = {"t": time.time() if at is None else at, "ev": ev}
        rec.update(fields)
        line = json.dumps(rec, sort_keys=True)
        with self._lock:
            self._f.write(line + "\n")
            self._f.flush()
        return rec

    def close(self):
        with self._lock:
            self._f.close()


def read_history(path):
    """Every event of a history file, in file order. A torn last line (the
    writer was killed) is skipped."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def _overlaps(intervals):
    """Pairs of (start, end, owner) intervals of different owners that
    overlap (touching ends do not count)."""
    found = []
    ordered = sorted(intervals)
    for i, (s1, e1, o1) in enumerate(ordered):
        for s2, e2, o2 in ordered[i + 1:]:
            if s2 >= e1:
                break
            if o1 != o2:
                found.append((o1, o2, max(s1, s2)))
    return found


def _max_concurrency(intervals):
    """The largest number of intervals open at one moment, and when."""
    points = []
    for s, e, _ in intervals:
        points.append((s, 1))
        points.append((e, -1))
    # An interval ending at t closes before one starting at t opens.
    points.sort(key=lambda p: (p[0], p[1]))
    best, at, cur = 0, None, 0
    for t, d in points:
        cur += d
        if cur > best:
            best, at = cur, t
    return best, at


def check(events, zk_state=None, instances=None, providers=None, static_slots=None,
          end_time=None):
    """Computes the figures of one run.

    events: the history (client and fault events).
    zk_state: {"requests": {id: dict or None}, "nodes": {id: dict or None},
        "node_locks": {id: [contenders]}, "uploads": set of "build-upload"}
        read at the end (None entries: unparseable records).
    instances: [{"provider", "id", "node_id", "upload", "kind"}] from the clouds.
    providers: names of the providers the run's launchers served; only
        their resources and nodes are judged.
    static_slots: {provider: {hostname: slots}} the configured static hosts.
    end_time: when the run ended (open use intervals end there).
    """
    zk_state = zk_state or {"requests": {}, "nodes": {}, "node_locks": {}}
    instances = instances or []
    providers = set(providers or [])
    end_time = end_time or time.time()

    submits = {}
    answers = collections.defaultdict(list)
    cancels = {}
    failed_reasons = collections.Counter()
    client_failed = set()
    doubles = []
    uses = collections.defaultdict(list)       # node id -> [(start, end, request)]
    host_uses = collections.defaultdict(list)  # (provider, hostname) -> [...]
    open_locks = {}                            # (request, node) -> lock event
    faults = []
    fulfil_times = []

    for ev in events:
        kind = ev.get("ev")
        rid = ev.get("req")
        if kind == "submit":
            submits[rid] = ev
        elif kind == "answer":
            answers[rid].append(ev)
            if ev.get("state") == "fulfilled":
                fulfil_times.append(ev["t"])
        elif kind == "cancel":
            cancels[rid] = ev
        elif kind == "bad-node":
            other = ev.get("allocated_to")
            if other and other != rid:
                doubles.append("node %s given to %s while allocated to %s" % (ev.get("node"), rid, other))
            client_failed.add(rid)
            failed_reasons["client: %s" % ev.get("why", "bad node")] += 1
        elif kind == "client-fail":
            client_failed.add(rid)
            failed_reasons["client: %s" % ev.get("why", "?")] += 1
        elif kind == "lock":
            open_locks[(rid, ev["node"])] = ev
        elif kind in ("unlock", "lost-lock"):
            nodes = [ev["node"]] if ev.get("node") else [n for (r, n) in open_locks if r == rid]
            for node in nodes:
                start = open_locks.pop((rid, node), None)
                if start is None:
                    continue
                end = ev["t"]
                if kind == "lost-lock" and ev.get("since"):
                    end = min(end, ev["since"])
                uses[node].append((start["t"], end, rid))
                if start.get("hostname"):
                    host_uses[(start.get("provider"), start["hostname"])].append((start["t"], end, rid))
        elif kind == "fault":
            faults.append(ev)
    for (rid, node), start in open_locks.items():
        uses[node].append((start["t"], end_time, rid))
        if start.get("hostname"):
            host_uses[(start.get("provider"), start["hostname"])].append((start["t"], end_time, rid))

    # Answers: the first one counts; a different later one is a double.
    fulfilled = failed = 0
    for rid in submits:
        seen = answers.get(rid, [])
        if not seen:
            continue
        first = seen[0]
        for later in seen[1:]:
            if (later.get("state"), later.get("nodes")) != (first.get("state"), first.get("nodes")):
                doubles.append("request %s answered %s %s, then %s %s" % (
                    rid, first.get("state"), first.get("nodes"), later.get("state"), later.get("nodes")))
        if first.get("state") == "fulfilled" and rid not in client_failed:
            fulfilled += 1
        else:
            failed += 1
            if first.get("state") == "failed":
                declined = first.get("declined_by") or []
                failed_reasons["failed by nodepool (declined by %d pools)" % len(declined)] += 1

    lost_ids = sorted(rid for rid in submits if not answers.get(rid))
    cancelled_by_client = sorted(rid for rid in lost_ids if rid in cancels)

    for node, ivs in uses.items():
        for a, b, at in _overlaps(ivs):
            doubles.append("node %s used by %s and %s at once (t=%.3f)" % (node, a, b, at))
    for slots_key, ivs in host_uses.items():
        provider, host = slots_key
        slots = (static_slots or {}).get(provider, {}).get(host)
        if slots is None:
            continue
        most, at = _max_concurrency(ivs)
        if most > slots:
            doubles.append("static host %s (%d slots) used by %d requests at once (t=%.3f)" % (
                host, slots, most, at))

    # Leaks: tagged cloud resources without a record.
    nodes = zk_state.get("nodes", {})
    uploads = zk_state.get("uploads") or set()
    leaked = []
    for inst in instances:
        if providers and inst.get("provider") not in providers:
            continue
        if inst.get("upload"):
            if inst["upload"] not in uploads:
                leaked.append("%s %s of upload %s" % (inst.get("kind", "resource"), inst["id"], inst["upload"]))
            continue
        nid = inst.get("node_id")
        if nid is None or nid not in nodes:
            leaked.append("%s %s of node %s (%s)" % (
                inst.get("kind", "instance"), inst["id"], nid, inst.get("provider")))
    if static_slots:
        per_host = collections.Counter()
        for nid, node in nodes.items():
            if not node or node.get("provider") not in static_slots:
                continue
            if node.get("state") in CLEANUP_STATES:
                continue
            per_host[(node["provider"], node.get("hostname"))] += 1
        for provider, hosts in static_slots.items():
            for host, slots in hosts.items():
                have = per_host.get((provider, host), 0)
                if have != slots:
                    leaked.append("static host %s has %d registrations, wants %d" % (host, have, slots))

    # Stuck records.
    stuck = []
    locks = zk_state.get("node_locks", {})
    for nid, node in nodes.items():
        if node is None:
            continue
        if providers and node.get("provider") not in providers:
            continue
        state = node.get("state")
        if state in CLEANUP_STATES:
            stuck.append("node %s still %s" % (nid, state))
        elif state == "in-use" and not locks.get(nid):
            stuck.append("node %s in-use without a lock" % nid)
        elif state in ("building", "init") and not locks.get(nid):
            stuck.append("node %s %s without a lock" % (nid, state))
        elif state == "ready" and node.get("allocated_to") and node["allocated_to"] not in zk_state.get("requests", {}):
            stuck.append("node %s ready, allocated to missing request %s" % (nid, node["allocated_to"]))
    for rid in zk_state.get("requests", {}):
        if rid in submits:
            stuck.append("request %s left in ZooKeeper" % rid)

    # Recovery after each fault.
    fulfil_times.sort()
    recoveries = []
    for f in faults:
        end = f.get("end", f["t"])
        nxt = next((t for t in fulfil_times if t > end), None)
        # Nothing outstanding after the fault: nothing to recover.
        if nxt is not None:
            recoveries.append(nxt - end)
    latencies = []
    for rid, sub in submits.items():
        if answers.get(rid):
            latencies.append(answers[rid][0]["t"] - sub["t"])
    latencies.sort()

    return {
        "requests": len(submits),
        "fulfilled": fulfilled,
        "failed": failed,
        "failed_reasons": dict(failed_reasons),
        "lost": len(lost_ids),
        "lost_ids": lost_ids,
        "cancelled_by_client": cancelled_by_client,
        "double": len(doubles),
        "double_details": doubles,
        "leaked": len(leaked),
        "leaked_details": leaked,
        "stuck": len(stuck),
        "stuck_details": stuck,
        "faults": len(faults),
        "recovery_max_s": max(recoveries) if recoveries else None,
        "recovery_p50_s": sorted(recoveries)[len(recoveries) // 2] if recoveries else None,
        "latency_max_s": latencies[-1] if latencies else None,
        "latency_p50_s": latencies[len(latencies) // 2] if latencies else None,
    }


def self_test():
    """The checker must be able to fail: a clean synthetic history passes,
    and each injected fault is caught. Returns a list of (case, ok, detail)."""
    t = 1000.0
    base = [
        {"t": t, "ev": "submit", "req": "r1"},
        {"t": t + 1, "ev": "answer", "req": "r1", "state": "fulfilled", "nodes": ["n1"]},
        {"t": t + 1.1, "ev": "lock", "req": "r1", "node": "n1"},
        {"t": t + 2, "ev": "unlock", "req": "r1", "node": "n1"},
        {"t": t + 2.5, "ev": "submit", "req": "r2"},
        {"t": t + 3, "ev": "answer", "req": "r2", "state": "fulfilled", "nodes": ["n2"]},
        {"t": t + 3.1, "ev": "lock", "req": "r2", "node": "n2"},
        {"t": t + 4, "ev": "unlock", "req": "r2", "node": "n2"},
    ]
    zk = {"requests": {}, "nodes": {}, "node_locks": {}}
    results = []

    def case(name, events, want, zk_state=zk, instances=None, **kw):
        got = check(events, zk_state, instances, providers=["p"], end_time=t + 10, **kw)
        ok = all(got[k] == v for k, v in want.items())
        results.append((name, ok, {k: got[k] for k in want}))

    case("clean history", base, {"lost": 0, "double": 0, "leaked": 0, "fulfilled": 2})
    overlap = base + [
        {"t": t + 3.2, "ev": "lock", "req": "r3", "node": "n2"},
        {"t": t + 3.9, "ev": "unlock", "req": "r3", "node": "n2"},
        {"t": t + 3.0, "ev": "submit", "req": "r3"},
        {"t": t + 3.15, "ev": "answer", "req": "r3", "state": "fulfilled", "nodes": ["n2"]},
    ]
    case("injected double allocation (overlapping use)", overlap, {"double": 1})
    twice = base + [{"t": t + 3.5, "ev": "answer", "req": "r2", "state": "fulfilled", "nodes": ["n9"]}]
    case("injected double fulfilment", twice, {"double": 1})
    lost = base + [{"t": t + 5, "ev": "submit", "req": "r4"}]
    case("injected lost request", lost, {"lost": 1})
    leak = [{"provider": "p", "id": "i-1", "node_id": "0000000999", "kind": "instance"}]
    case("injected leaked instance", base, {"leaked": 1}, instances=leak)
    host = base + [
        {"t": t + 0.5, "ev": "submit", "req": "r5"},
        {"t": t + 0.9, "ev": "answer", "req": "r5", "state": "fulfilled", "nodes": ["n5"]},
        {"t": t + 1.2, "ev": "lock", "req": "r5", "node": "n5", "provider": "s", "hostname": "h1"},
        {"t": t + 1.5, "ev": "unlock", "req": "r5", "node": "n5"},
        {"t": t + 1.3, "ev": "submit", "req": "r6"},
        {"t": t + 1.35, "ev": "answer", "req": "r6", "state": "fulfilled", "nodes": ["n6"]},
        {"t": t + 1.4, "ev": "lock", "req": "r6", "node": "n6", "provider": "s", "hostname": "h1"},
        {"t": t + 1.8, "ev": "unlock", "req": "r6", "node": "n6"},
    ]
    case("injected double use of a static host", host, {"double": 1},
         static_slots={"s": {"h1": 1}},
         zk_state={"requests": {}, "nodes": {"n7": {"provider": "s", "hostname": "h1", "state": "ready"}},
                   "node_locks": {}})
    return results
