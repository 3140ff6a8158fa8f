"""A throwaway single-node Slurm on this machine, for tests: munged, slurmctld and slurmd.

Localhost only, two fake GPUs as GRES (device files that are links to /dev/null, so
Slurm grants them and sets CUDA_VISIBLE_DEVICES, though no CUDA device exists),
two partitions on the one node: `cpu` (the default) and `gpu`. Everything it
writes lives in one folder; it installs nothing (setup.sh installs Debian's
slurm-wlm and munge) and changes nothing under /etc.

    python tests/local_slurm.py start DIR     # prints the environment to use it
    python tests/local_slurm.py stop DIR      # stops the daemons it started, by pid

Client commands find this cluster through SLURM_CONF. Inside a job, the Slurm
executor plugin's job step drops every SLURM_* variable before its own `srun`;
so DIR/bin holds small wrappers of the client commands that set SLURM_CONF
first, and `env()` puts them first on PATH (sbatch passes PATH on with
--export=ALL). The sbatch wrapper also logs each call, one JSON list of
arguments a line, in DIR/sbatch.jsonl.

Job status: there is no accounting database, so `sacct` only reads the job
completion file (`sacct -c`); the executor plugin must poll with squeue, which
is reliable because MinJobAge keeps finished jobs listed for 10 minutes.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

CLIENTS = ("sbatch", "srun", "squeue", "scontrol", "sinfo", "sacct", "scancel", "salloc", "sacctmgr", "sshare")
DAEMONS = ("slurmd", "slurmctld", "munged")  # stop order
GPU_TYPE = "a100"


class SlurmUnavailable(RuntimeError):
    """Slurm or munge is not installed, or this user cannot run the daemons."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _which(name: str) -> str:
    for folder in ("/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        if os.access(f"{folder}/{name}", os.X_OK):
            return f"{folder}/{name}"
    found = shutil.which(name)
    if not found:
        raise SlurmUnavailable(f"{name} not found: install Debian's slurm-wlm and munge (./setup.sh does)")
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours is dead for our purposes.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        return state != "Z"
    except OSError:
        return False


class LocalSlurm:
    def __init__(self, root: str | Path, *, cpus: int | None = None, gpus: int = 2, memory_mb: int = 64000) -> None:
        self.root = Path(root).resolve()
        self.cpus = cpus or os.cpu_count() or 1
        self.gpus = gpus
        # Declared memory (SlurmdParameters=config_overrides: Slurm believes the
        # config, not the hardware), large enough for the profiles' requests.
        self.memory_mb = memory_mb
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.root / "etc" / "slurm.conf"
        self.sbatch_log = self.root / "sbatch.jsonl"
        self.munge_socket = self.root / "munge" / "munge.socket"

    # ------------------------------------------------------------------ state

    def pid_files(self) -> dict[str, Path]:
        return {name: self.root / "run" / f"{name}.pid" for name in DAEMONS}

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = f"{self.root / 'bin'}:{env.get('PATH', '')}"
        return env

    def run(self, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cmd, env=self.env(), capture_output=True, text=True, check=check, timeout=timeout)

    # ------------------------------------------------------------------ start

    def start(self, timeout: float = 30) -> None:
        if os.geteuid() != 0:
            raise SlurmUnavailable("the throwaway Slurm runs its daemons as root; run as root")
        binaries = {name: _which(name) for name in ("munged", "slurmctld", "slurmd", *CLIENTS[:5])}
        for sub in ("etc", "bin", "run", "log", "state", "spool", "dev", "munge"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        os.chmod(self.root / "munge", 0o755)  # munged insists on a socket folder only root can write
        self._write_config()
        self._write_wrappers()
        try:
            self._start_munge(binaries["munged"])
            subprocess.run([binaries["slurmctld"], "-f", str(self.conf)], env=self.env(), check=True, capture_output=True, text=True)
            self._wait_pid("slurmctld", timeout)
            subprocess.run([binaries["slurmd"], "-f", str(self.conf), "-N", self.host], env=self.env(), check=True, capture_output=True, text=True)
            self._wait_pid("slurmd", timeout)
            self._wait_idle(timeout)
        except Exception as exc:
            logs = self.logs()
            self.stop()
            if isinstance(exc, subprocess.CalledProcessError):
                raise SlurmUnavailable(f"{exc.cmd[0]} failed: {exc.stderr}\n{logs}") from exc
            raise SlurmUnavailable(f"{exc}\n{logs}") from exc

    def _write_config(self) -> None:
        r = self.root
        for i in range(self.gpus):
            dev = r / "dev" / f"nvidia{i}"
            if not dev.is_symlink():
                dev.symlink_to("/dev/null")  # a regular file makes the node INVAL
        ctld_port, slurmd_port = _free_port(), _free_port()
        self.conf.write_text(
            f"""# A throwaway single-node cluster written by tests/local_slurm.py
ClusterName=dam3dtest
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={self.pid_files()['slurmctld']}
SlurmdPidFile={self.pid_files()['slurmd']}
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
PlugStackConfig={r}/etc/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
SlurmdParameters=config_overrides
MinJobAge=600
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={r}/log/jobcomp.txt
GresTypes=gpu
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} Gres=gpu:{GPU_TYPE}:{self.gpus} State=UNKNOWN
PartitionName=cpu Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes={self.host} MaxTime=INFINITE State=UP
"""
        )
        last = f"nvidia[0-{self.gpus - 1}]" if self.gpus > 1 else "nvidia0"
        (r / "etc" / "gres.conf").write_text(
            f"AutoDetect=off\nNodeName={self.host} Name=gpu Type={GPU_TYPE} File={r}/dev/{last}\n"
        )
        (r / "etc" / "plugstack.conf").write_text("")

    def _write_wrappers(self) -> None:
        for name in CLIENTS:
            real = None
            for folder in ("/usr/bin", "/usr/sbin"):
                if os.access(f"{folder}/{name}", os.X_OK):
                    real = f"{folder}/{name}"
            if real is None:
                continue
            log = ""
            if name == "sbatch":
                # Chunk jobs are submitted side by side: one locked write per call keeps lines whole.
                append = ("import fcntl, json, sys\n"
                          "with open(sys.argv[1], 'a') as f:\n"
                          "    fcntl.flock(f, fcntl.LOCK_EX)\n"
                          "    f.write(json.dumps(sys.argv[2:]) + '\\n')\n")
                log = f'"{sys.executable}" -c {shlex.quote(append)} {shlex.quote(str(self.sbatch_log))} "$@"\n'
            wrapper = self.root / "bin" / name
            wrapper.write_text(f"#!/bin/sh\nexport SLURM_CONF={shlex.quote(str(self.conf))}\n{log}exec {real} \"$@\"\n")
            wrapper.chmod(0o755)

    def _start_munge(self, munged: str) -> None:
        key = self.root / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            key.chmod(0o400)
        subprocess.run(
            [
                munged, "--force",
                f"--key-file={key}",
                f"--socket={self.munge_socket}",
                f"--pid-file={self.pid_files()['munged']}",
                f"--log-file={self.root / 'log' / 'munged.log'}",
                f"--seed-file={self.root / 'munge' / 'munged.seed'}",
            ],
            check=True, capture_output=True, text=True,
        )
        self._wait_pid("munged", 10)

    def _pid(self, name: str) -> int | None:
        try:
            return int(self.pid_files()[name].read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _wait_pid(self, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self._pid(name)
            if pid and _alive(pid):
                return
            time.sleep(0.1)
        raise SlurmUnavailable(f"{name} did not start within {timeout} s")

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            out = self.run("sinfo", "-h", "-N", "-o", "%T", check=False)
            state = out.stdout.strip() + out.stderr.strip()
            if out.returncode == 0 and state.split() and all(s == "idle" for s in state.split()):
                return
            time.sleep(0.3)
        raise SlurmUnavailable(f"node not idle within {timeout} s: {state!r}")

    # ------------------------------------------------------------------ stop

    def stop(self, timeout: float = 15) -> list[str]:
        """Stop the daemons this folder's pid files name (TERM, then KILL); return what was stopped."""
        stopped = []
        pids = {}
        for name in DAEMONS:
            pid = self._pid(name)
            if pid and _alive(pid) and self._is_ours(pid, name):
                pids[name] = pid
        if "slurmctld" in pids and "slurmd" in pids:
            self.run("scancel", "--full", "-u", "root", check=False, timeout=10)
        for name, pid in pids.items():  # DAEMONS order: slurmd, slurmctld, munged
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
            stopped.append(f"{name}[{pid}]")
        return stopped

    def running(self) -> list[str]:
        """The daemons of this folder still running, as name[pid]."""
        out = []
        for name in DAEMONS:
            pid = self._pid(name)
            if pid and _alive(pid) and self._is_ours(pid, name):
                out.append(f"{name}[{pid}]")
        return out

    def _is_ours(self, pid: int, name: str) -> bool:
        """The pid still runs `name` (a pid file could outlive its process and the pid be reused)."""
        try:
            return Path(f"/proc/{pid}/comm").read_text().strip() == name
        except OSError:
            return False

    def logs(self) -> str:
        parts = []
        for log in sorted((self.root / "log").glob("*.log")):
            parts.append(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:]))
        return "\n".join(parts)

    def sbatch_calls(self) -> list[list[str]]:
        if not self.sbatch_log.exists():
            return []
        return [json.loads(line) for line in self.sbatch_log.read_text().splitlines() if line.strip()]

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol -d show job ID` as a mapping (GRES details included)."""
        out = self.run("scontrol", "-d", "-o", "show", "job", job_id).stdout
        fields = {}
        for token in shlex.split(out.replace("\n", " ")):
            key, sep, value = token.partition("=")
            if sep:
                fields.setdefault(key, value)
        return fields


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print(__doc__, file=sys.stderr)
        return 2
    slurm = LocalSlurm(argv[1])
    if argv[0] == "start":
        slurm.start()
        print(f"export SLURM_CONF={slurm.conf}\nexport PATH={slurm.root / 'bin'}:$PATH")
    else:
        print("stopped: " + (" ".join(slurm.stop()) or "nothing"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
