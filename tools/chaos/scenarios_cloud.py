"""The chaos suite's cloud-side scenarios (issue 11): the launcher killed with
SIGKILL while about ten nodes are building on moto (AWS) and on the real
OpenStack of tools/openstack-env.sh, and cloud faults (5xx before and after
the cloud did the work, throttling, hung calls) injected by cloudproxy.py in
front of both clouds. Also the clouds' leak readers (every instance, volume,
network interface, server, port and floating IP carrying Nodepool's tags,
read from the cloud directly, never through the proxy) and a private moto
server (``python scenarios_cloud.py moto --port-file F``).

Each scenario takes (suite, name, rng) and returns a row like those of
scenarios.py.
"""

import collections
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)

import scenarios  # noqa: E402  (the base module; it imports this one at its end)
from support import Proc, Run, ZkEnv, log, wait_for  # noqa: E402

AWS_PROVIDER = "chaos-aws"
AWS_LABEL = "chaos-aws"
AWS_REGION = "us-west-2"
OS_PROVIDER = "chaos-openstack"
OS_LABEL = "chaos-openstack"
FAKE_PROVIDER = "chaos-fake"
FAKE_LABEL = "chaos-fake"
MAX_SERVERS = 10
# What an AWS SDK in the launcher and boto3 here need to talk to moto only.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "chaos-testing",
    "AWS_SECRET_ACCESS_KEY": "chaos-testing-secret",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
}


# ---------------------------------------------------------------- helpers

_zk = []


def new_run(suite, name):
    """A run on this module's own private ZooKeeper (.test-env/chaos-zk-cloud,
    started on first use, stopped when the suite's process exits): these
    scenarios run for many minutes, and another chaos run on the machine
    (which stops the shared .test-env/chaos-zk-1 when it ends) must not pull
    the ZooKeeper from under them."""
    if not _zk:
        import atexit
        d = os.path.join(REPO, ".test-env", "chaos-zk-cloud")
        log("starting the cloud scenarios' private ZooKeeper in %s" % d)
        _zk.append(ZkEnv(d, 1))
        atexit.register(_zk[0].stop)
    return Run(suite, name, _zk[0])



def _wait_file(path, proc, timeout):
    ok = wait_for(lambda: os.path.exists(path) or not proc.alive(), timeout, step=0.1)
    if not ok or not os.path.exists(path):
        with open(proc.log_path, "rb") as f:
            tail = f.read()[-2000:].decode("utf-8", "replace")
        raise RuntimeError("%s did not start: %s" % (proc.cmd[:3], tail))
    with open(path) as f:
        return f.read()


