"""Run an untrusted, model-written Python program and capture what it prints.

The `program` strategy asks the model for a program whose output is the answer; this module runs
that program where it can do no harm. The defences are layered, and each layer holds on its own:

OS layer (the real boundary; holds even if the Python layer is broken):
  * a fresh ``python -I -S`` process (isolated mode: no site-packages, no PYTHON* variables, no
    current directory on ``sys.path``) with an empty environment, in a new session, with a new
    temporary directory as its working directory;
  * ``setrlimit`` before exec: RLIMIT_CPU, RLIMIT_AS (memory), RLIMIT_FSIZE, RLIMIT_NOFILE,
    RLIMIT_CORE=0; and RLIMIT_NPROC=1 (no fork, no thread) set by the child itself just before the
    program runs (the namespace set-up below still needs to fork ``mount``);
  * when the parent is root, the child gives up root (uid/gid 65534, "nobody") after start-up and
    before any user code: root ignores RLIMIT_NPROC and file permissions, nobody does not;
  * namespaces via ``unshare`` wherever the kernel allows them (root directly; a normal user
    inside a user namespace): a network namespace (only a down loopback: nothing to connect to)
    and a mount namespace in which an empty read-only tmpfs covers /etc (no passwd, group, hosts,
    keys), falling back to the network namespace alone, then to none;
  * wall-time limit in the parent (the whole process group is SIGKILLed), plus ``alarm`` in the
    child in case the parent dies; stdout and stderr are read with a size cap.

Python layer (inside the child, before the user code runs):
  * an audit hook (``sys.addaudithook``; it cannot be removed) that allows a short list of events
    and stops the program at the first forbidden one: ``open`` outside the temporary directory,
    ``socket.*``, ``subprocess.Popen``, ``os.system``/``exec``/``fork``/``posix_spawn``/``kill``,
    ``ctypes.*``, ``code.__new__``/``marshal.loads`` (crafted bytecode), ``gc.*``, ``sys.settrace``,
    ``sys.addaudithook``, importing any module outside the allow-list, and every event it does not
    know. Frames and code objects (``sys._getframe``, ``tb_frame``, ``__code__``, ``__defaults__``)
    are refused with ValueError without stopping the program: typing, enum and namedtuple ask for
    their caller's frame and cope with the refusal;
  * ``__import__`` replaced so that the program's own ``import os`` is refused even though ``os`` is
    already loaded (the audit ``import`` event only fires for modules not yet loaded).
The allowed modules are imported before the hook goes in, so the hook never needs to let the child
read the standard library. Known gap of this layer: ``importlib.import_module`` (reachable through
an allowed module's globals) loads a built-in module (pwd, gc...) without any audit event; gc's
functions raise their own events, and pwd finds /etc empty in the mount namespace. Pure-Python
sandboxes are escapable in principle (CPython crashers, for one), which is why the OS layer does
not trust this one.
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
    """

    cpu_seconds: float = 5
    wall_seconds: float = 10
    memory_mb: int = 512
    max_output_bytes: int = 65536
    max_file_bytes: int = 4 * 1024 * 1024
    max_files_written: int = 64
    allowed_modules: tuple[str, ...] = field(default=DEFAULT_ALLOWED_MODULES)

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
    """

    stdout: str
    stderr: str
    exit_code: int
    timed_out: bool
    killed_reason: str | None
    seconds: float

    @property
    def ok(self) -> bool:
        """True when the program ran to completion and exited 0."""
        return self.exit_code == 0 and self.killed_reason is None


def run_program(code: str, limits: SandboxLimits | None = None, stdin: str = "") -> SandboxResult:
    """Run ``code`` in the sandbox and return what it printed and why it stopped.

    Args:
        code: Python source of the whole program.
        limits: resource limits and module allow-list; ``SandboxLimits()`` when None.
        stdin: text fed to the program's standard input.

    Returns:
        SandboxResult. A program that breaks a rule is stopped, not raised on: the parent never
        sees an exception for anything the program does.

    Raises:
        ValueError: a module in ``limits.allowed_modules`` is not in this Python's standard library.
    """
    return _run(code, limits or SandboxLimits(), stdin, guard=True)


def active_layers() -> dict[str, bool]:
    """Which optional OS-level defences work on this machine (all the others always apply).

    Returns:
        {"network_namespace": bool, "hidden_etc": bool, "drop_root": bool}. drop_root is True
        when running as root: the child then switches to uid 65534 before the program runs.
    """
    _, layers = _namespace_prefix()
    return {
        "network_namespace": "network_namespace" in layers,
        "hidden_etc": "hidden_etc" in layers,
        "drop_root": os.geteuid() == 0,
    }


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


def _run(code: str, limits: SandboxLimits, stdin: str, guard: bool) -> SandboxResult:
    """run_program with the Python layer switchable: tests turn it off to prove the OS layer alone."""
    if not isinstance(code, str):
        raise TypeError(f"run_program: expected code as str, got {type(code).__name__}")
    if not isinstance(stdin, str):
        raise TypeError(f"run_program: expected stdin as str, got {type(stdin).__name__}")
    _check_modules(sys.executable, limits.allowed_modules)
    root = os.geteuid() == 0
    workdir = os.path.realpath(tempfile.mkdtemp(prefix="acculturate-sandbox-"))
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
            "drop_uid": NOBODY_UID if root else None,
            "alarm": int(limits.wall_seconds) + 2,
            "max_files_written": limits.max_files_written,
            "exit_blocked": EXIT_BLOCKED,
            "exit_memory": EXIT_MEMORY,
            "exit_setup": EXIT_SETUP,
        }
        python = [sys.executable, "-I", "-S", "-c", _child_source(), json.dumps(config)]
        argv = [*_namespace_prefix()[0], *python]
        return _supervise(argv, workdir, limits, stdin)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _supervise(argv: list[str], workdir: str, limits: SandboxLimits, stdin: str) -> SandboxResult:
    start = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=workdir,
        env={},
        start_new_session=True,  # pgid == pid: one killpg reaches every descendant
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


# Runs inside the new mount namespace, then becomes the Python child ("$@") with the same pid.
_HIDE_ETC = 'mount -t tmpfs -o ro,size=16k,mode=755 sandbox /etc && exec "$@"'


@functools.lru_cache(maxsize=None)
def _namespace_prefix() -> tuple[tuple[str, ...], frozenset[str]]:
    """The ``unshare`` command line to put before the child, and the layers it provides.

    Tries network + mount namespaces (with /etc hidden), then the network namespace alone, and
    keeps the first that works here; ((), frozenset()) when none does. Probed once per process.
    """
    unshare, sh = shutil.which("unshare"), shutil.which("sh")
    if unshare is None or sh is None:
        return (), frozenset()
    # Root creates namespaces directly. It must stay out of a user namespace: uid 65534 would not
    # be mapped in it, so the child could not drop to nobody. A normal user needs one.
    user = () if os.geteuid() == 0 else ("--user", "--map-root-user")
    hide_etc = (unshare, *user, "--net", "--mount", "--propagation", "private", sh, "-c", _HIDE_ETC, "sh")
    candidates = [
        (hide_etc, frozenset({"network_namespace", "hidden_etc"}), [sh, "-c", "test ! -e /etc/passwd"]),
        ((unshare, *user, "--net"), frozenset({"network_namespace"}), [sh, "-c", "true"]),
    ]
    for prefix, layers, check in candidates:
        try:
            probe = subprocess.run([*prefix, *check], env={}, capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return prefix, layers
    return (), frozenset()


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
    """Source handed to ``python -c``: _child_main's definition and a call to it."""
    parts = [textwrap.dedent(inspect.getsource(fn)) for fn in (_install_guards, _child_main)]
    return "\n".join(parts) + "\n_child_main()\n"


