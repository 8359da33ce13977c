"""A job's launch on plain EC2: the bash script every node of the fleet runs (it finds its peers and its
rank, checks EFA, then starts torchrun, accelerate or mpirun), and the SSM document that sends it."""

from __future__ import annotations

import json
import shlex

from ..config import JobConfig, StackConfig
from ..plan import FLEET_TAG, STACK_TAG
from . import shell
from .job_plan import LaunchError, job_plan

_DISCOVER = r'''
log() { printf 'efa-infra[%s]: %s\n' "$JOB" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# SSM runs this without a login shell, so without what the EFA installer, CUDA and
# Open MPI put in /etc/profile.d (PATH, and LD_LIBRARY_PATH, which holds the
# aws-ofi-nccl plugin: without it NCCL quietly uses sockets). Take the login
# environment, the caller's PATH still first.
if [[ -r /etc/profile ]]; then
  caller_path=$PATH
  set +u
  . /etc/profile >/dev/null 2>&1 || true
  set -u
  PATH=$caller_path:$PATH
fi

# The fleet's nodes: a hostfile ($1, else $HOSTFILE; one IP per line, '#'
# comments), else the fleet's running instances, by tag, from the EC2 API.
HOSTS_FROM=${1:-${HOSTFILE:-}}
if [[ -n $HOSTS_FROM ]]; then
  [[ -r $HOSTS_FROM ]] || die "hostfile $HOSTS_FROM is not readable"
  raw_ips=$(sed -e 's/#.*//' -- "$HOSTS_FROM")
else
  HOSTS_FROM="EC2 instances tagged $FLEET_TAG=$FLEET, $STACK_TAG=$EFA_INFRA_STACK in $REGION"
  command -v aws >/dev/null || die "no hostfile (\$1 or \$HOSTFILE) and no aws CLI to list $HOSTS_FROM"
  raw_ips=$(aws ec2 describe-instances --region "$REGION" \
    --filters "Name=tag:$FLEET_TAG,Values=$FLEET" "Name=tag:$STACK_TAG,Values=$EFA_INFRA_STACK" \
              Name=instance-state-name,Values=running \
    --query 'Reservations[].Instances[].PrivateIpAddress' --output text) || die "could not list $HOSTS_FROM"
fi
# Sorted numerically so that every node derives the same ranks.
mapfile -t ALL_IPS < <(tr -s '[:space:]' '\n' <<<"$raw_ips" | sed '/^$/d' | sort -t . -k1,1n -k2,2n -k3,3n -k4,4n -u)
for ip in "${ALL_IPS[@]}"; do
  [[ $ip =~ ^([0-9]{1,3}\.){3}[0-9]{1,3}$ ]] || die "'$ip' from $HOSTS_FROM is not an IPv4 address"
done
(( ${#ALL_IPS[@]} >= NODES_NUM )) ||
  die "the job runs on $NODES_NUM nodes but $HOSTS_FROM lists ${#ALL_IPS[@]}: ${ALL_IPS[*]:-none}"
order_by_topology

# This node: its first IPv4 address that is in the list; the rank is the index there.
NODE_IP=
while read -r _ ifname _ cidr _; do
  for i in "${!ALL_IPS[@]}"; do
    if [[ ${ALL_IPS[i]} == "${cidr%/*}" ]]; then
      NODE_IP=${ALL_IPS[i]} NODE_IF=${ifname%@*} NODE_RANK=$i
      break 2
    fi
  done
done < <(ip -o -4 addr show)
[[ -n $NODE_IP ]] ||
  die "none of this node's addresses ($(ip -o -4 addr show | awk '{printf "%s ", $4}')) is in the node list from $HOSTS_FROM: ${ALL_IPS[*]}"
if (( NODE_RANK >= NODES_NUM )); then
  log "node $NODE_IP is number $((NODE_RANK + 1)) of ${#ALL_IPS[@]}; the job runs on the first $NODES_NUM: nothing to do here"
  exit 0
fi
NODES_IPS=$(printf '%s\n' "${ALL_IPS[@]:0:NODES_NUM}")
MASTER_ADDR=${ALL_IPS[0]}
export NODES_IPS NODES_NUM NODE_RANK MASTER_ADDR MASTER_PORT GPUS_PER_NODE
log "node $NODE_RANK of $NODES_NUM: $NODE_IP on $NODE_IF; master $MASTER_ADDR:$MASTER_PORT; $GPUS_PER_NODE processes per node"
'''

