"""Run an untrusted, model-written Python program and capture what it prints (the supervisor).

The `program` strategy asks the model for a program whose output is the answer; this module runs
that program where it can do no harm and fails closed: if any OS layer cannot be set up, the
program does not run and :class:`SandboxUnavailable` names the missing layer, unless
``SandboxLimits.allow_weaker`` lists it. The child side (what runs in the sandboxed process: the
layers' set-up and the Python guard) is :mod:`.sandbox_child`.

OS layer (the real boundary; holds with the Python guard off, see tests/prompting/test_sandbox_escape.py):
  * a fresh ``python -I -S`` process (no site-packages, no PYTHON* variables, no current directory
    on ``sys.path``) with an empty environment, in a new session (its own process group), with a
    new temporary directory as its working directory;
  * ``setrlimit`` before exec: RLIMIT_CPU, RLIMIT_AS (memory), RLIMIT_FSIZE, RLIMIT_NOFILE,
    RLIMIT_CORE=0; RLIMIT_NPROC=1 (no fork, no thread) set by the child before the program runs;
  * a network namespace (``unshare --net``; inside a user namespace for a non-root caller): only
    a down loopback, so no TCP, UDP, raw or netlink traffic leaves the sandbox;
  * a mount namespace whose root holds only the standard library (read-only) and the program's
    temporary directory (read-write), entered with ``pivot_root``: no other path exists, so not
    even ``stat`` (which Landlock does not check) learns what is outside;
  * ``PR_SET_NO_NEW_PRIVS``, then Landlock: read-only beneath the standard library directories,
    read-write beneath the program's temporary directory, nothing else (no /proc, /sys, /etc,
    /dev, checkout or home directory; no execve anywhere); TCP bind/connect denied (ABI >= 4);
    signals and abstract Unix sockets scoped to the sandbox (ABI >= 6);
  * a root caller's child gives up root (uid/gid 65534 "nobody", no groups) before the program;
  * a seccomp filter (libseccomp) for what Landlock leaves open: file metadata (chmod, chown,
    utime, xattrs), every new socket (Landlock does not check connecting to a Unix socket file),
    namespaces and mounts, ptrace, bpf, io_uring...;
  * wall-time limit in the parent (the whole process group is SIGKILLed), plus ``alarm`` in the
    child in case the parent dies; stdout and stderr are read with a size cap.
Layer by layer, with what each stops: :mod:`.sandbox_child` and docs/security.md.

Why these mechanisms (measured on the machine kind CI runs on: kernel 6.18, root in a container,
Debian 12, and checked by hand as a non-root user there):
  * Landlock for the filesystem: ``landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)``
    returns ABI 7, so filesystem, TCP and scope rules are all there. It is made for exactly this
    (a process confining itself and its descendants, irrevocably), needs no root, no helper binary
    and no mount, and works the same for a root and a non-root caller (a non-root caller's own
    files are as unreachable as root's); /proc/<pid>/* and ptrace outside the sandbox are denied
    by path and by domain.
  * A mount namespace and ``pivot_root``, set up by the child itself with ctypes (as bubblewrap
    does, without the helper binary, which the Debian image lacks), for what Landlock (ABI 7)
    does not check: ``stat``. Root creates it directly; a non-root caller's child has the
    capability inside its user namespace (``unshare --keep-caps``) and drops every capability
    right after. Both run on this machine kind.
  * ``unshare --net`` (util-linux, in every Debian) for the network: UDP, raw and netlink sockets
    are outside Landlock's reach. Works as root directly and for a non-root caller in a user
    namespace (max_user_namespaces is 96363 here).
  * seccomp through libseccomp2, the C library every Debian has (apt links it), called with
    ctypes: the venv has no Python bindings for it and the child runs without site-packages.
  * The Landlock ABI, the libseccomp calls and prctl are called with ctypes in the child, after
    the allowed modules are imported (so the rules need not cover shared libraries). PyPI's
    ``landlock`` is a pre-release (1.0.0.dev5), and the child, which runs without site-packages,
    could not import it anyway.
Measured cost: ``print(1)`` takes a median 0.24 s with every layer and 0.20 s with none (10 runs
each, on a loaded 2-core machine of that kind): Python's start-up dominates, not the layers.


Python layer (inside the child, before the user code runs; defence in depth, not trusted by the
OS layer): an audit hook that allows a short list of events and stops the program at the first
forbidden one (``open`` outside the temporary directory, sockets, subprocesses, ``os.fork``/
``kill``, ctypes, crafted bytecode, ``gc``, ``sys.settrace``, imports outside the allow-list,
every event it does not know), and ``__import__`` filtered so that ``import os`` is refused even
though ``os`` is loaded; see :func:`.sandbox_child._install_guards`.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import re
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field

from acculturate.prompting import sandbox_child
from acculturate.prompting.sandbox_child import LAYERS

# Exit codes the child uses to tell the parent why it stopped. A program could exit with the same
# code on purpose; that only mislabels its own result, it gains nothing.
EXIT_BLOCKED = 113
EXIT_MEMORY = 114
EXIT_SETUP = 115

# Unprivileged identity a root parent's child switches to ("nobody" on Debian, Fedora, Alpine).
NOBODY_UID = 65534

DEFAULT_ALLOWED_MODULES = (
    "math", "cmath", "statistics", "fractions", "decimal", "numbers", "random",
    "itertools", "functools", "operator", "collections", "heapq", "bisect", "array", "copy",
    "re", "string", "textwrap", "unicodedata", "json", "datetime", "calendar", "time",
    "typing", "dataclasses", "enum", "pprint",
)  # fmt: skip

# Modules the standard library imports lazily from inside functions (datetime.strptime imports
# _strptime; str.encode("latin-1") imports its codec). They are loaded up front so that the
# program's calls work although the child can no longer read the standard library.
# The traceback printer imports io (already loaded) from the frame it runs in.
_LIBRARY_INTERNALS = (
    "io", "_strptime", "encodings", "encodings.latin_1", "encodings.ascii", "encodings.utf_16",
    "encodings.utf_32", "encodings.cp1252", "encodings.unicode_escape", "encodings.raw_unicode_escape",
)  # fmt: skip

KILLED_REASONS = (None, "cpu", "wall", "memory", "output", "blocked")


class SandboxUnavailable(RuntimeError):
    """An OS layer of the sandbox could not be set up here, so the program was not run."""


@dataclass
class SandboxLimits:
    """What a sandboxed program may use.

    Args:
        cpu_seconds: CPU time (RLIMIT_CPU); SIGXCPU at the limit, SIGKILL one second later.
        wall_seconds: wall-clock time measured by the parent; the process group is killed after it.
        memory_mb: address-space limit (RLIMIT_AS) in MiB; Python start-up needs about 30 MiB.
        max_output_bytes: cap on each of stdout and stderr; the program is killed when it prints more.
        max_file_bytes: largest file the program may write in its temporary directory (RLIMIT_FSIZE;
            Python ignores SIGXFSZ, so a write past it raises OSError "File too large").
        max_files_written: how many times the program may open a file for writing.
        allowed_modules: modules the program may import (standard library only: the child runs
            with ``-I -S``, so site-packages are not on its path).
        allow_weaker: OS layers the program may run without when this machine cannot set them up
            (names from ``sandbox_child.LAYERS``); empty by default: a missing layer is an error.
    """

    cpu_seconds: float = 5
    wall_seconds: float = 10
    memory_mb: int = 512
    max_output_bytes: int = 65536
    max_file_bytes: int = 4 * 1024 * 1024
    max_files_written: int = 64
    allowed_modules: tuple[str, ...] = field(default=DEFAULT_ALLOWED_MODULES)
    allow_weaker: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("cpu_seconds", "wall_seconds", "memory_mb", "max_output_bytes", "max_file_bytes"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"SandboxLimits.{name}: expected a positive number, got {value!r}")
        if not isinstance(self.max_files_written, int) or self.max_files_written < 0:
            raise ValueError(
                f"SandboxLimits.max_files_written: expected an int >= 0, got {self.max_files_written!r}"
            )
        if isinstance(self.allowed_modules, str):
            raise ValueError("SandboxLimits.allowed_modules: expected a sequence of module names, got a str")
        self.allowed_modules = tuple(self.allowed_modules)
        for module in self.allowed_modules:
            if not isinstance(module, str) or not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", module):
                raise ValueError(f"SandboxLimits.allowed_modules: expected module names, got {module!r}")
        if isinstance(self.allow_weaker, str):
            raise ValueError("SandboxLimits.allow_weaker: expected a list of layer names, got a str")
        self.allow_weaker = tuple(self.allow_weaker)
        for layer in self.allow_weaker:
            if layer not in LAYERS:
                raise ValueError(f"SandboxLimits.allow_weaker: expected layer names from {list(LAYERS)}, "
                                 f"got {layer!r}")


@dataclass
class SandboxResult:
    """What happened to a sandboxed program.

    Attributes:
        stdout, stderr: decoded output (UTF-8, invalid bytes replaced), each cut at the cap.
        exit_code: the child's exit status; negative is the signal that ended it.
        timed_out: True when a CPU or wall-time limit ended the program.
        killed_reason: None when the program ended by itself, else why it was stopped:
            'cpu', 'wall', 'memory', 'output' or 'blocked' (a forbidden operation).
        seconds: wall-clock time from start to end.
        layers: {layer: True when it held} for every OS layer, as the child reported it.
    """

    stdout: str
    stderr: str
    exit_code: int
    timed_out: bool
    killed_reason: str | None
    seconds: float
    layers: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the program ran to completion and exited 0."""
        return self.exit_code == 0 and self.killed_reason is None


