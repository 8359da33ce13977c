"""The pack's entry point, run by the Pulumi CLI (`--policy-pack policy`).

Constructing the PolicyPack starts the analyzer's gRPC server and blocks, so it
happens here only, never in a module that tests import.
"""

import sys
from pathlib import Path

# The CLI runs this directory as a script: the repository root makes
# `components` (the EFA facts) and `policy.policies` importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pulumi_policy import EnforcementLevel, PolicyPack  # noqa: E402

from policy.policies import POLICIES  # noqa: E402

PolicyPack(name="efa-infra", policies=POLICIES, enforcement_level=EnforcementLevel.MANDATORY)