# Ranks follow the network. EC2's DescribeInstanceTopology gives each instance its network nodes, top layer
# first (EC2 User Guide, "How instance topology works"); sorted by that list, nodes under the same lowest
# network node get consecutive ranks, so a ring crosses between bottom-layer nodes only as often as the
# placement forces. Every node asks and sorts alike, keeping the address order within a network node and
# putting nodes the API does not place last. When it places none (a type it does not cover, no aws CLI, no
# permission), the address order stays, with a log line.
ORDER_BY_TOPOLOGY = r'''
order_by_topology() {
  local why= listed topo ip id nodes i
  local -a ids=()
  local -A id_of=() nodes_of=()
  if ! command -v aws >/dev/null; then
    why="no aws CLI"
  elif ! listed=$(aws ec2 describe-instances --region "$REGION" \
      --filters "Name=tag:$FLEET_TAG,Values=$FLEET" "Name=tag:$STACK_TAG,Values=$EFA_INFRA_STACK" \
                Name=instance-state-name,Values=running \
      --query 'Reservations[].Instances[].[PrivateIpAddress,InstanceId]' --output text); then
    why="could not list the fleet's instances"
  else
    while read -r ip id; do
      if [[ -n $ip && -n ${id:-} ]]; then id_of[$ip]=$id; fi
    done <<<"$listed"
    for ip in "${ALL_IPS[@]}"; do
      if [[ -n ${id_of[$ip]:-} ]]; then ids+=("${id_of[$ip]}"); fi
    done
    for ((i = 0; i < ${#ids[@]}; i += 100)); do  # EC2 takes at most 100 instance ids a request
      topo=$(aws ec2 describe-instance-topology --region "$REGION" --instance-ids "${ids[@]:i:100}" \
        --query "Instances[].[InstanceId, join(',', NetworkNodes || \`[]\`)]" --output text) ||
        { why="DescribeInstanceTopology failed (the node role needs ec2:DescribeInstanceTopology)"; break; }
      while read -r id nodes; do
        if [[ -n $id && -n ${nodes:-} ]]; then nodes_of[$id]=$nodes; fi
      done <<<"$topo"
    done
    if [[ -z $why ]] && (( ${#nodes_of[@]} == 0 )); then
      why="DescribeInstanceTopology has no network nodes for these ${#ids[@]} instances"
    fi
  fi
  if [[ -n $why ]]; then
    log "ranks follow address order: $why"
    return 0
  fi
  mapfile -t ALL_IPS < <(for ip in "${ALL_IPS[@]}"; do
      id=${id_of[$ip]:-}
      nodes='~'  # after every network node id
      if [[ -n $id && -n ${nodes_of[$id]:-} ]]; then nodes=${nodes_of[$id]}; fi
      printf '%s %s\n' "$nodes" "$ip"
    done | LC_ALL=C sort -s -k1,1 | cut -d' ' -f2)
  log "ranks follow the network: ${#nodes_of[@]} of ${#ALL_IPS[@]} nodes ordered by their network nodes (DescribeInstanceTopology)"
}
'''

_NCCL_TESTS_HOSTS = r'''
if (( NODE_RANK != 0 )); then
  log "nccl-tests: node 0 ($MASTER_ADDR) starts every rank with mpirun; nothing more to do here"
  exit 0
fi
hosts=("${ALL_IPS[@]:0:NODES_NUM}")
MPI_HOSTS=$(IFS=,; echo "${hosts[*]/%/:$GPUS_PER_NODE}")
MPI_ENV=(-x PATH)
if [[ -n ${LD_LIBRARY_PATH:-} ]]; then MPI_ENV+=(-x LD_LIBRARY_PATH); fi
# By its absolute path, mpirun also finds its daemons on the other nodes (as --prefix would);
# SSM's shell lacks the login PATH that holds the EFA installer's Open MPI.
MPIRUN=$(command -v mpirun || true)
if [[ -z $MPIRUN && -x /opt/amazon/openmpi/bin/mpirun ]]; then MPIRUN=/opt/amazon/openmpi/bin/mpirun; fi
[[ -n $MPIRUN ]] || die "nccl-tests needs mpirun (Open MPI, from the EFA installer) on node 0"
# The DLAMI keeps its prebuilt nccl-tests beside each CUDA (/usr/local/cuda-X.Y/efa/test-cuda-X.Y/),
# off every PATH: take the default CUDA's, else any.
if [[ $NCCL_TEST != */* ]] && ! command -v "$NCCL_TEST" >/dev/null; then
  shopt -s nullglob
  found=(/usr/local/cuda/efa/test-cuda*/"$NCCL_TEST" /usr/local/cuda-*/efa/test-cuda-*/"$NCCL_TEST")
  (( ${#found[@]} )) ||
    die "$NCCL_TEST is neither on PATH nor among the DLAMI's nccl-tests (/usr/local/cuda-*/efa/test-cuda-*/): give the job's command its path"
  NCCL_TEST=${found[0]}
fi
'''

