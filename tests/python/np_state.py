#!/usr/bin/env python3
"""Prepare image state with the real Python Nodepool 11 API, for np-cli tests.

Run as ``$NP_PYTHON tests/python/np_state.py [--tls] [--chroot PATH] SUBCOMMAND``.
It reuses np_interop.py's connection (same options); each subcommand prints
one JSON document on stdout and exits 0, or an error on stderr and exits 1.

  store-build IMAGE [--id ID]     stdin JSON -> ImageBuild.fromDict ->
                                  ZooKeeper.storeBuild     -> {"id": BUILD}
  store-upload IMAGE BUILD PROVIDER [--id N]
                                  stdin JSON -> ImageUpload.fromDict ->
                                  ZooKeeper.storeImageUpload -> {"id": N}
  pause IMAGE [--off]             ZooKeeper.setImagePaused -> {"ok": true}
  build-request IMAGE             ZooKeeper.submitBuildRequest -> {"ok": true}
  builds IMAGE                    ZooKeeper.getBuilds -> [{"id": .., "state": ..,
                                  "builder": .., ...}], as Python reads them
  uploads IMAGE BUILD PROVIDER    ZooKeeper.getUploads -> [{"id": .., "state": ..,
                                  "external_id": .., ...}]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import np_interop  # noqa: E402
from np_interop import Fail, Peer, emit, read_stdin_json  # noqa: E402
from nodepool.zk.zookeeper import ImageBuild, ImageUpload  # noqa: E402


def cmd_store_build(peer, opts):
    build = ImageBuild.fromDict(read_stdin_json(), opts.image, opts.id)
    emit({"id": peer.zk.storeBuild(opts.image, build, opts.id)})


def cmd_store_upload(peer, opts):
    upload = ImageUpload.fromDict(read_stdin_json(), opts.build, opts.provider,
                                  opts.image, opts.id)
    emit({"id": peer.zk.storeImageUpload(opts.image, opts.build, opts.provider,
                                         upload, opts.id)})


def cmd_pause(peer, opts):
    peer.zk.setImagePaused(opts.image, not opts.off)
    emit({"ok": True})


def cmd_build_request(peer, opts):
    peer.zk.submitBuildRequest(opts.image)
    emit({"ok": True})


def cmd_builds(peer, opts):
    out = []
    for build in peer.zk.getBuilds(opts.image):
        d = build.toDict()
        d["id"] = build.id
        d["formats"] = sorted(build.formats or [])
        d["requested"] = peer.zk.hasBuildRequest(opts.image)
        out.append(d)
    emit(sorted(out, key=lambda d: d["state_time"]))


def cmd_uploads(peer, opts):
    out = []
    for upload in peer.zk.getUploads(opts.image, opts.build, opts.provider):
        d = upload.toDict()
        d["id"] = upload.id
        out.append(d)
    emit(sorted(out, key=lambda d: d["id"]))


def build_parser():
    parser = argparse.ArgumentParser(prog="np_state.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    np_interop.add_common(parser)
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    sub.required = True

    def cmd(name, func):
        p = sub.add_parser(name)
        np_interop.add_common(p)
        p.set_defaults(func=func)
        return p

    p = cmd("store-build", cmd_store_build)
    p.add_argument("image")
    p.add_argument("--id", default=None)
    p = cmd("store-upload", cmd_store_upload)
    p.add_argument("image")
    p.add_argument("build")
    p.add_argument("provider")
    p.add_argument("--id", default=None)
    p = cmd("pause", cmd_pause)
    p.add_argument("image")
    p.add_argument("--off", action="store_true")
    p = cmd("build-request", cmd_build_request)
    p.add_argument("image")
    p = cmd("builds", cmd_builds)
    p.add_argument("image")
    p = cmd("uploads", cmd_uploads)
    p.add_argument("image")
    p.add_argument("build")
    p.add_argument("provider")
    return parser


def main(argv=None):
    opts = build_parser().parse_args(argv)
    for key, value in np_interop.COMMON_DEFAULTS.items():
        if not hasattr(opts, key):
            setattr(opts, key, value)
    try:
        with Peer(opts) as peer:
            opts.func(peer, opts)
    except Fail as e:
        print("np_state: error: %s" % e, file=sys.stderr)
        return 1
    except Exception as e:
        print("np_state: error: %s: %s" % (type(e).__name__, e), file=sys.stderr)
        return 1
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
