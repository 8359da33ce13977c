"""The checks an EFA job makes where it runs: one definition, in POSIX sh, for
the pods' containers (any image with a shell), the EC2 launch script and the
boot script.

- `COUNT_EFA_DEVICES`: the EFA devices this node or container can use (the
  device files, as the EFA device plugin hands them to a container), and none
  when libfabric lists no efa provider.
- `preflight()`: before the launcher starts, the devices and accelerators the
  type has (a pod is given all of its node's) are there; on failure a message
  naming the pod or node and the counts, and exit 1 (a warning with
  efaCheck: false).
- `transport_check()`: a shell function that runs the launcher with its output
  watched; once NCCL names the network it uses (`nccl_log`: that line alone
  decides, NCCL's plugin-loading texts are context), a run that is not on the
  OFI plugin with the efa provider and the type's NICs is stopped (or warned
  about).
Pure: no Pulumi import.
"""

from __future__ import annotations

from . import nccl_log

# Where each accelerator's devices appear, one file per device (the NVIDIA and Neuron device plugins hand them over).
ACCELERATOR_DEVICES = {"gpu": ("/dev/nvidia[0-9]*", "NVIDIA GPUs"), "neuron": ("/dev/neuron[0-9]*", "Neuron devices")}
TRANSPORT_FAILED = 3  # exit status of a job stopped by the transport check

FIND_FI_INFO = r'''
fi_info=$(command -v fi_info || true)
if [ -z "$fi_info" ] && [ -x /opt/amazon/efa/bin/fi_info ]; then fi_info=/opt/amazon/efa/bin/fi_info; fi
'''

# Sets efa_found and efa_seen (what was seen, for messages).
COUNT_EFA_DEVICES = r'''
efa_found=0
for dev in /dev/infiniband/uverbs*; do
  if [ -c "$dev" ]; then efa_found=$((efa_found + 1)); fi
done
efa_seen="$efa_found in /dev/infiniband"''' + FIND_FI_INFO + r'''if [ -n "$fi_info" ] && ! "$fi_info" -p efa >/dev/null 2>&1; then
  efa_found=0 efa_seen="$efa_seen, but libfabric lists no efa provider (fi_info -p efa)"
fi
'''

# libfabric 1.18 and later follow the device's own RDMA capability; before that,
# aws-ofi-nccl 1.6 needed FI_EFA_USE_DEVICE_RDMA=1 on GPUDirect RDMA types
# (aws-ofi-nccl doc/efa-env-var.md). Rendered only for types that have it, where
# forcing it is safe; a value the job sets itself is kept.
DEVICE_RDMA = r'''
if [ -z "${FI_EFA_USE_DEVICE_RDMA+set}" ] && [ -n "$fi_info" ]; then
  fab=$("$fi_info" --version 2>/dev/null | sed -n 's/^libfabric: *\([0-9][0-9]*\)\.\([0-9][0-9]*\).*/\1 \2/p' || true)
  if [ -n "$fab" ] && [ "${fab% *}" -eq 1 ] && [ "${fab#* }" -lt 18 ]; then
    export FI_EFA_USE_DEVICE_RDMA=1
    printf 'efa-infra[%s]: libfabric %s.%s predates 1.18, which reads RDMA support from the device: FI_EFA_USE_DEVICE_RDMA=1\n' "$JOB" "${fab% *}" "${fab#* }" >&2
  fi
fi
'''


def count_accelerators(kind: str) -> str:
    """sh that sets accel_found to the accelerators of `kind` this node or container can use."""
    glob = ACCELERATOR_DEVICES[kind][0]
    return f'accel_found=0\nfor dev in {glob}; do if [ -c "$dev" ]; then accel_found=$((accel_found + 1)); fi; done'