# mpirun starts the other nodes' ranks over SSH. Node 0 makes a key for this launch only
# and pushes it to each peer through EC2 Instance Connect, where it is accepted for 60 s
# (enough to log in): no key is stored on the nodes or in AWS.
_NCCL_TESTS_SSH = r'''
peers=("${hosts[@]:1}")
if (( ${#peers[@]} )) && [[ -n ${OMPI_MCA_plm_rsh_agent:-}${PRTE_MCA_plm_ssh_agent:-} ]]; then
  log "nccl-tests: the job's env sets mpirun's SSH agent; no key is pushed"
elif (( ${#peers[@]} )); then
  command -v aws >/dev/null || die "mpirun reaches the other nodes over SSH, and node 0 needs the aws CLI to give them a key"
  # The AMI's default user (ec2-user, ubuntu): Instance Connect keys are for a login user.
  SSH_USER=$(getent passwd 1000 | cut -d: -f1 || true)
  [[ -n $SSH_USER ]] || die "no login user (uid 1000) on this node to reach the other nodes as"
  key_dir=$(mktemp -d)
  trap 'rm -rf "$key_dir"' EXIT
  ssh-keygen -q -t ed25519 -N '' -C "efa-infra $JOB $NODE_IP" -f "$key_dir/key"
  # The fleet's instances by tag (addresses repeat across VPCs; a filter on many addresses hits EC2's limit).
  ids=$(aws ec2 describe-instances --region "$REGION" \
    --filters "Name=tag:$FLEET_TAG,Values=$FLEET" "Name=tag:$STACK_TAG,Values=$EFA_INFRA_STACK" \
              Name=instance-state-name,Values=running \
    --query 'Reservations[].Instances[].[PrivateIpAddress,InstanceId]' --output text) ||
    die "could not list the instances of fleet $FLEET"
  declare -A ID_OF=()
  while read -r ip id; do
    if [[ -n $ip ]]; then ID_OF[$ip]=$id; fi
  done <<<"$ids"
  for ip in "${peers[@]}"; do
    [[ -n ${ID_OF[$ip]:-} ]] || die "no running instance of fleet $FLEET in $REGION has the address $ip (from $HOSTS_FROM)"
  done
  # In parallel, since each key is accepted for 60 s from its push; every failure is named.
  export REGION SSH_USER JOB KEY_PUB="$key_dir/key.pub"
  for ip in "${peers[@]}"; do printf '%s %s\n' "${ID_OF[$ip]}" "$ip"; done |
    xargs -P 32 -L 1 bash -c 'aws ec2-instance-connect send-ssh-public-key --region "$REGION" --instance-id "$1" \
      --instance-os-user "$SSH_USER" --ssh-public-key "file://$KEY_PUB" >/dev/null ||
      { echo "efa-infra[$JOB]: error: EC2 Instance Connect took no key for $2 ($1)" >&2; exit 1; }' push ||
    die "could not give every node a key: node 0's role needs ec2-instance-connect:SendSSHPublicKey on the fleet"
  # Node 0 starts every daemon itself (no tree spawn): the other nodes do not have the key.
  # Open MPI 4 reads OMPI_MCA_plm_rsh_*, Open MPI 5 (PRRTE) PRTE_MCA_plm_ssh_*.
  ssh_agent="ssh -i $key_dir/key -l $SSH_USER -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
  export OMPI_MCA_plm_rsh_agent="$ssh_agent" OMPI_MCA_plm_rsh_no_tree_spawn=1
  export PRTE_MCA_plm_ssh_agent="$ssh_agent" PRTE_MCA_plm_ssh_no_tree_spawn=1
fi
'''

