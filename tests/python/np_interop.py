#!/usr/bin/env python3
"""The real Python Nodepool 11 peer, for the Rust integration tests.

Run it as ``$NP_PYTHON tests/python/np_interop.py SUBCOMMAND [ARGS]``. Each
subcommand prints exactly one JSON document on stdout (the hold-style ones
print one per line: see below) and exits 0, or prints an error on stderr and
exits 1. Usage errors exit 2.

Connection options (before or after the subcommand):

  --hosts HOSTS     ZooKeeper hosts, optionally with a chroot
                    ("127.0.0.1:2181/test-abc"). Default: $NP_ZK_HOSTS, or
                    $NP_ZK_TLS_HOSTS with --tls.
  --chroot PATH     appended to the hosts ("/test-abc").
  --tls             TLS with the client certificate in $NP_ZK_TLS_CERT,
                    $NP_ZK_TLS_KEY and the CA in $NP_ZK_TLS_CA.
  --session-timeout S   ZooKeeper session timeout (default 10, as Nodepool).
  --connect-timeout S   give up connecting after S seconds (default 30).

A missing chroot znode is created (persistent, empty), so a test may pick a
fresh chroot and go.

The connection is made the way Nodepool 11 makes it: its ZooKeeperClient
(vendored ZuulKazooClient, PoolSequentialThreadingHandler) and its ZooKeeper
API object, with the caches off. The on-connect hooks are skipped, so the
component registry creates nothing (no /nodepool/components) and sets no
watches: a subcommand creates only the znodes it names.

Subcommands:

  ping                      {"ok": true}
  read-node ID              Nodepool getNode(ID).toDict() + "id"
  write-node                stdin JSON -> Node.fromDict -> storeNode (new
                            sequential node)            -> {"id": ID}
  update-node ID [--replace]
                            getNode(ID), updateFromDict(stdin JSON),
                            storeNode                   -> {"id": ID}
                            The JSON is a patch: merged over the node's
                            toDict() first (a new "state" without
                            "state_time" sets state_time to now, like
                            Nodepool's `node.state = ...`). --replace hands
                            the JSON to updateFromDict as it is (missing
                            keys become defaults).
  list-nodes                nodeIterator(cached=False)
                            -> [{"id": ID, "state": S}, ...]
  read-request ID           getNodeRequest(ID).toDict() + "id"
  write-request [--priority P] [--ephemeral]
                            stdin JSON -> NodeRequest.fromDict -> a new
                            request                     -> {"id": ID}
                            By default the znode is persistent-sequential,
                            as Zuul creates requests (a one-shot process's
                            ephemeral znode would vanish at exit). With
                            --ephemeral it is Nodepool's own storeNodeRequest
                            (ephemeral-sequential), and the process keeps
                            its session until a line arrives on stdin after
                            the JSON (or stdin closes), then prints
                            {"released": true}.
  update-request ID [--replace]
                            getNodeRequest(ID), updateFromDict(stdin JSON),
                            storeNodeRequest            -> {"id": ID}
                            (a patch, as for update-node)
  raw-get PATH              {"data": UTF-8 text, "version": N}
  raw-stat PATH             the znode's Stat as an object (or null)
  raw-children PATH         sorted list of child names
  raw-set PATH [--data S]   stdin bytes (or S), unconditional
                            -> {"path": PATH, "version": N}
  raw-create PATH [--sequence] [--ephemeral] [--no-makepath] [--data S]
            [--hold]        stdin bytes (or S)          -> {"path": CREATED}
                            --hold: keep the session until a line arrives on
                            stdin (use it with --data), then print
                            {"released": true}.
  raw-delete PATH [--recursive]     -> {"deleted": bool}
  hold-lock PATH [--timeout S] [--identifier X] [--non-ephemeral]
                            kazoo Lock(client, PATH, X).acquire(blocking):
                            prints {"acquired": true}, waits for a line on
                            stdin (or EOF), releases, prints
                            {"released": true}. On timeout prints
                            {"acquired": false} and exits 0.
  try-lock PATH [--identifier X]
                            non-blocking acquire, released at once
                            -> {"acquired": bool}
  lock-contenders PATH      kazoo Lock(client, PATH).contenders()
  lock-node ID [--blocking] [--timeout S] [--identifier X]
                            Nodepool lockNode/unlockNode, the protocol of
                            hold-lock (non-blocking unless --blocking).
  lock-request ID [--blocking] [--timeout S]
                            Nodepool lockNodeRequest/unlockNodeRequest, the
                            same protocol.
"""

import argparse
import json
import logging
import os
import sys
import warnings

