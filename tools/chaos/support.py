"""What the chaos scenarios share: private ZooKeeper environments, launcher
and client processes, reading ZooKeeper and the clouds, waiting for cleanup.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from kazoo.retry import KazooRetry

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))


def log(msg):
    print("chaos: %s" % msg, flush=True)


class ZkEnv:
    """A private ZooKeeper (one server or an ensemble) of tools/test-env.sh,
    in its own directory, so that restarting it disturbs nothing else."""

    def __init__(self, directory, servers=1):
        self.dir = directory
        self.servers = servers
        self.env = dict(os.environ, NP_ZK_ENV_DIR=directory, NP_ZK_SERVERS=str(servers))
        self.tool(["start"])
        self.vars = {}
        with open(os.path.join(directory, "env.sh")) as f:
            for line in f:
                m = re.match(r"export (\w+)='(.*)'$", line.strip())
                if m:
                    self.vars[m.group(1)] = m.group(2)
        self.hosts = self.vars["NP_ZK_HOSTS"]
        self.tls_hosts = self.vars["NP_ZK_TLS_HOSTS"]
        self.tls = (self.vars["NP_ZK_TLS_CA"], self.vars["NP_ZK_TLS_CERT"], self.vars["NP_ZK_TLS_KEY"])

    def tool(self, args, check=True):
        out = subprocess.run([os.path.join(REPO, "tools", "test-env.sh")] + args, env=self.env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if check and out.returncode != 0:
            raise RuntimeError("test-env.sh %s failed:\n%s" % (" ".join(args), out.stdout))
        return out.stdout.strip()

    def kill(self, n=None):
        self.tool(["kill"] + ([str(n)] if n else []))

    def resume(self, n=None):
        self.tool(["resume"] + ([str(n)] if n else []))

    def leader(self):
        return int(self.tool(["leader"]))

    def stop(self):
        self.tool(["stop"], check=False)

    def yaml(self, chroot, tls=True, timeout=None):
        """The zookeeper-* part of a nodepool.yaml for this environment."""
        hosts = self.tls_hosts if tls else self.hosts
        out = "zookeeper-servers:\n"
        for hp in hosts.split(","):
            host, port = hp.rsplit(":", 1)
            out += "  - host: %s\n    port: %s\n    chroot: %s\n" % (host, port, chroot)
        if tls:
            out += "zookeeper-tls:\n  ca: %s\n  cert: %s\n  key: %s\n" % self.tls
        if timeout:
            out += "zookeeper-timeout: %s\n" % timeout
        return out


class Proc:
    """A daemon of the run (own process group, output in a log file)."""

    def __init__(self, cmd, log_path, env=None, cwd=None):
        self.cmd = cmd
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, cwd=cwd or REPO, start_new_session=True)

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def signal(self, sig):
        if self.alive():
            os.kill(self.proc.pid, sig)

    def kill9(self):
        self.signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self, grace=30):
        if self.alive():
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
            except OSError:
                pass
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        return self.proc.returncode

    def rss_kib(self):
        try:
            with open("/proc/%d/status" % self.proc.pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return None


class Run:
    """One scenario run: its directory, chroot, launchers and client."""

    def __init__(self, suite, name, zk):
        self.suite = suite
        self.name = name
        self.zk = zk
        self.dir = os.path.join(suite.opts.out, name)
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        self.chroot = "/chaos/%s-%d" % (name, int(time.time() * 1000))
        self.history = os.path.join(self.dir, "history.jsonl")
        self.faults = []
        self.launchers = []
        self.procs = []
        self.fake_state = os.path.join(self.dir, "fake-cloud")
        os.makedirs(self.fake_state)
        self.n_launchers = 0

    # --- processes --------------------------------------------------------

    def write(self, name, text):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def launcher_env(self, extra=None):
        env = dict(os.environ)
        env.update({
            "RUST_LOG": os.environ.get("CHAOS_RUST_LOG", "info"),
            "NODEPOOL_FAKE_STATE_DIR": self.fake_state,
            "NODEPOOL_MAINTENANCE_INTERVAL": "10",
        })
        env.update(extra or {})
        return env

    def start_launcher(self, config_path, tag=None, extra_env=None, args=()):
        self.n_launchers += 1
        tag = tag or "launcher-%d" % self.n_launchers
        cmd = [os.path.join(self.suite.opts.bin_dir, "nodepool-launcher"), "-c", config_path] + list(args)
        if "--webapp" not in args:
            cmd.append("--no-webapp")
        else:
            cmd.remove("--webapp")
        p = Proc(cmd, os.path.join(self.dir, tag + ".log"), env=self.launcher_env(extra_env))
        self.launchers.append(p)
        self.procs.append(p)
        return p

    def start_python_launcher(self, config_path, tag="python-launcher"):
        venv_bin = os.path.dirname(sys.executable)
        cmd = [os.path.join(venv_bin, "nodepool-launcher"), "-f", "--no-webapp", "-c", config_path]
        # Python's fake driver reads its cloud from clouds.yaml (openstacksdk)
        # but never contacts it.
        clouds = self.write("clouds.yaml", "clouds:\n  fake:\n    region_name: fake-region\n    auth:\n"
                            "      auth_url: http://127.0.0.1:9/\n      username: chaos\n"
                            "      password: not-a-secret\n      project_name: chaos\n")
        env = dict(os.environ, OS_CLIENT_CONFIG_FILE=clouds)
        p = Proc(cmd, os.path.join(self.dir, tag + ".log"), env=env)
        self.procs.append(p)
        return p

    def start_sampler(self, provider, interval=0.1, max_servers=None):
        """A thread counting the node records of `provider` past `init`
        every `interval` seconds; returns finish(), whose result's "max" is
        the most seen at once ("over": the records of samples above
        `max_servers`)."""
        import threading
        out = {"max": 0, "samples": 0, "by_ours": set(), "by_others": set(), "over": []}
        stop = threading.Event()

        def sample():
            zk = self.kazoo()
            try:
                while not stop.is_set():
                    n = 0
                    live = []
                    try:
                        for i in zk.get_children("/nodepool/nodes"):
                            try:
                                data, _ = zk.get("/nodepool/nodes/" + i)
                                rec = json.loads(data) if data else {}
                                # An `init` node has launched nothing yet (ours
                                # that give way to an earlier node are deleted
                                # from `init`); every later state counts, as
                                # in the launchers' own quota.
                                if rec.get("provider") == provider and rec.get("state") != "init":
                                    n += 1
                                    live.append((i, rec.get("state"), rec.get("launcher")))
                                    ext = rec.get("external_id")
                                    if ext:
                                        # Our fake cloud's server ids start "fake-".
                                        ours = "fake-" in json.dumps(ext)
                                        out["by_ours" if ours else "by_others"].add(i)
                            except (NoNodeError, ValueError):
                                pass
                    except Exception:  # noqa: BLE001 - a fault of the run; sample again
                        time.sleep(interval)
                        continue
                    out["max"] = max(out["max"], n)
                    if max_servers is not None and n > max_servers and len(out["over"]) < 20:
                        out["over"].append(sorted(live))
                    out["samples"] += 1
                    stop.wait(interval)
            finally:
                zk.stop()
                zk.close()

        t = threading.Thread(target=sample, daemon=True)
        t.start()

        def finish():
            stop.set()
            t.join(10)
            return out
        return finish

    def ensure_chroot(self):
        """Creates the run's chroot (kazoo cannot create a chroot itself)."""
        zk = KazooClient(hosts=self.zk.hosts, timeout=30, connection_retry=KazooRetry(max_tries=-1, max_delay=1),
                         command_retry=KazooRetry(max_tries=20, max_delay=1))
        zk.start(timeout=60)
        try:
            zk.ensure_path(self.chroot + "/nodepool/requests")
        finally:
            zk.stop()
            zk.close()

    def start_client(self, labels, count=300, outstanding=20, job_time=(0.05, 0.2), timeout=600, seed=1,
                     extra=()):
        self.ensure_chroot()
        cmd = [sys.executable, os.path.join(HERE, "client.py"), "--hosts", self.zk.hosts + self.chroot,
               "--labels", labels, "--count", str(count), "--outstanding", str(outstanding),
               "--job-time", "%s,%s" % job_time, "--timeout", str(timeout), "--history", self.history,
               "--seed", str(seed)] + list(extra)
        p = Proc(cmd, os.path.join(self.dir, "client.log"))
        self.procs.append(p)
        return p

    def fault(self, what, start, end=None):
        self.faults.append({"t": start, "end": end if end is not None else time.time(), "ev": "fault",
                            "what": what})

    def close(self):
        for p in self.procs:
            try:
                p.stop(grace=20)
            except Exception:  # noqa: BLE001
                pass

    # --- reading the outcome -----------------------------------------------

    def kazoo(self):
        zk = KazooClient(hosts=self.zk.hosts + self.chroot, timeout=30,
                         connection_retry=KazooRetry(max_tries=-1, max_delay=1),
                         command_retry=KazooRetry(max_tries=20, max_delay=1))
        zk.start(timeout=60)
        return zk

    def snapshot(self):
        """Every request and node record (None for unparseable data), the
        node lock contenders, and the upload keys (build-upload)."""
        zk = self.kazoo()
        try:
            state = {"requests": {}, "nodes": {}, "node_locks": {}, "uploads": set()}
            for kind in ("requests", "nodes"):
                try:
                    ids = zk.retry(zk.get_children, "/nodepool/" + kind)
                except NoNodeError:
                    ids = []
                for i in ids:
                    try:
                        data, _ = zk.retry(zk.get, "/nodepool/%s/%s" % (kind, i))
                    except NoNodeError:
                        continue
                    try:
                        state[kind][i] = json.loads(data) if data else None
                    except ValueError:
                        state[kind][i] = None
                    if kind == "nodes":
                        try:
                            locks = zk.retry(zk.get_children, "/nodepool/nodes/%s/lock" % i)
                        except NoNodeError:
                            locks = []
                        state["node_locks"][i] = [c for c in locks if "__lock__" in c]
            try:
                images = zk.retry(zk.get_children, "/nodepool/images")
            except NoNodeError:
                images = []
            for img in images:
                base = "/nodepool/images/%s/builds" % img
                for build in _children(zk, base):
                    for prov in _children(zk, "%s/%s/providers" % (base, build)):
                        for up in _children(zk, "%s/%s/providers/%s/images" % (base, build, prov)):
                            if up != "lock":
                                state["uploads"].add("%s-%s" % (build, up))
            return state
        finally:
            zk.stop()
            zk.close()

    def fake_instances(self):
        """Every instance of the file-backed fake clouds of this run."""
        out = []
        for fn in sorted(os.listdir(self.fake_state)):
            if not fn.endswith(".json"):
                continue
            with open(os.path.join(self.fake_state, fn)) as f:
                try:
                    servers = json.load(f).get("servers", {})
                except ValueError:
                    continue
            for sid, s in servers.items():
                md = s.get("metadata", {})
                out.append({"provider": md.get("nodepool_provider_name"), "id": sid,
                            "node_id": md.get("nodepool_node_id"), "kind": "instance"})
        return out

    def settle(self, providers, instances=lambda: [], timeout=90, static_slots=None):
        """Waits until cleanup has nothing left: no node of the run's
        providers in a cleanup state or stuck, no leaked instance. Returns
        the last snapshot and instance list."""
        deadline = time.time() + timeout
        while True:
            state = self.snapshot()
            inst = instances()
            fig = self.figures([], state, inst, providers, static_slots)
            if (fig["stuck"] == 0 and fig["leaked"] == 0) or time.time() > deadline:
                return state, inst
            time.sleep(1.0)

    def figures(self, events, state, inst, providers, static_slots=None):
        import history
        return history.check(events, state, inst, providers=providers, static_slots=static_slots,
                             end_time=time.time())

    def result(self, providers, instances=lambda: [], static_slots=None, notes=None, settle_timeout=90):
        """Settles, stops every process, reads everything, checks."""
        import history
        state, inst = self.settle(providers, instances, settle_timeout, static_slots)
        self.close()
        events = history.read_history(self.history) if os.path.exists(self.history) else []
        events += self.faults
        fig = history.check(events, state, inst, providers=providers, static_slots=static_slots,
                            end_time=time.time())
        return {"name": self.name, "figures": fig, "notes": notes or [], "dir": self.dir}


def _children(zk, path):
    try:
        return zk.retry(zk.get_children, path)
    except NoNodeError:
        return []


class Suite:
    """The environments a suite run shares (started on first use)."""

    def __init__(self, opts):
        self.opts = opts
        self._zk = {}

    def zk(self, servers=1):
        if servers not in self._zk:
            d = os.path.join(REPO, ".test-env", "chaos-zk-%d" % servers)
            log("starting a private ZooKeeper (%d server%s) in %s" % (servers, "s" if servers > 1 else "", d))
            self._zk[servers] = ZkEnv(d, servers)
        return self._zk[servers]

    def run(self, name, servers=1):
        return Run(self, name, self.zk(servers))

    def close(self):
        for env in self._zk.values():
            env.stop()


def wait_for(pred, timeout, step=0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(step)
    return False
