"""The sandbox runs code in a separate limited process and fails dangerous code safely."""
import os
import tempfile
import time
from pathlib import Path

import pytest

from sftlab.eval import sandbox
from sftlab.eval.sandbox import SandboxLimits, isolation, run_many, run_python

QUICK = SandboxLimits(timeout=3.0)
# OS-level protections only: the Python-level guards are switched off
OS_ONLY = SandboxLimits(timeout=3.0, python_guards=False)
REPO = Path(__file__).resolve().parents[3]


def _sandbox_uid_processes() -> int:
    """Processes running as a sandbox uid (200000 and up) right now."""
    count = 0
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.stat(f"/proc/{entry}").st_uid >= 200000:
                count += 1
        except OSError:
            pass
    return count


def test_passing_and_failing_programs():
    assert run_python("assert sum([1, 2]) == 3\nprint('ok')", QUICK).status == "passed"
    result = run_python("assert 1 == 2, 'nope'", QUICK)
    assert (result.status, result.message) == ("failed", "AssertionError: nope")
    assert run_python("def f(:\n pass", QUICK).message.startswith("SyntaxError")


def test_stdout_is_returned_and_exit_tricks_do_not_pass():
    assert run_python("print('hello')", QUICK).stdout == "hello"
    assert run_python("import sys; sys.exit(0)", QUICK).status == "failed"
    assert run_python("import os; os._exit(0)", QUICK).status == "failed"


def test_infinite_loop_times_out_within_the_limit():
    start = time.monotonic()
    result = run_python("while True:\n    pass", SandboxLimits(timeout=2.0))
    assert result.status == "timeout"
    assert time.monotonic() - start < 5.0


def test_huge_allocation_fails_with_memory_error():
    result = run_python("x = bytearray(10 * 2**30)", QUICK)
    assert result.status == "failed" and "MemoryError" in result.message


@pytest.mark.parametrize("limits", [QUICK, OS_ONLY], ids=["guards", "os-only"])
def test_sockets_cannot_reach_the_network(limits):
    code = "import socket\ns = socket.create_connection(('1.1.1.1', 80), timeout=1)"
    result = run_python(code, limits)
    assert result.status == "failed"
    if limits.python_guards:
        assert "network access" in result.message


def test_writes_outside_the_work_dir_are_refused(tmp_path):
    target = Path("/tmp") / f"sftlab-sandbox-probe-{os.getpid()}"
    for path in (target, REPO / "sandbox-probe.txt"):
        result = run_python(f"open({str(path)!r}, 'w').write('x')", QUICK)
        assert result.status == "failed" and "PermissionError" in result.message
        assert not path.exists()
    inside = run_python("open('note.txt', 'w').write('x'); print(open('note.txt').read())", QUICK)
    assert inside.passed and inside.stdout == "x"


@pytest.mark.skipif(not isolation()["drop_privileges"], reason="needs root to run as a fresh uid")
def test_os_level_write_protection_without_python_guards():
    # the repo is root-owned: the sandbox uid cannot write there
    repo_file = REPO / "sandbox-probe.txt"
    result = run_python(f"open({str(repo_file)!r}, 'w').write('x')", OS_ONLY)
    assert result.status == "failed" and not repo_file.exists()


@pytest.mark.skipif(not isolation()["namespaces"], reason="needs unshare (namespaces)")
def test_tmp_is_private_and_thrown_away():
    target = Path("/tmp") / f"sftlab-sandbox-private-{os.getpid()}"
    result = run_python(f"open({str(target)!r}, 'w').write('x')", OS_ONLY)
    assert result.passed  # it wrote to the sandbox's own /tmp ...
    assert not target.exists()  # ... which the host never sees


@pytest.mark.skipif(not isolation()["drop_privileges"], reason="RLIMIT_NPROC needs a fresh uid")
def test_fork_bomb_is_contained_and_cleaned_up():
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    start = time.monotonic()
    result = run_python(bomb, SandboxLimits(timeout=2.0, max_processes=8, python_guards=False))
    assert result.status in ("timeout", "failed")
    assert time.monotonic() - start < 6.0
    time.sleep(0.2)
    assert _sandbox_uid_processes() == 0


def test_run_many_keeps_order():
    results = run_many([f"assert {i} % 2 == 0" for i in range(4)], QUICK, workers=2)
    assert [r.passed for r in results] == [True, False, True, False]


def test_fallback_without_namespaces_or_root(monkeypatch):
    """Where namespaces are refused, the explicit opt-out (SFTLAB_UNSAFE_SANDBOX=1) runs
    without them: the rlimits and Python-level guards still apply and the temporary
    directory is removed."""
    monkeypatch.setenv(sandbox.UNSAFE_ENV, "1")
    monkeypatch.setattr(sandbox, "NAMESPACES", ["false"])  # namespaces refused: not used
    before = set(Path(tempfile.gettempdir()).glob("sftlab-sandbox-*"))
    assert run_python("import os; print(os.path.basename(os.getcwd())[:15])", QUICK).stdout == (
        "sftlab-sandbox-")
    assert run_python("x = bytearray(10 * 2**30)", QUICK).message.startswith("MemoryError")
    outside = run_python("open('/tmp/sftlab-fallback-probe', 'w')", QUICK)
    assert "PermissionError" in outside.message and not Path("/tmp/sftlab-fallback-probe").exists()
    assert set(Path(tempfile.gettempdir()).glob("sftlab-sandbox-*")) == before
