#!/usr/bin/env python3
"""The scale benchmark (driven by tools/bench-scale.sh).

For each pool size (100, 1,000, 10,000 existing nodes by default) and each
launcher (Python Nodepool 11 from the venv, ours from target/release), on a
fresh chroot of a private ZooKeeper, with one nodepool.yaml text for both:

1. plants the existing nodes, spread over 20 fake providers: 40 % ready
   (label `bg`, unallocated), 40 % in-use (locked by this script's session,
   as Zuul holds them), 20 % held;
2. starts the launcher and submits one request at once: **start-up** is the
   time from the process start to that request's fulfilment (cache load and
   first pass included);
3. **churn**: 300 requests of label `churn`, 20 outstanding (the lean client
   tests/python/zuul_client_fast.py): launcher CPU per request, p50/p99,
   peak RSS, ZooKeeper packets per request (the server's `mntr` counters,
   whole system: client and launcher);
4. at the largest size, a **burst** of 2,000 one-node requests at once;
5. at the largest size, `nodepool list` (the CLI) and the web app's
   `/node-list` in text and JSON, each timed over several runs.

Writes results.json and a markdown report into --out, and with --doc
replaces the section between `<!-- scale:begin -->` and `<!-- scale:end -->`
of doc/benchmarks.md (appending it if missing). --reuse DIR takes the rows
(and the scale-out and ceiling results) this run did not measure from an
earlier run's directory, marked as such: e.g. ours re-measured on a quiet
machine beside Python's from a full run.
"""

import argparse
import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

from kazoo.client import KazooClient

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)

from bench_launcher import Launcher, proc_cpu, proc_hwm_mb, run_client  # noqa: E402

PROVIDERS = 20
LABEL = "churn"

TARGETS = {
    "cpu_ratio": 1.5,            # CPU/request at the largest size vs the smallest
    "rss_mb": 100.0,             # peak RSS at the largest size
    "startup_s": 3.0,            # start-up to first fulfilment at the largest size
    "node_list_json_s": 0.100,   # /node-list JSON at the largest size
    "cli_list_s": 0.5,           # nodepool list at the largest size
}


# ---------------------------------------------------------------------------
# Configuration


def config_text(zk_hosts, chroot, tls, webapp_port):
    out = "zookeeper-servers:\n"
    for hp in zk_hosts.split(","):
        host, port = hp.rsplit(":", 1)
        out += "  - host: %s\n    port: %s\n    chroot: %s\n" % (host, port, chroot)
    out += "zookeeper-tls:\n  ca: %s\n  cert: %s\n  key: %s\n" % tls
    if webapp_port:
        out += "webapp:\n  port: %d\n  listen_address: 127.0.0.1\n" % webapp_port
    out += "labels:\n  - name: %s\n    min-ready: 0\n  - name: bg\n    min-ready: 0\nproviders:\n" % LABEL
    for i in range(PROVIDERS):
        # Python's fake cloud has a built-in quota of 20 instances; the
        # planted nodes are records without instances, which Python would
        # count against it: the pools ignore the cloud's quota (both
        # launchers), their own max-servers is large.
        out += """\
  - name: scale-%02d
    driver: fake
    cloud: fake
    region-name: fake-region
    rate: 0.0001
    cloud-images:
      - name: fake-image
        image-name: Fake Precise
    pools:
      - name: main
        max-servers: 100000
        ignore-provider-quota: true
        host-key-checking: false
        labels:
          - name: %s
            cloud-image: fake-image
            flavor-name: Fake Flavor
          - name: bg
            cloud-image: fake-image
            flavor-name: Fake Flavor
""" % (i, LABEL)
    return out


# ---------------------------------------------------------------------------
# The existing nodes


def node_record(i, state, now):
    provider = "scale-%02d" % (i % PROVIDERS)
    return {
        "state": state, "state_time": now, "created_time": now, "provider": provider,
        "pool": "main", "type": ["bg"], "cloud": "fake", "region": "fake-region", "az": None,
        "external_id": "bg-%d" % i, "hostname": "bg%d" % i, "interface_ip": "127.0.0.1",
        "public_ipv4": "127.0.0.1", "private_ipv4": None, "public_ipv6": None, "host_id": None,
        "launcher": "bench-scale", "connection_type": "ssh", "connection_port": 22,
        "username": "zuul", "python_path": "auto", "shell_type": None, "host_keys": [],
        "image_id": "Fake Precise", "allocated_to": None, "comment": None, "hold_job": None,
        "user_data": None, "held_by": None, "hold_expiration": None, "resources":
        {"cores": 4, "instances": 1, "ram": 8192}, "attributes": None, "tenant_name": None,
        "requestor": None, "node_properties": [], "driver_data": None, "slot": None,
    }