def _log_text(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


LEVEL_RE = re.compile(r"^\S+Z\s+(WARN|ERROR)\s")


def launcher_findings(run):
    """What the run's launcher logs say: panics, ERROR and WARN lines (by
    their message, ids elided), leak deletions (the evidence for the
    report)."""
    out = collections.Counter()
    samples = collections.defaultdict(list)
    for p in run.launchers:
        for line in _log_text(p.log_path).splitlines():
            key = None
            m = LEVEL_RE.match(line)
            if "panicked at" in line:
                key = "panic"
            elif m:
                key = m.group(1)
            elif "deleting leaked resource" in line:
                key = "leaked resource deleted by the launcher"
            if key:
                out[key] += 1
                if len(samples[key]) < 5:
                    samples[key].append("%s: %s" % (os.path.basename(p.log_path), line.strip()[:400]))
    return out, samples


def label_waits(run):
    """Worst and median submit-to-answer time per label set, from the
    client's history."""
    import history
    if not os.path.exists(run.history):
        return {}
    submits, waits = {}, collections.defaultdict(list)
    for ev in history.read_history(run.history):
        if ev.get("ev") == "submit":
            submits[ev["req"]] = ev
        elif ev.get("ev") == "answer" and not ev.get("again") and ev.get("req") in submits:
            sub = submits[ev["req"]]
            waits[",".join(sub.get("labels") or [])].append(ev["t"] - sub["t"])
    out = {}
    for label, ws in waits.items():
        ws.sort()
        out[label] = (len(ws), ws[len(ws) // 2], ws[-1])
    return out


def waits_note(run):
    parts = ["%s: %d answered, median %.1f s, worst %.1f s" % (label, n, p50, worst)
             for label, (n, p50, worst) in sorted(label_waits(run).items())]
    return "Waits per label: " + "; ".join(parts) + "." if parts else ""


class Building:
    """Counts the run's node records by state (one kazoo session)."""

    def __init__(self, run):
        self.zk = run.kazoo()

    def states(self, provider):
        from kazoo.exceptions import NoNodeError
        out = collections.Counter()
        try:
            ids = self.zk.get_children("/nodepool/nodes")
        except NoNodeError:
            return out
        for i in ids:
            try:
                data, _ = self.zk.get("/nodepool/nodes/" + i)
                rec = json.loads(data) if data else {}
            except (NoNodeError, ValueError):
                continue
            if rec.get("provider") == provider:
                out[rec.get("state")] += 1
        return out

    def close(self):
        try:
            self.zk.stop()
            self.zk.close()
        except Exception:  # noqa: BLE001
            pass


def wait_pools(run, n=1, timeout=180):
    """Waits until `n` pool components are registered in the run's chroot
    (the launcher created it and serves), so that the client does not race
    the chroot's creation."""
    from kazoo.client import KazooClient
    zk = KazooClient(hosts=run.zk.hosts, timeout=30)
    zk.start(timeout=60)
    path = run.chroot + "/nodepool/components/pool"
    try:
        def ready():
            try:
                return len(zk.get_children(path)) >= n
            except Exception:  # noqa: BLE001 - not there yet
                return False
        if not wait_for(ready, timeout, step=0.3):
            raise RuntimeError("%s: no launcher pool registered after %d s" % (run.name, timeout))
    finally:
        zk.stop()
        zk.close()


def check_count(row, count):
    """A run whose client could not even submit its requests shows nothing."""
    got = row["figures"]["requests"]
    if got < count:
        row["failed_check"] = True
        row["notes"].append("only %d of %d requests were submitted." % (got, count))


def wait_client(run, client, timeout):
    if not wait_for(lambda: not client.alive(), timeout, step=0.5):
        log("%s: client still running after %d s; stopping it" % (run.name, timeout))
        client.stop()
        return False
    return True


def fake_provider_yaml(name=FAKE_PROVIDER, label=FAKE_LABEL, max_servers=10):
    return scenarios.fake_provider_yaml(name, label, max_servers)


# ---------------------------------------------------------------- AWS (moto)


def moto_main(argv):
    """A private moto server on 127.0.0.1 (a free port, written to
    --port-file) with Service Quotas' ListServiceQuotas added (moto 5.2
    lacks it): EC2's on-demand standard vCPU quota is 640, so only
    max-servers limits the pool."""
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--port-file", required=True)
    opts = ap.parse_args(argv)
    from moto.server import ThreadedMotoServer
    from moto.servicequotas.responses import ServiceQuotasResponse

    quotas = {"ec2": {"L-1216C47A": 640.0, "L-34B43A08": 640.0}, "ebs": {"L-D18FCD1D": 50.0}}

    def list_service_quotas(self):
        code = str(json.loads(self.body or "{}").get("ServiceCode"))
        return json.dumps({"Quotas": [
            {"ServiceCode": code, "QuotaCode": k, "QuotaName": k, "Value": v, "Unit": "None"}
            for k, v in quotas.get(code, {}).items()]})

    ServiceQuotasResponse.list_service_quotas = list_service_quotas

    # moto lacks the VM Import task listings, which the driver's leak
    # cleanup reads; with no import ever made, EC2 answers them empty.
    from moto.core.responses import ActionResult
    from moto.ec2.responses import EC2Response

    EC2Response.describe_import_snapshot_tasks = lambda self: ActionResult({"ImportSnapshotTasks": []})
    EC2Response.describe_import_image_tasks = lambda self: ActionResult({"ImportImageTasks": []})
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    tmp = opts.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server._server.port))
    os.replace(tmp, opts.port_file)
    print("moto listening on 127.0.0.1:%d" % server._server.port, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while True:
        time.sleep(3600)


class Moto:
    """moto for one run, and the leak readers on it."""

    def __init__(self, run):
        port_file = os.path.join(run.dir, "moto.port")
        self.proc = Proc([sys.executable, os.path.abspath(__file__), "moto", "--port-file", port_file],
                         os.path.join(run.dir, "moto.log"), env=dict(os.environ, **AWS_ENV))
        run.procs.append(self.proc)
        self.port = int(_wait_file(port_file, self.proc, 60))
        self.endpoint = "http://127.0.0.1:%d" % self.port
        self.eni_notes = {}
        log("%s: moto on %s" % (run.name, self.endpoint))

    def ec2(self):
        import boto3
        return boto3.client("ec2", region_name=AWS_REGION, endpoint_url=self.endpoint,
                            aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"])

    def launcher_env(self, endpoint=None):
        env = dict(AWS_ENV)
        env["AWS_ENDPOINT_URL"] = endpoint or self.endpoint
        env["AWS_REGION"] = AWS_REGION
        return env

    def resources(self, provider=AWS_PROVIDER):
        """Every instance (not terminated), volume and network interface in
        moto, as history.check wants them. The driver tags instances and
        volumes; network interfaces are not tagged, so an unattached one
        (nothing in this private moto but our launcher makes them) counts
        as the provider's leak; one still attached to a terminated instance
        is how moto keeps them (real EC2 deletes them with the instance) and
        is only counted in eni_notes."""
        ec2 = self.ec2()
        out = []

        def tags(obj):
            return {t["Key"]: t.get("Value") for t in obj.get("Tags") or obj.get("TagSet") or []}

        live = set()
        for page in ec2.get_paginator("describe_instances").paginate():
            for res in page["Reservations"]:
                for inst in res["Instances"]:
                    if inst["State"]["Name"] == "terminated":
                        continue
                    live.add(inst["InstanceId"])
                    t = tags(inst)
                    out.append({"provider": t.get("nodepool_provider_name"), "id": inst["InstanceId"],
                                "node_id": t.get("nodepool_node_id"), "kind": "instance",
                                "state": inst["State"]["Name"]})
        for page in ec2.get_paginator("describe_volumes").paginate():
            for vol in page["Volumes"]:
                t = tags(vol)
                attached = [a.get("InstanceId") for a in vol.get("Attachments") or []]
                out.append({"provider": t.get("nodepool_provider_name") or (None if attached else provider),
                            "id": vol["VolumeId"], "node_id": t.get("nodepool_node_id"), "kind": "volume",
                            "state": vol.get("State")})
        on_terminated = 0
        for page in ec2.get_paginator("describe_network_interfaces").paginate():
            for eni in page["NetworkInterfaces"]:
                t = tags(eni)
                owner = (eni.get("Attachment") or {}).get("InstanceId")
                if owner and owner not in live and not t:
                    on_terminated += 1
                    continue
                if owner in live and not t:
                    continue  # counted with its instance
                out.append({"provider": t.get("nodepool_provider_name") or provider, "id": eni["NetworkInterfaceId"],
                            "node_id": t.get("nodepool_node_id"), "kind": "network-interface",
                            "state": eni.get("Status")})
        self.eni_notes = {"on_terminated_instances": on_terminated}
        return out


def aws_provider_yaml(name=AWS_PROVIDER, label=AWS_LABEL, max_servers=MAX_SERVERS, rate=10):
    return """\
  - name: %s
    driver: aws
    region-name: %s
    rate: %s
    launch-retries: 3
    cloud-images:
      - name: ubuntu
        username: ubuntu
        image-filters:
          - name: name
            values: ["*ubuntu*"]
    pools:
      - name: main
        max-servers: %d
        host-key-checking: false
        labels:
          - name: %s
            cloud-image: ubuntu
            instance-type: t3.medium
            key-name: zuul
""" % (name, AWS_REGION, rate, max_servers, label)


# ---------------------------------------------------------------- OpenStack


OS_ENV_DIR = os.path.join(REPO, ".openstack-env")
_os_started_here = []


def _openstack_status():
    return subprocess.run([os.path.join(REPO, "tools", "openstack-env.sh"), "status"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).returncode


def openstack_env():
    """The running stack's clouds.yaml and cloud name; starts
    tools/openstack-env.sh when it is not running (and stops it when the
    suite ends). Raises when it cannot be had."""
    if _openstack_status() != 0:
        log("starting the OpenStack of tools/openstack-env.sh (minutes on a first start)")
        out = subprocess.run([os.path.join(REPO, "tools", "openstack-env.sh"), "start"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if out.returncode != 0:
            raise RuntimeError("tools/openstack-env.sh start failed:\n%s" % out.stdout[-3000:])
        if not _os_started_here:
            import atexit
            _os_started_here.append(True)
            atexit.register(lambda: subprocess.run([os.path.join(REPO, "tools", "openstack-env.sh"), "stop"],
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    env = {}
    with open(os.path.join(OS_ENV_DIR, "env.sh")) as f:
        for line in f:
            m = re.match(r"export (\w+)='?([^']*)'?$", line.strip())
            if m:
                env[m.group(1)] = m.group(2)
    return env["NP_OS_CLOUDS"], env.get("NP_OS_CLOUD", "devstack")


class OpenStack:
    """The real OpenStack (plain REST, straight to the services) and its
    leak readers."""

    def __init__(self, clouds_path=None, cloud_name=None):
        import yaml
        if clouds_path:
            self.clouds_path, self.cloud_name = clouds_path, cloud_name or "devstack"
        else:
            self.clouds_path, self.cloud_name = openstack_env()
        with open(self.clouds_path) as f:
            self.clouds = yaml.safe_load(f)
        self.cloud = self.clouds["clouds"][self.cloud_name]
        self.auth = self.cloud["auth"]
        self.region = self.cloud.get("region_name", "RegionOne")
        self._token = None
        self.token()
        self.baseline_ports = {p["id"] for p in self.ports()}
        self.baseline_fips = {f["id"] for f in self.floating_ips()}
        self.baseline_servers = {s["id"] for s in self.servers()}

    def _req(self, method, url, body=None, headers=None, timeout=60):
        data = json.dumps(body).encode() if body is not None else None
        h = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._token and "auth/tokens" not in url:
            h["X-Auth-Token"] = self._token[0]
        h.update(headers or {})
        req = urllib.request.Request(url, data=data, method=method, headers=h)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, dict(resp.headers), (json.loads(raw) if raw else None)

    def token(self):
        if self._token and self._token[2] > time.time():
            return self._token[0]
        url = self.auth["auth_url"].rstrip("/")
        if not url.endswith("/v3"):
            url += "/v3"
        body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": self.auth["username"], "password": self.auth["password"],
            "domain": {"name": self.auth.get("user_domain_name", "Default")}}}},
            "scope": {"project": {"name": self.auth["project_name"],
                                  "domain": {"name": self.auth.get("project_domain_name", "Default")}}}}}
        self._token = None
        _, headers, doc = self._req("POST", url + "/auth/tokens", body)
        tok = headers.get("X-Subject-Token") or headers.get("x-subject-token")
        self.catalog = doc["token"]["catalog"]
        self._token = (tok, self.catalog, time.time() + 1800)
        return tok

    def endpoint(self, service_type):
        for svc in self.catalog:
            if svc["type"] == service_type:
                for ep in svc["endpoints"]:
                    if ep["interface"] == self.cloud.get("interface", "public") and \
                            ep.get("region_id", ep.get("region")) in (self.region, None):
                        return ep["url"].rstrip("/")
        return None

    def _get(self, service, path):
        self.token()
        base = self.endpoint(service)
        if service == "network" and not re.search(r"/v\d", base):
            base += "/v2.0"
        _, _, doc = self._req("GET", base + path)
        return doc

    def servers(self):
        doc = self._get("compute", "/servers/detail?all_tenants=1&limit=1000")
        return doc.get("servers", [])

    def ports(self):
        try:
            return self._get("network", "/ports").get("ports", [])
        except (urllib.error.URLError, OSError, TypeError):
            return []

    def floating_ips(self):
        try:
            return self._get("network", "/floatingips").get("floatingips", [])
        except (urllib.error.URLError, OSError, TypeError):
            return []

    def resources(self, provider=OS_PROVIDER):
        """Every server with Nodepool's metadata, and every port or
        floating IP made during the run that belongs to no live server."""
        out = []
        servers = self.servers()
        live = set()
        for s in servers:
            live.add(s["id"])
            md = s.get("metadata") or {}
            if s["id"] in self.baseline_servers and not md.get("nodepool_provider_name"):
                continue
            out.append({"provider": md.get("nodepool_provider_name"), "id": s["id"],
                        "node_id": md.get("nodepool_node_id"), "kind": "server", "state": s.get("status")})
        for p in self.ports():
            if p["id"] in self.baseline_ports:
                continue
            if p.get("device_id") and p["device_id"] in live:
                continue
            out.append({"provider": provider, "id": p["id"], "node_id": None, "kind": "port",
                        "state": "%s device %s" % (p.get("status"), p.get("device_id"))})
        for fip in self.floating_ips():
            if fip["id"] in self.baseline_fips:
                continue
            if fip.get("port_id"):
                continue
            out.append({"provider": provider, "id": fip["id"], "node_id": None, "kind": "floating-ip"})
        return out

    def purge(self, provider, timeout=180):
        """Deletes the servers carrying `provider`'s metadata (what an
        earlier, aborted run of this scenario left in the shared cloud), so
        that they are not counted as this run's leaks; returns how many."""
        mine = [s["id"] for s in self.servers()
                if (s.get("metadata") or {}).get("nodepool_provider_name") == provider]
        if not mine:
            return 0
        log("deleting %d servers of %s left by an earlier run" % (len(mine), provider))
        base = self.endpoint("compute")
        for sid in mine:
            try:
                self._req("DELETE", "%s/servers/%s" % (base, sid))
            except urllib.error.HTTPError as e:
                if e.code != 404:
                    raise
        wait_for(lambda: not any(s["id"] in mine for s in self.servers()), timeout, step=2.0)
        self.baseline_servers = {s["id"] for s in self.servers()}
        self.baseline_ports = {p["id"] for p in self.ports()}
        return len(mine)

    def proxy_routes(self):
        """One proxy route per distinct service netloc of the catalog
        (identity, compute, image, network)."""
        routes = {}
        for svc in ("identity", "compute", "image", "network"):
            url = self.endpoint(svc)
            if url:
                m = re.match(r"(https?://[^/]+)", url)
                routes[svc] = m.group(1)
        return routes

    def clouds_yaml(self, ports=None):
        """This cloud's clouds.yaml; with `ports` ({service: proxy port}) the
        auth URL and every service endpoint go through the proxy."""
        import yaml
        cloud = json.loads(json.dumps(self.cloud))
        if ports:
            def via(url, svc):
                return re.sub(r"^https?://[^/]+", "http://127.0.0.1:%d" % ports[svc], url)
            cloud["auth"]["auth_url"] = via(self.auth["auth_url"], "identity")
            for svc in ("compute", "image", "network"):
                url = self.endpoint(svc)
                if url and svc in ports:
                    cloud["%s_endpoint_override" % svc] = via(url, svc)
        return yaml.safe_dump({"clouds": {self.cloud_name: cloud}}, default_flow_style=False)


def os_provider_yaml(cloud_name, name=OS_PROVIDER, label=OS_LABEL, max_servers=MAX_SERVERS):
    return """\
  - name: %s
    driver: openstack
    cloud: %s
    region-name: RegionOne
    rate: 0.01
    launch-retries: 3
    cloud-images:
      - name: cirros
        username: cirros
    pools:
      - name: main
        max-servers: %d
        host-key-checking: false
        networks: [private]
        labels:
          - name: %s
            cloud-image: cirros
            flavor-name: np-small
""" % (name, cloud_name, max_servers, label)


def config(zk_yaml, labels, providers_yaml):
    return (zk_yaml + "labels:\n" + "".join("  - name: %s\n    min-ready: 0\n" % l for l in labels)
            + "providers:\n" + providers_yaml)


# ---------------------------------------------------------------- the proxy


class CloudProxy:
    def __init__(self, run, flavor, routes, rng, error_rate=0.10, throttle_rate=0.05, hang_rate=0.01,
                 hang_seconds=600):
        self.ports_file = os.path.join(run.dir, "cloudproxy.ports")
        self.stats_path = os.path.join(run.dir, "cloudproxy-stats.json")
        self.fault_log = os.path.join(run.dir, "cloudproxy-faults.jsonl")
        cmd = [sys.executable, os.path.join(HERE, "cloudproxy.py"), "--flavor", flavor,
               "--ports-file", self.ports_file, "--stats", self.stats_path, "--fault-log", self.fault_log,
               "--error-rate", str(error_rate), "--throttle-rate", str(throttle_rate),
               "--hang-rate", str(hang_rate), "--hang-seconds", str(hang_seconds),
               "--seed", str(rng.randrange(1 << 30))]
        for name, url in routes.items():
            cmd += ["--route", "%s=%s" % (name, url)]
        self.proc = Proc(cmd, os.path.join(run.dir, "cloudproxy.log"))
        run.procs.append(self.proc)
        self.ports = json.loads(_wait_file(self.ports_file, self.proc, 30))
        log("%s: cloudproxy %s" % (run.name, self.ports))

    def calm(self, on=True):
        """Injection off (on=True) or on again."""
        self.proc.signal(signal.SIGUSR1 if on else signal.SIGUSR2)

    def stats(self):
        try:
            with open(self.stats_path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def hung_calls(self):
        out = []
        try:
            with open(self.fault_log) as f:
                for line in f:
                    ev = json.loads(line)
                    if ev["kind"].startswith("hung"):
                        out.append("%s %s" % (ev["kind"], ev["op"]))
        except (OSError, ValueError):
            pass
        return out

    def note(self):
        s = self.stats()
        c = s.get("counts", {})
        if not c:
            return "cloudproxy wrote no stats."
        return ("cloudproxy: %d calls, %d injected: %d 5xx (%d before forwarding, %d after the cloud did "
                "the work, reply dropped), %d throttled, %d hung (%d before, %d after forwarding: %s); "
                "%d upstream errors." % (
                    s["requests"], s["injected"], c["5xx_before"] + c["5xx_after"], c["5xx_before"],
                    c["5xx_after"], c["throttled"], c["hung_before"] + c["hung_after"], c["hung_before"],
                    c["hung_after"], ", ".join(
                        "%s x%d" % kv for kv in sorted(collections.Counter(
                            h.split(" ", 1)[1] for h in self.hung_calls()).items())) or "none",
                    s.get("upstream_errors", 0)))


# ---------------------------------------------------------------- scenarios


def _stopped_notes(run):
    """Launchers that exited on their own, or needed SIGKILL to stop."""
    notes, bad = [], False
    for p in run.launchers:
        rc = p.proc.returncode
        if rc not in (0, -9, -15, 143, None):
            notes.append("%s exited with %s." % (os.path.basename(p.log_path), rc))
            bad = True
    return notes, bad


def _finish(run, row, extra_notes):
    found, samples = launcher_findings(run)
    row["notes"] = list(row.get("notes") or []) + [n for n in extra_notes if n]
    if found:
        row["notes"].append("Launcher logs: %s." % ", ".join("%d %s" % (v, k) for k, v in sorted(found.items())))
    row["log_samples"] = dict(samples)
    if found.get("panic"):
        row["failed_check"] = True
    notes, bad = _stopped_notes(run)
    row["notes"] += notes
    if bad:
        row["failed_check"] = True
    return row


def kill9_cloud(suite, name, rng, cloud, kills=10, count=300, client_timeout=1500):
    """The launcher killed with SIGKILL at random moments while about ten
    nodes are building (max-servers 10, 20 requests outstanding), restarted
    at once, 10 times, on moto or the real OpenStack."""
    run = new_run(suite, name)
    zk_yaml = run.zk.yaml(run.chroot)
    purged = 0
    if cloud == "aws":
        moto = Moto(run)
        env = moto.launcher_env()
        cfg = run.write("nodepool.yaml", config(zk_yaml, [AWS_LABEL], aws_provider_yaml()))
        provider, label, resources = AWS_PROVIDER, AWS_LABEL, moto.resources
    else:
        osc = OpenStack()
        purged = osc.purge(OS_PROVIDER)
        clouds = run.write("clouds.yaml", osc.clouds_yaml())
        env = {"OS_CLIENT_CONFIG_FILE": clouds}
        cfg = run.write("nodepool.yaml", config(zk_yaml, [OS_LABEL], os_provider_yaml(osc.cloud_name)))
        provider, label, resources = OS_PROVIDER, OS_LABEL, osc.resources
    launcher = run.start_launcher(cfg, extra_env=env)
    wait_pools(run)
    client = run.start_client(label, count=count, outstanding=20, job_time=(0.2, 0.6), timeout=client_timeout,
                              seed=rng.randrange(1 << 30))
    watch = Building(run)
    at_kill = []
    done = 0
    try:
        while done < kills and client.alive():
            time.sleep(rng.uniform(8.0, 25.0))
            # A random moment while (about) ten nodes are building.
            wait_for(lambda: not client.alive() or watch.states(provider).get("building", 0) >= MAX_SERVERS - 2,
                     90, step=0.3)
            time.sleep(rng.uniform(0.0, 2.0))
            if not client.alive():
                break
            states = watch.states(provider)
            t = time.time()
            launcher.kill9()
            launcher = run.start_launcher(cfg, extra_env=env)
            run.fault("launcher kill -9", t)
            at_kill.append(states.get("building", 0))
            done += 1
    finally:
        watch.close()
    finished = wait_client(run, client, client_timeout)
    notes = ["%d kills; nodes building at each kill: %s." % (done, at_kill)]
    if purged:
        notes.append("%d servers of an earlier, aborted run deleted before the start." % purged)
    if done < kills:
        notes.append("the client finished before all %d kills." % kills)
    if not finished:
        notes.append("the client did not finish within %d s." % client_timeout)
    row = run.result([provider], resources, notes=notes, settle_timeout=240)
    extra = []
    if cloud == "aws" and moto.eni_notes.get("on_terminated_instances"):
        extra.append("moto keeps the network interfaces of terminated instances (%d at the end; real EC2 "
                     "deletes them with the instance): not counted." % moto.eni_notes["on_terminated_instances"])
    extra.append(waits_note(run))
    check_count(row, count)
    return _finish(run, row, extra)


def kill9_aws(suite, name, rng):
    return kill9_cloud(suite, name, rng, "aws")


def kill9_openstack(suite, name, rng):
    return kill9_cloud(suite, name, rng, "openstack")


def cloud_faults(suite, name, rng, cloud, count=300, hang_rate=0.01, client_timeout=2400):
    """Cloud faults through cloudproxy.py: 10 % 5xx (half before forwarding,
    half after the cloud did the work with its reply dropped), 5 %
    throttling, `hang_rate` hung calls (held 10 minutes), on every call of
    the cloud provider (max-servers 10, 20 requests outstanding). A fake
    provider in the same launcher serves another label, asked for by a
    second client (2 outstanding, in batches of 10) for as long as the
    first runs: its requests must keep being served while the cloud's calls
    fail or hang."""
    run = new_run(suite, name)
    zk_yaml = run.zk.yaml(run.chroot)
    purged = 0
    if cloud == "aws":
        moto = Moto(run)
        proxy = CloudProxy(run, "aws", {"ec2": moto.endpoint}, rng, hang_rate=hang_rate)
        env = moto.launcher_env("http://127.0.0.1:%d" % proxy.ports["ec2"])
        cloud_yaml = aws_provider_yaml()
        provider, label, resources = AWS_PROVIDER, AWS_LABEL, moto.resources
    else:
        osc = OpenStack()
        purged = osc.purge(OS_PROVIDER)
        proxy = CloudProxy(run, "openstack", osc.proxy_routes(), rng, hang_rate=hang_rate)
        clouds = run.write("clouds.yaml", osc.clouds_yaml(proxy.ports))
        env = {"OS_CLIENT_CONFIG_FILE": clouds}
        cloud_yaml = os_provider_yaml(osc.cloud_name)
        provider, label, resources = OS_PROVIDER, OS_LABEL, osc.resources
    env["NODEPOOL_FAKE_LAUNCH_DELAY_MS"] = "300"
    cfg = run.write("nodepool.yaml", config(zk_yaml, [label, FAKE_LABEL], cloud_yaml + fake_provider_yaml()))
    run.start_launcher(cfg, extra_env=env)
    wait_pools(run, 2)
    client = run.start_client(label, count=count, outstanding=20, job_time=(0.2, 0.6), timeout=client_timeout,
                              seed=rng.randrange(1 << 30))
    batches = 0
    deadline = time.time() + client_timeout
    while client.alive() and time.time() < deadline:
        other = run.start_client(FAKE_LABEL, count=10, outstanding=2, job_time=(0.5, 1.5), timeout=600,
                                 seed=rng.randrange(1 << 30))
        batches += 1
        wait_for(lambda: not other.alive(), 600, step=0.5)
        if other.alive():
            other.stop()
    finished = wait_client(run, client, max(10, deadline - time.time()))
    notes = ["%d requests for %s; %d batches of 10 for %s meanwhile; injection rates: 10 %% 5xx, 5 %% "
             "throttled, %.1f %% hung." % (count, label, batches, FAKE_LABEL, hang_rate * 100)]
    if purged:
        notes.append("%d servers of an earlier, aborted run deleted before the start." % purged)
    if not finished:
        notes.append("the client did not finish within %d s." % client_timeout)
    # Cleanup runs with the faults still on.
    instances = lambda: resources() + run.fake_instances()  # noqa: E731
    row = run.result([provider, FAKE_PROVIDER], instances, notes=notes, settle_timeout=420)
    extra = [proxy.note(), waits_note(run)]
    if cloud == "aws" and moto.eni_notes.get("on_terminated_instances"):
        extra.append("moto keeps the network interfaces of terminated instances (%d at the end; real EC2 "
                     "deletes them with the instance): not counted." % moto.eni_notes["on_terminated_instances"])
    row["proxy_stats"] = proxy.stats()
    check_count(row, count)
    return _finish(run, row, extra)


def cloud_faults_aws(suite, name, rng):
    return cloud_faults(suite, name, rng, "aws")


def cloud_faults_openstack(suite, name, rng):
    # The pool reads Nova's /limits on nearly every pass (about once a
    # second) and waits for it, so each hung call there holds the whole
    # pool for the 120 s call deadline: 1 % would keep it stalled most of
    # the run. 0.2 % still hangs several calls.
    return cloud_faults(suite, name, rng, "openstack", hang_rate=0.002, client_timeout=3600)


FULL = [
    ("kill9-aws", kill9_aws),
    ("kill9-openstack", kill9_openstack),
    ("cloud-faults-aws", cloud_faults_aws),
    ("cloud-faults-openstack", cloud_faults_openstack),
]


if __name__ == "__main__":
    if sys.argv[1:2] == ["moto"]:
        moto_main(sys.argv[2:])
    else:
        sys.exit("usage: scenarios_cloud.py moto --port-file F")
