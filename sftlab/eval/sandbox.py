"""Run untrusted Python (model-written code) in a separate, confined process.

``run_python(code)`` starts a fresh ``python -I`` and returns a ``SandboxResult``:
``passed`` (the program ran to the end), ``failed`` (it raised, exited non-zero or was
killed by a limit), ``timeout`` (wall-clock limit), or ``error`` (the sandbox itself could
not be set up: the program did not run, and ``humaneval`` stops with ``SandboxError``
rather than score it 0).

The program runs in new mount, PID, network, IPC and UTS namespaces (``unshare``), inside
a root directory built for it, as a fresh uid with no capabilities. What it sees:

=====================  ================================================================
path                   what
=====================  ================================================================
interpreter            ``sys.prefix``, ``sys.base_prefix``, the standard library and
                       site-packages, at their own paths (also under /tmp), read-only
/lib /usr/lib ...      the system's shared libraries, ``/etc/ld.so.cache``, read-only
/dev                   null, zero, random, urandom; nothing else
/proc                  fresh, for the new PID namespace: only the program's processes
/tmp, /tmp/work        a private tmpfs (``tmpfs_mb``, ``max_files`` inodes); the program
                       starts in /tmp/work; thrown away with the namespace
=====================  ================================================================

Nothing else exists for it: not /etc, /home, /root, the repository, other processes or
the network (an empty network namespace). Limits: wall clock (the parent kills the process
group, which ends the PID namespace and everything in it), ``RLIMIT_CPU``, ``RLIMIT_AS``
(``memory_mb``), ``RLIMIT_FSIZE`` (``max_file_mb``), ``RLIMIT_NOFILE``, and
``RLIMIT_NPROC`` for the fresh uid, so a fork bomb stops at ``max_processes``.
``python_guards`` adds Python-level refusals (``open`` for writing outside the work dir,
``socket``) that make honest mistakes readable; the kernel enforces the rest.

As root the program runs as a fresh uid (so the interpreter's directories must be
readable by other users; no capability is kept to get around that); as an ordinary user a
user namespace stands in (``unshare --user``, where the kernel allows unprivileged user
namespaces) and the program runs as that user with every capability dropped. Both need
util-linux (``unshare``, ``setpriv``). Where namespaces are refused (some containers), the
run is an ``error`` naming what failed. ``SFTLAB_UNSAFE_SANDBOX=1`` opts out: the program
then runs WITHOUT confinement (it can read what you can read, and reach the network),
only under the rlimits and Python guards, in a temporary directory; a warning says so.

What no sandbox of this kind can stop: the program shares its process with the code that
reports success, so a program that knows how may fake a pass (it cannot escape to fake
anything else).

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
import site
import subprocess
import sys
import sysconfig
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Literal, Sequence

from sftlab.errors import SftlabError

Status = Literal["passed", "failed", "timeout", "error"]

UNSAFE_ENV = "SFTLAB_UNSAFE_SANDBOX"
# new mount, PID, network, IPC and hostname namespaces; --kill-child: the namespace dies
# with unshare, which the parent kills at the timeout
NAMESPACES = ["unshare", "--mount", "--pid", "--net", "--ipc", "--uts", "--fork",
              "--kill-child"]
# shared libraries the interpreter (and setpriv) load; symlinks (/lib -> usr/lib) are kept
LIBRARY_DIRS = ["/lib", "/lib64", "/lib32", "/libx32", "/usr/lib", "/usr/lib64",
                "/usr/lib32", "/usr/libx32"]
DEVICES = ["/dev/null", "/dev/zero", "/dev/random", "/dev/urandom"]
SETUP_FAILED = "sftlab-sandbox: setup failed"
HOW_TO_FIX = (
    "fix: run as root or where unprivileged user namespaces are allowed "
    "(sysctl kernel.unprivileged_userns_clone=1, or on Ubuntu "
    "kernel.apparmor_restrict_unprivileged_userns=0; in Docker: --privileged or a seccomp "
    f"profile allowing unshare), or set {UNSAFE_ENV}=1 to run model-written code WITHOUT "
    "isolation (it can then read your files and reach the network)"
)


class SandboxError(SftlabError):
    """The sandbox could not be set up, so nothing was run (and nothing may be scored)."""


@dataclass
class SandboxLimits:
    """Limits of one sandboxed run."""

    timeout: float = 10.0
    """Wall-clock seconds for the whole run, interpreter start included."""
    memory_mb: int = 1024
    """Address-space limit of the program (MiB); a larger allocation raises MemoryError."""
    max_processes: int = 16
    """Processes and threads the program may have at once (stops fork bombs)."""
    max_file_mb: int = 16
    """Largest file the program may write (MiB), its output included."""
    tmpfs_mb: int = 64
    """Size of the program's private /tmp, its work directory included (MiB)."""
    max_files: int = 2048
    """Files and directories the program may create in its private /tmp."""
    max_open_files: int = 64
    """File descriptors the program may hold open at once."""
    python_guards: bool = True
    """Also refuse writes outside the work dir and sockets in Python, with a readable
    PermissionError (the kernel-level confinement applies either way)."""