def plant(zk, chroot, count):
    """Creates `count` node records (40 % ready, 40 % in-use and locked by
    this session, 20 % hold); returns the locked ids."""
    zk.ensure_path(chroot + "/nodepool/nodes")
    now = time.time()
    states = ["ready", "ready", "in-use", "in-use", "hold"]
    pending = []
    for i in range(count):
        data = json.dumps(node_record(i, states[i % 5], now)).encode()
        pending.append((states[i % 5], zk.create_async(chroot + "/nodepool/nodes/", data, sequence=True)))
        if len(pending) >= 500:
            _drain(zk, chroot, pending)
            pending = []
    _drain(zk, chroot, pending)


def _drain(zk, chroot, pending):
    locks = []
    for state, fut in pending:
        path = fut.get(timeout=60)
        if state == "in-use":
            node = path.rsplit("/", 1)[1]
            base = "%s/nodepool/nodes/%s/lock" % (chroot, node)
            zk.ensure_path(base)
            locks.append(zk.create_async(base + "/%s__lock__" % uuid.uuid4().hex, b"", ephemeral=True,
                                         sequence=True))
    for f in locks:
        f.get(timeout=60)


# ---------------------------------------------------------------------------
# Measurements


def zk_packets(host_port):
    """(received, sent) packets of one ZooKeeper server (`mntr`)."""
    host, port = host_port.rsplit(":", 1)
    import socket
    try:
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(b"mntr")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    vals = {}
    for line in data.decode().splitlines():
        parts = line.split("\t")
        if len(parts) == 2:
            vals[parts[0]] = parts[1]
    try:
        return int(vals["zk_packets_received"]), int(vals["zk_packets_sent"])
    except (KeyError, ValueError):
        return None


def submit_one(zk, chroot):
    """Creates one request for LABEL; returns its path."""
    now = time.time()
    data = {"requestor_data": {}, "node_types": [LABEL], "requestor": "bench-scale",
            "created_time": now, "provider": None, "state": "requested", "state_time": now,
            "relative_priority": 0, "event_id": uuid.uuid4().hex, "tenant_name": "tenant"}
    return zk.create(chroot + "/nodepool/requests/200-", json.dumps(data).encode(), sequence=True,
                     makepath=True)


def wait_fulfilled(zk, path, timeout):
    done = threading.Event()

    def watch(data, _stat, _event=None):
        if data is None:
            return False
        try:
            if json.loads(data).get("state") in ("fulfilled", "failed"):
                done.set()
                return False
        except ValueError:
            pass
        return True

    zk.DataWatch(path, watch)
    return done.wait(timeout)


def timed(fn, runs):
    times = []
    for _ in range(runs):
        t0 = time.monotonic()
        fn()
        times.append(time.monotonic() - t0)
    return statistics.median(times)


def launcher_cmd(impl, cfg, pidfile, webapp):
    if impl == "python":
        cmd = [os.path.join(REPO, ".venv", "bin", "nodepool-launcher"), "-c", cfg, "-f", "-p", pidfile]
    else:
        cmd = [os.path.join(REPO, "target", "release", "nodepool-launcher"), "-c", cfg, "-p", pidfile]
    if not webapp:
        cmd.append("--no-webapp")
    return cmd


