"""Where jobs' data lives: the S3 locations a job reads and writes, and a fleet's FSx for Lustre file system."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from .base import JOB_NAMESPACE, NAMESPACE_PATTERN, Model

# S3 bucket names (S3 User Guide, "General purpose bucket naming rules"): 3-63 of a-z, 0-9, '.', '-', starting and
# ending with a letter or digit. A prefix is any key prefix; '*' and '?' are refused, as IAM would read them as wildcards.
S3_URI = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(?P<prefix>[^*?]*))?$")
PATH_ENV = {"data_path": "DATA_PATH", "checkpoint_path": "CHECKPOINT_PATH"}  # a job's field -> the variable its processes see
KMS_KEY_ARN = r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[0-9a-zA-Z-]+$"


def split_s3_uri(uri: str) -> tuple[str, str]:
    """(bucket, prefix) of s3://bucket/prefix; the prefix without its trailing '/', '' for the whole bucket."""
    m = S3_URI.match(uri)
    if m is None:
        raise ValueError(f"{uri!r} is not an S3 location s3://<bucket>/<prefix>, such as s3://my-bucket/datasets/ "
                         "(a bucket name is 3 to 63 of a-z, 0-9, '.' and '-'; no '*' or '?' anywhere)")
    return m["bucket"], (m["prefix"] or "").strip("/")


def _s3_uri(v: str) -> str:
    split_s3_uri(v)
    return v


S3Uri = Annotated[str, AfterValidator(_s3_uri)]


class S3Location(Model):
    uri: S3Uri = Field(..., description="The location: s3://bucket/prefix/ (everything under the prefix) or s3://bucket (the whole bucket).")
    access: Literal["read-only", "read-write"] = Field(
        "read-only", description="read-only: list and get; read-write: also put and delete (checkpoints, outputs).",
    )
    kms_key_arn: str | None = Field(
        None, pattern=KMS_KEY_ARN,
        description="The bucket's KMS key (SSE-KMS), if it has one: the job may decrypt with it, and for read-write also "
        "generate data keys, through S3 only.",
    )


class DataRepository(Model):
    s3: S3Uri = Field(..., description="The bucket location linked to the file system, e.g. s3://my-bucket/datasets/.")
    path: str = Field(..., pattern=r"^/[^*?]*$", description="Where it appears in the file system, e.g. /datasets.")
    auto_import: bool = Field(True, description="Bring in the location's new, changed and deleted objects as they happen.")
    auto_export: bool = Field(False, description="Write new, changed and deleted files back to the location as they happen.")


class FsxConfig(Model):
    """An FSx for Lustre file system (PERSISTENT_2, SSD) in the fleet's AZ and subnet."""

    storage_gib: int = Field(
        ..., alias="storageGiB",
        description="Storage capacity, GiB: 1200, 2400, or a multiple of 2400 (the service's steps for PERSISTENT_2 SSD); "
        "with EFA a multiple of 4800, 9600, 19200 or 38400 at 1000, 500, 250 or 125 MB/s/TiB. It grows in place; "
        "shrinking it replaces the file system.",
    )
    throughput_per_tib: int = Field(
        250, alias="throughputPerTiB",
        description="Throughput per TiB of storage, MB/s: 125, 250, 500 or 1000 (PERSISTENT_2 SSD).",
    )
    efa: bool | None = Field(
        None,
        description="Serve the file system over EFA (with GPUDirect Storage): set at creation, never changed. Default: on "
        "when the fleet has EFA and its type does GPUDirect Storage (p5, p5e, p5en, p6-b200 with GPUDirect RDMA). "
        "Refused for a fleet FSx cannot serve over EFA (no EFA, efa: false, the trn2 family).",
    )
    mount_path: str = Field(
        "/fsx", pattern=r"^/[A-Za-z0-9._/-]*$",
        description="Where nodes (EC2: the boot script) and jobs' pods (EKS, unless the job names another) mount it.",
    )
    namespace: str = Field(
        JOB_NAMESPACE, pattern=NAMESPACE_PATTERN,
        description="On EKS, the namespace of its PersistentVolumeClaim: jobs that mount it run there.",
    )
    data_repositories: list[DataRepository] = Field(
        default_factory=list,
        description="S3 locations linked to the file system (data repository associations): objects appear as files "
        "at path, and with autoExport files go back to the bucket.",
    )
