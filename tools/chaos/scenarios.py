"""The chaos scenarios. Each takes (suite, name, rng) and returns a row:
{"name", "figures" (history.check), "notes"}.
"""

import os
import re
import signal
import time

from support import log, wait_for

STATIC_HOSTS = 20


def static_config(zk_yaml, provider="chaos-static", label="chaos-static", hosts=STATIC_HOSTS, first=1):
    nodes = "".join(
        "          - name: 127.0.0.%d\n"
        "            labels: %s\n"
        "            username: zuul\n"
        "            host-key-checking: false\n" % (i, label)
        for i in range(first, first + hosts))
    return zk_yaml + """\
labels:
  - name: %s
    min-ready: 0
providers:
  - name: %s
    driver: static
    pools:
      - name: main
        nodes:
""" % (label, provider) + nodes


def static_slots(provider="chaos-static", hosts=STATIC_HOSTS, first=1):
    return {provider: {"127.0.0.%d" % i: 1 for i in range(first, first + hosts)}}


def fake_provider_yaml(name, label, max_servers):
    """One `driver: fake` provider entry (under `providers:`)."""
    return """\
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
        max-servers: %d
        host-key-checking: false
        labels:
          - name: %s
            cloud-image: fake-image
            flavor-name: Fake Flavor
""" % (name, max_servers, label)


def fake_config(zk_yaml, providers=(("chaos-fake", 20),), label="chaos-fake"):
    out = zk_yaml + "labels:\n  - name: %s\n    min-ready: 0\nproviders:\n" % label
    for name, max_servers in providers:
        out += fake_provider_yaml(name, label, max_servers)
    return out


def wait_client(run, client, timeout):
    if not wait_for(lambda: not client.alive(), timeout, step=0.5):
        log("%s: client still running after %d s; stopping it" % (run.name, timeout))
        client.stop()


def kill9(suite, name, rng, kind, kills=10, count=300):
    """The launcher killed with SIGKILL at random moments while the client
    keeps 20 requests outstanding, restarted at once each time."""
    run = suite.run(name)
    zk_yaml = run.zk.yaml(run.chroot)
    extra_env = {}
    if kind == "static":
        cfg = run.write("nodepool.yaml", static_config(zk_yaml))
        labels, providers, slots = "chaos-static", ["chaos-static"], static_slots()
        instances = lambda: []  # noqa: E731
    else:
        cfg = run.write("nodepool.yaml", fake_config(zk_yaml))
        labels, providers, slots = "chaos-fake", ["chaos-fake"], None
        instances = run.fake_instances
        # Launches take a while, so that kills land in the middle of them.
        extra_env = {"NODEPOOL_FAKE_LAUNCH_DELAY_MS": "300"}
    launcher = run.start_launcher(cfg, extra_env=extra_env)
    client = run.start_client(labels, count=count, outstanding=20, job_time=(0.2, 0.6), timeout=900,
                              seed=rng.randrange(1 << 30))
    done = 0
    while done < kills and client.alive():
        time.sleep(rng.uniform(0.5, 3.0))
        if not client.alive():
            break
        t = time.time()
        launcher.kill9()
        launcher = run.start_launcher(cfg, extra_env=extra_env)
        run.fault("launcher kill -9", t)
        done += 1
    wait_client(run, client, 900)
    notes = ["%d kills." % done]
    if done < kills:
        notes.append("the client finished before all %d kills." % kills)
    return run.result(providers, instances, static_slots=slots, notes=notes)


def kill9_static(suite, name, rng):
    # Static churn serves 300 requests in about 12 s: 1,000 leave room for
    # all 10 kills.
    return kill9(suite, name, rng, "static", count=1000)


def kill9_fake(suite, name, rng):
    return kill9(suite, name, rng, "fake")


def kill9_static_once(suite, name, rng):
    return kill9(suite, name, rng, "static", kills=1, count=100)


FAKE_ENV = {"NODEPOOL_FAKE_LAUNCH_DELAY_MS": "300"}


def fake_churn(suite, name, rng, faults, servers=1, launchers=1, count=300, zk_timeout=None,
               client_timeout=900):
    """Fake-cloud churn (launches take 300 ms) with `faults(run, launchers,
    rng)` injected while the client runs; returns the row."""
    run = suite.run(name, servers=servers)
    cfg = run.write("nodepool.yaml", fake_config(run.zk.yaml(run.chroot, timeout=zk_timeout)))
    procs = [run.start_launcher(cfg, extra_env=FAKE_ENV) for _ in range(launchers)]
    client = run.start_client("chaos-fake", count=count, outstanding=20, job_time=(0.2, 0.6),
                              timeout=client_timeout, seed=rng.randrange(1 << 30))
    notes = faults(run, procs, rng, client) or []
    wait_client(run, client, client_timeout)
    crashed = [p.log_path for p in procs if not p.alive() and p in run.launchers and p.proc.returncode not in
               (None, -9)]
    if crashed:
        notes.append("launcher exited on its own: %s" % crashed)
    row = run.result(["chaos-fake"], run.fake_instances, notes=notes)
    if crashed:
        row["failed_check"] = True
    return row