def run_program(code: str, limits: SandboxLimits | None = None, stdin: str = "") -> SandboxResult:
    """Run ``code`` in the sandbox and return what it printed and why it stopped.

    Args:
        code: Python source of the whole program.
        limits: resource limits, module allow-list and ``allow_weaker``; ``SandboxLimits()`` when None.
        stdin: text fed to the program's standard input.

    Returns:
        SandboxResult. A program that breaks a rule is stopped, not raised on: the parent never
        sees an exception for anything the program does.

    Raises:
        SandboxUnavailable: an OS layer not in ``limits.allow_weaker`` could not be set up; the
            program did not run.
        ValueError: a module in ``limits.allowed_modules`` is not in this Python's standard library.
    """
    return _run(code, limits or SandboxLimits(), stdin, guard=True)


def active_layers() -> dict[str, bool]:
    """Which OS layers of the sandbox this machine sets up, from one real sandboxed run.

    Returns:
        {layer: bool} for every name in ``LAYERS``, probed once per process.
    """
    return dict(_probe()[0])


def check_layers(limits: SandboxLimits | None = None) -> dict[str, bool]:
    """Fail unless every OS layer not in ``limits.allow_weaker`` works here.

    Callers check before doing costly work (the program strategy, before asking the model);
    run_program checks again in the child on every run.

    Returns:
        active_layers().

    Raises:
        SandboxUnavailable: naming each missing layer and how to accept running without it.
    """
    limits = limits or SandboxLimits()
    layers = active_layers()
    missing = [name for name in LAYERS if not layers[name] and name not in limits.allow_weaker]
    if missing:
        errors = _probe()[1]
        raise SandboxUnavailable(_missing_message(missing, "; ".join(f"{n}: {errors[n]}" for n in missing
                                                                    if n in errors)))
    return layers


