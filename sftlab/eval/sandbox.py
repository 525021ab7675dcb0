"""Run untrusted Python (model-written code) in a separate, limited process.

``run_python(code)`` starts a fresh ``python -I`` and returns a ``SandboxResult``:
``passed`` (the program ran to the end), ``failed`` (it raised, exited non-zero or was
killed by a limit), ``timeout`` (wall-clock limit), or ``error`` (the sandbox itself
could not start). What is enforced, and where ("OS" = the kernel enforces it; "Python" =
a guard inside the child that stops honest mistakes, not an adversary, since ``ctypes``
or ``_io.FileIO`` go around it):

- time: wall clock (the parent kills the process group, which tears down the PID
  namespace and everything in it) and ``RLIMIT_CPU`` [OS];
- memory: ``RLIMIT_AS``, default 1 GiB [OS];
- processes: ``RLIMIT_NPROC`` for a fresh uid used by this run only, so a fork bomb hits
  the limit at once and cannot starve anyone else [OS];
- files: ``RLIMIT_FSIZE``; the code runs as that uid, so root-owned trees (the repo) are
  read-only; /tmp and /dev/shm are private tmpfs mounts, thrown away afterwards [OS];
  ``open``/``os.*`` writes outside the work dir raise ``PermissionError`` [Python];
- network: a new, empty network namespace (only a down loopback) [OS]; ``socket.socket``
  and friends raise ``PermissionError`` [Python];
- reading is NOT restricted: the code may read what its uid can read, and everything when
  the interpreter lives under a private directory such as /root (it then keeps
  ``CAP_DAC_READ_SEARCH``, a read-only capability, so Python can load its own modules).

The OS-level part needs root and util-linux (``unshare``, ``setpriv``); ``isolation()``
says what is available. Without it the sandbox still runs with the rlimits and the
Python-level guards in a temporary directory (removed afterwards), and ``RLIMIT_NPROC``
is then set relative to the processes the user already has.

>>> run_python("assert 1 + 1 == 2").status
'passed'
>>> run_python("assert 1 + 1 == 3").message
'AssertionError'
"""
from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Literal, Sequence

Status = Literal["passed", "failed", "timeout", "error"]


@dataclass
class SandboxLimits:
    """Limits of one run. ``timeout`` is wall-clock seconds including interpreter start."""

    timeout: float = 10.0
    memory_mb: int = 1024
    max_processes: int = 16
    max_file_mb: int = 16
    tmpfs_mb: int = 64
    python_guards: bool = True


@dataclass
class SandboxResult:
    status: Status
    message: str
    duration: float
    stdout: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# The child's first code: limits, privilege drop, guards, then the program.
# It runs as ``python -I -c`` and reads its settings (JSON) from stdin.
_BOOTSTRAP = r'''
import json, os, resource, sys
cfg = json.loads(sys.stdin.read())
sys.stdin = open(os.devnull)
limits = cfg["limits"]
if cfg["private_tmp"]:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    size = f"size={limits['tmpfs_mb']}m,mode=1777".encode()
    for target in (b"/tmp", b"/dev/shm"):
        if os.path.isdir(target) and libc.mount(b"tmpfs", target, b"tmpfs", 0, size) != 0:
            if target == b"/tmp":
                sys.exit("sandbox: cannot mount a private /tmp")
    os.makedirs("/tmp/work", exist_ok=True)
    cfg["workdir"] = "/tmp/work"
workdir = cfg["workdir"]
uid = cfg["uid"]
if uid is not None:
    os.chown(workdir, uid, uid)
os.chdir(workdir)
os.environ["HOME"] = os.environ["TMPDIR"] = workdir

def own_processes():
    count = 0
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.stat("/proc/" + entry).st_uid == os.getuid():
                count += 1
        except OSError:
            pass
    return count

cpu = int(limits["timeout"]) + 1
memory = limits["memory_mb"] * 2**20
nproc = limits["max_processes"] + (0 if uid is not None else own_processes())
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
resource.setrlimit(resource.RLIMIT_FSIZE, (limits["max_file_mb"] * 2**20,) * 2)
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
settings_path = os.path.join(workdir, ".sandbox-settings.json")
with open(settings_path, "w") as handle:
    json.dump(cfg, handle)
python = [sys.executable, "-I", "-c", cfg["stage2"], settings_path]
if uid is None:
    os.execv(sys.executable, python)
os.chown(settings_path, uid, uid)
# setpriv switches to the fresh uid with no capabilities, or only CAP_DAC_READ_SEARCH when
# the interpreter lives where others cannot reach it (e.g. under /root).
caps = "-all,+dac_read_search" if cfg["read_caps"] else "-all"
os.execv(cfg["setpriv"], [cfg["setpriv"], f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                          f"--inh-caps={caps}", f"--ambient-caps={caps}",
                          f"--bounding-set={caps}", "--", *python])
'''