def zk_restart(suite, name, rng, down, restarts=2):
    """The (single) ZooKeeper killed with SIGKILL and restarted `down`
    seconds later, `restarts` times, while the launcher serves."""
    def faults(run, procs, rng, client):
        for _ in range(restarts):
            time.sleep(rng.uniform(3.0, 6.0))
            if not client.alive():
                break
            t = time.time()
            run.zk.kill()
            time.sleep(down)
            run.zk.resume()
            run.fault("ZooKeeper down %.0f s" % down, t)
        return ["%d restarts, ZooKeeper down %.0f s each (launcher session timeout 10 s)." % (restarts, down)]
    return fake_churn(suite, name, rng, faults, zk_timeout=10)


def zk_restart_short(suite, name, rng):
    return zk_restart(suite, name, rng, down=4.0)


def zk_down_long(suite, name, rng):
    return zk_restart(suite, name, rng, down=25.0)


def zk_restart_once(suite, name, rng):
    return zk_restart(suite, name, rng, down=4.0, restarts=1)


def ensemble_leader_kill(suite, name, rng):
    """A three-server ensemble; its leader killed during churn (and
    restarted 10 s later), twice."""
    def faults(run, procs, rng, client):
        killed = []
        for _ in range(2):
            time.sleep(rng.uniform(3.0, 6.0))
            if not client.alive():
                break
            leader = run.zk.leader()
            t = time.time()
            run.zk.kill(leader)
            killed.append(leader)
            time.sleep(8)
            run.zk.resume(leader)
            run.fault("leader %d killed" % leader, t)
        notes = ["leaders killed: %s (each down 8 s)." % ", ".join("server %d" % k for k in killed)]
        if len(killed) < 2:
            notes.append("the client finished before the second kill.")
        return notes
    return fake_churn(suite, name, rng, faults, servers=3, zk_timeout=10, count=600)


def sigstop_zombie(suite, name, rng):
    """Two launchers on one provider; the first frozen with SIGSTOP past its
    session timeout (10 s) while the second takes over, then SIGCONT. The
    woken one must notice its session is gone before writing anything."""
    def faults(run, procs, rng, client):
        time.sleep(rng.uniform(3.0, 5.0))
        t = time.time()
        procs[0].signal(signal.SIGSTOP)
        time.sleep(18)
        procs[0].signal(signal.SIGCONT)
        run.fault("launcher frozen 18 s", t)
        return ["launcher 1 frozen 18 s (session timeout 10 s) beside launcher 2."]

    row = fake_churn(suite, name, rng, faults, launchers=2, zk_timeout=10)
    with open(run_log(row, "launcher-1.log"), "rb") as f:
        text = f.read().decode("utf-8", "replace")
    row["notes"].append("On waking, launcher 1 abandoned %d launches and dropped %d requests unchanged: it saw its "
                        "session (and so its locks) gone before writing under them." % (
                            text.count("abandoning the launch"), text.count("dropping the request unchanged")))
    return row


def run_log(row, name):
    return os.path.join(row["dir"], name)


MALFORMED = 1000


