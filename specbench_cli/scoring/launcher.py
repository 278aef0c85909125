"""The sandbox's child side: fence one sample in, then exec the interpreter that runs it.

Run as a script, never imported: `python -I -S launcher.py SPEC_JSON` (sandbox.py starts it in a new
session with a scrubbed environment). It uses only the standard library and ctypes, because it runs
before any isolation exists and must not import project code. Order of work:

1. new namespaces: network (no interfaces but a downed loopback), PID, mount, IPC, UTS; an
   unprivileged user gets them inside a user namespace of its own; each one that fails is left out;
2. fork: the child is PID 1 of the new PID namespace, so when it exits the kernel kills every process
   it left behind (a `setsid` grandchild included); it gets a fresh /proc that shows only them;
3. in the child: drop root (to `nobody`, through a read-only bind mount of the interpreter when root's
   home hides it), no_new_privs, Landlock (writes only under the work folder, no TCP, no signals or
   abstract sockets out of the sandbox), resource limits, then exec with fds 0-4 only.

Every step that the machine refuses is recorded, not fatal: the child writes what it achieved as one
JSON line on the control pipe, which the harness stores with the score.
"""

import ctypes
import fcntl
import json
import os
import resource
import signal
import stat
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NAMESPACES = {
    "net": CLONE_NEWNET,
    "pid": CLONE_NEWPID,
    "mount": CLONE_NEWNS,
    "ipc": CLONE_NEWIPC,
    "uts": CLONE_NEWUTS,
}

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000
PR_SET_NO_NEW_PRIVS, PR_SET_PDEATHSIG = 38, 1
NOBODY = 65534

# Landlock (Linux >= 5.13): syscall numbers are shared by every architecture that has it.
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
# Every right that changes the file system (bits 1, 4-12), then REFER (ABI 2) and TRUNCATE (ABI 3).
FS_WRITE_RIGHTS = (1 << 1) | sum(1 << bit for bit in range(4, 13))
FS_REFER, FS_TRUNCATE = 1 << 13, 1 << 14
NET_BIND_TCP, NET_CONNECT_TCP = 1, 2  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1, 2  # ABI 6

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


class RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]  # fmt: skip


class PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def main() -> None:
    spec = json.loads(sys.argv[1])
    control = spec["control_fd"]
    uid, gid = os.getuid(), os.getgid()
    namespaces = [] if "namespaces" in spec["without"] else enter_namespaces(uid, gid)
    pid = os.fork()
    if pid == 0:
        try:
            child(spec, namespaces)
        except BaseException as e:  # the harness reads this as a sandbox failure, not a sample failure
            send(spec["control_fd"], {"error": f"{type(e).__name__}: {e}"})
        finally:
            os._exit(121)
    send(control, {"init_pid": pid})
    os.close(control)
    _, status = os.waitpid(pid, 0)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


def enter_namespaces(uid: int, gid: int) -> list[str]:
    """unshare every namespace in NAMESPACES at once; else inside a new user namespace (no root
    needed where the kernel allows it); else each alone. Returns the names that took effect."""
    wanted = sum(NAMESPACES.values())
    if libc.unshare(wanted) == 0:
        return list(NAMESPACES)
    if libc.unshare(CLONE_NEWUSER | wanted) == 0:
        # Map only our own ids: after exec the sample holds no capability, even in its namespace.
        write("/proc/self/setgroups", "deny")
        write("/proc/self/uid_map", f"{uid} {uid} 1")
        write("/proc/self/gid_map", f"{gid} {gid} 1")
        return ["user", *NAMESPACES]
    return [name for name, flag in NAMESPACES.items() if libc.unshare(flag) == 0]