# A pushed key that sshd refused shows as "Permission denied (publickey)" in mpirun's output.
_MPIRUN_FAILED = r'''
  rc=$?
  if [[ -n ${key_dir:-} ]]; then  # keys were pushed
    log "mpirun failed (exit $rc); if it says 'Permission denied (publickey)', the AMI lacks the ec2-instance-connect package"
  fi
  exit $rc
'''


def render_node_script(cfg: StackConfig, job: JobConfig, *, stack: str) -> str:
    """A bash script that launches `job` when run on every node of its EC2 fleet.

    `stack` is the Pulumi stack name, which tags the fleet's instances next to the fleet name.
    """
    plan = job_plan(cfg, job)
    if plan.target != "ec2":
        raise LaunchError(f"job {job.name!r}: the stack's fleets are in EKS; use render_manifests")
    if not stack:
        raise LaunchError("render_node_script needs the stack name: it finds the fleet's instances by tag")
    q = shlex.quote
    header = [
        "#!/usr/bin/env bash",
        f"# efa-infra: job {plan.job} ({plan.launcher}) on fleet {plan.fleet}, {plan.nodes} x {plan.instance_type}.",
        "# Run it on every node of the fleet: bash launch.sh [HOSTFILE]",
        "set -euo pipefail",
        "",
        f"JOB={q(plan.job)}",
        f"FLEET={q(plan.fleet)}",
        f"FLEET_TAG={q(FLEET_TAG)} STACK_TAG={q(STACK_TAG)}",
        f"INSTANCE_TYPE={q(plan.instance_type)}",
        f"REGION={q(cfg.region)}",
        f"export EFA_INFRA_STACK={q(stack)}",
        f"NODES_NUM={plan.nodes}",
        f"GPUS_PER_NODE={plan.procs_per_node}",
        f"MASTER_PORT={plan.port}",
    ]
    if plan.working_directory:
        header.append(f"WORKING_DIRECTORY={q(plan.working_directory)}")
    sections = ["\n".join(header), ORDER_BY_TOPOLOGY, _DISCOVER]
    if plan.working_directory:
        # Also set as the SSM document's workingDirectory; a hostfile run starts anywhere.
        sections.append('cd "$WORKING_DIRECTORY" || die "cannot enter the job\'s workingDirectory $WORKING_DIRECTORY on $NODE_IP"')
    pre, watch = shell.checks(plan)
    if pre:
        sections.append('EFA_WHERE="node $NODE_IP"\n' + pre)
    # Socket traffic (rendezvous, gloo, NCCL's bootstrap) goes over the interface of
    # the node's listed address; job.env, exported after, may still override it.
    sections.append("\n".join(['export NCCL_SOCKET_IFNAME="$NODE_IF" GLOO_SOCKET_IFNAME="$NODE_IF"',
                               *(f"export {k}={q(v)}" for k, v in plan.env.items())]))
    if plan.launcher == "nccl-tests":
        mpirun = shell.mpirun(plan, list(dict.fromkeys(["NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", *plan.env])))
        # No exec: the launch's key is removed when mpirun ends.
        sections += [f"NCCL_TEST={q(plan.command[0])}" + _NCCL_TESTS_HOSTS, _NCCL_TESTS_SSH, watch,
                     ("efa_infra_watch " if watch else "")
                     + " ".join(['"$MPIRUN"', *map(q, mpirun[1:]), *shell.rdma_env_arg(plan, list(plan.env)),
                                 '-H "$MPI_HOSTS" "${MPI_ENV[@]}"', '"$NCCL_TEST"', *map(q, plan.command[1:]), "|| {"])
                     + _MPIRUN_FAILED + "}"]
    else:
        sections += [watch, "\n".join([
            f"command -v {plan.launcher} >/dev/null ||",
            f'  die "{plan.launcher} is not on PATH ($PATH): install it in the AMI, or put its environment on the login PATH"',
            shell.run_line(plan, shell.launch_line(plan, '"$NODE_RANK"', '"$MASTER_ADDR"', '"$MASTER_PORT"')),
        ])]
    return "\n\n".join(s.strip("\n") for s in sections if s) + "\n"