# Set up logging before Nodepool and kazoo create their loggers.
logging.basicConfig(
    level=logging.WARNING,
    stream=sys.stderr,
    format="np_interop: %(levelname)s %(name)s: %(message)s",
)
warnings.simplefilter("ignore")

from kazoo import exceptions as kze  # noqa: E402
from kazoo.recipe.lock import Lock  # noqa: E402

from nodepool import exceptions as npe  # noqa: E402
from nodepool.zk import ZooKeeperClient  # noqa: E402
from nodepool.zk.zookeeper import Node, NodeRequest, ZooKeeper  # noqa: E402


class Fail(Exception):
    """An error to report on stderr, with exit status 1."""


# ---------------------------------------------------------------- output


def emit(doc):
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def wait_for_line():
    """Block until a line arrives on stdin, or stdin closes."""
    try:
        sys.stdin.readline()
    except (OSError, ValueError):
        pass


def read_stdin_bytes():
    return sys.stdin.buffer.read()


def read_stdin_json():
    """Read one JSON object from stdin.

    Lines are read until they form a complete JSON document, so a caller may
    send the object (one or more lines) and keep stdin open for a later
    "release" line. Reading stops at EOF too.
    """
    buf = ""
    while True:
        line = sys.stdin.readline()
        if not line:
            break
        buf += line
        try:
            json.loads(buf)
            break
        except ValueError:
            continue
    if not buf.strip():
        raise Fail("expected a JSON object on stdin, got nothing")
    try:
        doc = json.loads(buf)
    except ValueError as e:
        raise Fail("stdin is not valid JSON: %s" % e)
    if not isinstance(doc, dict):
        raise Fail("expected a JSON object on stdin, got %s" % type(doc).__name__)
    return doc


def stat_dict(stat):
    if stat is None:
        return None
    return {
        "czxid": stat.czxid,
        "mzxid": stat.mzxid,
        "ctime": stat.ctime,
        "mtime": stat.mtime,
        "version": stat.version,
        "cversion": stat.cversion,
        "aversion": stat.aversion,
        "ephemeralOwner": stat.ephemeralOwner,
        "dataLength": stat.dataLength,
        "numChildren": stat.numChildren,
        "pzxid": stat.pzxid,
    }


# ---------------------------------------------------------------- connection


class InteropZooKeeperClient(ZooKeeperClient):
    """Nodepool's ZooKeeperClient, with plain connections and a bounded connect.

    Nodepool itself refuses to run without TLS, and retries its first connect
    forever; a test helper needs plain connections too and must fail instead
    of hanging when no server is there.
    """

    def __init__(self, hosts, timeout, tls_cert=None, tls_key=None, tls_ca=None,
                 connect_timeout=30.0):
        if tls_cert and tls_key and tls_ca:
            super().__init__(hosts, timeout=timeout, tls_cert=tls_cert,
                             tls_key=tls_key, tls_ca=tls_ca)
        else:
            # Satisfy the TLS check with readable files, then drop TLS.
            super().__init__(hosts, timeout=timeout, tls_cert=os.devnull,
                             tls_key=os.devnull, tls_ca=os.devnull)
            self.tls_cert = self.tls_key = self.tls_ca = None
        self.connect_timeout = connect_timeout

    def connect(self):
        # What ZooKeeperClient.connect() does, minus its endless retry.
        from nodepool.zk.handler import PoolSequentialThreadingHandler
        from nodepool.zk.vendor.client import ZuulKazooClient

        if self.client is not None:
            return
        args = dict(
            hosts=self.hosts,
            read_only=self.read_only,
            timeout=self.timeout,
            handler=PoolSequentialThreadingHandler(),
        )
        if self.tls_key:
            args["use_ssl"] = True
            args["keyfile"] = self.tls_key
            args["certfile"] = self.tls_cert
            args["ca"] = self.tls_ca
        client = ZuulKazooClient(**args)
        client.add_listener(self._connectionListener)
        try:
            client.start(self.connect_timeout)
        except Exception as e:
            try:
                client.stop()
                client.close()
            except Exception:
                pass
            raise Fail("cannot connect to ZooKeeper at %s: %s" % (self.hosts, e))
        self.client = client
        # Unlike ZooKeeperClient.connect(), the on-connect listeners are not
        # called: the only one with an effect is Nodepool's component
        # registry, which would create /nodepool/components/{pool,launcher,
        # builder} and watch them. A test peer should create only what its
        # subcommand creates.

    def ensure_chroot(self):
        """Create the chroot znode (and its parents) if it is missing."""
        kc = self.client
        chroot = kc.chroot
        if not chroot:
            return
        kc.chroot = ""
        try:
            kc.ensure_path(chroot)
        finally:
            kc.chroot = chroot