# --------------------------------------------------------------------------------------------------
# Child side. These two functions are never called in the parent: their source is sent to the child
# with -c, so they use nothing from this module's globals (everything is imported inside).


def _child_main() -> None:  # pragma: no cover - runs in the sandbox process
    """Set up the Python-level guards, then execute program.py as ``__main__``."""
    import builtins
    import json
    import os
    import resource
    import signal
    import sys
    import types

    config = json.loads(sys.argv[1])
    sys.argv = ["program.py"]
    exit_setup = config["exit_setup"]
    with open("program.py", encoding="utf-8") as f:
        source = f.read()
    try:
        code = compile(source, "program.py", "exec")
    except (SyntaxError, ValueError) as e:  # ValueError: source with a NUL byte
        sys.__excepthook__(type(e), e, None)
        sys.exit(1)

    # Import everything the program may use now: once the guards are up the child cannot read
    # the standard library any more (the audit hook, and for a root parent the file permissions).
    for name in [*config["allowed"], *config["internals"]]:
        try:
            __import__(name)
        except ImportError as e:
            sys.stderr.write(f"sandbox setup failed: cannot import {name}: {e}\n")
            os._exit(exit_setup)

    if config["drop_uid"] is not None:
        uid = config["drop_uid"]
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    # Counts every process and thread of the real user; 1 = this one, so fork and thread creation
    # fail with EAGAIN. Root is exempt, hence the drop above. Set here rather than before exec
    # because the namespace set-up forks mount.
    resource.setrlimit(resource.RLIMIT_NPROC, (1, 1))
    # Second wall-clock bound in case the parent dies: SIGALRM's default action ends the process.
    signal.alarm(config["alarm"])

    main = types.ModuleType("__main__")
    main.__file__ = "program.py"
    main.__builtins__ = builtins
    sys.modules["__main__"] = main

    if config["guard"]:
        _install_guards(config, main.__dict__)

    try:
        exec(code, main.__dict__)
    except MemoryError:
        sys.stderr.write("MemoryError: the program exceeded its memory limit\n")
        try:
            sys.stdout.flush()
        finally:
            os._exit(config["exit_memory"])
    except SystemExit:
        raise
    except BaseException as e:
        # Report the program's own frames only (drop this function's frame), as plain python would.
        # The printer reads the traceback from the exception, not from its third argument.
        if e.__traceback__ is not None:
            e.__traceback__ = e.__traceback__.tb_next
        sys.__excepthook__(type(e), e, e.__traceback__)
        sys.exit(1)