def _missing_message(missing: list[str], errors: str) -> str:
    return (f"sandbox: OS layer(s) not available on this machine: {', '.join(missing)}"
            f"{' (' + errors + ')' if errors else ''}; the program was not run. To run with a weaker "
            f"sandbox anyway, list them in sandbox.allow_weaker (e.g. allow_weaker: [{missing[0]}]).")


def extract_code(text: str) -> str | None:
    """Pull the Python program out of a model completion.

    Looks, in order, for a fenced block tagged python/py/python3, any fenced block, then a bare
    program: the longest run of lines that compiles once at most 10 lines of prose are trimmed
    from each end. A fence left open (the model hit its token limit) runs to the end of the text.

    Args:
        text: the completion.

    Returns:
        The program's source without fences, or None when there is none. Fenced code is returned
        even when it does not compile: the error is useful feedback for the model.
    """
    if not isinstance(text, str):
        raise TypeError(f"extract_code: expected str, got {type(text).__name__}")
    blocks = _FENCE.findall(text)  # [(tag, body)]
    for wanted in (lambda tag: tag.lower() in ("python", "py", "python3"), lambda tag: True):
        for tag, body in blocks:
            if wanted(tag) and body.strip():
                return textwrap.dedent(body).strip("\n") + "\n"
    if "```" in text:
        return None
    return _bare_program(text)


