"""A real single-node SLURM cluster for tests: munge, slurmctld and slurmd, started as root from
Debian's packages with a configuration in a temporary folder, stopped by PID.

Facts this follows (checked on this project's machines): no systemd, so every daemon is
started by hand; `DefMemPerCPU` lets jobs share the node; the job step clears SLURM_* variables,
so an `srun` wrapper first on PATH puts SLURM_CONF back; without accounting, Snakemake polls with
`squeue`; finished jobs are recorded by SLURM itself in a job-completion file (`jobcomp/filetxt`).
Two fake GPUs (gres on /dev/null and /dev/zero) let GPU jobs (`--gpus=1`) be scheduled on a machine without one.
A third partition, `short`, allows one minute (MaxTime=1) and, as SLURM's default configuration does
(EnforcePartLimits unset), accepts longer jobs and leaves them pending for ever.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo")


def missing_requirements() -> str | None:
    """Why a cluster cannot start here, or None."""
    missing = [p for p in PACKAGES if not shutil.which(p) and not Path("/usr/sbin", p).exists()]
    if missing:
        return f"not installed: {', '.join(missing)} (apt-get install slurmctld slurmd slurm-client munge)"
    if os.geteuid() != 0:
        return "starting slurmd and munged needs root"
    if not Path("/etc/munge/munge.key").exists():
        return "/etc/munge/munge.key is missing (reinstall the munge package)"
    return None


SLURM_CONF = """\
ClusterName=facaptest
SlurmctldHost={host}
SlurmUser=root
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
MaxJobCount=10000
MinJobAge=600
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/jobcomp.txt
MpiDefault=none
NodeName={host} CPUs={cpus} RealMemory={memory}{gres} State=UNKNOWN
PartitionName=cpu Nodes={host} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes={host} Default=NO MaxTime=INFINITE State=UP
PartitionName=short Nodes={host} Default=NO MaxTime=1 State=UP
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    """Start with `start()`, stop with `stop()`; `env` is what clients (sbatch, snakemake) need."""

    def __init__(self, root: Path, memory_mb: int = 16000, gpus: int = 2) -> None:
        self.root = Path(root)
        self.host = socket.gethostname().split(".")[0]
        self.memory_mb = memory_mb
        self.gpus = gpus  # fake GPUs on /dev/null and /dev/zero: at most 2; 0 is a CPU-only cluster
        self.conf = self.root / "slurm.conf"
        self.bin = self.root / "bin"
        self.pids: dict[str, int] = {}
        # One munged per cluster, in /run/munge (see _start_munge), named after this cluster's folder.
        digest = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:12]
        self.munge_socket = Path("/run/munge") / f"facap-test-{digest}.socket"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf), "PATH": f"{self.bin}:{os.environ['PATH']}"}

    def start(self, timeout_s: float = 30) -> None:
        for sub in ("state", "spool"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            SLURM_CONF.format(
                host=self.host,
                root=self.root,
                cpus=os.cpu_count(),
                memory=self.memory_mb,
                gres=f" Gres=gpu:{self.gpus}" if self.gpus else "",
                ctld_port=_free_port(),
                d_port=_free_port(),
                munge_socket=self.munge_socket,
            )
        )
        devices = ("/dev/null", "/dev/zero")[: self.gpus]
        (self.root / "gres.conf").write_text("".join(f"NodeName={self.host} Name=gpu File={d}\n" for d in devices))
        # The job step starts `srun` with SLURM_* cleared: a wrapper first on PATH restores the config.
        self.bin.mkdir(exist_ok=True)
        srun = self.bin / "srun"
        srun.write_text(f'#!/bin/sh\nexport SLURM_CONF={self.conf}\nexec /usr/bin/srun "$@"\n')
        srun.chmod(0o755)
        self._start_munge()
        self._run(["/usr/sbin/slurmctld", "-f", str(self.conf)])
        self.pids["slurmctld"] = self._read_pid("slurmctld")
        self._run(["/usr/sbin/slurmd", "-f", str(self.conf)])
        self.pids["slurmd"] = self._read_pid("slurmd")
        deadline = time.monotonic() + timeout_s
        state = ""
        while time.monotonic() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], env=self.env, capture_output=True, text=True).stdout
            if state.split() and all(s.startswith("idle") for s in state.split()):
                return
            time.sleep(0.5)
        raise RuntimeError(f"SLURM node not idle after {timeout_s} s (sinfo: {state.strip()!r}); {self.logs_tail()}")

    def _start_munge(self) -> None:
        # munged runs as the munge user, who cannot enter pytest's root-only temp folders: its
        # files go to /run/munge. Each cluster has a munged of its own (its socket named in
        # slurm.conf's AuthInfo), never a shared one: stopping a shared one when one test ends
        # took the authentication away from another test's cluster running at the same time.
        run = Path("/run/munge")
        run.mkdir(parents=True, exist_ok=True)
        shutil.chown(run, "munge", "munge")
        socket_path, pidfile = self.munge_socket, run / f"{self.munge_socket.name}.pid"
        result = subprocess.run(
            ["runuser", "-u", "munge", "--", "/usr/sbin/munged", "--socket", str(socket_path),
             "--pid-file", str(pidfile), "--log-file", str(run / f"{socket_path.name}.log"),
             "--seed-file", str(run / f"{socket_path.name}.seed"), "--force"],
            capture_output=True, text=True,
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"munged did not start ({result.returncode}): {result.stderr.strip()}")
        self.pids["munged"] = int(pidfile.read_text())

    def _run(self, cmd: list[str]) -> None:
        result = subprocess.run(cmd, env=self.env, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr}; {self.logs_tail()}")

    def _read_pid(self, daemon: str, timeout_s: float = 10) -> int:
        path = self.root / f"{daemon}.pid"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if path.exists() and path.read_text().strip():
                return int(path.read_text())
            time.sleep(0.1)
        raise RuntimeError(f"{daemon} wrote no PID file; {self.logs_tail()}")

    def _cancel_jobs(self, timeout_s: float = 30) -> None:
        """Cancel this cluster's jobs and wait until none is left: a test that fails while a job runs
        must not leave its slurmstepd and job processes behind once the daemons are gone."""
        subprocess.run(["scancel", "--user", "root"], env=self.env, capture_output=True, timeout=30)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            listed = subprocess.run(["squeue", "-h", "-o", "%i"], env=self.env, capture_output=True, text=True)
            if listed.returncode != 0 or not listed.stdout.strip():
                return
            time.sleep(0.5)

    def logs_tail(self, lines: int = 15) -> str:
        out = []
        for name in ("slurmctld.log", "slurmd.log"):
            path = self.root / name
            if path.exists():
                out.append(f"{name}: " + " | ".join(path.read_text().splitlines()[-lines:]))
        return "; ".join(out) or "no daemon logs"

    def completed_jobs(self) -> list[dict[str, str]]:
        """SLURM's own record of finished jobs (jobcomp/filetxt): one dict of key=value per job."""
        path = self.root / "jobcomp.txt"
        if not path.exists():
            return []
        records = []
        for line in path.read_text().splitlines():
            fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
            records.append(fields)
        return records

    def stop(self) -> None:
        if "slurmctld" in self.pids:
            self._cancel_jobs()
        for name in ("slurmd", "slurmctld", "munged"):
            pid = self.pids.pop(name, None)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)
        # This cluster's munged files (socket, lock, pid, log, seed) go with it.
        for path in self.munge_socket.parent.glob(f"{self.munge_socket.name}*"):
            path.unlink(missing_ok=True)
