#!/usr/bin/env python3
"""Runs the launcher benchmark (driven by tools/bench-launcher.sh).

For each launcher implementation (Python Nodepool 11 from the venv, ours from
target/release) and each scenario, starts a fresh launcher on its own chroot
of the shared test ZooKeeper with the same nodepool.yaml, waits until its pool
is registered (and, for static, its nodes are ready), runs a Zuul-like client
against it, samples the launcher's CPU time (/proc/<pid>/stat utime+stime)
around the client run and its peak RSS (VmHWM), then stops it (TERM, then KILL
after a grace period). Launchers never overlap.

Writes one JSON file per run and results.json to --out, and the markdown
report to --doc (and stdout). Needs kazoo (run it with the venv's python).
"""

import argparse
import datetime
import json
import os
import platform
import re
import resource
import signal
import subprocess
import sys
import time

from kazoo.client import KazooClient

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
CLK_TCK = os.sysconf("SC_CLK_TCK")
NOT_SUPPORTED_RE = re.compile(r"driver '(\w+)' is not supported by this launcher yet")

STATIC_NODES = 20

# ---------------------------------------------------------------------------
# Configuration


def zk_block(tls_port, chroot, tls):
    return (
        "zookeeper-servers:\n"
        "  - host: 127.0.0.1\n"
        "    port: %d\n"
        "    chroot: %s\n"
        "zookeeper-tls:\n"
        "  ca: %s\n"
        "  cert: %s\n"
        "  key: %s\n" % (tls_port, chroot, tls["ca"], tls["cert"], tls["key"]))


def fake_config(tls_port, chroot, tls, max_servers):
    # Python's fake cloud (nodepool/driver/fake/adapter.py) knows one image,
    # "Fake Precise", and the flavors "Fake Flavor"/"Unreal Flavor" (4 vCPU,
    # 8 GiB); its quota is 20 instances. rate: 0.0001 as in upstream's test
    # fixtures (the default is 1 s between API calls). Our fake driver takes
    # the same keys.
    return zk_block(tls_port, chroot, tls) + """\
labels:
  - name: fake-label
    min-ready: 0
providers:
  - name: fake-provider
    driver: fake
    cloud: fake
    region-name: fake-region
    rate: 0.0001
    cloud-images:
      - name: fake-image
        image-name: Fake Precise
    pools:
      - name: main
        max-servers: %d
        host-key-checking: false
        labels:
          - name: fake-label
            cloud-image: fake-image
            flavor-name: Fake Flavor
""" % max_servers


def static_config(tls_port, chroot, tls):
    nodes = "".join(
        "          - name: 127.0.0.%d\n"
        "            labels: static-label\n"
        "            username: zuul\n"
        "            host-key-checking: false\n" % i
        for i in range(1, STATIC_NODES + 1))
    return zk_block(tls_port, chroot, tls) + """\
labels:
  - name: static-label
    min-ready: 0
providers:
  - name: static-provider
    driver: static
    pools:
      - name: main
        nodes:
""" + nodes


# ---------------------------------------------------------------------------
# Processes


def proc_cpu(pid):
    """utime+stime of pid in seconds, or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def proc_hwm_mb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


class Launcher:
    def __init__(self, impl, cmd, env, log_path, cwd):
        self.impl = impl
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                                     start_new_session=True)

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self, grace=15.0):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(10)
        else:
            # The leader is gone; make sure nothing of its group lingers.
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.log.close()


RUNNING = []


def cleanup_all(*_):
    for launcher in list(RUNNING):
        try:
            launcher.stop(grace=5)
        except Exception:  # noqa: BLE001
            pass
    RUNNING.clear()


def on_signal(signum, _frame):
    cleanup_all()
    sys.exit(128 + signum)


# ---------------------------------------------------------------------------
# Runs


def wait_ready(zk, launcher, chroot, want_ready_nodes, timeout):
    """Waits for the pool component (and ready nodes); returns an error or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not launcher.alive():
            return "exited"
        try:
            pools = zk.get_children(chroot + "/nodepool/components/pool")
        except Exception:  # noqa: BLE001 - not there yet
            pools = []
        if pools:
            if not want_ready_nodes:
                return None
            ready = 0
            try:
                for nid in zk.get_children(chroot + "/nodepool/nodes"):
                    try:
                        data, _ = zk.get(chroot + "/nodepool/nodes/" + nid)
                        if json.loads(data).get("state") == "ready":
                            ready += 1
                    except Exception:  # noqa: BLE001
                        pass
            except Exception:  # noqa: BLE001
                pass
            if ready >= want_ready_nodes:
                return None
        time.sleep(0.2)
    return "not ready after %.0fs" % timeout