# ``` + optional language tag, body, then a closing ``` or the end of the text (unterminated fence).
_FENCE = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def _bare_program(text: str, max_trim: int = 10) -> str | None:
    lines = text.strip("\n").splitlines()
    best = None
    for lead in range(min(max_trim, len(lines)) + 1):
        for trail in range(min(max_trim, len(lines) - lead) + 1):
            chunk = lines[lead : len(lines) - trail]
            if not chunk or (best is not None and len(chunk) <= len(best)):
                continue
            source = "\n".join(chunk)
            # A prose word alone ("Sure") compiles as a name; a program prints its answer.
            if "print" not in source:
                continue
            try:
                compile(source, "<completion>", "exec")
            except (SyntaxError, ValueError):
                continue
            best = chunk
    return "\n".join(best) + "\n" if best else None


# --------------------------------------------------------------------------------------------------
# Parent side


def _run(code: str, limits: SandboxLimits, stdin: str, guard: bool, disable: tuple[str, ...] = ()) -> SandboxResult:
    """run_program with the Python guard switchable and OS layers switchable off.

    Tests turn the guard off to prove the OS layer alone, and turn single layers off (``disable``)
    to prove that their escape tests can fail.
    """
    result, report = _execute(code, limits, stdin, guard, disable)
    result.layers = report["layers"]
    return result


def _execute(code: str, limits: SandboxLimits, stdin: str, guard: bool, disable) -> tuple[SandboxResult, dict]:
    """Run the program; (result, the child's report {"layers": ..., "errors": ...})."""
    if not isinstance(code, str):
        raise TypeError(f"run_program: expected code as str, got {type(code).__name__}")
    if not isinstance(stdin, str):
        raise TypeError(f"run_program: expected stdin as str, got {type(stdin).__name__}")
    _check_modules(sys.executable, limits.allowed_modules)
    unknown = set(disable) - set(LAYERS)
    if unknown:
        raise ValueError(f"disable: unknown layers {sorted(unknown)}")
    required = [name for name in LAYERS if name not in limits.allow_weaker and name not in disable]
    prefix = () if "network_namespace" in disable else _network_prefix()
    if not prefix and "network_namespace" in required:
        raise SandboxUnavailable(_missing_message(["network_namespace"], "unshare --net does not work here"))
    root = os.geteuid() == 0
    workdir = os.path.realpath(tempfile.mkdtemp(prefix="acculturate-sandbox-"))
    report_read, report_write = os.pipe()
    try:
        program_path = os.path.join(workdir, "program.py")
        with open(program_path, "w", encoding="utf-8") as f:
            f.write(code)
        if root:  # the child gives up root; its working directory must stay its own
            os.chown(workdir, NOBODY_UID, NOBODY_UID)
            os.chown(program_path, NOBODY_UID, NOBODY_UID)
        config = {
            "tmp": workdir,
            "allowed": list(limits.allowed_modules),
            "internals": list(_LIBRARY_INTERNALS),
            "guard": guard,
            "required": required,
            "disable": list(disable),
            "outside_netns": os.readlink("/proc/self/ns/net") if prefix else None,
            "report_fd": report_write,
            "drop_uid": NOBODY_UID if root and "unprivileged_uid" not in disable else None,
            "alarm": int(limits.wall_seconds) + 2,
            "max_files_written": limits.max_files_written,
            "exit_blocked": EXIT_BLOCKED,
            "exit_memory": EXIT_MEMORY,
            "exit_setup": EXIT_SETUP,
        }
        python = [sys.executable, "-I", "-S", "-c", _child_source(), json.dumps(config)]
        result = _supervise([*prefix, *python], workdir, limits, stdin, report_write)
        os.close(report_write)
        report_write = -1
        report = _read_report(report_read)
        if report is None:  # set-up did not finish: the program never ran
            raise SandboxUnavailable(
                f"sandbox: set-up failed, the program was not run (exit status {result.exit_code}): "
                f"{result.stderr.strip()[-2000:] or '(no message)'}"
            )
        return result, report
    finally:
        for fd in (report_read, report_write):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(workdir, ignore_errors=True)


