"""A throw-away one-node SLURM cluster with fake GPUs, for the tests: Debian's slurmctld, slurmd and munge
(packages slurmctld, slurmd, slurm-client, munge), started directly as root because containers and CI
machines have no service manager, and stopped by PID.

The node declares 16 CPUs, 64 GB and 2 GPUs whatever the machine has (slurmd's config_overrides), so jobs
keep the resource requests they would make on a real cluster. The GPUs are character devices cloned from
/dev/null: slurmd drops GPUs without a device file, and jobs only need CUDA_VISIBLE_DEVICES set.

The configuration goes to /etc/slurm and is removed by stop(); the daemons' state and logs stay in
$TMPDIR/bacflow-slurm-test for a look after a failure, and are wiped by the next start()."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

STATE = Path(tempfile.gettempdir()) / "bacflow-slurm-test"
# The compiled-in default location: the plugin's job step removes SLURM_CONF from the environment of its
# inner srun, so a configuration elsewhere is not found inside jobs.
SLURM_CONF = Path("/etc/slurm/slurm.conf")
GRES_CONF = Path("/etc/slurm/gres.conf")
MARKER = "# Written by bacflow's tests (tests/slurm_helpers.py) and removed when they end."
CPU_PARTITION, GPU_PARTITION = "cpu", "gpu"
GPUS = 2
DAEMONS = ("slurmctld", "slurmd", "munged")
TOOLS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo", "mungekey", "runuser")
SBIN = os.pathsep.join(["/usr/sbin", "/sbin", os.environ.get("PATH", "")])


class SlurmUnavailable(Exception):
    """SLURM cannot be started here; the message says why."""


def unavailable() -> str | None:
    """Why this machine cannot run the test cluster, or None."""
    if os.geteuid() != 0:
        return "the SLURM test cluster needs root (it starts slurmctld, slurmd and munged)"
    missing = [tool for tool in DAEMONS + TOOLS if shutil.which(tool, path=SBIN) is None]
    if missing:
        return f"SLURM is not installed ({', '.join(missing)} missing; Debian: slurmctld slurmd slurm-client munge)"
    if SLURM_CONF.exists() and MARKER not in SLURM_CONF.read_text():
        return f"{SLURM_CONF} exists and is not the tests' own: not replacing a real cluster's configuration"
    return None


def run(*command: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, capture_output=True, text=True, check=check, timeout=timeout, env={**os.environ, "PATH": SBIN}
    )


def start_daemon(name: str, *command: str) -> None:
    """Start a daemon that detaches itself; its output goes to its log file, not to pipes it would hold."""
    subprocess.run(
        [*command, shutil.which(name, path=SBIN)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
        timeout=30,
    )


def wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return False


def alive(pid_file: Path, name: str) -> int | None:
    """The PID in pid_file if that process runs and is `name` (a stale file's PID may have been reused)."""
    try:
        pid = int(pid_file.read_text().split()[0])
        # /proc/PID/stat: "PID (comm) state ..."; a zombie (Z) has exited.
        comm, state = re.fullmatch(r"\d+ \((.*)\) (\S).*", Path(f"/proc/{pid}/stat").read_text().strip()).groups()
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return pid if comm == name and state != "Z" else None


def terminate(pid_file: Path, name: str) -> None:
    pid = alive(pid_file, name)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    if not wait_for(lambda: alive(pid_file, name) is None, 15):
        os.kill(pid, signal.SIGKILL)


class LocalSlurm:
    """start() brings the cluster up (raises SlurmUnavailable with the daemons' logs if it cannot);
    stop() cancels every job and stops the daemons that start() started. One at a time per machine: a
    lock file serialises test sessions that share it."""

    def __init__(self) -> None:
        self.host = socket.gethostname().split(".")[0]
        self.started: list[tuple[Path, str]] = []
        self.lock = None

    def start(self) -> None:
        STATE.mkdir(parents=True, exist_ok=True)
        self.lock = open(STATE / "lock", "w")  # noqa: SIM115 - held (with its flock) until stop() closes it
        if not wait_for(self._try_lock, 300):
            self.lock.close()
            self.lock = None
            raise SlurmUnavailable(f"another test session holds {STATE / 'lock'}")
        # A test session killed before its teardown leaves its daemons running: stop those first.
        for name in ("slurmd", "slurmctld"):
            terminate(STATE / f"{name}.pid", name)
        for folder in ("state", "spool", "log"):
            shutil.rmtree(STATE / folder, ignore_errors=True)
            (STATE / folder).mkdir()
        self._write_configs()
        try:
            self._start_daemons()
        except (SlurmUnavailable, subprocess.SubprocessError, OSError) as error:
            logs = "\n".join(
                f"--- {log.name}\n{log.read_text()[-3000:]}" for log in sorted((STATE / "log").glob("*.log"))
            )
            self.stop()
            raise SlurmUnavailable(f"{error}\n{logs}") from error

    def _try_lock(self) -> bool:
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _write_configs(self) -> None:
        devices = STATE / "fakegpu"
        devices.mkdir(exist_ok=True)
        for index in range(GPUS):
            device = devices / f"nvidia{index}"
            if not device.is_char_device():
                os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
        SLURM_CONF.write_text(f"""{MARKER}
ClusterName=bacflowtest
SlurmctldHost={self.host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation={STATE}/state
SlurmdSpoolDir={STATE}/spool
SlurmctldPidFile={STATE}/slurmctld.pid
SlurmdPidFile={STATE}/slurmd.pid
SlurmctldLogFile={STATE}/log/slurmctld.log
SlurmdLogFile={STATE}/log/slurmd.log
# No cgroups: containers often lack a usable cgroup tree.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default, a job without --mem gets the whole node's memory and jobs run one at a time.
DefMemPerCPU=500
# Finished jobs stay visible to squeue and scontrol for 10 minutes: without slurmdbd they are the
# plugin's source of job states (it needs MinJobAge >= 3 x its first status delay) and the test's records.
MinJobAge=600
ReturnToService=2
# The node is what this file says, not what the machine has (CPUs and memory that jobs ask for).
SlurmdParameters=config_overrides
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName={self.host} NodeAddr=127.0.0.1 CPUs=16 RealMemory=64000 Gres=gpu:fake:{GPUS} State=UNKNOWN
PartitionName={CPU_PARTITION} Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
PartitionName={GPU_PARTITION} Nodes={self.host} MaxTime=INFINITE State=UP
""")
        GRES_CONF.write_text(f"{MARKER}\nNodeName={self.host} Name=gpu Type=fake File={devices}/nvidia[0-{GPUS - 1}]\n")

    def _start_daemons(self) -> None:
        munge_dir = Path("/run/munge")
        munge_dir.mkdir(exist_ok=True)
        shutil.chown(munge_dir, "munge", "munge")
        if not Path("/etc/munge/munge.key").exists():
            run("mungekey", "--create")
            shutil.chown("/etc/munge/munge.key", "munge", "munge")
        munged_pid = munge_dir / "munged.pid"
        if alive(munged_pid, "munged") is None:  # a munged already running is reused and left running
            start_daemon("munged", "runuser", "-u", "munge", "--")
            self.started.append((munged_pid, "munged"))
        for name, ready in (("slurmctld", self._controller_answers), ("slurmd", self._node_ready)):
            start_daemon(name)
            self.started.append((STATE / f"{name}.pid", name))
            if not wait_for(ready, 60):
                raise SlurmUnavailable(f"{name} did not come up")

    def _controller_answers(self) -> bool:
        return run("scontrol", "ping", check=False).returncode == 0

    def _node_ready(self) -> bool:
        state = run("sinfo", "-h", "-n", self.host, "-o", "%T", check=False).stdout.strip()
        if state.startswith(("drain", "down", "inval")):  # e.g. registered before its GRES were read
            run("scontrol", "update", f"NodeName={self.host}", "State=RESUME", check=False)
        return state.startswith(("idle", "mix", "alloc"))

    def jobs(self) -> list[dict[str, str]]:
        """Every job this cluster has seen (kept for MinJobAge), as scontrol's key=value fields."""
        output = run("scontrol", "--oneliner", "show", "job", check=False).stdout
        return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in output.splitlines() if line.startswith("JobId=")]

    def stop(self) -> None:
        if any(name != "munged" for _, name in self.started):
            job_ids = run("squeue", "-h", "-o", "%i", check=False).stdout.split()
            if job_ids:
                run("scancel", *job_ids, check=False)
                wait_for(lambda: not run("squeue", "-h", "-o", "%i", check=False).stdout.split(), 30)
        for pid_file, name in reversed(self.started):
            terminate(pid_file, name)
        self.started.clear()
        for config in (SLURM_CONF, GRES_CONF):
            if config.exists() and MARKER in config.read_text():
                config.unlink()
        if self.lock is not None:
            self.lock.close()  # releases the flock
            self.lock = None
