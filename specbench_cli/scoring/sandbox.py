"""Run one untrusted Python program (a model-written HumanEval completion and its tests) in a sandbox.

    result = run_sandboxed(program)          # SandboxResult(status="passed" | "failed" | "timeout", ...)

A pass is decided by a result marker, not by the exit status: the driver reads a random nonce from a
pipe, runs the program, and writes the nonce back on another pipe only when the program ran to its
end without raising. `sys.exit(0)`, `unittest.main()` or `os._exit(0)` before the end write no nonce
and count as failures.

One fresh process per program, in its own session and process group (launcher.py does the fencing
and says what it achieved; docs/quality.md lists what is and is not protected):
- network, PID, mount, IPC and UTS namespaces where the kernel allows them (else a user namespace
  first; else without them, recorded);
- root drops to `nobody`; Landlock limits file-system writes to the work folder and blocks TCP and
  signals out of the sandbox where the kernel has it;
- CPU time, address space, file size, process count and open files limited, no core dumps;
- a throwaway work folder (deleted afterwards), an environment of PATH/HOME/TMPDIR/LANG only,
  stdin from /dev/null, output read with a size bound;
- a wall-clock limit that never waits for end-of-file (a `setsid` grandchild may hold the pipe): at
  the limit, or when the launcher exits, the PID namespace's first process and the process group are
  killed, which takes every process of the namespace with them.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

LAUNCHER = Path(__file__).with_name("launcher.py")
NOBODY = 65534

# The trusted part of the child: everything before `exec` and after it is the harness's.
DRIVER = """\
import os


def _run():
    nonce = os.read(4, 64)
    os.close(4)
    with open("program.py", encoding="utf-8") as f:
        code = compile(f.read(), "program.py", "exec")
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    os.write(3, nonce)  # reached only when the program ran to its end
    os._exit(0)