def _read_report(fd: int) -> dict | None:
    """The layers the child reported on its report pipe, or None when it never wrote one."""
    os.set_blocking(fd, False)
    try:
        data = os.read(fd, 65536)
    except BlockingIOError:
        return None
    try:
        report = json.loads(data) if data else None
    except ValueError:
        return None
    return report if isinstance(report, dict) and isinstance(report.get("layers"), dict) else None


def _supervise(argv: list[str], workdir: str, limits: SandboxLimits, stdin: str, report_fd: int) -> SandboxResult:
    start = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=workdir,
        env={},
        start_new_session=True,  # pgid == pid: one killpg reaches every descendant
        pass_fds=(report_fd,),
        preexec_fn=functools.partial(_set_limits, limits),
    )
    deadline = start + limits.wall_seconds
    captured = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    parent_reason = None
    try:
        parent_reason = _pump(proc, stdin.encode("utf-8"), captured, deadline, limits.max_output_bytes)
    finally:
        # Kill the group before reaping the leader: while the leader is unreaped its pid (== pgid)
        # cannot be reused, so this signal can only reach the sandbox's own processes.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None and not pipe.closed:
                pipe.close()
    seconds = time.monotonic() - start
    exit_code = proc.returncode
    reason = parent_reason or _child_reason(exit_code, usage.ru_utime + usage.ru_stime, limits)
    cap = limits.max_output_bytes
    out, err = (bytes(captured[fd][:cap]).decode("utf-8", "replace") for fd in captured)
    return SandboxResult(
        stdout=out,
        stderr=err,
        exit_code=exit_code,
        timed_out=reason in ("cpu", "wall"),
        killed_reason=reason,
        seconds=seconds,
    )


def _pump(proc, data: bytes, captured: dict, deadline: float, cap: int) -> str | None:
    """Feed stdin and drain stdout/stderr until the child exits, or return 'wall'/'output'."""
    selector = selectors.DefaultSelector()
    for pipe in (proc.stdout, proc.stderr):
        os.set_blocking(pipe.fileno(), False)
        selector.register(pipe.fileno(), selectors.EVENT_READ)
    stdin_fd = proc.stdin.fileno()
    if data:
        os.set_blocking(stdin_fd, False)
        selector.register(stdin_fd, selectors.EVENT_WRITE)
    else:
        proc.stdin.close()
    written = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "wall"
        if not selector.get_map():
            # Pipes closed; the child may still be running (it can close fd 1 and 2 and sleep).
            if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return None
            time.sleep(min(0.01, remaining))
            continue
        for key, _ in selector.select(timeout=remaining):
            fd = key.fd
            if fd == stdin_fd:
                try:
                    written += os.write(fd, data[written : written + 65536])
                except BrokenPipeError:
                    written = len(data)
                if written >= len(data):
                    selector.unregister(fd)
                    proc.stdin.close()
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                selector.unregister(fd)
                continue
            captured[fd] += chunk
            if len(captured[fd]) > cap:
                return "output"


