"""A real one-host SLURM cluster for the tests: private munged, slurmctld and one slurmd per emulated node.

Everything lives in one temporary directory and is found through SLURM_CONF; nothing is written to /etc
except the emulated node names in /etc/hosts, which are removed again at teardown. Daemons are stopped
by the PIDs this module started. Facts behind the settings: ../../../shared/reference/slurm-one-node.md.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
OPTIONAL_PACKAGES = ("shellcheck",)
HOSTS_FILE = Path("/etc/hosts")
HOSTS_MARK = "# cxrlt-test-slurm"
NODE_CPUS = os.cpu_count() or 1
NODE_MEMORY_MB = 4000  # below the real memory, so slurmd registers the node as valid


def _apt_install(packages: tuple[str, ...]) -> bool:
    """Install with apt-get; refresh the package lists only when the first attempt fails."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
    if subprocess.run(install, env=env, capture_output=True).returncode == 0:
        return True
    subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
    return subprocess.run(install, env=env, capture_output=True).returncode == 0


def ensure_installed() -> None:
    """slurm-wlm and munge are required (installed when missing); shellcheck is used when it installs."""
    if not all(shutil.which(b) for b in ("slurmctld", "slurmd", "sbatch", "munged")):
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            raise RuntimeError("SLURM tests need slurm-wlm and munge: run as root on Debian, or install them")
        if not _apt_install(PACKAGES):
            raise RuntimeError(f"apt-get could not install {' '.join(PACKAGES)}")
    if not shutil.which("shellcheck") and os.geteuid() == 0 and shutil.which("apt-get"):
        _apt_install(OPTIONAL_PACKAGES)


def _free_ports(count: int) -> list[int]:
    """`count` consecutive free TCP ports (slurm.conf gives emulated nodes a port range)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + count >= 65535:
            continue
        try:
            socks = []
            for port in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return list(range(base, base + count))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range for the test cluster")


def _wait_for(predicate, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class LocalSlurm:
    root: Path
    nodes: tuple[str, ...] = ("cxrlt-n1", "cxrlt-n2")
    pids: dict[str, int] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "munge.sock"

    def start(self) -> LocalSlurm:
        ensure_installed()
        self._add_hosts()
        self._start_munge()
        self._write_conf()
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._daemon("slurmctld", ["slurmctld", "-f", str(self.conf)], self.root / "slurmctld.pid")
        for node in self.nodes:
            self._daemon(
                f"slurmd-{node}", ["slurmd", "-f", str(self.conf), "-N", node], self.root / f"slurmd-{node}.pid"
            )
        _wait_for(self._all_idle, 30, f"nodes {', '.join(self.nodes)} to be idle ({self.root}/*.log)", 0.2)
        return self

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(args, env=self.env, capture_output=True, text=True, check=check, timeout=60)

    def steps_alive(self, job_id: str) -> bool:
        """Whether a slurmstepd of `job_id` (its batch script or a step) still runs: all nodes are this host."""
        prefix = f"slurmstepd: [{job_id}.".encode()
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                if cmdline.read_bytes().startswith(prefix):
                    return True
            except OSError:
                continue
        return False

    def _all_idle(self) -> bool:
        out = self.run("sinfo", "--noheader", "-N", "-o", "%N %t", check=False).stdout.split()
        states = dict(zip(out[::2], out[1::2]))
        return all(states.get(n) == "idle" for n in self.nodes)

    def _add_hosts(self) -> None:
        # slurmd resolves its own node name; emulated nodes all live on the loopback address.
        lines = HOSTS_FILE.read_text().splitlines()
        lines += [f"127.0.0.1 {node} {HOSTS_MARK}" for node in self.nodes]
        HOSTS_FILE.write_text("\n".join(lines) + "\n")

    def _remove_hosts(self) -> None:
        kept = [line for line in HOSTS_FILE.read_text().splitlines() if not line.endswith(HOSTS_MARK)]
        HOSTS_FILE.write_text("\n".join(kept) + "\n")

    def _start_munge(self) -> None:
        d = self.root / "munge"
        # munged refuses a socket directory that not everyone may traverse; the key stays 0600.
        d.mkdir()
        d.chmod(0o755)
        key = d / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        pid_file = d / "munged.pid"
        subprocess.run(
            [
                "munged",
                f"--socket={self.munge_socket}",
                f"--key-file={key}",
                f"--pid-file={pid_file}",
                f"--log-file={d / 'munged.log'}",
                f"--seed-file={d / 'munged.seed'}",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        _wait_for(pid_file.exists, 10, "munged's pid file")
        self.pids["munged"] = int(pid_file.read_text())

    def _daemon(self, name: str, argv: list[str], pid_file: Path) -> None:
        subprocess.run(argv, env=self.env, check=True, capture_output=True, timeout=30)
        _wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 10, f"{name}'s pid file")
        self.pids[name] = int(pid_file.read_text())

    def _write_conf(self) -> None:
        r = self.root
        ctld_port, *node_ports = _free_ports(1 + len(self.nodes))
        host = socket.gethostname().split(".")[0]
        lines = [
            "ClusterName=cxrlt-test",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            "SlurmUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "MpiDefault=none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SlurmdParameters=config_overrides",
            "ReturnToService=2",
            "SchedulerParameters=batch_sched_delay=0,sched_min_interval=0",
            "DependencyParameters=kill_invalid_depend",
            # A requeued job's processes get SIGTERM, then SIGKILL after KillWait: long enough for a
            # preemption checkpoint of the tiny test model, short enough to keep the tests quick.
            "KillWait=15",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}/%n",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r}/slurmd-%n.pid",
            f"SlurmctldLogFile={r / 'slurmctld.log'}",
            f"SlurmdLogFile={r}/slurmd-%n.log",
        ]
        for node, port in zip(self.nodes, node_ports):
            lines.append(
                f"NodeName={node} NodeAddr=127.0.0.1 Port={port} CPUs={NODE_CPUS} "
                f"RealMemory={NODE_MEMORY_MB} State=UNKNOWN"
            )
        lines.append(f"PartitionName=test Nodes={','.join(self.nodes)} Default=YES MaxTime=INFINITE State=UP")
        (r / "state").mkdir()
        for node in self.nodes:
            (r / "spool" / node).mkdir(parents=True)
        self.conf.write_text("\n".join(lines) + "\n")

    def stop(self) -> None:
        """Cancel the jobs still queued or running (their processes outlive slurmd), then SIGTERM each
        daemon this cluster started, newest first; SIGKILL what is still up after 10 s."""
        if "slurmctld" in self.pids:
            jobs = self.run("squeue", "--noheader", "--format=%A", check=False).stdout.split()
            if jobs:
                self.run("scancel", *jobs, check=False)
                _wait_for(
                    lambda: not self.run("squeue", "--noheader", check=False).stdout.strip(),
                    30,
                    "cancelled jobs to end",
                    0.2,
                )
        for pid in reversed(list(self.pids.values())):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + 10
        for pid in self.pids.values():
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.pids.clear()
        self._remove_hosts()


def _alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (the daemons are not our children) counts as stopped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"