SSM_HEREDOC = "EFA_INFRA_LAUNCH_SCRIPT"
SSM_TIMEOUT_SECONDS = 172800  # the longest aws:runShellScript allows (48 h): training runs long


def ssm_document(script: str, job_name: str, working_directory: str | None = None) -> dict:
    """An SSM Command document (schema 2.2) that runs a node script on the nodes it is sent to.

    SSM runs its commands with sh; the script needs bash, so it goes to a file
    that bash runs. The node list then comes from the EC2 API (or $HOSTFILE).
    """
    if SSM_HEREDOC in script:
        raise LaunchError(f"the script contains {SSM_HEREDOC}, which ends its here-document")
    if "{{" in script:
        raise LaunchError("the script contains '{{', which SSM reads as a document parameter")
    inputs: dict = {}
    if working_directory:  # aws:runShellScript's own input: the directory its commands run in
        inputs["workingDirectory"] = working_directory
    commands = [
        'script=$(mktemp "${TMPDIR:-/tmp}/efa-infra-launch.XXXXXX")',
        f"cat > \"$script\" <<'{SSM_HEREDOC}'",
        *script.splitlines(),
        SSM_HEREDOC,
        'status=0; bash "$script" || status=$?',
        'rm -f "$script"',
        'exit "$status"',
    ]
    return {
        "schemaVersion": "2.2",
        "description": f"efa-infra: launch job {job_name} on every node of its fleet",
        "mainSteps": [{
            "action": "aws:runShellScript",
            "name": "launch",
            "precondition": {"StringEquals": ["platformType", "Linux"]},
            "inputs": {"runCommand": commands, **inputs, "timeoutSeconds": str(SSM_TIMEOUT_SECONDS)},
        }],
    }


# Where a plain EC2 fleet's nodes send the output of the commands SSM runs there: one CloudWatch Logs group per
# fleet, in which SSM's agent names each stream <command id>/<instance id>/<step name>/stdout (or stderr)
# (aws/amazon-ssm-agent 3.3.1142.0: messageservice/utils/messageutil.go generateCloudWatchLogStreamPrefix,
# framework/runpluginutil/runpluginutil.go, framework/docparser/docparser.go: a 2.2 step's name is its plugin id).
RUN_LOG_RETENTION_DAYS = 365  # a year, as for the VPC's flow logs (checkov CKV_AWS_338 asks for no less)


def run_log_group(stack: str, fleet: str) -> str:
    """The log group of a fleet's run output: named by the stack and fleet alone, so nothing else renames it."""
    return f"/efa-infra/{stack}/{fleet}/run-command"


def send_command_request(document: str, job: str, fleet: str, stack: str, log_group: str) -> dict:
    """SSM SendCommand's request (botocore's ssm model) that starts a job on every node of its fleet."""
    return {
        "DocumentName": document,
        "Comment": f"efa-infra job {job}"[:100],  # the API's limit
        "Targets": [{"Key": f"tag:{FLEET_TAG}", "Values": [fleet]}, {"Key": f"tag:{STACK_TAG}", "Values": [stack]}],
        # Every node at once: SendCommand's default of 50 targets at a time (botocore 1.44 ssm model, SendCommand;
        # the same since MaxConcurrency exists) leaves the rest of a larger fleet without the command while the
        # first ones wait for them at rendezvous.
        "MaxConcurrency": "100%",
        # A node that cannot run the launch fails the whole job: stop sending it at the first error.
        "MaxErrors": "0",
        # Every node's output where it can be collected after the run (the API keeps only 24,000 characters of it).
        "CloudWatchOutputConfig": {"CloudWatchLogGroupName": log_group, "CloudWatchOutputEnabled": True},
    }


def send_command_line(request: dict, region: str) -> str:
    """The AWS CLI command that sends `request` in the stack's region, taking the request whole (--cli-input-json)."""
    return (f"aws ssm send-command --region {shlex.quote(region)} "
            f"--cli-input-json {shlex.quote(json.dumps(request, separators=(',', ':')))}")
