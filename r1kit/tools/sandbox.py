"""The built-in `python` tool: the policy's code runs in a sandboxed child process (Linux).

What contains it (docs/tools.md has the full list, and what is NOT contained):
  - a separate process tree in its own session, killed as a whole at a wall-time limit;
  - rlimits on the code's process: CPU seconds (RLIMIT_CPU), address space (RLIMIT_AS), processes
    (RLIMIT_NPROC), size of any file it writes (RLIMIT_FSIZE), no core dumps;
  - its standard output and error read up to max_output_bytes, then the tree is killed;
  - an empty temporary directory as its working directory.
With isolation=namespaces (the default; needs root) also:
  - new network, mount and PID namespaces: no network but an unconfigured loopback; every top-level
    directory but the system ones (/usr, /lib*, /bin, /sbin, /dev, /proc, /sys) hidden under an empty
    tmpfs, the Python installation shown again read-only; /tmp a fresh tmpfs of max_file_mb;
  - the code runs as the unprivileged user nobody (so RLIMIT_NPROC applies: root is exempt from it),
    as PID 1 of its namespace: when it ends or is killed, the kernel kills every process it started.
A supervisor (root, outside the PID namespace) starts it, enforces the wall time and turns a SIGTERM
from the trainer into a SIGKILL of the namespace. isolation=limits_only runs without namespaces or a
user switch (any user): the code can then use the network, read what the trainer's user can read, and
signal the trainer's processes. Running it is then a decision the recipe makes explicitly.
"""

from __future__ import annotations

import json
import os
import select
import signal
import site
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields

from r1kit.config import ConfigError
from r1kit.tools.registry import ToolResult

SYSTEM_DIRS = {"usr", "lib", "lib32", "lib64", "libx32", "bin", "sbin", "dev", "proc", "sys"}
NOBODY = 65534
MAX_CODE_CHARS = 20_000


@dataclass
class SandboxLimits:
    timeout_s: float = 10.0  # wall time of one run
    cpu_s: int = 5  # CPU seconds of the code's process (RLIMIT_CPU)
    memory_mb: int = 1024  # address space (RLIMIT_AS)
    max_processes: int = 16  # processes of the sandbox user (RLIMIT_NPROC)
    max_output_bytes: int = 16_384  # stdout + stderr read back; more kills the run
    max_file_mb: int = 16  # largest file it may write; with namespaces also the size of its /tmp
    isolation: str = "namespaces"  # namespaces (root) or limits_only

    def check(self) -> None:
        if self.isolation not in ("namespaces", "limits_only"):
            raise ConfigError(f"tools python: isolation must be 'namespaces' or 'limits_only', got {self.isolation!r}")
        if min(self.timeout_s, self.cpu_s, self.memory_mb, self.max_processes, self.max_output_bytes, self.max_file_mb) <= 0:
            raise ConfigError(f"tools python: every limit must be > 0, got {asdict(self)}")
        if self.isolation == "namespaces" and (os.geteuid() != 0 or not sys.platform.startswith("linux")):
            raise ConfigError("tools python: isolation=namespaces (no network, hidden files, a separate user) needs "
                              "root on Linux; run as root, or set isolation: limits_only, under which the code can "
                              "use the network and read every file this user can (docs/tools.md)")


def python_tool(params: dict):
    """The `python` tool with the recipe's limits, checked now (before any model loads)."""
    known = {f.name for f in fields(SandboxLimits)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(f"tools python: unknown parameter(s) {unknown}; expected some of {sorted(known)}")
    limits = SandboxLimits(**params)
    limits.check()

    def python(code: str) -> ToolResult:
        """Run a Python program in a sandbox (no network, no files outside its own directory) and return what it prints.

        Args:
            code: the program; print() what you want to read back
        """
        return run_sandboxed(code, limits)

    return python


def _visible_paths() -> tuple[list[str], list[str]]:
    """(top-level directories to hide, Python directories to show again inside them)."""
    keep = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, *site.getsitepackages()) if os.path.isdir(p)}
    hide = sorted(f"/{d}" for d in os.listdir("/") if d not in SYSTEM_DIRS and os.path.isdir(f"/{d}")
                  and not os.path.islink(f"/{d}"))
    keep = sorted(p for p in keep if any(p == h or p.startswith(h + "/") for h in hide))
    return hide, keep