def cli_cmd(impl, cfg):
    if impl == "python":
        return [os.path.join(REPO, ".venv", "bin", "nodepool"), "-c", cfg, "list"]
    return [os.path.join(REPO, "target", "release", "nodepool"), "-c", cfg, "list"]


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one(opts, zk, impl, size, run_id):
    """One launcher on a fresh chroot with `size` existing nodes."""
    name = "%s-%d" % (impl, size)
    rdir = os.path.join(opts.out, name)
    os.makedirs(rdir, exist_ok=True)
    chroot = "/scale-%s-%s" % (run_id, name)
    largest = size == max(opts.sizes)
    port = free_port() if largest else 0
    cfg = os.path.join(rdir, "nodepool.yaml")
    with open(cfg, "w") as f:
        f.write(config_text(opts.zk_tls_hosts, chroot, opts.tls, port))
    result = {"impl": impl, "size": size, "status": "ok"}
    t0 = time.monotonic()
    plant(zk, chroot, size)
    # How busy the machine was: timings taken beside other work say so.
    result["load_1min"] = round(os.getloadavg()[0], 1)
    result["plant_s"] = round(time.monotonic() - t0, 1)
    env = dict(os.environ, OS_CLIENT_CONFIG_FILE=os.path.join(HERE, "clouds.yaml"),
               NODEPOOL_FAKE_LAUNCH_DELAY_MS=str(opts.fake_delay_ms), NO_COLOR="1")
    env.setdefault("RUST_LOG", "info")
    launcher = Launcher(impl, launcher_cmd(impl, cfg, os.path.join(rdir, "launcher.pid"), largest),
                        env, os.path.join(rdir, "launcher.log"), rdir)
    try:
        started = time.monotonic()
        path = submit_one(zk, chroot)
        if not wait_fulfilled(zk, path, opts.start_timeout):
            result["status"] = "first request not fulfilled in %d s" % opts.start_timeout
            return result
        result["startup_s"] = round(time.monotonic() - started, 2)
        zk.delete(path)
        time.sleep(opts.settle)
        hp = opts.zk_hosts.split(",")[0]
        p0 = zk_packets(hp)
        cpu0 = proc_cpu(launcher.pid)
        perf = None
        if impl == "rust" and os.environ.get("NP_BENCH_PERF"):
            # A profile of our launcher during the churn only (NP_BENCH_PERF=1).
            perf = subprocess.Popen(["perf", "record", "-F", "999", "-g", "-p", str(launcher.pid), "-o",
                                     os.path.join(rdir, "perf.data")], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
        summary, client_cpu = run_client("fast", opts.zk_hosts + chroot, LABEL, opts.churn, 20,
                                         opts.client_timeout)
        if perf:
            perf.send_signal(signal.SIGINT)
            perf.wait(60)
        cpu1 = proc_cpu(launcher.pid)
        p1 = zk_packets(hp)
        result["churn"] = summary
        if cpu0 is not None and cpu1 is not None and summary.get("done"):
            result["cpu_ms_per_request"] = round((cpu1 - cpu0) * 1000.0 / summary["done"], 2)
        if p0 and p1 and summary.get("done"):
            result["zk_packets_per_request"] = round(((p1[0] - p0[0]) + (p1[1] - p0[1])) / summary["done"], 1)
        if largest and opts.burst:
            time.sleep(opts.settle)
            cpu0 = proc_cpu(launcher.pid)
            burst, _ = run_client("fast", opts.zk_hosts + chroot, LABEL, opts.burst, opts.burst,
                                  opts.client_timeout)
            cpu1 = proc_cpu(launcher.pid)
            result["burst"] = burst
            if cpu0 is not None and cpu1 is not None and burst.get("done"):
                result["burst_cpu_ms_per_request"] = round((cpu1 - cpu0) * 1000.0 / burst["done"], 2)
        result["peak_rss_mb"] = proc_hwm_mb(launcher.pid)
        if largest:
            cli = cli_cmd(impl, cfg)

            def run_cli():
                subprocess.run(cli, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=False,
                               timeout=120)
            result["cli_list_s"] = round(timed(run_cli, opts.repeat), 3)
            for kind, accept in (("text", "text/plain"), ("json", "application/json")):
                url = "http://127.0.0.1:%d/node-list" % port

                def fetch():
                    req = urllib.request.Request(url, headers={"Accept": accept})
                    with urllib.request.urlopen(req, timeout=60) as r:
                        r.read()
                try:
                    fetch()  # warm: both servers cache a result for a second
                    time.sleep(1.1)
                    # Uncached: one fetch per second (each result is cached for 1 s).
                    samples = []
                    for _ in range(opts.repeat):
                        t = time.monotonic()
                        fetch()
                        samples.append(time.monotonic() - t)
                        time.sleep(1.1)
                    result["node_list_%s_s" % kind] = round(statistics.median(samples), 4)
                except OSError as e:
                    result["node_list_%s_error" % kind] = str(e)
        if not launcher.alive():
            result["status"] = "launcher died (rc %s)" % launcher.proc.returncode
    finally:
        launcher.stop(grace=20)
    with open(os.path.join(rdir, "result.json"), "w") as f:
        json.dump(result, f, indent=1)
    return result


# ---------------------------------------------------------------------------
# Scale-out on an ensemble, and the ceiling


CHAOS = os.path.join(REPO, "tools", "chaos")


def zk_zxid(host_port):
    """The server's last zxid (`srvr`): one per write transaction."""
    host, port = host_port.rsplit(":", 1)
    import socket
    try:
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(b"srvr")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    for line in data.decode().splitlines():
        if line.startswith("Zxid:"):
            return int(line.split(":", 1)[1].strip(), 16)
    return None


def zk_config(hosts, chroot, tls=None):
    out = "zookeeper-servers:\n"
    for hp in hosts.split(","):
        host, port = hp.rsplit(":", 1)
        out += "  - host: %s\n    port: %s\n    chroot: %s\n" % (host, port, chroot)
    if tls:
        out += "zookeeper-tls:\n  ca: %s\n  cert: %s\n  key: %s\n" % tls
    return out


def scaleout(opts, launchers, run_id):
    """`launchers` of ours on the ensemble, each serving its own five fake
    providers of one label; the chaos suite's Zuul-like client (which logs
    a history) drives them; the chaos checker reads the history and every
    record at the end."""
    sys.path.insert(0, CHAOS)
    import history  # noqa: E402 - the chaos suite's checker
    name = "scaleout-%d" % launchers
    rdir = os.path.join(opts.out, name)
    os.makedirs(rdir, exist_ok=True)
    chroot = "/scale-%s-%s" % (run_id, name)
    procs = []
    result = {"launchers": launchers, "status": "ok"}
    env = dict(os.environ, NODEPOOL_FAKE_LAUNCH_DELAY_MS=str(opts.fake_delay_ms), NO_COLOR="1")
    env.setdefault("RUST_LOG", "info")
    try:
        providers = []
        for i in range(launchers):
            # The ensemble's plain ports (it has TLS ones too, with its own CA).
            text = zk_config(opts.ensemble_hosts, chroot)
            text += "labels:\n  - name: %s\n    min-ready: 0\nproviders:\n" % LABEL
            for j in range(5):
                pname = "so-%d-%d" % (i, j)
                providers.append(pname)
                text += """\
  - name: %s
    driver: fake
    cloud: fake
    region-name: fake-region
    rate: 0.0001
    cloud-images:
      - name: fake-image
        image-name: Fake Precise
    pools:
      - name: main
        max-servers: 1000
        ignore-provider-quota: true
        host-key-checking: false
        labels:
          - name: %s
            cloud-image: fake-image
            flavor-name: Fake Flavor
""" % (pname, LABEL)
            cfg = os.path.join(rdir, "launcher-%d.yaml" % i)
            with open(cfg, "w") as f:
                f.write(text)
            procs.append(Launcher("rust", launcher_cmd("rust", cfg, os.path.join(rdir, "l%d.pid" % i), False),
                                  env, os.path.join(rdir, "launcher-%d.log" % i), rdir))
        time.sleep(3)
        hist = os.path.join(rdir, "history.jsonl")
        cmd = [sys.executable, os.path.join(CHAOS, "client.py"), "--hosts", opts.ensemble_hosts + chroot,
               "--labels", LABEL, "--count", str(opts.scaleout_count), "--outstanding", str(opts.scaleout_outstanding),
               "--job-time", "0.01,0.05", "--timeout", str(opts.client_timeout), "--history", hist]
        out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=opts.client_timeout + 120)
        lines = [ln for ln in out.stdout.decode().splitlines() if ln.startswith("{")]
        summary = json.loads(lines[-1]) if lines else {}
        result["client"] = summary
        if summary.get("elapsed"):
            result["requests_per_s"] = round(summary.get("fulfilled", 0) / summary["elapsed"], 1)
        result["p50_ms"] = summary.get("p50") and round(summary["p50"] * 1000)
        time.sleep(5)  # cleanup of the last used nodes
        state = read_state(opts.ensemble_hosts, chroot)
        fig = history.check(history.read_history(hist), state, [], providers=providers)
        result["figures"] = {k: fig[k] for k in ("requests", "fulfilled", "failed", "lost", "double", "stuck")}
        result["double_details"] = fig["double_details"][:5]
        if fig["double"] or fig["lost"]:
            result["status"] = "CHECK FAILED"
    finally:
        for p in procs:
            p.stop(grace=20)
    return result


