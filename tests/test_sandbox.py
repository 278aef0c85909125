"""Hostile samples against scoring/sandbox.py: each escape the sandbox must stop, and fake passes.

Where this machine lacks a protection (no namespaces, no Landlock, not root), a test asserts the
documented fallback that the sandbox reports instead of skipping.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from specbench_cli.quality import humaneval_program
from specbench_cli.scoring.sandbox import Limits, network_isolation, run_sandboxed
from specbench_cli.suites import load_suite

FIXTURE = Path(__file__).parent / "fixtures" / "humaneval_small.jsonl"
QUICK = Limits(wall_s=3.0)


@pytest.fixture(scope="module")
def add_task():
    return load_suite(f"humaneval:{FIXTURE}").questions[0]  # add(a, b); check: add(2, 3) == 5


def fenced(code: str) -> str:
    return f"```python\n{code}```\n"


def leftover_processes(token: str) -> list[int]:
    """pids of processes whose command line carries `token` (what a sample left running)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if token.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_a_correct_solution_passes_and_a_wrong_one_fails(add_task):
    right = run_sandboxed(humaneval_program(fenced("def add(a, b):\n    return a + b\n"), add_task), QUICK)
    assert right.passed, right.detail
    wrong = run_sandboxed(humaneval_program(fenced("def add(a, b):\n    return a - b\n"), add_task), QUICK)
    assert wrong.status == "failed" and "AssertionError" in wrong.detail


@pytest.mark.parametrize(
    "ending",
    [
        "import sys\n\ndef main():\n    return 0\n\nsys.exit(main())\n",
        "import unittest\n\nunittest.main()\n",
        "import os\nos._exit(0)\n",
        "raise SystemExit(0)\n",
    ],
)
def test_fake_passes_score_as_failures(add_task, ending):
    # A wrong solution that ends the process with status 0 before `check` runs.
    code = "def add(a, b):\n    return 0\n\n" + ending
    result = run_sandboxed(humaneval_program(fenced(code), add_task), QUICK)
    assert result.status == "failed", (ending, result)