def run_sandboxed(code: str, limits: SandboxLimits) -> ToolResult:
    """Run `code`; its output, or an error result saying which limit stopped it."""
    if not isinstance(code, str) or len(code) > MAX_CODE_CHARS:
        return ToolResult(f"error: code must be a string of at most {MAX_CODE_CHARS} characters", True)
    isolate = limits.isolation == "namespaces"
    hide, keep = _visible_paths() if isolate else ([], [])
    setup = {**asdict(limits), "isolate": isolate, "hide": hide, "keep": keep, "uid": NOBODY}
    with tempfile.TemporaryDirectory(prefix="r1kit-sandbox-") as workdir:
        proc = subprocess.Popen([sys.executable, "-I", "-c", SUPERVISOR, json.dumps(setup)], cwd=workdir,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
        try:
            proc.stdin.write(code.encode("utf-8", "replace"))
            proc.stdin.close()
        except BrokenPipeError:
            pass
        output, stopped = _read_capped(proc, limits)
        status = _finish(proc)
    return _result(output.decode("utf-8", "replace"), stopped, status, limits)


def _read_capped(proc: subprocess.Popen, limits: SandboxLimits) -> tuple[bytes, str | None]:
    """Read the child's output until it closes, the cap, or the wall time (+1 s for the supervisor's own kill)."""
    deadline = time.monotonic() + limits.timeout_s + 1.0
    out, fd = bytearray(), proc.stdout.fileno()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return bytes(out), "timeout"
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return bytes(out), None
        out += chunk
        if len(out) > limits.max_output_bytes:
            return bytes(out[:limits.max_output_bytes]), "output"


def _finish(proc: subprocess.Popen) -> int:
    """Stop the supervisor (it kills the code's namespace), then anything left in its process group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of limits_only mode; the group's id is the supervisor's pid
    except (ProcessLookupError, PermissionError):
        pass
    status = proc.wait(timeout=5.0)
    proc.stdout.close()
    return status


def _result(output: str, stopped: str | None, status: int, limits: SandboxLimits) -> ToolResult:
    if stopped == "output":  # first: the supervisor's exit status is then the one of a kill
        return ToolResult(f"{output}\nerror: killed: output longer than {limits.max_output_bytes} bytes", True)
    if stopped == "timeout" or status == TIMEOUT_STATUS:
        return ToolResult(f"{output}\nerror: killed after the wall-time limit of {limits.timeout_s:g} s", True)
    if status == SETUP_FAILED:
        return ToolResult(f"error: the sandbox could not start: {output.strip()[-300:]}", True)
    if status != 0:
        why = {-signal.SIGXCPU: f"the CPU-time limit of {limits.cpu_s} s", -signal.SIGKILL: "SIGKILL",
               -signal.SIGXFSZ: f"the file-size limit of {limits.max_file_mb} MB"}
        reason = why.get(status, f"signal {signal.Signals(-status).name}" if status < 0 else f"exit status {status}")
        return ToolResult(f"{output}\nerror: the program ended with {reason}".lstrip("\n"), True)
    return ToolResult(output)


TIMEOUT_STATUS = 124  # the supervisor's exit status after killing the code at the wall-time limit
SETUP_FAILED = 125  # the supervisor could not build the sandbox (it says why on stdout)

# The supervisor: a fresh interpreter that builds the sandbox, starts the code and enforces the wall time.
# Exit status: the code's (a signal as 128 + n), TIMEOUT_STATUS or SETUP_FAILED.
SUPERVISOR = r'''
import ctypes, json, os, resource, signal, sys, time
cfg = json.loads(sys.argv[1])
code = sys.stdin.read()
libc = ctypes.CDLL(None, use_errno=True)

def fail(what):
    print(f"{what}: {os.strerror(ctypes.get_errno())}", flush=True)
    os._exit(125)

def mount(src, target, fstype, flags, data=None):
    if libc.mount(src and src.encode(), target.encode(), fstype and fstype.encode(), flags, data and data.encode()):
        fail(f"mount {target}")

work = os.getcwd()
if cfg["isolate"]:
    if libc.unshare(0x00020000 | 0x40000000 | 0x20000000):  # CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID
        fail("unshare")
    mount(None, "/", None, (1 << 14) | (1 << 18))  # MS_REC | MS_PRIVATE: nothing leaks to the host
    fds = {p: os.open(p, os.O_PATH) for p in cfg["keep"]}
    size = f"size={cfg['max_file_mb']}m,mode=755"
    for d in cfg["hide"]:
        mount("tmpfs", d, "tmpfs", 2 | 4, size)  # MS_NOSUID | MS_NODEV
    for p, fd in fds.items():
        os.makedirs(p, exist_ok=True)
        mount(f"/proc/self/fd/{fd}", p, None, 4096 | (1 << 14))  # MS_BIND | MS_REC
        mount(None, p, None, 4096 | 32 | 1)  # MS_BIND | MS_REMOUNT | MS_RDONLY
        os.close(fd)
    work = "/tmp/work"
    os.makedirs(work, mode=0o700)
    os.chown(work, cfg["uid"], cfg["uid"])

child = os.fork()
if child == 0:
    try:
        os.chdir(work)
        for limit, value in ((resource.RLIMIT_CPU, cfg["cpu_s"]), (resource.RLIMIT_AS, cfg["memory_mb"] << 20),
                             (resource.RLIMIT_NPROC, cfg["max_processes"]), (resource.RLIMIT_CORE, 0),
                             (resource.RLIMIT_FSIZE, cfg["max_file_mb"] << 20)):
            resource.setrlimit(limit, (value, value))
        if cfg["isolate"]:
            os.setgroups([])
            os.setgid(cfg["uid"])
            os.setuid(cfg["uid"])
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: dies with the supervisor (after setuid, which clears it)
        os.environ.clear()
        os.environ.update({"HOME": work, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    except Exception as e:
        print(f"sandbox setup: {e}", flush=True)
        os._exit(125)
    sys.argv = ["sandbox"]
    try:
        exec(compile(code, "<tool call>", "exec"), {"__name__": "__main__"})
    except SystemExit as e:
        sys.stdout.flush()
        os._exit(e.code if isinstance(e.code, int) else 1)
    except BaseException:
        import traceback
        traceback.print_exc()
        sys.stdout.flush()
        os._exit(1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

def stop(*_):
    os.kill(child, signal.SIGKILL)  # PID 1 of the namespace: the kernel kills all it started
    os.waitpid(child, 0)
    os._exit(124)

signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGALRM, stop)
signal.setitimer(signal.ITIMER_REAL, cfg["timeout_s"])
_, status = os.waitpid(child, 0)
signal.setitimer(signal.ITIMER_REAL, 0)
if os.WIFSIGNALED(status):  # end as the code ended; SIGKILL (the CPU limit's hard end) takes no handler
    if os.WTERMSIG(status) not in (signal.SIGKILL, signal.SIGSTOP):
        signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
    os.kill(os.getpid(), os.WTERMSIG(status))
os._exit(os.WEXITSTATUS(status))
'''