def read_state(hosts, chroot):
    """Every request and node record under `chroot`, with node lock contenders."""
    zk = KazooClient(hosts=hosts + chroot, timeout=30)
    zk.start(timeout=60)
    state = {"requests": {}, "nodes": {}, "node_locks": {}, "uploads": set()}
    try:
        for kind in ("requests", "nodes"):
            for i in zk.get_children("/nodepool/" + kind) if zk.exists("/nodepool/" + kind) else []:
                try:
                    data, _ = zk.get("/nodepool/%s/%s" % (kind, i))
                    state[kind][i] = json.loads(data) if data else None
                except Exception:  # noqa: BLE001 - gone meanwhile, or foreign
                    continue
                if kind == "nodes":
                    try:
                        state["node_locks"][i] = [c for c in zk.get_children("/nodepool/nodes/%s/lock" % i)
                                                  if "__lock__" in c]
                    except Exception:  # noqa: BLE001
                        state["node_locks"][i] = []
    finally:
        zk.stop()
        zk.close()
    return state


def ceiling(opts, run_id):
    """Static churn as fast as the lean client drives it: requests per
    second, ZooKeeper write transactions per fulfilled request (the zxid's
    advance), and that against the server's measured write limit."""
    name = "ceiling"
    rdir = os.path.join(opts.out, name)
    os.makedirs(rdir, exist_ok=True)
    chroot = "/scale-%s-%s" % (run_id, name)
    hosts = "".join("          - name: 127.0.0.%d\n            labels: static\n            username: zuul\n"
                    "            host-key-checking: false\n" % i for i in range(1, opts.ceiling_hosts + 1))
    text = zk_config(opts.zk_tls_hosts, chroot, opts.tls) + """\
labels:
  - name: static
    min-ready: 0
providers:
  - name: static
    driver: static
    pools:
      - name: main
        nodes:
""" + hosts
    cfg = os.path.join(rdir, "nodepool.yaml")
    with open(cfg, "w") as f:
        f.write(text)
    env = dict(os.environ, NO_COLOR="1", RUST_LOG=os.environ.get("RUST_LOG", "warn"))
    launcher = Launcher("rust", launcher_cmd("rust", cfg, os.path.join(rdir, "launcher.pid"), False), env,
                        os.path.join(rdir, "launcher.log"), rdir)
    result = {"status": "ok", "hosts": opts.ceiling_hosts}
    try:
        time.sleep(5)  # the hosts register as ready nodes
        hp = opts.zk_hosts.split(",")[0]
        z0, cpu0 = zk_zxid(hp), proc_cpu(launcher.pid)
        summary, _ = run_client("fast", opts.zk_hosts + chroot, "static", opts.ceiling_count,
                                opts.ceiling_outstanding, opts.client_timeout)
        z1, cpu1 = zk_zxid(hp), proc_cpu(launcher.pid)
        result["client"] = summary
        done = summary.get("done") or 0
        if done and summary.get("elapsed"):
            result["requests_per_s"] = round(done / summary["elapsed"], 1)
        if done and z0 is not None and z1 is not None:
            result["writes_per_request"] = round((z1 - z0) / done, 2)
            # The lean client writes six times per one-node request: its
            # request, the node lock's contender, the request's delete,
            # in-use, used, the contender's delete.
            result["launcher_writes_per_request"] = round((z1 - z0) / done - 6, 2)
        if done and cpu0 is not None and cpu1 is not None:
            result["cpu_ms_per_request"] = round((cpu1 - cpu0) * 1000 / done, 2)
    finally:
        launcher.stop(grace=20)
    return result