def malformed_znodes(suite, name, rng, count=300):
    """1,000 malformed or foreign znodes under requests, nodes, images and
    components (half before the launcher starts, half during churn): the
    launcher serves around them, leaves them as they were, logs each at
    most once, and its memory stays flat."""
    planted = {}

    def plant(run, first, n):
        zk = run.kazoo()
        try:
            for i in range(first, first + n):
                kind = i % 8
                if kind == 0:
                    path, data = "/nodepool/requests/100-%010d" % (9000000000 + i), b"{not json"
                elif kind == 1:
                    path, data = "/nodepool/requests/foreign-%d" % i, b"\x00\xff binary"
                elif kind == 2:
                    path, data = "/nodepool/nodes/%010d" % (9000000000 + i), b'{"state": 42, "node_type": {}}'
                elif kind == 3:
                    path, data = "/nodepool/nodes/foreign-%d" % i, b"foreign bytes"
                elif kind == 4:
                    path, data = ("/nodepool/images/chaos-junk-%d/builds/%010d" % (i % 5, 7000000000 + i),
                                  b'{"state": "ready", "builder_id": 7')
                elif kind == 5:
                    path, data = "/nodepool/images/chaos-junk-%d/builds/lock/x%d" % (i % 5, i), b"?"
                elif kind == 6:
                    path, data = "/nodepool/components/launcher/foreign-%d" % i, b"[1, 2, 3]"
                else:
                    path, data = "/nodepool/components/builder/%010d" % (8000000000 + i), b'{"kind": null, "hostname": 5}'
                zk.create(path, data, makepath=True)
                planted[path] = data
        finally:
            zk.stop()
            zk.close()

    run = suite.run(name)
    cfg = run.write("nodepool.yaml", fake_config(run.zk.yaml(run.chroot)))
    plant(run, 0, MALFORMED // 2)
    launcher = run.start_launcher(cfg, extra_env=FAKE_ENV)
    time.sleep(2.0)
    rss0 = launcher.rss_kib()
    client = run.start_client("chaos-fake", count=count, outstanding=20, job_time=(0.2, 0.6), timeout=900,
                              seed=rng.randrange(1 << 30))
    time.sleep(3.0)
    plant(run, MALFORMED // 2, MALFORMED - MALFORMED // 2)
    rss_mid = launcher.rss_kib()
    wait_client(run, client, 900)
    rss1 = launcher.rss_kib()
    alive = launcher.alive()
    # Untouched?
    zk = run.kazoo()
    changed = []
    try:
        for path, data in planted.items():
            try:
                now, _ = zk.get(path)
            except Exception:  # noqa: BLE001 - gone counts as touched
                now = None
            if now != data:
                changed.append(path)
    finally:
        zk.stop()
        zk.close()
    with open(launcher.log_path, "rb") as f:
        log_text = f.read().decode("utf-8", "replace")
    names = [p.rsplit("/", 1)[1] for p in planted]
    counts = {n: len(re.findall(r"(?<![\w-])%s(?![\w-])" % re.escape(n), log_text)) for n in names}
    repeated = [n for n in names if counts[n] > 1]
    logged = sum(1 for n in names if counts[n])
    row = run.result(["chaos-fake"], run.fake_instances)
    row["notes"] = ["%d znodes planted; %d changed or deleted; %d named in the launcher's log, %d more than once; "
                    "launcher RSS %s -> %s -> %s KiB (before, after planting, end); launcher %s." % (
                        len(planted), len(changed), logged, len(repeated), rss0, rss_mid, rss1,
                        "alive" if alive else "DEAD")]
    if changed or repeated or not alive or (rss0 and rss1 and rss1 > rss0 * 2 + 20000):
        row["failed_check"] = True
        row["notes"].append("changed: %s; repeated: %s" % (changed[:5], repeated[:5]))
    return row


def mixed_fleet(suite, name, rng, count=1000, max_servers=20):
    """Two of our launchers and one Python Nodepool 11 launcher serving the
    same fake provider (one max-servers) for 1,000 requests: the provider's
    node records never exceed max-servers across the three, no double."""
    run = suite.run(name)
    text = fake_config(run.zk.yaml(run.chroot), providers=(("chaos-fake", max_servers),))
    cfg = run.write("nodepool.yaml", text)
    ours = [run.start_launcher(cfg, extra_env=FAKE_ENV) for _ in range(2)]
    python = run.start_python_launcher(cfg)
    finish = run.start_sampler("chaos-fake", max_servers=max_servers)
    client = run.start_client("chaos-fake", count=count, outstanding=20, job_time=(0.2, 0.6), timeout=1200,
                              seed=rng.randrange(1 << 30))
    wait_client(run, client, 1200)
    sampled = finish()
    py_nodes = len(sampled["by_others"])
    alive = [p.alive() for p in ours + [python]]
    row = run.result(["chaos-fake"], run.fake_instances)
    row["notes"] = ["at most %d node records of the provider past `init` at once (max-servers %d, %d samples); "
                    "Python launched %d nodes, ours %d; launchers alive: %s." % (
                        sampled["max"], max_servers, sampled["samples"], py_nodes, len(sampled["by_ours"]), alive)]
    if sampled["over"]:
        row["notes"].append("samples over max-servers (id, state, launcher): %s" % sampled["over"][:3])
    if sampled["max"] > max_servers or not all(alive) or py_nodes == 0 or not sampled["by_ours"]:
        row["failed_check"] = True
        row["notes"].append("(a fleet where one side launched nothing shows nothing)")
    return row


NOT_YET = [
]

FULL = [
    ("kill9-static", kill9_static),
    ("kill9-fake", kill9_fake),
    ("zk-restart-short", zk_restart_short),
    ("zk-down-long", zk_down_long),
    ("ensemble-leader-kill", ensemble_leader_kill),
    ("sigstop-zombie", sigstop_zombie),
    ("malformed-znodes", malformed_znodes),
    ("mixed-fleet", mixed_fleet),
]

CI = [
    ("ci-kill9-static", kill9_static_once),
    ("ci-zk-restart", zk_restart_once),
    ("ci-malformed-znodes", malformed_znodes),
]

# The cloud-side scenarios (moto, the real OpenStack, cloudproxy.py).
import scenarios_cloud  # noqa: E402

FULL += scenarios_cloud.FULL

# The security and rolling-migration scenarios live in their own module.
from scenarios_security import SCENARIOS as _SECURITY_SCENARIOS  # noqa: E402

FULL += _SECURITY_SCENARIOS