def run_client(kind, hosts, label, count, outstanding, timeout):
    script = {"zuul": "zuul_client.py", "fast": "zuul_client_fast.py"}[kind]
    cmd = [sys.executable, os.path.join(REPO, "tests", "python", script),
           "--hosts", hosts, "--labels", label, "--count", str(count),
           "--outstanding", str(outstanding)]
    if kind == "fast":
        cmd += ["--timeout", str(timeout)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout + 30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return {"client_error": "client killed after %ds" % (timeout + 30)}, None
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    lines = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
    if not lines:
        return {"client_error": "no summary (rc %s): %s" % (proc.returncode, err.decode()[-500:])}, client_cpu
    return json.loads(lines[-1]), client_cpu


def launcher_cmd(impl, cfg, pidfile):
    if impl == "python":
        return [os.path.join(REPO, ".venv", "bin", "nodepool-launcher"),
                "-c", cfg, "-f", "--no-webapp", "-p", pidfile]
    return [os.path.join(REPO, "target", "release", "nodepool-launcher"),
            "-c", cfg, "-f", "--no-webapp", "-p", pidfile]


def one_run(opts, zk, tls, impl, scen, client, run_id, unsupported):
    name = "%s-%s-%s" % (impl, scen["name"], client)
    result = {"impl": impl, "scenario": scen["name"], "driver": scen["driver"], "client": client,
              "count": scen["count"], "outstanding": scen["outstanding"], "status": "ok"}
    if scen["driver"] in unsupported.get(impl, set()):
        result["status"] = "not yet supported"
        return result
    rdir = os.path.join(opts.out, name)
    os.makedirs(rdir, exist_ok=True)
    chroot = "/bench-%s-%s" % (run_id, name)
    tls_port = int(opts.zk_tls_hosts.rsplit(":", 1)[1])
    if scen["driver"] == "fake":
        cfg_text = fake_config(tls_port, chroot, tls, opts.max_servers)
    else:
        cfg_text = static_config(tls_port, chroot, tls)
    cfg = os.path.join(rdir, "nodepool.yaml")
    with open(cfg, "w") as f:
        f.write(cfg_text)
    env = dict(os.environ)
    env["OS_CLIENT_CONFIG_FILE"] = os.path.join(HERE, "clouds.yaml")
    env["NODEPOOL_FAKE_LAUNCH_DELAY_MS"] = str(opts.rust_fake_delay_ms)
    env["NO_COLOR"] = "1"
    env.setdefault("RUST_LOG", "info")
    log_path = os.path.join(rdir, "launcher.log")
    launcher = Launcher(impl, launcher_cmd(impl, cfg, os.path.join(rdir, "launcher.pid")),
                        env, log_path, rdir)
    RUNNING.append(launcher)
    try:
        want_nodes = STATIC_NODES if scen["driver"] == "static" else 0
        t_start = time.monotonic()
        err = wait_ready(zk, launcher, chroot, want_nodes, opts.start_timeout)
        result["startup_s"] = round(time.monotonic() - t_start, 2)
        if err:
            text = launcher.log_text()
            m = NOT_SUPPORTED_RE.search(text)
            if m:
                result["status"] = "not yet supported"
                unsupported.setdefault(impl, set()).add(scen["driver"])
                result["launcher_error"] = m.group(0)
            else:
                result["status"] = "launcher %s" % err
                result["launcher_log_tail"] = text.splitlines()[-15:]
            return result
        time.sleep(opts.settle)
        cpu0 = proc_cpu(launcher.pid)
        zk0 = proc_cpu(opts.zk_pid) if opts.zk_pid else None
        summary, client_cpu = run_client(client, opts.zk_hosts + chroot, scen["label"],
                                         scen["count"], scen["outstanding"], opts.client_timeout)
        cpu1 = proc_cpu(launcher.pid)
        zk1 = proc_cpu(opts.zk_pid) if opts.zk_pid else None
        if zk0 is not None and zk1 is not None:
            result["zk_cpu_s"] = round(zk1 - zk0, 3)
        result.update(summary)
        result["client_cpu_s"] = client_cpu
        if cpu0 is not None and cpu1 is not None:
            result["launcher_cpu_s"] = round(cpu1 - cpu0, 3)
        result["peak_rss_mb"] = proc_hwm_mb(launcher.pid)
        if not launcher.alive():
            result["status"] = "launcher died (rc %s)" % launcher.proc.returncode
        elif summary.get("client_error") or summary.get("error_count"):
            result["status"] = "errors"
    finally:
        launcher.stop(grace=opts.stop_grace)
        RUNNING.remove(launcher)
    text = launcher.log_text()
    bad = [ln for ln in text.splitlines()
           if re.search(r"\b(WARN|WARNING|ERROR|CRITICAL)\b", ln) and "UserWarning" not in ln]
    result["log_warnings"] = len(bad)
    result["log_warning_samples"] = bad[:5]
    with open(os.path.join(rdir, "result.json"), "w") as f:
        json.dump(result, f, indent=1)
    return result


# ---------------------------------------------------------------------------
# Report


def fmt_s(v):
    if v is None:
        return "–"
    if v < 1:
        return "%.0f ms" % (v * 1000)
    return "%.2f s" % v


def report(results, opts, started):
    lines = []
    add = lines.append
    add("# Launcher benchmarks: Python Nodepool 11.0.0 vs nodepool-rs")
    add("")
    add("Generated by `tools/bench-launcher.sh` on %s (UTC) — do not edit by hand; "
        "the notes at the end are part of the generator." % started.strftime("%Y-%m-%d %H:%M"))
    add("")
    add("Machine: %d cores (%s), Linux %s, Python %s; ZooKeeper 3.8 (private, loopback, "
        "`forceSync=no`); launchers talk TLS to it, the clients plain TCP. Everything on 127.0.0.1."
        % (os.cpu_count(), platform.machine(), platform.release(), platform.python_version()))
    add("")
    headline = {}
    for r in results:
        if r["scenario"].endswith("-lat1") and r["client"] == "zuul":
            headline[(r["driver"], r["impl"])] = r
    add("## Headline: fulfilment latency, one request outstanding (p50)")
    add("")
    add("| driver | Python 11.0.0 | nodepool-rs |")
    add("|---|---|---|")
    for drv in ("fake", "static"):
        cells = []
        for impl in ("python", "rust"):
            r = headline.get((drv, impl))
            if r is None:
                cells.append("–")
            elif r["status"] not in ("ok",):
                cells.append(r["status"])
            else:
                cells.append(fmt_s(r.get("p50")))
        add("| %s | %s | %s |" % (drv, cells[0], cells[1]))
    add("")
    add("## All runs")
    add("")
    add("`zuul` = tests/python/zuul_client.py (threads, Zuul's reads); `fast` = "
        "tests/python/zuul_client_fast.py (async, no extra reads). Latency: request created → "
        "fulfilled seen by the client. CPU: launcher utime+stime during the client run; "
        "ms/req = CPU / requests. RSS: launcher VmHWM (whole life). "
        "Client and ZooKeeper CPU: over the same interval (they share the 2 cores).")
    add("")
    add("| scenario | client | launcher | req/s | p50 | p95 | p99 | launcher CPU s (ms/req) | "
        "peak RSS MB | client CPU s | ZK CPU s | status |")
    add("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        impl = {"python": "Python 11.0.0", "rust": "nodepool-rs"}[r["impl"]]
        scen = "%s (%d req, %d outstanding)" % (r["scenario"], r["count"], r["outstanding"])
        if r["status"] == "not yet supported" or "done" not in r:
            add("| %s | %s | %s | %s |  |  |  |  |  |  |  |  |" % (scen, r["client"], impl, r["status"]))
            continue
        cpu = r.get("launcher_cpu_s")
        cpu_s = "–" if cpu is None else "%.2f (%.1f)" % (cpu, 1000 * cpu / max(1, r["done"]))
        status = r["status"]
        if r.get("error_count"):
            status += " (%d errors)" % r["error_count"]
        add("| %s | %s | %s | %.1f | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            scen, r["client"], impl, r.get("rate", 0), fmt_s(r.get("p50")), fmt_s(r.get("p95")),
            fmt_s(r.get("p99")), cpu_s,
            "–" if r.get("peak_rss_mb") is None else "%.0f" % r["peak_rss_mb"],
            "–" if r.get("client_cpu_s") is None else "%.2f" % r["client_cpu_s"],
            "–" if r.get("zk_cpu_s") is None else "%.2f" % r["zk_cpu_s"], status))
    add("")
    warn = [r for r in results if r.get("log_warnings")]
    if warn:
        add("Launcher log warnings/errors per run: " + ", ".join(
            "%s-%s-%s: %d" % (r["impl"], r["scenario"], r["client"], r["log_warnings"]) for r in warn)
            + " (samples in the raw JSON).")
        add("")
    add("Raw results: `%s` (one directory per run: nodepool.yaml, launcher.log, result.json)."
        % os.path.relpath(opts.out, REPO))
    add("")
    with open(os.path.join(HERE, "notes.md")) as f:
        notes = f.read().replace("@RUST_FAKE_DELAY_MS@", str(opts.rust_fake_delay_ms)) \
            .replace("@MAX_SERVERS@", str(opts.max_servers))
    add(notes.rstrip())
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--zk-hosts", required=True, help="plain 127.0.0.1:port (clients)")
    ap.add_argument("--zk-tls-hosts", required=True, help="TLS 127.0.0.1:port (launchers)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--doc", default=None)
    ap.add_argument("--zk-pid", type=int, default=0, help="ZooKeeper's pid (to sample its CPU)")
    ap.add_argument("--impls", default="python,rust")
    ap.add_argument("--only", default="", help="comma list of scenario names to run")
    ap.add_argument("--clients", default="zuul,fast")
    ap.add_argument("--lat1-count", type=int, default=10)
    ap.add_argument("--churn-count", type=int, default=300)
    ap.add_argument("--churn-outstanding", type=int, default=20)
    ap.add_argument("--burst-count", type=int, default=200)
    ap.add_argument("--max-servers", type=int, default=20)
    ap.add_argument("--rust-fake-delay-ms", type=int, default=100)
    ap.add_argument("--client-timeout", type=int, default=420)
    ap.add_argument("--start-timeout", type=float, default=40)
    ap.add_argument("--stop-grace", type=float, default=15)
    ap.add_argument("--settle", type=float, default=1.0)
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite the report from <out>/results.json (after editing notes.md)")
    opts = ap.parse_args()
    if opts.report_only:
        opts.out = os.path.abspath(opts.out)
        with open(os.path.join(opts.out, "results.json")) as f:
            results = json.load(f)
        started = datetime.datetime.strptime(os.path.basename(opts.out), "%Y%m%dT%H%M%SZ")
        text = report(results, opts, started)
        if opts.doc:
            with open(opts.doc, "w") as f:
                f.write(text)
        print(text)
        return
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    opts.out = os.path.abspath(opts.out)
    os.makedirs(opts.out, exist_ok=True)
    tls = {"ca": os.environ["NP_ZK_TLS_CA"], "cert": os.environ["NP_ZK_TLS_CERT"],
           "key": os.environ["NP_ZK_TLS_KEY"]}
    started = datetime.datetime.now(datetime.timezone.utc)
    run_id = started.strftime("%Y%m%d%H%M%S")
    scenarios = [
        {"name": "fake-lat1", "driver": "fake", "label": "fake-label",
         "count": opts.lat1_count, "outstanding": 1, "clients": ["zuul"]},
        {"name": "fake-churn", "driver": "fake", "label": "fake-label",
         "count": opts.churn_count, "outstanding": opts.churn_outstanding, "clients": None},
        {"name": "fake-burst", "driver": "fake", "label": "fake-label",
         "count": opts.burst_count, "outstanding": opts.burst_count, "clients": None},
        {"name": "static-lat1", "driver": "static", "label": "static-label",
         "count": opts.lat1_count, "outstanding": 1, "clients": ["zuul"]},
        {"name": "static-churn", "driver": "static", "label": "static-label",
         "count": opts.churn_count, "outstanding": opts.churn_outstanding, "clients": None},
    ]
    only = set(filter(None, opts.only.split(",")))
    clients = opts.clients.split(",")
    zk = KazooClient(hosts=opts.zk_hosts, timeout=10)
    zk.start(timeout=30)
    results = []
    unsupported = {}
    try:
        for impl in opts.impls.split(","):
            for scen in scenarios:
                if only and scen["name"] not in only:
                    continue
                for client in scen["clients"] or clients:
                    if client not in clients and scen["clients"] is None:
                        continue
                    t0 = time.monotonic()
                    print("bench: %s %s (%s client) ..." % (impl, scen["name"], client),
                          file=sys.stderr, flush=True)
                    r = one_run(opts, zk, tls, impl, scen, client, run_id, unsupported)
                    print("bench:   %s in %.0fs: %s" % (
                        r["status"], time.monotonic() - t0,
                        {k: r.get(k) for k in ("done", "rate", "p50", "p95", "launcher_cpu_s",
                                               "peak_rss_mb", "error_count")}),
                          file=sys.stderr, flush=True)
                    results.append(r)
                    with open(os.path.join(opts.out, "results.json"), "w") as f:
                        json.dump(results, f, indent=1)
    finally:
        cleanup_all()
        zk.stop()
    text = report(results, opts, started)
    if opts.doc:
        with open(opts.doc, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