def _q(text: str) -> str:
    """Text for inside double quotes in sh."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("`", "\\`")


def preflight(*, efa_devices: int, instance_type: str, accelerator: str | None, accelerators: int,
              rdma: bool, strict: bool) -> str:
    """sh that checks the node before the launch. Needs $JOB and $EFA_WHERE (the pod and node, or the node)."""
    lines = [COUNT_EFA_DEVICES.strip("\n"), "efa_problem="]
    lines.append(f'if [ "$efa_found" -lt {efa_devices} ]; then '
                 f'efa_problem="expected {efa_devices} EFA devices ({instance_type}), found $efa_found ($efa_seen)"; fi')
    if accelerator:
        glob, what = ACCELERATOR_DEVICES[accelerator]
        lines += [count_accelerators(accelerator),
                  f'if [ "$accel_found" -ne {accelerators} ]; then efa_problem="${{efa_problem:+$efa_problem; }}'
                  f'expected {accelerators} {what} ({instance_type}), found $accel_found in {glob.split("[")[0]}*"; fi']
    if strict:
        fail = ("  printf 'efa-infra[%s]: error: EFA check failed on %s: %s; NCCL would fall back to TCP. "
                "Fix the node, or set the job'\\''s efaCheck: false to run anyway\\n' \"$JOB\" \"$EFA_WHERE\" \"$efa_problem\" >&2\n"
                "  exit 1")
    else:
        fail = ("  printf 'efa-infra[%s]: warning: EFA check on %s: %s; efaCheck is false, so the launch goes on "
                "and NCCL may use TCP\\n' \"$JOB\" \"$EFA_WHERE\" \"$efa_problem\" >&2")
    passed = ("  printf 'efa-infra[%s]: EFA check passed on %s: %s EFA devices' \"$JOB\" \"$EFA_WHERE\" \"$efa_found\" >&2\n"
              + ('  printf ", %s accelerators" "$accel_found" >&2\n' if accelerator else "")
              + "  printf '\\n' >&2")
    lines.append(f'if [ -n "$efa_problem" ]; then\n{fail}\nelse\n{passed}\nfi')
    if rdma:
        lines.append(DEVICE_RDMA.strip("\n"))
    return "\n".join(lines) + "\n"


def transport_check(*, efa_devices: int, strict: bool) -> str:
    """sh that defines `efa_infra_watch COMMAND...`: runs the command, its output (stdout and stderr) watched
    until NCCL names its network, then passed on; returns the command's status, or TRANSPORT_FAILED when it
    was stopped. Needs $JOB and $EFA_WHERE."""
    arms = [f'    *"{_q(m)}"*) ver=${{line##*"{_q(m)}"}}; ver=${{ver%% *}} ;;' for m in nccl_log.PLUGIN_VERSION]
    arms += [f'    *"{_q(m)}"*) prov=${{line##*"{_q(m)}"}}; prov=${{prov%%[ ,]*}}\n'
             f'      case $line in *"{_q(nccl_log.NICS)}"*) nics=${{line##*"{_q(nccl_log.NICS)}"}}; nics=${{nics%% *}} ;; esac ;;'
             for m in nccl_log.PROVIDER]
    arms += [f'    *"{_q(m)}"*) fallback=1 ;;' for m in nccl_log.FALLBACK]
    arms.append(f'    *"{_q(nccl_log.NETWORK)}"*) net=${{line##*"{_q(nccl_log.NETWORK)}"}} ;;')
    arms.append(f'    *"{_q(nccl_log.CHANNEL)}"*) net=${{line##*"{_q(nccl_log.CHANNEL)}"}}; net=${{net%%/*}} ;;')
    ofi = "|".join(f"*{n}*" for n in nccl_log.OFI_NAMES)
    msg = lambda template: _q(template).format(network="$net", provider="$prov", nics="$nics", expected=efa_devices)  # noqa: E731
    if strict:
        verdict = ("    printf 'efa-infra[%s]: error: EFA transport check failed on %s: %s. The job is stopped; "
                   "set its efaCheck: false to let it run anyway\\n' \"$JOB\" \"$EFA_WHERE\" \"$problem\" >&2\n"
                   f"    return {TRANSPORT_FAILED}")
    else:
        verdict = ("    printf 'efa-infra[%s]: warning: EFA transport check on %s: %s; efaCheck is false, so the job "
                   "goes on\\n' \"$JOB\" \"$EFA_WHERE\" \"$problem\" >&2")
    return f'''
# Reads the launch's output up to the line where NCCL names its network, then passes the rest on unread.
nccl_transport_check() {{
  net= prov= nics= ver= fallback=
  while IFS= read -r line; do
    printf '%s\\n' "$line"
    case $line in
{chr(10).join(arms)}
    esac
    if [ -n "$net" ]; then break; fi
  done
  problem=
  case $net in
    "") ;;
    {ofi})
      if [ -n "$prov" ] && [ "$prov" != efa ]; then problem="{msg(nccl_log.MSG_PROVIDER)}"
      elif [ -n "$nics" ] && [ "$nics" -lt {efa_devices} ]; then problem="{msg(nccl_log.MSG_NICS)}"; fi ;;
    *) problem="{msg(nccl_log.MSG_NOT_OFI)}${{fallback:+{_q(nccl_log.FALLBACK_CONTEXT)}}}" ;;
  esac
  if [ -z "$net" ]; then
    printf 'efa-infra[%s]: warning: no NCCL line named the network (NCCL_DEBUG=INFO, subsystems INIT,NET): the transport was not checked%s\\n' "$JOB" "${{fallback:+{_q(nccl_log.FALLBACK_CONTEXT)}}}" >&2
  elif [ -n "$problem" ]; then
{verdict}
  else
    printf 'efa-infra[%s]: EFA transport check passed on %s: NCCL uses %s (aws-ofi-nccl %s), provider %s, %s NICs\\n' \\
      "$JOB" "$EFA_WHERE" "$net" "${{ver:-version not logged}}" "${{prov:-not logged}}" "${{nics:-?}}" >&2
  fi
  cat
}}

# The reader runs in the background and the shell waits: `wait` is what a trapped signal interrupts (a
# foreground reader would hold it back), so a pod's or SSM's SIGTERM reaches the job at once.
efa_infra_wait() {{
  status=0
  wait "$1" || status=$?
  while [ "$status" -gt 128 ] && kill -0 "$1" 2>/dev/null; do status=0; wait "$1" || status=$?; done
}}

efa_infra_watch() {{
  fifo=$(mktemp -u "${{TMPDIR:-/tmp}}/efa-infra-nccl.XXXXXX")
  mkfifo "$fifo"
  "$@" >"$fifo" 2>&1 &
  pid=$!
  trap 'kill -TERM "$pid" 2>/dev/null' TERM INT
  nccl_transport_check <"$fifo" &
  efa_infra_wait $!
  verdict=$status
  rm -f "$fifo"
  if [ "$verdict" -ne 0 ]; then kill -TERM "$pid" 2>/dev/null || true; fi
  efa_infra_wait "$pid"
  if [ "$verdict" -ne 0 ]; then return "$verdict"; fi
  return "$status"
}}
'''