class Peer:
    def __init__(self, opts):
        self.opts = opts
        self.zk_client = None
        self.zk = None

    def __enter__(self):
        o = self.opts
        hosts = o.hosts
        if not hosts:
            hosts = os.environ.get("NP_ZK_TLS_HOSTS" if o.tls else "NP_ZK_HOSTS")
        if not hosts:
            raise Fail("no ZooKeeper hosts: pass --hosts or source .test-env/env.sh")
        if o.chroot:
            hosts = hosts.rstrip("/") + "/" + o.chroot.strip("/")
        tls = {}
        if o.tls:
            for key, var in (("tls_ca", "NP_ZK_TLS_CA"), ("tls_cert", "NP_ZK_TLS_CERT"),
                             ("tls_key", "NP_ZK_TLS_KEY")):
                val = os.environ.get(var)
                if not val:
                    raise Fail("--tls needs $%s" % var)
                tls[key] = val
        try:
            self.zk_client = InteropZooKeeperClient(
                hosts, timeout=o.session_timeout, connect_timeout=o.connect_timeout, **tls)
        except OSError as e:
            raise Fail("cannot read a TLS file: %s" % e)
        # Built before connecting, so that its (and the component registry's)
        # on-connect hooks are what connect() skips (see the module doc).
        self.zk = ZooKeeper(self.zk_client, enable_cache=False)
        self.zk_client.connect()
        self.zk_client.ensure_chroot()
        return self

    def __exit__(self, *exc):
        client = self.zk_client.client if self.zk_client else None
        if client is not None:
            try:
                client.stop()
                client.close()
            except Exception:
                pass
            self.zk_client.client = None
        return False

    @property
    def kazoo(self):
        return self.zk_client.client


# ---------------------------------------------------------------- commands


def node_doc(node):
    d = node.toDict()
    d["id"] = node.id
    return d


def get_node(peer, node_id):
    node = peer.zk.getNode(node_id)
    if node is None:
        raise Fail("node %s not found (or has no data)" % node_id)
    return node


def get_request(peer, request_id):
    req = peer.zk.getNodeRequest(request_id)
    if req is None:
        raise Fail("request %s not found" % request_id)
    return req


def cmd_ping(peer, opts):
    peer.kazoo.get_children("/")
    emit({"ok": True})


def cmd_read_node(peer, opts):
    emit(node_doc(get_node(peer, opts.id)))


def cmd_write_node(peer, opts):
    data = read_stdin_json()
    data.pop("id", None)
    node = Node.fromDict(data)
    peer.zk.storeNode(node)
    emit({"id": node.id})


def merged(obj, data, replace):
    """The dict to feed to obj.updateFromDict for the stdin JSON `data`.

    Nodepool's updateFromDict replaces every attribute (missing keys become
    defaults). By default the JSON is a patch instead: merged over the
    object's current toDict(), and a new "state" without "state_time" sets
    state_time to now, as Nodepool's `obj.state = ...` does. --replace feeds
    the JSON to updateFromDict as it is.
    """
    if replace:
        return data
    d = obj.toDict()
    if "state" in data and "state_time" not in data:
        d.pop("state_time", None)
    d.update(data)
    return d


def cmd_update_node(peer, opts):
    data = read_stdin_json()
    data.pop("id", None)
    node = get_node(peer, opts.id)
    node.updateFromDict(merged(node, data, opts.replace))
    peer.zk.storeNode(node)
    emit({"id": node.id})


def cmd_list_nodes(peer, opts):
    emit([{"id": n.id, "state": n.state} for n in peer.zk.nodeIterator(cached=False)])


def request_doc(req):
    d = req.toDict()
    d["id"] = req.id
    return d


def cmd_read_request(peer, opts):
    emit(request_doc(get_request(peer, opts.id)))


def cmd_write_request(peer, opts):
    import uuid

    data = read_stdin_json()
    data.pop("id", None)
    req = NodeRequest.fromDict(data)
    if opts.ephemeral:
        # Nodepool's own requests (min-ready, metastatic): ephemeral.
        peer.zk.storeNodeRequest(req, priority=opts.priority)
        emit({"id": req.id})
        wait_for_line()
        emit({"released": True})
        return
    # What storeNodeRequest does, but persistent, as Zuul submits requests.
    if not req.event_id:
        req.event_id = uuid.uuid4().hex
    path = "%s/%s-" % (peer.zk.REQUEST_ROOT, opts.priority)
    path = peer.kazoo.create(path, value=req.serialize(), ephemeral=False,
                             sequence=True, makepath=True)
    req.id = path.split("/")[-1]
    emit({"id": req.id})