@dataclass
class SandboxResult:
    status: Status
    message: str
    duration: float
    stdout: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# The child's first code, run by ``python -I -c`` as root of the new namespaces; settings
# (JSON) on stdin. It builds the new root, moves into it, sets the rlimits and execs the
# program's interpreter through setpriv, which drops to the fresh uid and every
# capability. Any failure on the way is reported on stderr, and the program never runs.
_BOOTSTRAP = r'''
import ctypes, json, os, resource, sys
cfg = json.loads(sys.stdin.read())
limits, workdir = cfg["limits"], cfg["workdir"]
libc = ctypes.CDLL(None, use_errno=True)
RDONLY, NOSUID, NODEV, NOEXEC, REMOUNT, BIND, MOVE, REC, PRIVATE = (
    1, 2, 4, 8, 32, 4096, 8192, 16384, 1 << 18)
step = "reading the settings"

def mount(source, target, fstype, flags, data=None):
    if libc.mount(source.encode(), target.encode(), fstype and fstype.encode(), flags,
                  data and data.encode()) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"mount {source} on {target}: {os.strerror(errno)}")

def bind_read_only(source, target, devices=False):
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    mount(source, target, None, BIND)
    # a remount must keep the flags the source mount has locked (inside a user namespace)
    kept = os.statvfs(source).f_flag & (NOSUID | NODEV | NOEXEC | 1024 | 2048)
    kept |= (1 << 21) if os.statvfs(source).f_flag & 4096 else 0  # relatime
    flags = REMOUNT | BIND | RDONLY | NOSUID | kept | (0 if devices else NODEV)
    mount("none", target, None, flags)

def build_root(root):
    global step
    step = "making mounts private"
    mount("none", "/", None, REC | PRIVATE)
    step = "mounting the new root"
    mount("sftlab-sandbox", root, "tmpfs", NOSUID | NODEV, "size=4m,mode=755")
    step = "mounting the private /tmp"
    os.mkdir(root + "/tmp")
    mount("sftlab-sandbox-tmp", root + "/tmp", "tmpfs", NOSUID | NODEV | NOEXEC,
          f"size={limits['tmpfs_mb']}m,nr_inodes={limits['max_files']},mode=1777")
    for target, source in cfg["read_only"]:
        step = f"binding {source} read-only"
        bind_read_only(source, root + target)
    for link, points_to in cfg["links"]:
        os.symlink(points_to, root + link)
    for device in cfg["devices"]:
        step = f"binding {device}"
        bind_read_only(device, root + device, devices=True)
    os.makedirs(root + "/proc", exist_ok=True)
    try:  # only the new PID namespace's processes; without it there is simply no /proc
        mount("proc", root + "/proc", "proc", NOSUID | NODEV | NOEXEC)
    except OSError:
        pass
    os.makedirs(root + workdir, mode=0o700)
    if cfg["uid"] is not None:
        os.chown(root + workdir, cfg["uid"], cfg["uid"])
    step = "making the new root read-only"
    mount("none", root, None, REMOUNT | RDONLY | NOSUID | NODEV)
    step = "entering the new root"
    os.chdir(root)
    mount(root, "/", None, MOVE)
    os.chroot(".")

def own_processes():
    count = 0
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.stat("/proc/" + entry).st_uid == os.getuid():
                count += 1
        except OSError:
            pass
    return count

try:
    os.umask(0o022)
    # without a fresh uid the process limit counts the user's other processes too
    nproc = limits["max_processes"] + (0 if cfg["uid"] is not None else own_processes())
    if cfg["root"]:
        build_root(cfg["root"])
    step = "entering the work directory"
    os.chdir(workdir)
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    settings_path = os.path.join(workdir, ".sandbox-settings.json")
    with open(settings_path, "w") as handle:
        json.dump(cfg, handle)
    if cfg["uid"] is not None:
        os.chown(settings_path, cfg["uid"], cfg["uid"])
    step = "setting the limits"
    cpu = int(limits["timeout"]) + 1
    memory = limits["memory_mb"] * 2**20
    for kind, value in [(resource.RLIMIT_CPU, (cpu, cpu + 1)),
                        (resource.RLIMIT_AS, (memory, memory)),
                        (resource.RLIMIT_FSIZE, (limits["max_file_mb"] * 2**20,) * 2),
                        (resource.RLIMIT_NOFILE, (limits["max_open_files"],) * 2),
                        (resource.RLIMIT_CORE, (0, 0)),
                        (resource.RLIMIT_NPROC, (nproc, nproc))]:
        resource.setrlimit(kind, value)
    os.environ.update(HOME=workdir, TMPDIR=workdir)
    step = "starting the interpreter"
    python = [cfg["python"], "-I", "-c", cfg["stage2"], settings_path]
    if cfg["setpriv"] is None:
        os.execv(cfg["python"], python)
    uid = cfg["uid"]
    switch = [f"--reuid={uid}", f"--regid={uid}", "--clear-groups"] if uid is not None else []
    os.execv(cfg["setpriv"], [cfg["setpriv"], *switch, "--no-new-privs", "--inh-caps=-all",
                              "--ambient-caps=-all", "--bounding-set=-all", "--", *python])
except Exception as error:
    os.write(2, f"sftlab-sandbox: setup failed while {step}: {error}\n".encode())
    os._exit(125)
'''

