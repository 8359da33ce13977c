#!/usr/bin/env bash
# The pipeline of .github/workflows/infra.yml, for CI systems other than GitHub Actions.
#
#   scripts/pipeline.sh check          validate every stack, plan each offline (out/plan-<stack>.json, the
#                                      artifacts), scan each with checkov (out/scan/<stack>), run the tests;
#                                      no credentials, no Pulumi CLI
#   scripts/pipeline.sh diff [BASE_REF] on pull requests: what each stack file changes against BASE_REF (default
#                                      origin/main), offline; fails when the network or the cluster would be replaced
#                                      or deleted (ALLOW_REPLACE=1 to accept), diffs in out/diff-<stack>.json
#   scripts/pipeline.sh where STACK    the runner STACK's `pulumi up` runs on (efa-infra:eks.deployer.runsOn;
#                                      ubuntu-latest, any host on the internet, for a stack without a cluster)
#   scripts/pipeline.sh preview STACK  pulumi preview of STACK with the policy pack (policy/)
#   scripts/pipeline.sh up STACK       pulumi up of STACK with the policy pack
#
# preview and up need the Pulumi CLI, a backend login (PULUMI_ACCESS_TOKEN, or PULUMI_BACKEND_URL
# and PULUMI_CONFIG_PASSPHRASE) and AWS credentials in the environment, and RUNNER_LABEL naming the runner they run
# on: an EKS stack applies its Kubernetes resources from there, and its API endpoint admits only the place its config
# names (the offline plan checks that path as the flow "deployer to the API server"); they refuse to run elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  cat >&2 <<'EOF'
usage: scripts/pipeline.sh check            validate, plan and scan every stack offline, run the tests
       scripts/pipeline.sh diff [BASE_REF]  what each stack file changes against BASE_REF (default origin/main)
       scripts/pipeline.sh where STACK      the runner STACK deploys from
       scripts/pipeline.sh preview STACK    pulumi preview with the policy pack
       scripts/pipeline.sh up STACK         pulumi up with the policy pack
EOF
  exit 2
}

stacks() {
  local f names=()
  for f in stacks/Pulumi.*.yaml; do
    f=${f#stacks/Pulumi.}
    names+=("${f%.yaml}")
  done
  echo "${names[*]}"
}

check() {
  python3 -m venv venv && venv/bin/pip install -r requirements-test.txt
  venv/bin/python -m components validate
  local stack
  mkdir -p out  # git ignores it
  for stack in $(stacks); do
    venv/bin/python -m components plan --config "stacks/Pulumi.$stack.yaml" --json > "out/plan-$stack.json"
    echo "offline plan: out/plan-$stack.json"
  done
  scan
  python3 -m venv venv-floor && venv-floor/bin/pip install -r requirements-floor.txt
  venv/bin/python -m pytest -q
}

scan() {  # checkov over each stack's Terraform-plan export and manifests; components/data/checkov-skips.yaml lists the skipped checks
  python3 -m venv venv-checkov && venv-checkov/bin/pip install -r requirements-checkov.txt
  local stack status=0
  for stack in $(stacks); do
    venv/bin/python -m components scan-inputs --config "stacks/Pulumi.$stack.yaml" --out "out/scan/$stack" > /dev/null
    venv-checkov/bin/checkov --config-file "out/scan/$stack/checkov.yaml" -d "out/scan/$stack" || status=1
  done
  return $status
}

diff_stacks() {  # diff_stacks BASE_REF
  local base=$1 stack status=0 allow=()
  [[ ${ALLOW_REPLACE:-} == 1 ]] && allow=(--allow-replace)
  python3 -m venv venv && venv/bin/pip install -r requirements.txt
  mkdir -p out
  for stack in $(stacks); do
    venv/bin/python -m components diff --config "stacks/Pulumi.$stack.yaml" --base-ref "$base" "${allow[@]}" || status=1
    venv/bin/python -m components diff --config "stacks/Pulumi.$stack.yaml" --base-ref "$base" --json --allow-replace > "out/diff-$stack.json"
  done
  return $status
}

known() {  # known STACK: refuse a stack without a stack file
  if [[ ! -f "stacks/Pulumi.$1.yaml" ]]; then
    echo "error: no stack file stacks/Pulumi.$1.yaml; stacks: $(stacks)" >&2
    exit 2
  fi
}

where() {  # where STACK: the runner its `pulumi up` runs on, from its offline plan
  known "$1"
  venv/bin/python -m components plan --config "stacks/Pulumi.$1.yaml" --json | venv/bin/python -c 'import json, sys; print(json.load(sys.stdin)["runsOn"])'
}

deploy() {  # deploy preview|up STACK
  local command=$1 stack=$2 runs_on
  known "$stack"
  if ! command -v pulumi >/dev/null; then
    echo "error: the pulumi CLI is not on PATH; install it (https://www.pulumi.com/docs/install/) or use 'check'" >&2
    exit 127
  fi
  python3 -m venv venv && venv/bin/pip install -r requirements.txt -r policy/requirements.txt
  runs_on=$(where "$stack")
  if [[ ${RUNNER_LABEL:-} != "$runs_on" ]]; then
    echo "error: stack $stack deploys from $runs_on (efa-infra:eks.deployer.runsOn), the place its API endpoint admits;" \
         "this runner is '${RUNNER_LABEL:-}' (set RUNNER_LABEL to the runner's label)" >&2
    exit 2
  fi
  # eks-endpoint-not-public-in-prod reads the stack's environment from the policy config: the stack name.
  policy_config=$(mktemp)
  trap 'rm -f "$policy_config"' EXIT
  printf '{"eks-endpoint-not-public-in-prod": {"environment": "%s"}}\n' "$stack" > "$policy_config"
  pulumi stack select --create "$stack" --non-interactive
  if [[ $command == preview ]]; then
    pulumi preview --stack "$stack" --policy-pack policy --policy-pack-config "$policy_config" --non-interactive
  else
    pulumi up --stack "$stack" --policy-pack policy --policy-pack-config "$policy_config" --yes --non-interactive
  fi
}

case "${1:-} $#" in
  "check 1") check ;;
  "diff 1") diff_stacks origin/main ;;
  "diff 2") diff_stacks "$2" ;;
  "where 2") where "$2" ;;
  "preview 2" | "up 2") deploy "$1" "$2" ;;
  *) usage ;;
esac
