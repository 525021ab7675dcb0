"""The sandbox holds against a program that tries to get out (sftlab issue 12).

Every attack runs with the Python-level guards off (``OS_ONLY``): what stops it is the
kernel (namespaces, the read-only root built for the program, rlimits), and nothing the
program reads may come back in its output, which ends up in samples.jsonl.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import pytest

from sftlab.eval import sandbox
from sftlab.eval.humaneval import HumanEval
from sftlab.eval.sandbox import SandboxError, SandboxLimits, isolation, run_python

pytestmark = pytest.mark.skipif(not isolation()["namespaces"],
                                reason="the sandbox needs namespaces (unshare)")

OS_ONLY = SandboxLimits(timeout=5.0, python_guards=False)
REPO = Path(__file__).resolve().parents[3]
SECRET = "sftlab-test-secret-7f3a9c"
PROBLEM = {"task_id": "Toy/0", "id": "Toy/0", "prompt": "def one():\n",
           "canonical_solution": "    return 1\n", "entry_point": "one",
           "test": "def check(candidate):\n    assert candidate() == 1\n"}


def _seen(result) -> str:
    """Everything of a run that reaches the user (and samples.jsonl)."""
    return result.stdout + "\n" + result.message


def _run_json(code: str):
    """Run ``code`` (which prints one JSON value last) and return that value."""
    result = run_python(code, OS_ONLY)
    assert result.passed, result.message
    return json.loads(result.stdout.splitlines()[-1])


# --- from an interpreter under /tmp ------------------------------------------------------

@pytest.fixture(scope="module")
def tmp_python():
    """A virtualenv's python under /tmp (a clone or venv there used to score 0: the private
    /tmp hid the interpreter)."""
    home = Path(tempfile.mkdtemp(prefix="sftlab-venv-", dir="/tmp"))
    made = subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(home / "venv")],
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    yield home / "venv" / "bin" / "python"
    subprocess.run(["rm", "-rf", str(home)], check=False)


def test_sandbox_works_from_an_interpreter_under_tmp(tmp_python):
    script = (
        "import json\nfrom sftlab.eval.sandbox import run_python\n"
        "runs = [run_python(code) for code in ('assert 1 + 1 == 2', 'assert 1 + 1 == 3',"
        " 'import json, os, sys; print(json.dumps([sys.prefix, os.listdir(\"/tmp\")]))')]\n"
        "print(json.dumps([[r.status, r.message, r.stdout] for r in runs]))\n")
    done = subprocess.run([str(tmp_python), "-c", script], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert done.returncode == 0, done.stderr
    passed, failed, listing = json.loads(done.stdout.splitlines()[-1])
    assert passed[0] == "passed"
    assert failed[:2] == ["failed", "AssertionError"]
    prefix, tmp_entries = json.loads(listing[2])
    assert prefix == str(tmp_python.parent.parent)  # it ran the /tmp venv's own python
    # its /tmp holds its work dir and the interpreter's path, none of the host's /tmp
    assert set(tmp_entries) == {"work", tmp_python.parents[2].name}


# --- reading -----------------------------------------------------------------------------

def test_secret_files_cannot_be_read(tmp_path):
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(SECRET)
    secret_file.chmod(0o644)
    shadow = Path("/etc/shadow").read_text().splitlines()[0] if os.access(
        "/etc/shadow", os.R_OK) else SECRET
    paths = ["/etc/shadow", "/etc/passwd", str(secret_file), str(REPO / "pyproject.toml"),
             str(REPO / "sftlab" / "__init__.py"), "/root/.bash_history"]
    code = (f"for path in {paths!r}:\n"
            "    try:\n        print(open(path).read())\n"
            "    except OSError as error:\n        print('refused', type(error).__name__)\n")
    result = run_python(code, OS_ONLY)
    assert result.stdout.count("refused") == len(paths)
    assert SECRET not in _seen(result) and shadow not in _seen(result)
    assert "[project]" not in _seen(result)


def _exposed_children(directory: str) -> set[str]:
    """Names the sandbox may show inside ``directory``: the next component of each path
    it binds (and, in /, its own /tmp, /dev, /proc)."""
    layout = sandbox._layout()
    targets = [target for target, _ in layout["read_only"]] + [link for link, _ in
                                                               layout["links"]]
    prefix = directory.rstrip("/") + "/"
    names = {t[len(prefix):].split("/")[0] for t in targets if t.startswith(prefix)}
    return names | ({"tmp", "dev", "proc"} if directory == "/" else set())


def test_listing_shows_only_the_sandbox_skeleton(tmp_path):
    (tmp_path / f"{SECRET}.txt").write_text("x")
    directories = ["/", "/home", "/root", str(REPO), str(tmp_path.parent), "/etc", "/var"]
    code = ("import json, os\nseen = {}\n"
            f"for directory in {directories!r}:\n"
            "    try:\n        seen[directory] = os.listdir(directory)\n"
            "    except OSError as error:\n        seen[directory] = type(error).__name__\n"
            "print(json.dumps(seen))\n")
    seen = _run_json(code)
    for directory in directories:
        listing = seen[directory]
        if isinstance(listing, str):  # absent: FileNotFoundError
            continue
        host_only = set(os.listdir(directory)) - _exposed_children(directory)
        assert not set(listing) & host_only, (directory, set(listing) & host_only)
    assert set(os.listdir("/")) - _exposed_children("/")  # the host has more to hide
    assert "sftlab" not in seen[str(REPO)] and "tests" not in seen[str(REPO)]
    assert SECRET not in json.dumps(seen)


def test_other_processes_are_invisible(monkeypatch):
    # what `sftlab serve --api-key SECRET` looks like to a process that lists /proc
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "serve",
                               "--api-key", SECRET], env={"SFTLAB_API_KEY": SECRET})
    monkeypatch.setenv("SFTLAB_API_KEY", SECRET)  # the evaluating process's own environment
    try:
        code = ("import os\n"
                f"for path in ['/proc/{server.pid}/cmdline', '/proc/{os.getpid()}/environ',"
                " '/proc/1/cmdline', '/proc/self/environ']:\n"
                "    try:\n        print(path, open(path, 'rb').read())\n"
                "    except OSError as error:\n        print(path, type(error).__name__)\n"
                "pids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
                "for pid in pids:\n"
                "    for name in ('cmdline', 'environ'):\n"
                "        try:\n            print(open(f'/proc/{pid}/{name}', 'rb').read())\n"
                "        except OSError:\n            pass\n"
                "print(dict(os.environ))\nprint('pids', pids)\n")
        result = run_python(code, OS_ONLY)
    finally:
        server.kill()
        server.wait()
    assert result.passed, result.message
    assert SECRET not in _seen(result)
    assert f"/proc/{server.pid}/cmdline FileNotFoundError" in result.stdout
    assert "pids ['1']" in result.stdout  # its own PID namespace: only itself


# --- writing -----------------------------------------------------------------------------

def _write_targets(tmp_path) -> list[Path]:
    tag = f"sftlab-sandbox-probe-{os.getpid()}"
    targets = [Path("/var/tmp") / tag, Path("/dev/shm") / tag, REPO / tag, tmp_path / tag,
               Path(sysconfig.get_paths()["purelib"]) / f"{tag}.pth"]  # a .pth would run later
    return [target for target in targets if target.parent.is_dir()]


@pytest.mark.parametrize("how", ["open", "dir_fd", "FileIO", "os.system", "subprocess"])
def test_writes_outside_its_directories_are_blocked(tmp_path, how):
    targets = _write_targets(tmp_path)
    attempt = {
        "open": "open(target, 'w').write('x')",
        "dir_fd": ("fd = os.open(os.path.dirname(target), os.O_RDONLY)\n"
                   "    os.open(os.path.basename(target), os.O_WRONLY | os.O_CREAT, dir_fd=fd)"),
        "FileIO": "_io.FileIO(target, 'w').write(b'x')",
        "os.system": "assert os.system(f'touch {target}') == 0",
        "subprocess": "subprocess.run(['touch', target], check=True)",
    }[how]
    code = ("import _io, os, subprocess\nwritten = []\n"
            f"for target in {[str(t) for t in targets]!r}:\n"
            f"  try:\n    {attempt}\n    written.append(target)\n"
            "  except Exception:\n    pass\n"
            "print(written)\n")
    result = run_python(code, OS_ONLY)
    assert result.passed, result.message
    assert [target for target in targets if target.exists()] == []


def test_file_count_and_size_are_limited():
    many = ("n = 0\ntry:\n    while n < 100_000:\n        open(f'f{n}', 'w').close(); n += 1\n"
            "except OSError as error:\n    print(n); raise\n")
    start = time.monotonic()
    result = run_python(many, OS_ONLY)
    assert result.status == "failed" and "No space left" in result.message
    assert int(result.stdout.split()[0]) < 100_000
    huge = ("with open('big', 'wb') as handle:\n    for _ in range(1024):\n"
            "        handle.write(bytes(2**20))\n")
    result = run_python(huge, OS_ONLY)
    assert result.status == "failed" and "File too large" in result.message
    assert time.monotonic() - start < 20


def test_fork_bomb_is_bounded():
    bomb = ("import os\ncount = 0\nfor _ in range(10_000):\n    try:\n"
            "        if os.fork() == 0:\n            import time; time.sleep(5); os._exit(0)\n"
            "        count += 1\n    except OSError:\n        break\nprint(count)\n")
    result = run_python(bomb, SandboxLimits(timeout=5.0, max_processes=8, python_guards=False))
    assert result.passed, result.message
    assert int(result.stdout.split()[-1]) <= 8


# --- network -----------------------------------------------------------------------------

def test_no_connection_reaches_the_host():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.5)
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind(f"\0sftlab-sandbox-probe-{os.getpid()}")
    abstract.listen()
    abstract.settimeout(0.5)
    port = server.getsockname()[1]
    code = ("import socket\nreached = []\n"
            f"for family, address in [(socket.AF_INET, ('127.0.0.1', {port})),"
            f" (socket.AF_UNIX, '\\0sftlab-sandbox-probe-{os.getpid()}'),"
            " (socket.AF_INET, ('1.1.1.1', 80))]:\n"
            "    try:\n        s = socket.socket(family); s.settimeout(1); s.connect(address)\n"
            "        reached.append(str(address))\n"
            "    except OSError:\n        pass\n"
            "print(reached)\n")
    try:
        result = run_python(code, OS_ONLY)
        for listener in (server, abstract):
            with pytest.raises(TimeoutError):
                listener.accept()
    finally:
        server.close()
        abstract.close()
    assert result.passed and result.stdout == "[]"


# --- a broken sandbox is an error, never a failed program --------------------------------

def test_refused_namespaces_are_an_error_that_stops_humaneval(monkeypatch, tmp_path):
    refuse = ["sh", "-c", "echo 'unshare: unshare failed: Operation not permitted' >&2; exit 1",
              "unshare"]
    monkeypatch.setattr(sandbox, "NAMESPACES", refuse)
    result = run_python("assert 1 + 1 == 2", OS_ONLY)
    assert result.status == "error"
    assert "Operation not permitted" in result.message and sandbox.UNSAFE_ENV in result.message
    task = HumanEval()
    with pytest.raises(SandboxError, match="Operation not permitted"):
        task.score(PROBLEM, PROBLEM["canonical_solution"])
    with pytest.raises(SandboxError, match="Operation not permitted"):
        sandbox.check_sandbox()
    data = tmp_path / "problems.jsonl"
    data.write_text(json.dumps(PROBLEM) + "\n")
    with pytest.raises(SandboxError):  # before any generation
        task.docs(str(data))


def test_a_failed_setup_step_is_named(monkeypatch):
    layout = dict(sandbox._layout())
    layout["read_only"] = [*layout["read_only"], ["/no/such/prefix", "/no/such/prefix"]]
    monkeypatch.setattr(sandbox, "_layout", lambda: layout)
    result = run_python("assert 1 + 1 == 2", OS_ONLY)
    assert result.status == "error"
    assert "setup failed while binding /no/such/prefix read-only" in result.message


def test_a_program_cannot_fake_a_setup_failure():
    code = ("import os, sys\n"
            "sys.stderr.write('sftlab-sandbox: setup failed while nothing: fake\\n')\n"
            "sys.stderr.flush(); os._exit(125)\n")
    assert run_python(code, OS_ONLY).status == "failed"


def test_the_opt_out_runs_unconfined_and_says_so(monkeypatch, capsys):
    monkeypatch.setenv(sandbox.UNSAFE_ENV, "1")
    monkeypatch.setattr(sandbox, "NAMESPACES", ["false"])  # not even tried
    sandbox._warn_unconfined.cache_clear()
    result = run_python("import os; print(os.path.isdir('/etc'))", OS_ONLY)
    assert result.passed and result.stdout == "True"  # the host's files: no confinement
    assert "WITHOUT isolation" in capsys.readouterr().err