# Second stage, as the sandbox uid: Python-level guards, then the program.
_STAGE2 = r'''
import builtins, io, json, os, sys, traceback
with open(sys.argv[1]) as handle:
    cfg = json.load(handle)
os.remove(sys.argv[1])
limits, workdir = cfg["limits"], cfg["workdir"]

def deny(what):
    raise PermissionError(f"sandbox: {what} is not allowed")

if limits["python_guards"]:
    import socket, _socket
    def no_network(*args, **kwargs):
        deny("network access")
    for module in (socket, _socket):
        for name in ("socket", "socketpair", "fromfd", "create_connection", "create_server"):
            if hasattr(module, name):
                setattr(module, name, no_network)
    root = os.path.realpath(workdir)
    realpath = os.path.realpath
    def inside(path):
        if isinstance(path, int):
            return True
        resolved = realpath(os.fsdecode(path))
        return resolved == root or resolved.startswith(root + os.sep)
    real_open = io.open
    def guarded_open(file, mode="r", *args, **kwargs):
        if any(flag in mode for flag in "wax+") and not inside(file):
            deny(f"writing {file!r} (outside the sandbox directory)")
        return real_open(file, mode, *args, **kwargs)
    builtins.open = io.open = guarded_open
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    real_os_open = os.open
    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & write_flags and not inside(path) and kwargs.get("dir_fd") is None:
            deny(f"writing {path!r} (outside the sandbox directory)")
        return real_os_open(path, flags, *args, **kwargs)
    os.open = guarded_os_open
    def guard_paths(name, positions):
        real = getattr(os, name)
        def guarded(*args, **kwargs):
            for position in positions:
                if position < len(args) and not inside(args[position]):
                    deny(f"os.{name}({args[position]!r}) outside the sandbox directory")
            return real(*args, **kwargs)
        setattr(os, name, guarded)
    for name, positions in {"remove": [0], "unlink": [0], "rmdir": [0], "mkdir": [0],
                            "rename": [0, 1], "replace": [0, 1], "symlink": [1], "link": [1],
                            "chmod": [0], "chown": [0], "truncate": [0], "utime": [0],
                            "mkfifo": [0], "mknod": [0], "removedirs": [0]}.items():
        if hasattr(os, name):
            guard_paths(name, positions)

try:
    program = compile(cfg["code"], "<program>", "exec")
    exec(program, {"__name__": "__main__", "__builtins__": builtins})
except BaseException as error:
    lines = traceback.format_exception_only(type(error), error)
    sys.stderr.write("".join(lines))
    sys.stderr.flush()
    os._exit(1)
sys.stdout.write("\n" + cfg["token"] + "\n")
sys.stdout.flush()
os._exit(0)
'''

_NAMESPACES = ["unshare", "--net", "--pid", "--mount", "--fork", "--kill-child"]


@functools.lru_cache(maxsize=1)
def isolation() -> dict[str, bool]:
    """What this machine allows: ``namespaces`` (network, PID and mount namespaces via
    ``unshare``, with a private /tmp) and ``drop_privileges`` (we are root and can run the
    code as a fresh uid)."""
    namespaces = False
    if shutil.which("unshare"):
        try:
            probe = subprocess.run([*_NAMESPACES, "true"], capture_output=True, timeout=10)
            namespaces = probe.returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            namespaces = False
    setpriv = shutil.which("setpriv")
    return {"namespaces": namespaces, "drop_privileges": os.geteuid() == 0 and bool(setpriv)}