def cmd_update_request(peer, opts):
    data = read_stdin_json()
    data.pop("id", None)
    req = get_request(peer, opts.id)
    req.updateFromDict(merged(req, data, opts.replace))
    peer.zk.storeNodeRequest(req)
    emit({"id": req.id})


def raw_input_bytes(opts):
    if opts.data is not None:
        return opts.data.encode("utf-8")
    return read_stdin_bytes()


def cmd_raw_get(peer, opts):
    try:
        data, stat = peer.kazoo.get(opts.path)
    except kze.NoNodeError:
        raise Fail("no znode %s" % opts.path)
    emit({"data": data.decode("utf-8", errors="replace"), "version": stat.version})


def cmd_raw_stat(peer, opts):
    emit(stat_dict(peer.kazoo.exists(opts.path)))


def cmd_raw_children(peer, opts):
    try:
        emit(sorted(peer.kazoo.get_children(opts.path)))
    except kze.NoNodeError:
        raise Fail("no znode %s" % opts.path)


def cmd_raw_set(peer, opts):
    data = raw_input_bytes(opts)
    try:
        stat = peer.kazoo.set(opts.path, data)
    except kze.NoNodeError:
        raise Fail("no znode %s" % opts.path)
    emit({"path": opts.path, "version": stat.version})


def cmd_raw_create(peer, opts):
    data = raw_input_bytes(opts)
    try:
        path = peer.kazoo.create(opts.path, value=data, ephemeral=opts.ephemeral,
                                 sequence=opts.sequence, makepath=opts.makepath)
    except kze.NodeExistsError:
        raise Fail("znode %s exists" % opts.path)
    except kze.NoNodeError:
        raise Fail("parent of %s missing" % opts.path)
    emit({"path": path})
    if opts.hold:
        wait_for_line()
        emit({"released": True})


def cmd_raw_delete(peer, opts):
    try:
        peer.kazoo.delete(opts.path, recursive=opts.recursive)
    except kze.NoNodeError:
        emit({"deleted": False})
        return
    except kze.NotEmptyError:
        raise Fail("znode %s has children (use --recursive)" % opts.path)
    emit({"deleted": True})


def cmd_hold_lock(peer, opts):
    lock = Lock(peer.kazoo, opts.path, opts.identifier)
    try:
        acquired = lock.acquire(blocking=True, timeout=opts.timeout,
                                ephemeral=not opts.non_ephemeral)
    except kze.LockTimeout:
        acquired = False
    if not acquired:
        emit({"acquired": False})
        return
    emit({"acquired": True})
    wait_for_line()
    lock.release()
    emit({"released": True})


def cmd_try_lock(peer, opts):
    lock = Lock(peer.kazoo, opts.path, opts.identifier)
    acquired = lock.acquire(blocking=False)
    if acquired:
        lock.release()
    emit({"acquired": bool(acquired)})


def cmd_lock_contenders(peer, opts):
    emit(Lock(peer.kazoo, opts.path).contenders())


def cmd_lock_node(peer, opts):
    node = get_node(peer, opts.id)
    try:
        peer.zk.lockNode(node, blocking=opts.blocking, timeout=opts.timeout,
                         identifier=opts.identifier)
    except (npe.ZKLockException, npe.TimeoutException):
        emit({"acquired": False})
        return
    emit({"acquired": True})
    wait_for_line()
    peer.zk.unlockNode(node)
    emit({"released": True})


def cmd_lock_request(peer, opts):
    req = get_request(peer, opts.id)
    try:
        peer.zk.lockNodeRequest(req, blocking=opts.blocking, timeout=opts.timeout)
    except (npe.ZKLockException, npe.TimeoutException):
        emit({"acquired": False})
        return
    emit({"acquired": True})
    wait_for_line()
    peer.zk.unlockNodeRequest(req)
    emit({"released": True})


# ---------------------------------------------------------------- CLI


def add_common(p):
    # SUPPRESS: the options may stand before or after the subcommand without
    # one place's default overwriting the other's value.
    S = argparse.SUPPRESS
    p.add_argument("--hosts", default=S, help="ZooKeeper hosts[/chroot]")
    p.add_argument("--chroot", default=S, help="chroot appended to the hosts")
    p.add_argument("--tls", action="store_true", default=S, help="use TLS ($NP_ZK_TLS_*)")
    p.add_argument("--session-timeout", type=float, default=S, help="seconds (10)")
    p.add_argument("--connect-timeout", type=float, default=S, help="seconds (30)")