_run()
"""


@dataclass(frozen=True)
class Limits:
    wall_s: float = 10.0  # per HumanEval task; the reference tests take well under a second
    memory_bytes: int = 2 << 30  # address space
    file_bytes: int = 16 << 20  # largest file the program may write
    processes: int = 32  # RLIMIT_NPROC: counts the user's processes, so a fork bomb stops here
    open_files: int = 64
    output_bytes: int = 64 << 10  # stdout + stderr kept (the tail)

    def rlimits(self) -> dict[str, int]:
        cpu = int(math.ceil(self.wall_s)) + 1
        return {
            "RLIMIT_CPU": cpu,
            "RLIMIT_AS": self.memory_bytes,
            "RLIMIT_FSIZE": self.file_bytes,
            "RLIMIT_NPROC": self.processes,
            "RLIMIT_NOFILE": self.open_files,
            "RLIMIT_CORE": 0,
        }


@dataclass
class SandboxResult:
    status: str  # "passed" | "failed" | "timeout" | "error" (the sandbox itself could not start)
    detail: str = ""  # why it failed: the last lines of its output, or the limit it hit
    output: str = ""  # the tail of stdout + stderr, at most Limits.output_bytes
    isolation: dict = field(default_factory=dict)  # what launcher.py achieved (see describe_isolation)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def run_sandboxed(program: str, limits: Limits = Limits(), without: tuple[str, ...] = ()) -> SandboxResult:
    """Run `program` (Python source) in a fresh sandboxed process; passed only if it ran to its end.

    `without` ("namespaces", "landlock") turns layers off, for tests of the fallbacks on a machine
    that has every layer; scoring never passes it.
    """
    with tempfile.TemporaryDirectory(prefix="specbench-sandbox-", ignore_cleanup_errors=True) as tmp:
        work, python_mount = Path(tmp) / "work", Path(tmp) / "python"
        work.mkdir()
        python_mount.mkdir()
        (work / "program.py").write_text(program, encoding="utf-8")
        (work / "driver.py").write_text(DRIVER, encoding="utf-8")
        if os.geteuid() == 0:  # the child runs as nobody: let it into its folder, and only that
            os.chmod(tmp, 0o711)
            os.chown(work, NOBODY, NOBODY)
        return _run(work, python_mount, limits, without)


def _run(work: Path, python_mount: Path, limits: Limits, without: tuple[str, ...]) -> SandboxResult:
    nonce = secrets.token_hex(16).encode()
    result_r, result_w = os.pipe()
    nonce_r, nonce_w = os.pipe()
    control_r, control_w = os.pipe()
    os.write(nonce_w, nonce)
    os.close(nonce_w)
    python = os.path.realpath(sys.executable)
    spec = {
        "work": str(work),
        "python": python,
        "python_prefix": os.path.realpath(sys.base_prefix),
        "python_mount": str(python_mount),
        "limits": limits.rlimits(),
        "result_fd": result_w,
        "nonce_fd": nonce_r,
        "control_fd": control_w,
        "without": list(without),
    }
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8"}
    try:
        proc = subprocess.Popen(
            [python, "-I", "-S", "-B", str(LAUNCHER), json.dumps(spec)],
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=(result_w, nonce_r, control_w),
            start_new_session=True,  # its own session and process group, killed as one
        )
    except BaseException:
        os.close(result_r)
        os.close(control_r)
        raise
    finally:
        for fd in (result_w, nonce_r, control_w):
            os.close(fd)
    out_fd = proc.stdout.fileno()
    streams = {out_fd: bytearray(), result_r: bytearray(), control_r: bytearray()}
    try:
        timed_out = _collect(proc, streams, limits)
    finally:  # also on Ctrl-C: nothing of the sample outlives the call
        messages = _messages(streams[control_r])
        _kill_all(proc, messages.get("init_pid"))
        proc.stdout.close()
        os.close(result_r)
        os.close(control_r)
    output = streams[out_fd].decode("utf-8", "replace")
    return _verdict(proc.returncode, timed_out, streams[result_r] == nonce, messages, output, limits)


def _collect(proc: subprocess.Popen, streams: dict[int, bytearray], limits: Limits) -> bool:
    """Read every pipe until the launcher exits or the wall limit passes (True: timed out).

    End-of-file is never awaited: a grandchild that keeps a pipe open must not extend the limit. The
    launcher is polled without being reaped, so its pid and process group stay reserved for the kill.
    """
    deadline = time.monotonic() + limits.wall_s
    poller = select.poll()  # not select(): descriptors above 1024 are common in a process with torch
    for fd in streams:
        poller.register(fd, select.POLLIN)
    drain_until = None  # once the launcher is gone: read what is buffered, briefly, then stop
    while True:
        exited = _exited(proc.pid)
        if exited and drain_until is None:
            drain_until = time.monotonic() + 0.2
        remaining = deadline - time.monotonic()
        wait = 0.0 if exited else min(max(remaining, 0.0), 0.05)
        ready = [fd for fd, _ in poller.poll(wait * 1000)]
        for fd in ready:
            data = os.read(fd, 65536)
            if not data:
                poller.unregister(fd)  # end-of-file (POLLHUP with nothing left)
                continue
            buf = streams[fd]
            buf += data
            if len(buf) > limits.output_bytes:
                del buf[: len(buf) - limits.output_bytes]  # keep the tail: that is where tracebacks are
        if exited and (not ready or time.monotonic() > drain_until):
            return False  # drained (a process left behind may still be writing: not waited for)
        if not exited and remaining <= 0:
            return True


def _exited(pid: int) -> bool:
    # WNOWAIT leaves the launcher a zombie: its pid (= its process group id) cannot be reused yet.
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _kill_all(proc: subprocess.Popen, init_pid: int | None) -> None:
    """Kill the sample's PID namespace (through its first process) and the launcher's process group."""
    if init_pid and not _exited(proc.pid) and _parent_of(init_pid) == proc.pid:
        os.kill(init_pid, signal.SIGKILL)  # still the launcher's child: the pid is the sample's
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _messages(control: bytes) -> dict:
    out: dict = {}
    for line in control.decode("utf-8", "replace").splitlines():
        try:
            out.update(json.loads(line))
        except ValueError:
            continue
    return out


def _verdict(
    returncode: int, timed_out: bool, marked: bool, messages: dict, output: str, limits: Limits
) -> SandboxResult:
    isolation = messages.get("isolation", {})
    if "error" in messages:
        return SandboxResult("error", f"sandbox setup failed: {messages['error']}", output, isolation)
    if marked:
        return SandboxResult("passed", "", output, isolation)
    if timed_out:
        return SandboxResult("timeout", f"no result within {limits.wall_s:g} s", output, isolation)
    if returncode == 128 + signal.SIGXCPU:
        return SandboxResult("timeout", "CPU time limit", output, isolation)
    tail = output.strip().splitlines()[-3:]
    why = "\n".join(tail) if tail else f"ended (exit status {returncode}) before the end of the program"
    return SandboxResult("failed", why, output, isolation)


def network_isolation(isolation: dict) -> str:
    """ "namespace" (no network at all), "landlock-tcp" (TCP bind/connect refused; UDP and unix
    sockets still work) or "open" (the sample reaches what this machine reaches)."""
    if "net" in isolation.get("namespaces", []):
        return "namespace"
    return "landlock-tcp" if isolation.get("landlock", 0) >= 4 else "open"


def describe_isolation(isolation: dict) -> str:
    """One line for the scores and the report, e.g. 'network namespace; pid namespace; uid 65534; ...'."""
    if not isolation:
        return "unknown"
    namespaces = isolation.get("namespaces", [])
    parts = [
        f"network {network_isolation(isolation)}",
        "pid namespace" if "pid" in namespaces else "no pid namespace",
        f"uid {isolation.get('uid')}",
        f"landlock v{isolation['landlock']}" if isolation.get("landlock") else "no landlock",
    ]
    if isolation.get("proc") == "private":
        parts.append("private /proc")
    return "; ".join(parts)