# Second stage, the interpreter inside the sandbox, as the sandbox uid: the ready token
# (written before any of the program runs, so the program cannot forge a setup failure),
# Python-level guards, then the program.
_STAGE2 = r'''
import builtins, io, json, os, sys, traceback
with open(sys.argv[1]) as handle:
    cfg = json.load(handle)
os.remove(sys.argv[1])
os.write(1, (cfg.pop("ready") + "\n").encode())
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
    realpath, readlink, join = os.path.realpath, os.readlink, os.path.join
    def inside(path, dir_fd=None):
        if isinstance(path, int):
            return True
        path = os.fsdecode(path)
        if dir_fd is not None:
            try:
                path = join(readlink(f"/proc/self/fd/{dir_fd}"), path)
            except OSError:
                return False
        resolved = realpath(path)
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
        if flags & write_flags and not inside(path, kwargs.get("dir_fd")):
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
    try:  # what it printed before failing helps to read the failure
        sys.stdout.flush()
    except BaseException:
        pass
    sys.stderr.write("".join(lines))
    sys.stderr.flush()
    os._exit(1)
sys.stdout.write("\n" + cfg["token"] + "\n")
sys.stdout.flush()
os._exit(0)
'''


@functools.lru_cache(maxsize=1)
def isolation() -> dict[str, bool]:
    """What this machine allows: ``namespaces`` (``unshare`` can create the sandbox's
    namespaces) and ``drop_privileges`` (we are root and can run the code as a fresh uid)."""
    namespaces = False
    if shutil.which("unshare"):
        try:
            probe = subprocess.run([*_namespaces(), "true"], capture_output=True, timeout=10)
            namespaces = probe.returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            namespaces = False
    setpriv = shutil.which("setpriv")
    return {"namespaces": namespaces, "drop_privileges": os.geteuid() == 0 and bool(setpriv)}


def _namespaces() -> list[str]:
    """The ``unshare`` command; an ordinary user also needs a user namespace."""
    if os.geteuid() == 0:
        return list(NAMESPACES)
    return [NAMESPACES[0], "--user", "--map-root-user", *NAMESPACES[1:]]


def _python_paths() -> list[str]:
    """Directories the interpreter needs: its prefixes, standard library, site-packages
    and its own directory, each as given and resolved (a venv's ``bin/python`` links to
    the base interpreter; the venv is found by the path it was started as)."""
    paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.abspath(sys.executable))]
    paths += [sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib",
                                                      "platlib")]
    paths += site.getsitepackages()
    found = []
    for path in paths:
        for variant in (os.path.abspath(path), os.path.realpath(path)):
            if os.path.isdir(variant):
                found.append(variant)
    return found