COMMON_DEFAULTS = {
    "hosts": None,
    "chroot": None,
    "tls": False,
    "session_timeout": 10.0,
    "connect_timeout": 30.0,
}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="np_interop.py",
        description="Act as the real Python Nodepool 11 peer on ZooKeeper.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    add_common(parser)
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    sub.required = True

    def cmd(name, func, help_text):
        p = sub.add_parser(name, help=help_text)
        add_common(p)
        p.set_defaults(func=func)
        return p

    cmd("ping", cmd_ping, "connect and list /")
    p = cmd("read-node", cmd_read_node, "Nodepool getNode")
    p.add_argument("id")
    cmd("write-node", cmd_write_node, "Nodepool storeNode of a new node (stdin JSON)")
    p = cmd("update-node", cmd_update_node, "update a node from stdin JSON")
    p.add_argument("id")
    p.add_argument("--replace", action="store_true",
                   help="updateFromDict(JSON) as is, not merged over the node")
    cmd("list-nodes", cmd_list_nodes, "Nodepool nodeIterator(cached=False)")
    p = cmd("read-request", cmd_read_request, "Nodepool getNodeRequest")
    p.add_argument("id")
    p = cmd("write-request", cmd_write_request, "store a new node request (stdin JSON)")
    p.add_argument("--priority", default="100")
    p.add_argument("--ephemeral", action="store_true",
                   help="Nodepool's storeNodeRequest (ephemeral); hold the session")
    p = cmd("update-request", cmd_update_request, "update a request from stdin JSON")
    p.add_argument("id")
    p.add_argument("--replace", action="store_true",
                   help="updateFromDict(JSON) as is, not merged over the request")

    p = cmd("raw-get", cmd_raw_get, "kazoo get")
    p.add_argument("path")
    p = cmd("raw-stat", cmd_raw_stat, "kazoo exists")
    p.add_argument("path")
    p = cmd("raw-children", cmd_raw_children, "kazoo get_children")
    p.add_argument("path")
    p = cmd("raw-set", cmd_raw_set, "kazoo set (stdin bytes)")
    p.add_argument("path")
    p.add_argument("--data", help="the data, instead of stdin")
    p = cmd("raw-create", cmd_raw_create, "kazoo create (stdin bytes)")
    p.add_argument("path")
    p.add_argument("--sequence", action="store_true")
    p.add_argument("--ephemeral", action="store_true")
    p.add_argument("--no-makepath", dest="makepath", action="store_false")
    p.add_argument("--data", help="the data, instead of stdin")
    p.add_argument("--hold", action="store_true",
                   help="keep the session until a line arrives on stdin")
    p = cmd("raw-delete", cmd_raw_delete, "kazoo delete")
    p.add_argument("path")
    p.add_argument("--recursive", action="store_true")

    p = cmd("hold-lock", cmd_hold_lock, "hold a kazoo Lock until stdin says")
    p.add_argument("path")
    p.add_argument("--timeout", type=float, default=None)
    p.add_argument("--identifier", default=None)
    p.add_argument("--non-ephemeral", action="store_true")
    p = cmd("try-lock", cmd_try_lock, "non-blocking kazoo Lock acquire")
    p.add_argument("path")
    p.add_argument("--identifier", default=None)
    p = cmd("lock-contenders", cmd_lock_contenders, "kazoo Lock.contenders()")
    p.add_argument("path")
    p = cmd("lock-node", cmd_lock_node, "Nodepool lockNode until stdin says")
    p.add_argument("id")
    p.add_argument("--blocking", action="store_true")
    p.add_argument("--timeout", type=float, default=None)
    p.add_argument("--identifier", default=None)
    p = cmd("lock-request", cmd_lock_request, "Nodepool lockNodeRequest until stdin says")
    p.add_argument("id")
    p.add_argument("--blocking", action="store_true")
    p.add_argument("--timeout", type=float, default=None)
    return parser


def main(argv=None):
    opts = build_parser().parse_args(argv)
    for key, value in COMMON_DEFAULTS.items():
        if not hasattr(opts, key):
            setattr(opts, key, value)
    status = 0
    try:
        with Peer(opts) as peer:
            opts.func(peer, opts)
    except Fail as e:
        print("np_interop: error: %s" % e, file=sys.stderr)
        status = 1
    except kze.KazooException as e:
        print("np_interop: error: %s: %s" % (type(e).__name__, e), file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        status = 1
    except Exception as e:
        logging.getLogger("np_interop").exception("unexpected error")
        print("np_interop: error: %s: %s" % (type(e).__name__, e), file=sys.stderr)
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    # The session is closed already; don't wait for kazoo's or the thread
    # pool's threads to wind down.
    os._exit(status)


if __name__ == "__main__":
    main()
