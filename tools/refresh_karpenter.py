"""Refresh components/data/karpenter_aws.json: the AWS side of a Karpenter install (the controller's IAM
policies and the events its interruption queue is fed) as aws/karpenter-provider-aws's own getting-started
CloudFormation template gives them at a release tag.

    python tools/refresh_karpenter.py GIT_DIR TAG

GIT_DIR is a clone of github.com/aws/karpenter-provider-aws (a bare one will do). The policy documents keep
the template's ${...} references (partition, region, account, cluster, queue and node role), which the stack
fills in at deploy time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "components" / "data" / "karpenter_aws.json"
TEMPLATE = "website/content/en/v{minor}/getting-started/getting-started-with-karpenter/cloudformation.yaml"


class _Loader(yaml.SafeLoader):
    """CloudFormation's short forms (!Sub, !GetAtt, !Ref) read as their text."""


for _tag in ("!Sub", "!GetAtt", "!Ref"):
    _Loader.add_constructor(_tag, lambda loader, node: loader.construct_scalar(node))


def main(git_dir: str, tag: str) -> int:
    minor = ".".join(tag.lstrip("v").split(".")[:2])
    listed = subprocess.run(["git", "--git-dir", git_dir, "ls-tree", "-r", "--name-only", tag, "website/content/en/"], check=True,
                            capture_output=True, text=True).stdout.split()
    # A release's own docs folder appears after it; until then its docs are those under preview/.
    path = TEMPLATE.format(minor=minor)
    if path not in listed:
        path = TEMPLATE.replace("v{minor}", "preview")
    commit = subprocess.run(["git", "--git-dir", git_dir, "rev-parse", f"{tag}^{{commit}}"], check=True,
                            capture_output=True, text=True).stdout.strip()
    text = subprocess.run(["git", "--git-dir", git_dir, "show", f"{tag}:{path}"], check=True, capture_output=True, text=True).stdout
    resources = yaml.load(text, Loader=_Loader)["Resources"]
    policies = {name: json.loads(r["Properties"]["PolicyDocument"]) for name, r in resources.items()
                if r["Type"] == "AWS::IAM::ManagedPolicy"}
    events = [[r["Properties"]["EventPattern"]["source"][0], r["Properties"]["EventPattern"]["detail-type"][0]]
              for r in resources.values() if r["Type"] == "AWS::Events::Rule"]
    queue = resources["KarpenterInterruptionQueue"]["Properties"]
    OUT.write_text(json.dumps({
        "about": "The controller's IAM policies (${...} filled in at deploy time) and the EventBridge events its "
                 "interruption queue receives, from Karpenter's getting-started CloudFormation template.",
        "repository": "aws/karpenter-provider-aws", "tag": tag, "commit": commit, "file": path,
        "policies": policies,
        "interruptionEvents": events,
        "queue": {"messageRetentionSeconds": queue["MessageRetentionPeriod"], "sqsManagedSse": queue["SqsManagedSseEnabled"]},
    }, indent=1) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}: {len(policies)} policies, {len(events)} event rules from {tag} ({commit[:12]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:]))