def _outermost(paths: Sequence[str]) -> list[str]:
    """``paths`` without duplicates and without those inside another one (already seen).

    >>> _outermost(["/usr/lib", "/opt/py", "/usr/lib/x", "/opt/py"])
    ['/opt/py', '/usr/lib']
    """
    kept: list[str] = []
    for path in sorted(set(paths)):
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return kept


@functools.lru_cache(maxsize=1)
def _layout() -> dict:
    """The new root: ``read_only`` [target, source] pairs, ``links`` [path, target] and
    ``devices``, all taken from this machine and this interpreter (computed once)."""
    links, library = [], []
    for directory in LIBRARY_DIRS:
        if os.path.islink(directory):
            links.append([directory, os.readlink(directory)])
            library.append(os.path.realpath(directory))
        elif os.path.isdir(directory):
            library.append(directory)
    files = [path for path in ["/etc/ld.so.cache", shutil.which("setpriv")]
             if path and os.path.isfile(path)]
    directories = _outermost(_python_paths() + library)
    read_only = [[path, os.path.realpath(path)] for path in directories]
    read_only += [[path, os.path.realpath(path)] for path in files
                  if not any(path.startswith(d.rstrip("/") + "/") for d in directories)]
    read_only.sort(key=lambda pair: pair[0])
    linked = {link for link, _ in links}
    read_only = [pair for pair in read_only if pair[0] not in linked]
    return {"read_only": read_only, "links": links,
            "devices": [device for device in DEVICES if os.path.exists(device)]}


def _readable_by_others(paths: Sequence[str]) -> bool:
    """True if a user with no special rights can read each of ``paths`` (and enter it, for
    a directory; run it, for an executable)."""
    def readable(path: str) -> bool:
        needed = 0o005 if os.path.isdir(path) or os.access(path, os.X_OK) else 0o004
        return os.stat(path).st_mode & needed == needed
    return all(readable(path) for path in paths if os.path.exists(path))


def _cannot_confine() -> str | None:
    """Why the sandbox cannot be built here, or None. (No capability is ever kept to
    read an unreadable interpreter: ``CAP_DAC_READ_SEARCH`` opens any file of the disk by
    handle, around every mount.)"""
    for tool in ("unshare", "setpriv"):
        if not shutil.which(tool):
            return f"{tool} (util-linux) is not installed"
    if os.geteuid() == 0:  # the code runs as a fresh uid: it must be able to read Python
        sources = [source for _, source in _layout()["read_only"]]
        unreadable = [path for path in sources + [os.path.realpath(sys.executable)]
                      if not _readable_by_others([path])]
        if unreadable:
            return (f"{unreadable[0]} is not readable by other users, and the code runs as "
                    "an unprivileged uid (chmod -R o+rX it, or use another interpreter)")
    return None


@functools.lru_cache(maxsize=1)
def _warn_unconfined() -> None:
    sys.stderr.write(f"sftlab: WARNING: {UNSAFE_ENV}=1: model-written code runs WITHOUT "
                     "isolation (it can read your files and reach the network)\n")


def run_python(code: str, limits: SandboxLimits | None = None) -> SandboxResult:
    """Run ``code`` as a program in the sandbox; passed = it ran to the end."""
    limits = limits or SandboxLimits()
    unconfined = os.environ.get(UNSAFE_ENV) == "1"
    if unconfined:
        _warn_unconfined()
    elif problem := _cannot_confine():
        return SandboxResult("error", f"{SETUP_FAILED}: {problem}; {HOW_TO_FIX}", 0.0)
    root = tempfile.mkdtemp(prefix="sftlab-sandbox-")  # the mount point of the new root
    command = [sys.executable, "-I", "-c", _BOOTSTRAP]
    if not unconfined:
        command = [*_namespaces(), *command]
    try:
        return _execute(command, _settings(code, limits, root, unconfined), limits)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _settings(code: str, limits: SandboxLimits, root: str, unconfined: bool) -> dict:
    """What the bootstrap needs (JSON-able). Unconfined: the temporary directory is the
    work dir and nobody is switched to."""
    layout = {"read_only": [], "links": [], "devices": []} if unconfined else _layout()
    # as root: a fresh uid of its own; as a user: itself, as root of its user namespace
    uid = 200000 + secrets.randbelow(10**8) if not unconfined and os.geteuid() == 0 else None
    return {"code": code, "limits": asdict(limits), "uid": uid, "stage2": _STAGE2,
            "token": secrets.token_hex(16), "ready": secrets.token_hex(16),
            "python": os.path.abspath(sys.executable), "root": None if unconfined else root,
            "workdir": root if unconfined else "/tmp/work",
            "setpriv": None if unconfined else shutil.which("setpriv"), **layout}


