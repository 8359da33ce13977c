"""A job's data access: the least-privilege IAM policy of the S3 locations it names, and the paths (S3 or the
FSx mount) its environment hands the training script. Pure: no Pulumi import.

The policy grants, per location: listing the bucket only under the prefix (s3:prefix), getting (and for
read-write putting and deleting) objects only under it, and with a bucket key, KMS only through S3 in the
stack's region. Nothing is wildcarded beyond the prefixes named.
"""

from __future__ import annotations

from .config import JobConfig, StackConfig
from .config.data import PATH_ENV, S3Location, split_s3_uri

POD_IDENTITY_AGENT = "eks-pod-identity-agent"  # the add-on that serves pods their roles (EKS user guide, pod-id-agent-setup)
READ = ["s3:GetObject"]
WRITE = ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]
# SSE-KMS: reading decrypts with the bucket key; writing asks KMS for a data key (S3 User Guide, "Using SSE-KMS":
# kms:Decrypt to get, kms:GenerateDataKey to put).
KMS_READ, KMS_WRITE = ["kms:Decrypt"], ["kms:GenerateDataKey"]


def partition(region: str) -> str:
    """The ARN partition of a region."""
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def statements(loc: S3Location, region: str) -> list[dict]:
    bucket, prefix = split_s3_uri(loc.uri)
    arn = f"arn:{partition(region)}:s3:::{bucket}"
    listing: dict = {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": arn}
    if prefix:
        listing["Condition"] = {"StringLike": {"s3:prefix": [prefix, f"{prefix}/*"]}}
    write = loc.access == "read-write"
    out = [listing, {"Effect": "Allow", "Action": READ + (WRITE if write else []),
                     "Resource": f"{arn}/{prefix}/*" if prefix else f"{arn}/*"}]
    if loc.kms_key_arn:
        out.append({"Effect": "Allow", "Action": KMS_READ + (KMS_WRITE if write else []), "Resource": loc.kms_key_arn,
                    "Condition": {"StringEquals": {"kms:ViaService": f"s3.{region}.amazonaws.com"}}})
    return out


def policy(locations: list[S3Location], region: str) -> dict | None:
    """The IAM policy document for these locations; None when there are none."""
    found: list[dict] = []
    for loc in locations:
        for st in statements(loc, region):
            if st not in found:  # jobs of one fleet that name the same location share its statements
                found.append(st)
    return {"Version": "2012-10-17", "Statement": found} if found else None


def job_policy(cfg: StackConfig, job: JobConfig) -> dict | None:
    return policy(job.s3, cfg.region)


def fleet_policy(cfg: StackConfig, fleet: str) -> dict | None:
    """On plain EC2 the node role carries the data access of every job of the fleet: the union of their policies."""
    return policy([loc for j in cfg.jobs if j.fleet == fleet for loc in j.s3], cfg.region)


def path_env(job: JobConfig) -> dict[str, str]:
    """DATA_PATH and CHECKPOINT_PATH, where the job names them."""
    return {name: getattr(job, field) for field, name in PATH_ENV.items() if getattr(job, field)}


def pod_identity(cfg: StackConfig, job: JobConfig) -> bool:
    """Whether the job's pods get an AWS identity of their own (EKS Pod Identity): on EKS, with S3 locations."""
    return bool(job.s3) and cfg.eks.enabled and any(f.name == job.fleet for f in cfg.fleets)
