"""A live single-node SLURM cluster for tests, under a temp dir, stopped afterwards by the PIDs it started.

Debian's packages (``make system-deps`` installs them as root): ``slurm-wlm`` (slurmctld, slurmd,
sbatch, squeue, scancel, sacct), ``slurmdbd`` with ``mariadb-server`` for the accounting database,
and ``munge``. The accounting database is not optional: submitit learns how a job that left no
result ended (CANCELLED, TIMEOUT, NODE_FAIL...) only from ``sacct``, and without it waits forever.

What runs, each on a free loopback port and writing only under the temp dir:

- munged as the ``munge`` user, with the key in /etc/munge (its own socket, so a system munged is left alone);
- MariaDB as the ``mysql`` user, and slurmdbd (root) on it;
- slurmctld and slurmd as root (``SlurmUser=root``), one node ``rs-node`` on 127.0.0.1 with 2 CPUs and
  no GPUs, ``proctrack/linuxproc``, ``task/none``, ``select/cons_tres``: no cgroups needed.

Clients find it through ``SLURM_CONF`` (:meth:`SlurmCluster.env`): pass that to ``ranksweep`` and to
the commands a test runs. :func:`unavailable` says why the cluster cannot run here (not root, a
binary missing); :meth:`SlurmCluster.start` raises :class:`SlurmUnavailable` with the daemon's log
when a daemon does not come up. Tests skip on either, with that reason.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

CLUSTER = "rstest"
NODE = "rs-node"
DB_USER, DB_PASSWORD, DB_NAME = "slurm", "rs-slurm-pw", "slurm_acct_db"
MUNGE_KEY = Path("/etc/munge/munge.key")


class SlurmUnavailable(RuntimeError):
    """The cluster cannot run on this machine; the message says why."""


def _which(*names: str) -> str | None:
    path = os.environ.get("PATH", "") + ":/usr/sbin:/usr/bin:/sbin"
    for name in names:
        found = shutil.which(name, path=path)
        if found:
            return found
    return None


BINARIES = {
    "slurmctld": ("slurmctld",), "slurmd": ("slurmd",), "slurmdbd": ("slurmdbd",), "munged": ("munged",),
    "sinfo": ("sinfo",), "sbatch": ("sbatch",), "srun": ("srun",), "sacct": ("sacct",), "scancel": ("scancel",),
    "mariadbd": ("mariadbd", "mysqld"), "mariadb-install-db": ("mariadb-install-db", "mysql_install_db"),
    "mariadb": ("mariadb", "mysql"),
}
PACKAGES = "slurm-wlm slurmdbd munge mariadb-server"


def unavailable() -> str | None:
    """Why a cluster cannot be started here, or None."""
    if os.geteuid() != 0:
        return "a live SLURM cluster needs root (slurmd runs jobs as their user; munged and MariaDB drop to theirs)"
    missing = [name for name, alts in BINARIES.items() if _which(*alts) is None]
    if missing:
        return f"SLURM is not installed (missing {', '.join(missing)}): apt-get install {PACKAGES}, or make system-deps"
    for user in ("munge", "mysql"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            return f"no {user!r} user (its Debian package creates it): apt-get install {PACKAGES}"
    return None


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no {path.name})"
    return "\n".join(lines[-n:])


def _mem_mb() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 4096


class SlurmCluster:
    """One node on localhost: ``SlurmCluster().start()``, then :meth:`env`, :meth:`cmd`, and :meth:`stop`."""

    def __init__(self, cpus: int = 2, kill_wait: int = 2) -> None:
        reason = unavailable()
        if reason:
            raise SlurmUnavailable(reason)
        self.cpus, self.kill_wait = cpus, kill_wait
        self.root = Path(tempfile.mkdtemp(prefix="rs-slurm-"))
        os.chmod(self.root, 0o755)  # munge and mysql must reach their folders
        self.conf = self.root / "slurm.conf"
        self.ctld_port, self.slurmd_port, self.dbd_port, self.db_port = _free_ports(4)
        self.procs: dict[str, subprocess.Popen] = {}
        self.munge_socket = self.root / "munge" / "munge.socket"
        # Slightly under the machine's memory: slurmd drains a node whose RealMemory is more than it has.
        self.mem_mb = max(1024, int(_mem_mb() * 0.9))

    # -- clients --------------------------------------------------------------------------
    def env(self, base: dict | None = None) -> dict:
        """``base`` (default: os.environ) with SLURM_CONF pointing at this cluster, and no other
        cluster's settings (SBATCH_PARTITION, SLURM_JOB_ID... of a shell that runs inside a job)."""
        env = {k: v for k, v in (os.environ if base is None else base).items()
               if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_", "SQUEUE_", "SACCT_"))}
        env["SLURM_CONF"] = str(self.conf)
        return env

    def cmd(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """A SLURM client command (sinfo, squeue, scancel, sacct, sbatch) against this cluster."""
        return subprocess.run(list(args), env=self.env(), capture_output=True, text=True, check=check,
                              timeout=timeout)

    def jobs(self) -> dict[str, str]:
        """Job id -> state of the jobs slurmctld knows (pending, running, recently ended)."""
        out = self.cmd("squeue", "-h", "-t", "all", "-o", "%i %T", check=False).stdout
        return dict(line.split(None, 1) for line in out.splitlines() if line.strip())

    def sacct_state(self, job_id: str) -> str:
        """The job's state in the accounting database, as submitit reads it (e.g. ``CANCELLED by 0``)."""
        out = self.cmd("sacct", "-X", "-n", "-P", "-o", "State", "-j", str(job_id), check=False).stdout
        return out.strip().splitlines()[0] if out.strip() else ""

    def log(self, name: str) -> Path:
        """A daemon's log file: munged and MariaDB write in their own folders, the SLURM daemons in log/."""
        where = {"munged": self.root / "munge", "mariadb": self.root / "db"}
        return where.get(name, self.root / "log") / f"{name}.log"

    def logs(self, n: int = 15) -> str:
        return "\n".join(f"--- {name} ---\n{_tail(self.log(name), n)}"
                         for name in ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadb"))

    # -- start ----------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str], user: str | None = None, env: dict | None = None) -> None:
        out = open(self.root / "log" / f"{name}.out", "ab")
        kw = {"user": user, "group": user, "extra_groups": []} if user else {}
        self.procs[name] = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=env or self.env(), start_new_session=True, **kw)
        out.close()

    def _wait(self, what: str, ok, timeout: float, log: str) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if ok():
                return
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                break
            time.sleep(0.2)
        dead = [f"{n} exited {p.returncode}" for n, p in self.procs.items() if p.poll() is not None]
        raise SlurmUnavailable(f"{what} did not come up in {timeout:.0f}s ({'; '.join(dead) or 'still starting'}):\n"
                               f"{_tail(self.root / 'log' / f'{log}.out')}\n{_tail(self.log(log))}")

    def _munge(self) -> None:
        d = self.root / "munge"
        d.mkdir(mode=0o755)
        shutil.chown(d, "munge", "munge")
        key = MUNGE_KEY
        if not key.exists():  # Debian's postinst creates it; make one for this cluster otherwise
            key = d / "munge.key"
            key.write_bytes(os.urandom(128))
            os.chmod(key, 0o400)
            shutil.chown(key, "munge", "munge")
        self._spawn("munged", [_which("munged"), "--foreground", "--num-threads=4", f"--socket={self.munge_socket}",
                               f"--key-file={key}", f"--pid-file={d / 'munged.pid'}",
                               f"--log-file={self.log('munged')}", f"--seed-file={d / 'seed'}"],
                    user="munge")
        self._wait("munged", self.munge_socket.exists, 15, "munged")

    def _mariadb(self) -> None:
        d = self.root / "db"
        d.mkdir()
        shutil.chown(d, "mysql", "mysql")
        sock = d / "mysqld.sock"
        subprocess.run([_which("mariadb-install-db", "mysql_install_db"), "--no-defaults", f"--datadir={d / 'data'}",
                        "--user=mysql", "--auth-root-authentication-method=normal", "--skip-test-db"],
                       check=True, capture_output=True, timeout=120)
        self._spawn("mariadb", [_which("mariadbd", "mysqld"), "--no-defaults", f"--datadir={d / 'data'}",
                                f"--socket={sock}", f"--port={self.db_port}", "--bind-address=127.0.0.1",
                                "--skip-name-resolve", f"--pid-file={d / 'mysqld.pid'}",
                                f"--log-error={self.log('mariadb')}", "--innodb-buffer-pool-size=64M",
                                "--innodb-flush-log-at-trx-commit=0", "--innodb-lock-wait-timeout=900"],
                    user="mysql")
        self._wait("MariaDB", lambda: sock.exists() and _listening(self.db_port), 60, "mariadb")
        sql = (f"CREATE USER '{DB_USER}'@'127.0.0.1' IDENTIFIED BY '{DB_PASSWORD}'; "
               f"GRANT ALL ON {DB_NAME}.* TO '{DB_USER}'@'127.0.0.1';")
        subprocess.run([_which("mariadb", "mysql"), "--no-defaults", "-S", str(sock), "-u", "root", "-e", sql],
                       check=True, capture_output=True, timeout=60)

    def _write_conf(self) -> None:
        r = self.root
        for sub in ("state", "spool"):
            (r / sub).mkdir()
        (r / "slurmdbd.conf").write_text(f"""\
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
DbdAddr=127.0.0.1
DbdHost=localhost
DbdPort={self.dbd_port}
SlurmUser=root
LogFile={r / 'log' / 'slurmdbd.log'}
PidFile={r / 'slurmdbd.pid'}
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={self.db_port}
StorageUser={DB_USER}
StoragePass={DB_PASSWORD}
StorageLoc={DB_NAME}
""")
        os.chmod(r / "slurmdbd.conf", 0o600)  # slurmdbd refuses a readable one
        host = socket.gethostname().split(".")[0]  # slurmctld only runs where SlurmctldHost names it
        self.conf.write_text(f"""\
# One node on localhost, written by tests/helpers/slurm.py
ClusterName={CLUSTER}
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CredType=cred/munge
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}
SlurmctldPidFile={r / 'slurmctld.pid'}
SlurmdPidFile={r / 'slurmd.pid'}
SlurmctldLogFile={r / 'log' / 'slurmctld.log'}
SlurmdLogFile={r / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={self.dbd_port}
AccountingStoragePass={self.munge_socket}
JobCompType=jobcomp/none
ReturnToService=2
KillWait={self.kill_wait}
InactiveLimit=0
MinJobAge=600
NodeName={NODE} NodeHostname=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.mem_mb} State=UNKNOWN
PartitionName=debug Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
""")

    def _node_idle(self) -> bool:
        out = self.cmd("sinfo", "-h", "-n", NODE, "-o", "%T", check=False).stdout.strip()
        return out == "idle"

    def start(self) -> SlurmCluster:
        (self.root / "log").mkdir()
        try:
            self._munge()
            self._mariadb()
            self._write_conf()
            self._spawn("slurmdbd", [_which("slurmdbd"), "-D"])  # reads slurmdbd.conf beside SLURM_CONF
            self._wait("slurmdbd", lambda: _listening(self.dbd_port), 60, "slurmdbd")
            self._spawn("slurmctld", [_which("slurmctld"), "-D", "-f", str(self.conf)])
            self._wait("slurmctld", lambda: _listening(self.ctld_port), 30, "slurmctld")
            self._spawn("slurmd", [_which("slurmd"), "-D", "-f", str(self.conf), "-N", NODE])
            self._wait(f"node {NODE} (idle in sinfo)", self._node_idle, 60, "slurmd")
            # slurmctld registers the cluster with slurmdbd; sacct must answer before submitit asks it.
            self._wait("sacct", lambda: self.cmd("sacct", "-n", "-X", check=False).returncode == 0, 30, "slurmdbd")
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            out = getattr(exc, "stderr", None) or getattr(exc, "output", None) or b""
            out = out.decode(errors="replace") if isinstance(out, bytes) else str(out)
            self.stop()
            raise SlurmUnavailable(f"{exc}\n{out[-2000:]}") from exc
        except BaseException:
            self.stop()
            raise
        return self

    # -- stop -----------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancel what still runs, then stop the daemons (newest first) by the PIDs started here."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.cmd("scancel", "--full", "-u", "root", check=False)
            deadline = time.time() + 10 + self.kill_wait
            while time.time() < deadline and any(
                    s in ("RUNNING", "PENDING", "COMPLETING", "CONFIGURING") for s in self.jobs().values()):
                time.sleep(0.5)
        for name in reversed(list(self.procs)):
            p = self.procs[name]
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=15)
        self.procs.clear()
        shutil.rmtree(self.root, ignore_errors=True)
