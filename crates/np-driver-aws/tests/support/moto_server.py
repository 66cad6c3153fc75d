"""Runs moto in server mode on 127.0.0.1 for the np-driver-aws tests.

Binds a free port, prints it on stdout, and exits when stdin closes (that
is, when the test process that started it exits, however it exits).

moto 5.2 does not implement the VM Import tasks (ImportSnapshot,
ImportImage and their Describe calls). This script adds them to moto's EC2
responder as a small task simulator, in the spirit of upstream Nodepool's
`fake_aws.py`, so the driver's `snapshot` and `image` import methods talk
HTTP to one server that behaves like EC2:

* the import reads the staged object from moto's own S3 when it completes;
  a missing or empty object makes the task end `deleted` with a ClientError
  message, as EC2 does;
* a task is `active` when created and on its first describe, and
  `completed` on the next one;
* a completed snapshot import leaves an untagged snapshot sized to the
  object (whole GiB), described "Created by AWS-VM-Import service for
  import-snap-..."; a completed image import leaves an untagged AMI named
  after the task, whose root snapshot names the task in its description.
  Real imports do not tag what they create: the driver copies the task's
  tags (upstream's `_tagSnapshots` / `_tagAmis`);
* unknown task ids give `InvalidConversionTaskId.Malformed`;
* `POST /moto-api/reset` forgets the tasks too.

The answers are serialised by moto from botocore's EC2 model, so their XML
is what the real service sends.
"""
import math
import os
import sys
import threading
import uuid

try:
    from moto.server import ThreadedMotoServer
    from moto.core.responses import ActionResult
    from moto.ec2.exceptions import EC2ClientError
    from moto.ec2.models.amis import Ami
    from moto.ec2.responses import EC2Response
    from moto.moto_api._internal.models import MotoAPIBackend
    from moto.s3.exceptions import S3ClientError
    from moto.s3.models import s3_backends
except ImportError as e:  # pragma: no cover
    print(f"ERROR moto is missing ({e}): tools/setup.sh must install moto[server]", flush=True)
    sys.exit(3)

GIB = 1024 ** 3
_LOCK = threading.Lock()
# (account, region) -> {task id: task dict in botocore's shape}
_TASKS = {}


def _tasks(resp):
    return _TASKS.setdefault((resp.current_account, resp.region), {})


def _tags(resp, resource_type):
    specs = resp._get_param("TagSpecification", []) or resp._get_param("TagSpecifications", []) or []
    for spec in specs:
        if spec.get("ResourceType") == resource_type:
            tags = spec.get("Tags") or spec.get("Tag") or []
            return [{"Key": t["Key"], "Value": t.get("Value", "")} for t in tags]
    return []


def _disk_container(resp, param):
    """The (first) disk container of an import call, as a dict."""
    value = resp._get_param(param) or resp._get_param(param + "s") or {}
    if isinstance(value, list):
        value = value[0] if value else {}
    return value


def _staged_object(resp, container):
    """The container's user bucket and the S3 object it names, or None."""
    user_bucket = container.get("UserBucket") or {}
    bucket = user_bucket.get("S3Bucket")
    key = user_bucket.get("S3Key")
    try:
        backend = s3_backends[resp.current_account][resp.partition]
        obj = backend.get_object(bucket, key)
    except S3ClientError:  # a missing bucket: the same failure as a missing key
        obj = None
    return {"S3Bucket": bucket, "S3Key": key}, obj


def _failure(resp, user_bucket):
    """Why the import of the staged object fails now, or None."""
    _, obj = _staged_object(resp, {"UserBucket": user_bucket})
    if obj is None:
        return (f"ClientError: Unable to read the disk image "
                f"s3://{user_bucket['S3Bucket']}/{user_bucket['S3Key']}")
    if len(obj.value) == 0:
        return "ClientError: Disk validation failed [Unsupported RAW image]"
    return None


def _fail(task, detail, message):
    for d in (task, detail):
        if "Status" in d:
            d["Status"] = "deleted"
            d["StatusMessage"] = message
        d.pop("Progress", None)


def _disk_detail(self):
    """The detail of a new import of the request's staged disk."""
    self.error_on_dryrun()
    container = _disk_container(self, "DiskContainer")
    user_bucket, obj = _staged_object(self, container)
    return {"Format": (container.get("Format") or "raw").upper(), "Status": "active",
            "UserBucket": user_bucket,
            "DiskImageSize": float(len(obj.value)) if obj else 0.0}