def _install_guards(config: dict, user_globals: dict) -> None:  # pragma: no cover - child side
    """Add the audit hook and replace ``__import__``. Runs in the child, before the program.

    The hook outlives anything the program can do to Python objects, so it must not depend on any:
    every name it uses is a default argument bound here (no globals, no builtins lookups, no
    closure cells), it compares types with ``is`` and only inspects exact str/bytes/int, so no
    method the program defines (``__eq__``, ``__hash__``, ``__fspath__``, ``__repr__``) runs inside
    it. tests/prompting/test_sandbox.py checks its bytecode for global lookups.

    Args:
        config: the parent's settings (tmp, allowed, internals, max_files_written, exit_blocked).
        user_globals: the program's module namespace; imports from it go through the allow-list.
    """
    import builtins
    import os
    import sys

    tmp = config["tmp"].rstrip("/") + "/"
    importable = frozenset(name.partition(".")[0] for name in [*config["allowed"], *config["internals"]])
    # Reading these (the standard library, for traceback source lines and lazy codec imports) is
    # refused with PermissionError without stopping the program; every other path outside tmp stops it.
    library_dirs = tuple(path.rstrip("/") + "/" for path in sys.path if path.startswith("/"))
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def violation(
        what,
        _write=os.write,
        _exit=os._exit,
        _flush=sys.stdout.flush,
        _encode=str.encode,
        _code=config["exit_blocked"],
        _BaseException=BaseException,
    ):
        """Stop the program at once: a caught exception would let it carry on and try again."""
        try:
            _flush()  # keep what the program printed before it misbehaved
        except _BaseException:
            pass
        _write(2, b"\nsandbox: blocked " + _encode(what, "utf-8", "replace") + b"\n")
        _exit(_code)

    def show(value, _type=type, _str=str, _bytes=bytes, _int=int, _repr=repr):
        """repr of an exact str/bytes/int; nothing else, so no program-defined __repr__ runs."""
        t = _type(value)
        if t is _str or t is _bytes or t is _int:
            return _repr(value)[:200]
        return "<object>"

    def inside_tmp(
        path,
        _type=type,
        _str=str,
        _bytes=bytes,
        _decode=bytes.decode,
        _startswith=str.startswith,
        _split=str.split,
        _getcwd=os.getcwd,
        _tmp=tmp,
    ):
        """True for a str/bytes path that stays in tmp: relative without '..' or under tmp."""
        if _type(path) is _bytes:
            path = _decode(path, "utf-8", "surrogateescape")
        if _type(path) is not _str or "\0" in path or ".." in _split(path, "/"):
            return False
        if _startswith(path, "/"):
            return _startswith(path, _tmp)
        # Relative paths resolve against the working directory; chdir is refused, but check anyway.
        return _getcwd() + "/" == _tmp

    def check_open(
        args,
        _type=type,
        _str=str,
        _int=int,
        _len=len,
        _startswith=str.startswith,
        _inside=inside_tmp,
        _show=show,
        _violation=violation,
        _PermissionError=PermissionError,
        _library=library_dirs,
        _write_flags=write_flags,
        _written=[0],  # mutable on purpose: the count of files opened for writing
        _max_written=config["max_files_written"],
    ):
        path = args[0] if _len(args) else None
        flags = args[2] if _len(args) > 2 else None
        if _type(path) is _int:
            return  # an already-open descriptor (0, 1, 2 or one the program opened in tmp)
        writing = _type(flags) is not _int or (flags & _write_flags) != 0
        if _inside(path):
            if writing:
                _written[0] += 1
                if _written[0] > _max_written:
                    _violation(f"open for writing: more than {_max_written} files")
            return
        if not writing and _type(path) is _str and _startswith(path, _library):
            raise _PermissionError("sandbox: the standard library cannot be read from the program")
        _violation("open " + _show(path))

    def hook(
        event,
        args,
        _type=type,
        _str=str,
        _len=len,
        _partition=str.partition,
        _importable=importable,
        _check_open=check_open,
        _inside=inside_tmp,
        _show=show,
        _violation=violation,
        _ValueError=ValueError,
    ):
        if _type(event) is not _str:
            _violation("audit event with a non-str name")
        if event in {
            "exec", "compile", "builtins.id", "builtins.input", "builtins.input/result",
            "time.sleep", "sys.excepthook", "sys.unraisablehook", "array.__new__",
            "cpython._PySys_ClearAuditHooks", "cpython.PyInterpreterState_Clear",
        }:  # fmt: skip
            return
        first = args[0] if _len(args) else None
        if event == "open":
            _check_open(args)
            return
        if event == "import":
            if _type(first) is _str and _partition(first, ".")[0] in _importable:
                return
            _violation("import " + _show(first))
        if event == "os.listdir" or event == "os.scandir":
            if first is None or _inside(first):
                return
            _violation(event + " " + _show(first))
        if event == "object.__setattr__" or event == "object.__delattr__":
            # Swapping a function's code or an object's class is how one would tamper with code
            # that is already trusted. __defaults__ and __bases__ stay settable: namedtuple and
            # typing.NamedTuple set them.
            name = args[1] if _len(args) > 1 else None
            if _type(name) is _str and name != "__code__" and name != "__class__":
                return
            _violation(event + " " + _show(name))
        if event == "sys._getframe" or event == "object.__getattr__":
            # Frames, tracebacks' frames and code objects lead back to this setup code. Refused
            # with ValueError, which typing, enum, namedtuple, warnings and dataclasses catch
            # when they look up their caller's module.
            raise _ValueError("sandbox: frames and code objects are not available")
        _violation(event + (" " + _show(first) if _len(args) else ""))

    def guarded_import(
        name,
        globals=None,
        locals=None,
        fromlist=(),
        level=0,
        _import=builtins.__import__,
        _user=user_globals,
        _modules=sys.modules,
        _importable=importable,
        _type=type,
        _str=str,
        _dict=dict,
        _get=dict.get,
        _getattr=getattr,
        _partition=str.partition,
        _show=show,
        _violation=violation,
    ):
        """__import__ that applies the allow-list to the program's imports.

        The audit hook sees only modules not loaded yet; ``os`` is loaded at start-up, so
        ``import os`` needs this filter. Imports made by library modules themselves (their
        globals are a loaded module's namespace) pass through: what they load is already loaded.
        """
        from_library = False
        if globals is not None and globals is not _user and _type(globals) is _dict:
            module_name = _get(globals, "__name__")
            if _type(module_name) is _str and module_name != "__main__":
                module = _get(_modules, module_name)
                from_library = _getattr(module, "__dict__", None) is globals
        if level == 0 and not from_library:
            if _type(name) is not _str or _partition(name, ".")[0] not in _importable:
                _violation("import " + _show(name))
        return _import(name, globals, locals, fromlist, level)

    sys.addaudithook(hook)
    builtins.__import__ = guarded_import