def test_reloaded_os_and_posix_system_cannot_touch_files_outside(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    # Open to everyone, so only the sandbox (not file permissions) can keep a sample out.
    os.chmod(tmp_path, 0o755)
    os.chmod(outside, 0o777)
    keep, victim = outside / "keep.txt", outside / "victim.txt"
    keep.write_text("original\n")
    victim.write_text("delete me\n")
    os.chmod(keep, 0o666)
    os.chmod(victim, 0o666)
    program = f"""
import importlib, os, posix, shutil
os = importlib.reload(os)
posix.system("echo overwritten > {keep}; rm -f {victim}; touch {outside}/new.txt")
for attempt in (lambda: open({str(keep)!r}, "w").write("x"), lambda: os.remove({str(victim)!r}),
                lambda: shutil.rmtree({str(outside)!r}), lambda: open({str(outside / "new2.txt")!r}, "w")):
    try:
        attempt()
    except OSError:
        pass
open("inside.txt", "w").write("the work folder is writable")
assert open("inside.txt").read().startswith("the work")
"""
    result = run_sandboxed(program, QUICK)
    assert result.passed, result.detail  # writes inside the work folder work
    if result.isolation.get("landlock"):
        assert keep.read_text() == "original\n" and victim.exists()
        assert sorted(p.name for p in outside.iterdir()) == ["keep.txt", "victim.txt"]
    else:  # documented fallback: only file permissions protect the machine
        assert result.isolation.get("landlock") == 0


@pytest.mark.parametrize("without", [(), ("namespaces",), ("namespaces", "landlock")])
def test_loopback_network_is_unreachable(without):
    # Layers turned off, the fallback the sandbox reports must be what really happens.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.3)
    port = listener.getsockname()[1]
    program = f"""
import socket
try:
    s = socket.create_connection(("127.0.0.1", {port}), timeout=1)
    s.sendall(b"leaked")
    s.close()
    print("connected")
except OSError as e:
    print("refused:", e)
"""
    try:
        result = run_sandboxed(program, QUICK, without)
        try:
            conn, _ = listener.accept()
            received = conn.recv(16)
            conn.close()
        except TimeoutError:
            received = None
    finally:
        listener.close()
    assert result.passed, result.detail
    if network_isolation(result.isolation) == "open":  # documented fallback: nothing blocks it
        assert received == b"leaked"
    else:
        assert received is None and "refused" in result.output
    if not without:
        assert network_isolation(result.isolation) == expected_network()


def expected_network() -> str:
    """What the sandbox should reach on this machine, found independently of it: a network
    namespace if this process (root) or a user namespace may make one, else Landlock's TCP rules."""
    probe = "import ctypes, os; os._exit(ctypes.CDLL(None).unshare(0x40000000 | (0 if os.getuid() == 0 else 0x10000000)) != 0)"
    if subprocess.run([sys.executable, "-c", probe]).returncode == 0:
        return "namespace"
    return "landlock-tcp" if landlock_abi() >= 4 else "open"


def landlock_abi() -> int:
    probe = "import ctypes; l = ctypes.CDLL(None); l.syscall.restype = ctypes.c_long; print(max(l.syscall(444, None, 0, 1), 0))"
    return int(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout)


HARNESS = """
import json, os, sys
from specbench_cli.scoring.sandbox import Limits, run_sandboxed
program = sys.argv[1].replace("HARNESS_PID", str(os.getpid()))
result = run_sandboxed(program, Limits(wall_s=3.0))
print(json.dumps({"status": result.status, "output": result.output, "isolation": result.isolation}))
"""


def run_in_harness_process(program: str, secret: str = "") -> subprocess.CompletedProcess:
    """Score `program` from a separate harness process (whose start-up environment holds `secret`),
    so a sample that kills its harness cannot take the test run with it."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "SPECBENCH_TEST_SECRET": secret}
    return subprocess.run(
        [sys.executable, "-c", HARNESS, program], env=env, capture_output=True, text=True, timeout=30
    )


def harness_result(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, f"the harness died: {done.returncode} {done.stderr[-500:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def isolation() -> dict:
    """What the sandbox reaches on this machine (a harmless sample's report)."""
    return run_sandboxed("pass\n", QUICK).isolation


def test_parent_environment_is_not_readable_through_proc():
    secret = secrets.token_hex(12)
    program = f"""
import os
found = [k for k, v in os.environ.items() if {secret!r} in v]
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            if {secret!r}.encode() in open(f"/proc/{{pid}}/environ", "rb").read():
                found.append(pid)
        except OSError:
            pass
print("found" if found else "clean", found)
"""
    result = harness_result(run_in_harness_process(program, secret))
    assert result["status"] == "passed"
    iso = result["isolation"]
    protected = iso.get("proc") == "private" or iso.get("uid") != os.getuid() or iso.get("landlock")
    assert result["output"].startswith("clean" if protected else "found"), (result, iso)


def test_signals_cannot_reach_the_harness(isolation):
    program = """
import os, signal
for target in (os.getppid(), HARNESS_PID):
    try:
        os.kill(target, signal.SIGKILL)
        print("sent", target)
    except OSError as e:
        print("refused", target, e.errno)
"""
    done = run_in_harness_process(program)
    separated = (
        "pid" in isolation["namespaces"] or isolation["landlock"] >= 6 or isolation["uid"] != os.getuid()
    )
    if not separated:  # documented fallback: same user, no PID namespace, no signal scope
        assert done.returncode == -9  # the harness it knew by pid died; this test process did not
        return
    result = harness_result(done)  # the harness lived
    # In a PID namespace getppid() is 0: the sample's own group, whose PID 1 ignores it.
    sent = [line.split()[1] for line in result["output"].splitlines() if line.startswith("sent")]
    assert set(sent) <= {"0"}, result["output"]


def test_fork_bomb_is_bounded_and_cleaned_up():
    token = "specbench-fork-" + secrets.token_hex(6)
    program = f"""
import os
forks = 0
try:
    for _ in range(200):  # the test's own cap: a real bomb would not stop here
        if os.fork() == 0:  # the child's "Cannot fork" must not interleave with the count below
            os.close(2)
            os.execv("/bin/sh", ["/bin/sh", "-c", "sleep 30", "{token}"])
        forks += 1
except OSError:
    pass
print("forks", forks)
"""
    result = run_sandboxed(program, QUICK)
    assert result.passed, result.detail
    forks = int(result.output.split()[-1])
    if result.isolation.get("uid") != 0:
        assert forks < QUICK.processes  # RLIMIT_NPROC stopped it
    else:  # documented fallback: the kernel does not apply RLIMIT_NPROC to root
        assert forks == 200
    time.sleep(0.1)
    assert leftover_processes(token) == []


def test_setsid_grandchild_holding_the_pipe_does_not_stall_the_harness():
    token = "specbench-setsid-" + secrets.token_hex(6)
    program = f"""
import os
if os.fork() == 0:
    os.setsid()  # out of the process group; stdout (the harness's pipe) stays open
    os.execv("/bin/sh", ["/bin/sh", "-c", "sleep 30", "{token}"])
print("parent done")
"""
    start = time.monotonic()
    result = run_sandboxed(program, QUICK)
    assert time.monotonic() - start < QUICK.wall_s + 1
    assert result.passed and "parent done" in result.output
    # The same grandchild, while the sample itself hangs: the wall limit still holds.
    start = time.monotonic()
    hung = run_sandboxed(program.replace('print("parent done")', "import time; time.sleep(60)"), QUICK)
    assert hung.status == "timeout" and time.monotonic() - start < QUICK.wall_s + 1
    time.sleep(0.1)
    assert "pid" in hung.isolation["namespaces"] or expected_network() != "namespace"
    if "pid" in hung.isolation["namespaces"]:
        assert leftover_processes(token) == []  # gone with the PID namespace


def test_without_a_pid_namespace_the_setsid_grandchild_is_the_documented_leftover():
    token = "specbench-setsid-" + secrets.token_hex(6)
    program = f"""
import os
if os.fork() == 0:
    os.setsid()
    os.execv("/bin/sh", ["/bin/sh", "-c", "sleep 30", "{token}"])
"""
    start = time.monotonic()
    result = run_sandboxed(program, QUICK, without=("namespaces",))
    assert time.monotonic() - start < QUICK.wall_s + 1 and result.passed
    assert "pid" not in result.isolation["namespaces"]
    time.sleep(0.1)
    left = leftover_processes(token)
    for pid in left:
        os.kill(pid, 9)
    assert len(left) == 1  # out of the process group: docs/quality.md says so


def test_time_memory_and_file_size_limits():
    start = time.perf_counter()
    assert run_sandboxed("while True:\n    pass\n", Limits(wall_s=1.0)).status == "timeout"
    assert run_sandboxed("import time\ntime.sleep(60)\n", Limits(wall_s=1.0)).status == "timeout"
    assert time.perf_counter() - start < 4
    memory = run_sandboxed("x = bytearray(4 << 30)\n", QUICK)
    assert memory.status == "failed" and "MemoryError" in memory.detail
    big = run_sandboxed("open('big', 'wb').write(b'x' * (32 << 20))\n", QUICK)
    assert big.status == "failed" and "File too large" in big.detail
    # A scrubbed environment and an empty work folder of its own.
    clean = run_sandboxed(
        "import os\nassert sorted(os.environ) == ['HOME', 'LANG', 'PATH', 'TMPDIR'], os.environ\n"
        "assert sorted(os.listdir('.')) == ['driver.py', 'program.py']\n",
        QUICK,
    )
    assert clean.passed, clean.detail