def child(spec: dict, namespaces: list[str]) -> None:
    work, python = spec["work"], spec["python"]
    isolation: dict = {"namespaces": namespaces}
    # Nothing mounted here reaches the host; the fresh /proc lists only this PID namespace.
    private = "mount" in namespaces and mount(None, "/", None, MS_REC | MS_PRIVATE)
    if private and "pid" in namespaces and mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC):
        isolation["proc"] = "private"
    if os.getuid() == 0 and "user" not in namespaces:
        python = reachable_python(spec, python, private)
        if python is not None:
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)  # from root to nobody: every capability goes
        else:
            python = spec["python"]
    isolation["uid"] = os.getuid()
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the launcher killed: the sample goes too
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0:  # setuid binaries cannot raise privileges
        isolation["no_new_privs"] = True
    isolation["landlock"] = 0 if "landlock" in spec["without"] else landlock(work)
    send(spec["control_fd"], {"isolation": isolation})
    # The sample keeps stdin (/dev/null), stdout/stderr (the bounded pipe), 3: result marker, 4: nonce;
    # the control pipe stays open until exec (close-on-exec), so a failed exec is still reported.
    control = spec["control_fd"] = fcntl.fcntl(spec["control_fd"], fcntl.F_DUPFD_CLOEXEC, 100)
    result, nonce = (fcntl.fcntl(spec[k], fcntl.F_DUPFD, 100) for k in ("result_fd", "nonce_fd"))
    os.dup2(result, 3)
    os.dup2(nonce, 4)
    os.closerange(5, control)
    os.closerange(control + 1, 1 << 20)
    set_limits(spec["limits"])
    os.chdir(work)
    env = {"PATH": "/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8"}
    os.execve(python, [python, "-I", "-S", "-B", "-u", "driver.py"], env)  # -u: output survives os._exit


def reachable_python(spec: dict, python: str, have_mount_ns: bool) -> str | None:
    """The interpreter path `nobody` can run: itself when every folder above it is open to others,
    else a read-only bind mount of its prefix (needs a mount namespace); None when neither works."""
    if open_to_others(python):
        return python
    prefix = spec["python_prefix"]
    if not have_mount_ns or not python.startswith(prefix.rstrip("/") + "/"):
        return None
    target = spec["python_mount"]
    if not mount(prefix, target, None, MS_BIND | MS_REC):
        return None
    mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY)  # root's files stay read-only anyway
    return target + python[len(prefix.rstrip("/")) :]


def open_to_others(path: str) -> bool:
    parts = path.split("/")
    folders = ["/".join(parts[:i]) or "/" for i in range(1, len(parts))]
    return all(os.stat(f).st_mode & stat.S_IXOTH for f in folders) and bool(
        os.stat(path).st_mode & stat.S_IXOTH
    )


def landlock(work: str) -> int:
    """Restrict this process and its children: file system changes only under `work`; with ABI 4,
    no TCP bind or connect; with ABI 6, no signals and no abstract unix sockets to processes outside
    the sandbox. Returns the ABI version applied (0: Landlock not available, nothing applied)."""
    abi = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, 0, LANDLOCK_CREATE_RULESET_VERSION)
    if abi < 1:
        return 0
    fs = FS_WRITE_RIGHTS | (FS_REFER if abi >= 2 else 0) | (FS_TRUNCATE if abi >= 3 else 0)
    attr = RulesetAttr(fs, NET_BIND_TCP | NET_CONNECT_TCP, SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL)
    size = 8 if abi < 4 else 16 if abi < 6 else 24  # the struct grew with the ABI
    ruleset = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), size, 0)
    if ruleset < 0:
        return 0
    try:
        folder = os.open(work, os.O_PATH | os.O_DIRECTORY)
        rule = PathBeneathAttr(fs, folder)
        if libc.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), 0):
            return 0
        os.close(folder)
        if libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0):
            return 0
    finally:
        os.close(ruleset)
    return int(abi)


def set_limits(limits: dict) -> None:
    for name, value in limits.items():
        resource.setrlimit(getattr(resource, name), (value, value))


def mount(source, target, fstype, flags) -> bool:
    args = [None if s is None else s.encode() for s in (source, target, fstype)]
    return libc.mount(*args, ctypes.c_ulong(flags), None) == 0


def write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def send(fd: int, message: dict) -> None:
    os.write(fd, (json.dumps(message) + "\n").encode())


if __name__ == "__main__":
    main()