def _execute(command: list[str], settings: dict, limits: SandboxLimits) -> SandboxResult:
    start = time.monotonic()
    # one thread per numeric library: thread pools would eat the process limit
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=out, stderr=err,
                                       env=env, cwd="/", start_new_session=True)
        except OSError as error:
            return SandboxResult("error", f"{SETUP_FAILED}: cannot start {command[0]}: "
                                          f"{error}; {HOW_TO_FIX}", 0.0)
        timed_out = False
        try:
            process.communicate(json.dumps(settings).encode(), timeout=limits.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill_everything(process, settings["uid"])
        duration = time.monotonic() - start
        stdout, stderr = _tail(out, head=len(settings["ready"]) + 1), _tail(err)
    return _result(process.returncode, stdout, stderr, timed_out, duration, settings, limits)


def _result(returncode: int, stdout: str, stderr: str, timed_out: bool, duration: float,
            settings: dict, limits: SandboxLimits) -> SandboxResult:
    """Read the run's outcome. The ready token opens stdout once the interpreter runs in
    the finished sandbox:
    without it the program never ran, and the run is an ``error``, never a ``failed``."""
    ready = settings["ready"] + "\n"
    if not stdout.startswith(ready):
        if timed_out:
            return SandboxResult("timeout", f"the sandbox did not start within "
                                            f"{limits.timeout:g} s", duration)
        return SandboxResult("error", _setup_failure(returncode, stderr), duration)
    stdout = stdout[len(ready):]
    if timed_out:
        return SandboxResult("timeout", f"timed out after {limits.timeout:g} s", duration, stdout)
    lines = stdout.rstrip("\n").split("\n")
    if returncode == 0 and lines[-1] == settings["token"]:
        return SandboxResult("passed", "", duration, "\n".join(lines[:-1]).rstrip("\n"))
    return SandboxResult("failed", _failure_message(returncode, stderr), duration, stdout)


def _setup_failure(returncode: int, stderr: str) -> str:
    """``sftlab-sandbox: setup failed while ...: <reason>; fix: ...`` from what the
    bootstrap (or ``unshare``) wrote."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith(SETUP_FAILED)]
    if ours:
        reason = ours[-1]
    else:
        detail = lines[-1] if lines else f"exit status {returncode}"
        reason = f"{SETUP_FAILED}: {detail}"
    return f"{reason}; {HOW_TO_FIX}"


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


def _tail(handle, limit: int = 64 * 1024, head: int = 0) -> str:
    """The last ``limit`` bytes of ``handle`` as text, after its first ``head`` bytes
    (kept: the ready token must survive a long output)."""
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    handle.seek(0)
    first = handle.read(min(head, size))
    handle.seek(max(len(first), size - limit))
    return (first + handle.read()).decode("utf-8", errors="replace")


def _failure_message(returncode: int, stderr: str) -> str:
    """The exception line (``AssertionError``, ``MemoryError: ...``) or the signal that
    killed the program (``killed by SIGXCPU``)."""
    if returncode is not None and returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else f"exit status {returncode}"


def check_sandbox(limits: SandboxLimits | None = None) -> None:
    """Raise ``SandboxError`` (with what failed and how to fix it) unless a sandbox can be
    set up here; a task calls it before generating, not after hours of generation."""
    result = run_python("pass", limits)
    if result.status == "error":
        raise SandboxError(result.message)


def run_many(programs: Sequence[str], limits: SandboxLimits | None = None,
             workers: int = 2) -> list[SandboxResult]:
    """``run_python`` over many programs with ``workers`` sandboxes at a time, in order."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda code: run_python(code, limits), programs))