# ---------------------------------------------------------------------------
# Report


def fmt(v, unit="", digits=2):
    if v is None:
        return "-"
    return ("%." + str(digits) + "f%s") % (v, unit)


def report(results, opts, started, results_extra=None):
    results_extra = results_extra or {}
    lines = []
    lines.append("<!-- scale:begin -->")
    lines.append("## Scale: cost as the pool grows\n")
    lines.append("Generated by `tools/bench-scale.sh` (%s); do not edit by hand. Machine: %s, %d cores. Raw material: "
                 "`%s`.\n" % (started.strftime("%Y-%m-%d %H:%M UTC"), platform.machine(), os.cpu_count(),
                              os.path.relpath(opts.out, REPO)))
    lines.append("Each run: a fresh chroot of a private ZooKeeper with N existing nodes planted over %d fake providers "
                 "(40 %% ready of another label, 40 %% in-use and locked as Zuul holds them, 20 %% held), one "
                 "`nodepool.yaml` for both launchers, fake launches of %d ms. **Start-up**: process start to the "
                 "first request fulfilled. **Churn**: %d requests, 20 outstanding (`tests/python/"
                 "zuul_client_fast.py`). CPU is the launcher's own (utime+stime) per request; ZooKeeper packets "
                 "are the server's, sent and received, per request (client and launcher together).\n" % (
                     PROVIDERS, opts.fake_delay_ms, opts.churn))
    reused = sorted({r["from_run"] for r in results if r.get("from_run")})
    if reused:
        lines.append("Rows marked * come from the earlier run in `%s`.\n" % "`, `".join(reused))
    lines.append("The load column is the machine's 1-minute load average when the run began (2 cores: above 2, "
                 "other work competed for the CPU and the timings are pessimistic).\n")
    lines.append("| launcher | nodes | start-up | CPU per request | p50 | p99 | peak RSS | ZK packets per request | "
                 "load |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        c = r.get("churn") or {}
        lines.append("| %s%s | %d | %s | %s | %s | %s | %s | %s | %s |%s" % (
            "Python 11.0.0" if r["impl"] == "python" else "nodepool-rs", " *" if r.get("from_run") else "",
            r["size"], fmt(r.get("startup_s"), " s"),
            fmt(r.get("cpu_ms_per_request"), " ms"), fmt(c.get("p50") and c["p50"] * 1000, " ms", 0),
            fmt(c.get("p99") and c["p99"] * 1000, " ms", 0), fmt(r.get("peak_rss_mb"), " MiB", 0),
            fmt(r.get("zk_packets_per_request"), "", 1), fmt(r.get("load_1min"), "", 1),
            "" if r["status"] == "ok" else " " + r["status"]))
    big = max(opts.sizes)
    burst = [r for r in results if r.get("burst")]
    if burst:
        lines.append("\nBurst at %d nodes: %d one-node requests at once.\n" % (big, opts.burst))
        lines.append("| launcher | requests/s | p50 | p99 | launcher CPU per request |")
        lines.append("|---|---:|---:|---:|---:|")
        for r in burst:
            b = r["burst"]
            rate = b["done"] / b["elapsed"] if b.get("elapsed") else None
            lines.append("| %s | %s | %s | %s | %s |" % (
                "Python 11.0.0" if r["impl"] == "python" else "nodepool-rs", fmt(rate, "", 1),
                fmt(b.get("p50") and b["p50"], " s"), fmt(b.get("p99") and b["p99"], " s"),
                fmt(r.get("burst_cpu_ms_per_request"), " ms")))
    listing = [r for r in results if r.get("cli_list_s") is not None]
    if listing:
        lines.append("\nListings at %d nodes (median of %d; the web app's results are fetched uncached):\n" % (
            big, opts.repeat))
        lines.append("| | `nodepool list` | `/node-list` text | `/node-list` JSON |")
        lines.append("|---|---:|---:|---:|")
        for r in listing:
            lines.append("| %s | %s | %s | %s |" % (
                "Python 11.0.0" if r["impl"] == "python" else "nodepool-rs", fmt(r.get("cli_list_s"), " s", 3),
                fmt(r.get("node_list_text_s"), " s", 3), fmt(r.get("node_list_json_s"), " s", 3)))
    ours = {r["size"]: r for r in results if r["impl"] == "rust"}
    if ours:
        small, large = ours.get(min(opts.sizes)), ours.get(big)
        lines.append("\nTargets (ours, this machine):\n")
        checks = []
        if small and large and small.get("cpu_ms_per_request") and large.get("cpu_ms_per_request"):
            ratio = large["cpu_ms_per_request"] / small["cpu_ms_per_request"]
            checks.append(("CPU per request at %d nodes / at %d nodes" % (big, min(opts.sizes)),
                           "%.2fx" % ratio, "<= %.1fx" % TARGETS["cpu_ratio"], ratio <= TARGETS["cpu_ratio"]))
        if large:
            for key, label, unit, digits in (("peak_rss_mb", "peak RSS", " MiB", 0),
                                             ("startup_s", "start-up to first fulfilment", " s", 2),
                                             ("node_list_json_s", "`/node-list` JSON", " s", 3),
                                             ("cli_list_s", "`nodepool list`", " s", 3)):
                v = large.get(key)
                target = TARGETS[{"peak_rss_mb": "rss_mb"}.get(key, key)]
                checks.append(("%s at %d nodes" % (label, big), fmt(v, unit, digits),
                               "< %s%s" % (target, unit), v is not None and v < target))
        lines.append("| target | measured | goal | met |")
        lines.append("|---|---:|---:|---|")
        for what, got, goal, ok in checks:
            lines.append("| %s | %s | %s | %s |" % (what, got, goal, "yes" if ok else "**no**"))
    out = results_extra.get("scaleout") or []
    if out:
        lines.append("\nScale-out on a three-server ZooKeeper ensemble (ours; each launcher serves its own five fake "
                     "providers of one label; the chaos suite's Zuul-like client, %d requests, %d outstanding, "
                     "checked with `tools/chaos/history.py` against every record at the end):\n" % (
                         opts.scaleout_count, opts.scaleout_outstanding))
        lines.append("| launchers | requests/s | p50 | fulfilled | lost | double |")
        lines.append("|---:|---:|---:|---:|---:|---:|")
        for r in out:
            f = r.get("figures") or {}
            lines.append("| %d | %s | %s | %s | %s | %s |%s" % (
                r["launchers"], fmt(r.get("requests_per_s"), "", 1), fmt(r.get("p50_ms"), " ms", 0),
                f.get("fulfilled", "-"), f.get("lost", "-"), f.get("double", "-"),
                "" if r["status"] == "ok" else " " + r["status"]))
    ceil = results_extra.get("ceiling")
    if ceil:
        limit = results_extra.get("zk_write_limit")
        lines.append("\nThe ceiling: static churn (%d hosts, `zuul_client_fast.py`, %d outstanding) against this "
                     "machine's ZooKeeper write limit (`tools/bench-zk.sh`: 64 writers in parallel):\n" % (
                         ceil.get("hosts", 0), opts.ceiling_outstanding))
        lines.append("| requests/s | ZooKeeper writes per request (all) | of which the launcher's | launcher CPU per "
                     "request | ZooKeeper write limit | share of the limit used |")
        lines.append("|---:|---:|---:|---:|---:|---:|")
        used = None
        if limit and ceil.get("requests_per_s") and ceil.get("writes_per_request"):
            used = ceil["requests_per_s"] * ceil["writes_per_request"] / limit
        lines.append("| %s | %s | %s | %s | %s | %s |" % (
            fmt(ceil.get("requests_per_s"), "", 1), fmt(ceil.get("writes_per_request"), "", 1),
            fmt(ceil.get("launcher_writes_per_request"), "", 1), fmt(ceil.get("cpu_ms_per_request"), " ms"),
            fmt(limit, " writes/s", 0), fmt(used and used * 100, " %", 0)))
    lines.append("<!-- scale:end -->")
    return "\n".join(lines) + "\n"


def reuse(opts, results, extra):
    """Adds what this run did not measure from the run in `opts.reuse`."""
    src = os.path.relpath(os.path.abspath(opts.reuse), REPO)
    with open(os.path.join(opts.reuse, "results.json")) as f:
        old = json.load(f)
    have = {(r["impl"], r["size"]) for r in results}
    merged = list(results)
    for r in old:
        if (r["impl"], r["size"]) not in have:
            merged.append(dict(r, from_run=src))
    merged.sort(key=lambda r: (r["size"], r["impl"] != "rust"))
    opts.sizes = sorted({r["size"] for r in merged})
    try:
        with open(os.path.join(opts.reuse, "results-extra.json")) as f:
            old_extra = json.load(f)
    except OSError:
        old_extra = {}
    for key in ("scaleout", "ceiling", "zk_write_limit"):
        if extra.get(key) is None and old_extra.get(key) is not None:
            extra[key] = old_extra[key]
    return merged, extra


def write_doc(path, section):
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        text = "# Benchmarks\n"
    b, e = "<!-- scale:begin -->", "<!-- scale:end -->"
    if b in text and e in text:
        text = text[:text.index(b)] + section.rstrip("\n") + text[text.index(e) + len(e):]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(path, "w") as f:
        f.write(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zk-hosts", required=True)
    ap.add_argument("--zk-tls-hosts", required=True)
    ap.add_argument("--tls", required=True, help="CA,CERT,KEY")
    ap.add_argument("--out", required=True)
    ap.add_argument("--doc")
    ap.add_argument("--impls", default="rust,python")
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--churn", type=int, default=300)
    ap.add_argument("--burst", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--fake-delay-ms", type=int, default=100)
    ap.add_argument("--settle", type=float, default=2.0)
    ap.add_argument("--start-timeout", type=int, default=300)
    ap.add_argument("--client-timeout", type=int, default=1200)
    ap.add_argument("--ensemble-hosts", help="a three-server ensemble (plain) for the scale-out runs")
    ap.add_argument("--ensemble-tls-hosts")
    ap.add_argument("--scaleout", default="1,2,4", help="launcher counts for the scale-out runs ('' to skip)")
    ap.add_argument("--scaleout-count", type=int, default=1000)
    ap.add_argument("--scaleout-outstanding", type=int, default=60)
    ap.add_argument("--ceiling-hosts", type=int, default=100)
    ap.add_argument("--ceiling-count", type=int, default=3000)
    ap.add_argument("--ceiling-outstanding", type=int, default=60)
    ap.add_argument("--zk-write-limit", type=float, help="writes/s measured by tools/bench-zk.sh")
    ap.add_argument("--no-ceiling", action="store_true")
    ap.add_argument("--reuse", help="an earlier run's directory: rows and results this run does not measure")
    opts = ap.parse_args()
    opts.sizes = [int(s) for s in opts.sizes.split(",")]
    opts.out = os.path.abspath(opts.out)
    opts.tls = tuple(opts.tls.split(","))
    os.makedirs(opts.out, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    run_id = started.strftime("%H%M%S")
    ca, cert, key = opts.tls
    zk = KazooClient(hosts=opts.zk_tls_hosts, use_ssl=True, ca=ca, certfile=cert, keyfile=key, verify_certs=True,
                     timeout=60)
    zk.start(timeout=60)
    results = []
    extra = {}
    try:
        for size in opts.sizes:
            for impl in opts.impls.split(","):
                print("bench-scale: %s with %d nodes" % (impl, size), flush=True)
                r = one(opts, zk, impl, size, run_id)
                print("bench-scale:   %s" % json.dumps({k: v for k, v in r.items() if k not in ("churn", "burst")}),
                      flush=True)
                results.append(r)
                with open(os.path.join(opts.out, "results.json"), "w") as f:
                    json.dump(results, f, indent=1)
        if opts.scaleout and opts.ensemble_hosts:
            extra["scaleout"] = []
            for n in [int(x) for x in opts.scaleout.split(",")]:
                print("bench-scale: scale-out with %d launchers" % n, flush=True)
                r = scaleout(opts, n, run_id)
                print("bench-scale:   %s" % json.dumps({k: v for k, v in r.items() if k != "client"}), flush=True)
                extra["scaleout"].append(r)
        if not opts.no_ceiling:
            print("bench-scale: ceiling", flush=True)
            extra["ceiling"] = ceiling(opts, run_id)
            extra["zk_write_limit"] = opts.zk_write_limit
            print("bench-scale:   %s" % json.dumps({k: v for k, v in extra["ceiling"].items() if k != "client"}),
                  flush=True)
        with open(os.path.join(opts.out, "results-extra.json"), "w") as f:
            json.dump(extra, f, indent=1)
    finally:
        zk.stop()
        zk.close()
    if opts.reuse:
        results, extra = reuse(opts, results, extra)
    section = report(results, opts, started, extra)
    print(section)
    with open(os.path.join(opts.out, "scale.md"), "w") as f:
        f.write(section)
    if opts.doc:
        write_doc(opts.doc, section)
        print("bench-scale: report written to %s" % opts.doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