def _child_reason(exit_code: int, cpu_used: float, limits: SandboxLimits) -> str | None:
    """Why the child ended, from its exit status (the parent did not stop it)."""
    if exit_code == EXIT_BLOCKED:
        return "blocked"
    if exit_code == EXIT_MEMORY:
        return "memory"
    if exit_code == -signal.SIGXCPU or (exit_code == -signal.SIGKILL and cpu_used >= limits.cpu_seconds):
        return "cpu"  # SIGXCPU at the soft limit, SIGKILL at the hard one if SIGXCPU was ignored
    if exit_code == -signal.SIGALRM:
        return "wall"  # the child's own alarm: only fires when the parent could not kill it first
    if exit_code == -signal.SIGSEGV:
        # Without ctypes or crafted bytecode the one way to crash CPython is to exhaust the C stack
        # (sys.setrecursionlimit raised past what the 8 MiB stack holds).
        return "memory"
    return None


def _set_limits(limits: SandboxLimits) -> None:
    """preexec_fn: runs in the forked child before exec. Lowering limits needs no privilege.

    Only setrlimit calls: nothing here takes a lock that another parent thread might hold.
    """
    cpu = max(1, int(-(-limits.cpu_seconds // 1)))  # RLIMIT_CPU counts whole seconds
    memory = int(limits.memory_mb * 1024 * 1024)
    for name, soft, hard in (
        ("RLIMIT_CPU", cpu, cpu + 1),
        ("RLIMIT_AS", memory, memory),
        ("RLIMIT_FSIZE", int(limits.max_file_bytes), int(limits.max_file_bytes)),
        ("RLIMIT_NOFILE", 64, 64),
        ("RLIMIT_CORE", 0, 0),
    ):
        resource.setrlimit(getattr(resource, name), (soft, hard))


@functools.lru_cache(maxsize=None)
def _network_prefix() -> tuple[str, ...]:
    """The ``unshare`` command line that puts the child in a new network namespace; () if none works.

    Root creates the namespace directly: it must stay out of a user namespace, where uid 65534
    would not be mapped and the child could not give up root. A normal user needs a user
    namespace, in which it is mapped to 65534 (so the program is not "root" even in there).
    Probed once per process.
    """
    unshare, true = shutil.which("unshare"), shutil.which("true")
    if unshare is None or true is None:
        return ()
    # --keep-caps: the child sets up its mount namespace with the capabilities it has in the user
    # namespace, then drops them (sandbox_child._drop_capabilities).
    user = () if os.geteuid() == 0 else ("--map-user=65534", "--map-group=65534", "--keep-caps")
    prefix = (unshare, *user, "--net")
    try:
        probe = subprocess.run([*prefix, true], env={}, capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return prefix if probe.returncode == 0 else ()


@functools.lru_cache(maxsize=None)
def _probe() -> tuple[dict, dict]:
    """One sandboxed run of an empty program with no layer required: ({layer: held}, {layer: why not})."""
    try:
        _, report = _execute("", SandboxLimits(allow_weaker=LAYERS), "", guard=True, disable=())
    except SandboxUnavailable as e:  # set-up broke before the report (e.g. Python cannot start)
        return dict.fromkeys(LAYERS, False), dict.fromkeys(LAYERS, str(e))
    return report["layers"], report["errors"]


@functools.lru_cache(maxsize=None)
def _check_modules(python: str, modules: tuple[str, ...]) -> None:
    """Fail early, in the caller, if an allowed module cannot be imported by ``python -I -S``."""
    probe = (
        "import importlib.util, sys\n"
        "missing = [m for m in sys.argv[1:] if importlib.util.find_spec(m) is None]\n"
        "print(' '.join(missing))"
    )
    argv = [python, "-I", "-S", "-c", probe, *modules]
    result = subprocess.run(argv, env={}, capture_output=True, text=True)
    missing = result.stdout.split()
    if result.returncode != 0 or missing:
        raise ValueError(
            "SandboxLimits.allowed_modules: not importable from the standard library of "
            f"{python} (the sandbox runs with -I -S, without site-packages): "
            f"{' '.join(missing) or result.stderr.strip()}"
        )


@functools.lru_cache(maxsize=None)
def _child_source() -> str:
    """Source handed to ``python -c``: the whole of :mod:`.sandbox_child` and a call to its main."""
    return inspect.getsource(sandbox_child) + "\n_child_main()\n"