def _reachable_by_others(path: str) -> bool:
    """True if a user with no special rights can execute ``path`` (every parent directory
    searchable by others)."""
    path = os.path.realpath(path)
    parts = path.split(os.sep)
    for depth in range(2, len(parts)):
        if not os.stat(os.sep.join(parts[:depth]) or os.sep).st_mode & 0o001:
            return False
    return bool(os.stat(path).st_mode & 0o001)


def run_python(code: str, limits: SandboxLimits | None = None) -> SandboxResult:
    """Run ``code`` as a program in the sandbox; passed = it ran to the end."""
    limits = limits or SandboxLimits()
    support = isolation()
    uid = 200000 + secrets.randbelow(10**8) if support["drop_privileges"] else None
    workdir = None if support["namespaces"] else tempfile.mkdtemp(prefix="sftlab-sandbox-")
    token = secrets.token_hex(16)
    settings = {"code": code, "limits": asdict(limits), "uid": uid, "token": token,
                "stage2": _STAGE2, "setpriv": shutil.which("setpriv"),
                "read_caps": not _reachable_by_others(sys.executable),
                "private_tmp": support["namespaces"], "workdir": workdir}
    command = [sys.executable, "-I", "-c", _BOOTSTRAP]
    if support["namespaces"]:
        command = [*_NAMESPACES, *command]
    try:
        return _execute(command, json.dumps(settings), limits, token, uid, workdir)
    finally:
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def _execute(command, settings: str, limits: SandboxLimits, token: str, uid,
             workdir) -> SandboxResult:
    start = time.monotonic()
    # one thread per numeric library: thread pools would eat the process limit
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=out, stderr=err,
                                       env=env, cwd=workdir or "/", start_new_session=True)
        except OSError as error:
            return SandboxResult("error", f"cannot start the sandbox: {error}", 0.0)
        timed_out = False
        try:
            process.communicate(settings.encode(), timeout=limits.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill_everything(process, uid)
        duration = time.monotonic() - start
        stdout, stderr = _tail(out), _tail(err)
    if timed_out:
        return SandboxResult("timeout", f"timed out after {limits.timeout:g} s", duration, stdout)
    lines = stdout.rstrip("\n").split("\n")
    if process.returncode == 0 and lines[-1] == token:
        return SandboxResult("passed", "", duration, "\n".join(lines[:-1]).rstrip("\n"))
    return SandboxResult("failed", _failure_message(process.returncode, stderr), duration, stdout)


def _kill_everything(process: subprocess.Popen, uid: int | None) -> None:
    """Kill the process group (and with it the PID namespace), then any stray process
    still running as the sandbox uid (a fork bomb's children may have left the group)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()
    if uid is None:
        return
    # the kernel tears a PID namespace down asynchronously: wait until nothing is left
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        stray = _processes_of(uid)
        if not stray:
            return
        for pid in stray:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.02)


def _processes_of(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.stat(f"/proc/{entry}").st_uid == uid:
                pids.append(int(entry))
        except OSError:
            pass
    return pids


def _tail(handle, limit: int = 64 * 1024) -> str:
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    handle.seek(max(0, size - limit))
    return handle.read().decode("utf-8", errors="replace")


def _failure_message(returncode: int, stderr: str) -> str:
    """The exception line (``AssertionError``, ``MemoryError: ...``) or the signal that
    killed the program (``killed by SIGXCPU``)."""
    if returncode is not None and returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else f"exit status {returncode}"


def run_many(programs: Sequence[str], limits: SandboxLimits | None = None,
             workers: int = 2) -> list[SandboxResult]:
    """``run_python`` over many programs with ``workers`` sandboxes at a time, in order."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda code: run_python(code, limits), programs))