def _start_task(self, prefix, kind, task):
    """Records the new import task (its id `prefix` and a random part,
    tagged as `kind`) and answers with it."""
    task.update({"ImportTaskId": prefix + uuid.uuid4().hex[:17], "Tags": _tags(self, kind),
                 "_describes": 0})
    with _LOCK:
        _tasks(self)[task["ImportTaskId"]] = task
    return ActionResult(_public(task))


def import_snapshot(self):
    detail = _disk_detail(self)
    detail["StatusMessage"] = "pending"
    return _start_task(self, "import-snap-", "import-snapshot-task",
                       {"SnapshotTaskDetail": detail,
                        "Description": self._get_param("Description") or ""})


def import_image(self):
    detail = _disk_detail(self)
    return _start_task(self, "import-ami-", "import-image-task",
                       {"Status": "active", "StatusMessage": "pending", "Progress": "2",
                        "Architecture": self._get_param("Architecture") or "x86_64",
                        "SnapshotDetails": [detail]})


def _public(task):
    return {k: v for k, v in task.items() if not k.startswith("_")}


def _completes(resp, task, status, detail):
    """One describe of `task` (`status`: the part with its Status): whether
    it completes now (its second describe, with a disk it can read)."""
    if status["Status"] != "active":
        return False
    task["_describes"] += 1
    if task["_describes"] < 2:
        status["StatusMessage"] = "converting"
        status["Progress"] = "50"
        return False
    failure = _failure(resp, detail["UserBucket"])
    if failure:
        _fail(task, detail, failure)
        return False
    return True


def _advance_snapshot(resp, task):
    detail = task["SnapshotTaskDetail"]
    if not _completes(resp, task, detail, detail):
        return
    backend = resp.ec2_backend
    size = max(1, math.ceil(detail["DiskImageSize"] / GIB))
    volume = backend.create_volume(size=size, zone_name=resp.region + "a")
    snap = backend.create_snapshot(
        volume.id, f"Created by AWS-VM-Import service for {task['ImportTaskId']}")
    backend.delete_volume(volume.id)
    detail.pop("StatusMessage", None)
    detail.pop("Progress", None)
    detail["Status"] = "completed"
    detail["SnapshotId"] = snap.id


def _advance_image(resp, task):
    detail = task["SnapshotDetails"][0]
    if not _completes(resp, task, task, detail):
        return
    backend = resp.ec2_backend
    ami_id = "ami-" + uuid.uuid4().hex[:17]
    ami = Ami(backend, ami_id, name=task["ImportTaskId"],
              description=f"AWS-VM-Import service: {task['ImportTaskId']}",
              architecture=task["Architecture"], virtualization_type="hvm",
              root_device_type="ebs", region_name=resp.region + "a",
              snapshot_description=("Created by AWS-VM-Import service for "
                                    + task["ImportTaskId"]))
    backend.amis[ami_id] = ami
    for k in ("StatusMessage", "Progress"):
        task.pop(k, None)
    task["Status"] = "completed"
    task["ImageId"] = ami_id
    task["Platform"] = "Linux"
    task["LicenseType"] = "BYOL"
    detail.update({"Status": "completed", "SnapshotId": ami.ebs_snapshot.id,
                   "DeviceName": "/dev/sda1"})


def _describe(resp, prefix, advance, key):
    wanted = resp._get_param("ImportTaskIds", []) or resp._get_param("ImportTaskId", []) or []
    with _LOCK:
        tasks = [t for t in _tasks(resp).values() if t["ImportTaskId"].startswith(prefix)]
        if wanted:
            missing = [w for w in wanted if w not in {t["ImportTaskId"] for t in tasks}]
            if missing:
                raise EC2ClientError("InvalidConversionTaskId.Malformed",
                                     f"The import task ID '{missing[0]}' is malformed.")
            tasks = [t for t in tasks if t["ImportTaskId"] in wanted]
        for task in tasks:
            advance(resp, task)
        return ActionResult({key: [_public(t) for t in tasks]})


def describe_import_snapshot_tasks(self):
    return _describe(self, "import-snap-", _advance_snapshot, "ImportSnapshotTasks")


def describe_import_image_tasks(self):
    return _describe(self, "import-ami-", _advance_image, "ImportImageTasks")


_reset = MotoAPIBackend.reset


def _reset_with_tasks(self):
    with _LOCK:
        _TASKS.clear()
    _reset(self)


MotoAPIBackend.reset = _reset_with_tasks
EC2Response.import_snapshot = import_snapshot
EC2Response.import_image = import_image
EC2Response.describe_import_snapshot_tasks = describe_import_snapshot_tasks
EC2Response.describe_import_image_tasks = describe_import_image_tasks

server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server._server.port, flush=True)
sys.stdin.read()
os._exit(0)
