"""The checks of jobs' data access and fleets' file systems across sections: sizes the service takes, EFA on a
file system its fleet can reach, paths inside what the job may read or write, mounts where the job runs."""

from __future__ import annotations

import posixpath

from pydantic.alias_generators import to_camel

from .. import fsx as fsx_mod
from ..catalog import Catalog
from .data import PATH_ENV, split_s3_uri
from .errors import Problem, key_path
from .fleets import FleetConfig
from .jobs import JobConfig
from .stack import StackConfig


def fsx_checks(i: int, f: FleetConfig, cat: Catalog) -> list[Problem]:
    if f.fsx is None:
        return []
    at = lambda *key: key_path(("fleets", i, "fsx", *key))  # noqa: E731
    itype = cat.get(f.instance_type)
    out = [Problem(at(key), msg) for key, msg in fsx_mod.storage_problems(f.fsx, fsx_mod.efa_enabled(f.fsx, itype, f.efa))]
    most = fsx_mod.facts()["dataRepositoryAssociations"]["maximum"]
    if len(f.fsx.data_repositories) > most:
        out.append(Problem(at("dataRepositories"), f"{len(f.fsx.data_repositories)} links; a file system takes at most {most}"))
    if f.fsx.efa and not (f.efa and fsx_mod.efa_client(itype)):
        if not itype.efa_supported:
            why = f"is {f.instance_type}, which has no EFA device"
        elif not fsx_mod.efa_client(itype):
            why = (f"is {f.instance_type}: FSx for Lustre serves no EFA clients of the {fsx_mod.family(itype)} family "
                   "(FSx guide, configuring EFA clients)")
        else:
            why = "has efa: false"
        fix = ", or enable EFA on the fleet" if fsx_mod.efa_client(itype) else ""
        out.append(Problem(at("efa"), f"an EFA-enabled file system serves its clients over EFA, and fleet {f.name!r} {why}: "
                                      f"set fsx.efa: false (Lustre over TCP){fix}"))
    paths = [r.path.rstrip("/") or "/" for r in f.fsx.data_repositories]
    for k, p in enumerate(paths):
        if paths.index(p) != k:
            out.append(Problem(at("dataRepositories", k, "path"), f"{p} is already linked by dataRepositories[{paths.index(p)}]"))
    return out


def _under(path: str, root: str) -> bool:
    path, root = posixpath.normpath(path), posixpath.normpath(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


def _s3_under(uri: str, loc_uri: str) -> bool:
    bucket, prefix = split_s3_uri(uri)
    loc_bucket, loc_prefix = split_s3_uri(loc_uri)
    return bucket == loc_bucket and (not loc_prefix or prefix == loc_prefix or prefix.startswith(loc_prefix + "/"))


def job_data_checks(cfg: StackConfig, known: dict[str, FleetConfig], j: int, job: JobConfig) -> list[Problem]:
    at = lambda *key: key_path(("jobs", j, *key))  # noqa: E731
    out: list[Problem] = []
    fleet = known.get(job.fleet)
    on_cluster = any(c.name == job.fleet for c in cfg.clusters)
    if job.s3 and on_cluster:
        out.append(Problem(at("s3"), f"{job.fleet!r} is a cluster this stack does not manage: it can give the job's pods no "
                                     "AWS identity; grant the access where that cluster is managed, or remove the key"))
    fsx = fleet.fsx if fleet else None
    on_eks = cfg.eks.enabled and fleet is not None
    if job.fsx_mount_path and not (fsx and on_eks):
        out.append(Problem(at("fsxMountPath"), f"only used on EKS with a fleet that has fsx (fleet {job.fleet!r} "
                                              f"{'has no fsx' if fleet and not fsx else 'is not on EKS'})"))
    mount = (job.fsx_mount_path or fsx.mount_path) if fsx else None
    if fsx and on_eks and job.namespace != fsx.namespace:
        out.append(Problem(at("namespace"), f"{job.namespace!r}, but fleet {job.fleet!r}'s file system has its claim in "
                                           f"{fsx.namespace!r} (fleets[].fsx.namespace): run the job there"))
    for field, var in PATH_ENV.items():
        key, value = to_camel(field), getattr(job, field)
        if value and var in job.env:
            out.append(Problem(at("env", var), f"set by the job's {key}; remove one of them"))
        if not value:
            continue
        if value.startswith("s3://"):
            try:
                split_s3_uri(value)
            except ValueError as exc:
                out.append(Problem(at(key), str(exc)))
                continue
            fits = [loc for loc in job.s3 if _s3_under(value, loc.uri)]
            if key == "checkpointPath" and fits and not any(loc.access == "read-write" for loc in fits):
                out.append(Problem(at(key), f"{value} is under read-only locations only: checkpoints are written, "
                                            "give the location access: read-write"))
            elif not fits:
                out.append(Problem(at(key), f"{value} is under none of the job's s3 locations "
                                            f"({', '.join(loc.uri for loc in job.s3) or 'none'}): add it to jobs[{j}].s3"))
        elif not value.startswith("/"):
            out.append(Problem(at(key), f"{value!r} is neither an S3 URI (s3://bucket/prefix) nor an absolute path"))
        elif mount is None or not _under(value, mount):
            out.append(Problem(at(key), f"{value} is not under the job's FSx mount "
                                        + (f"({mount})" if mount else f"(fleet {job.fleet!r} has no fsx)")
                                        + ": a path elsewhere does not outlive the pod or node"))
    return out


def data_checks(cfg: StackConfig, fleets: list[tuple[int, FleetConfig]], jobs: list[tuple[int, JobConfig]]) -> list[Problem]:
    cat = cfg.catalog()
    out = [p for i, f in fleets for p in fsx_checks(i, f, cat)]
    known = {f.name: f for _, f in fleets}
    return out + [p for j, job in jobs for p in job_data_checks(cfg, known, j, job)]
