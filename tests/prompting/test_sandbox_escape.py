"""Escape attempts against the sandbox's OS layer alone: every program here runs with the Python
guard OFF (sandbox._run(..., guard=False)), with os, socket, ctypes and signal importable.

Each test makes a real attempt and asserts it is contained, then repeats the attempt with the
layer(s) that stop it switched off (``disable=``) and asserts that it gets through: the control
proves the attempt is real and the test can fail. Nothing here skips: on a machine without a
layer (CI included) the tests fail, which is the point (test_every_os_layer_is_up_on_this_machine
names the missing one). docs/security.md counts these attempts.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from acculturate.prompting import sandbox
from acculturate.prompting.sandbox import (
    DEFAULT_ALLOWED_MODULES,
    LAYERS,
    NOBODY_UID,
    SandboxLimits,
    SandboxResult,
    SandboxUnavailable,
    active_layers,
    run_program,
)

CHECKOUT = Path(__file__).resolve().parents[2]
MODULES = (*DEFAULT_ALLOWED_MODULES, "os", "socket", "ctypes", "signal", "types")
ROOT = os.geteuid() == 0


def attempt(code: str, disable: tuple[str, ...] = (), **limits) -> SandboxResult:
    """Run ``code`` with the Python guard off and every OS layer on, except those in ``disable``."""
    limits.setdefault("allowed_modules", MODULES)
    return sandbox._run(textwrap.dedent(code), SandboxLimits(**limits), "", guard=False, disable=disable)


def output(result: SandboxResult) -> str:
    return result.stdout + result.stderr


def _reachable_by_others(path: Path) -> bool:
    """Whether any user (nobody, 65534) may walk to ``path``: every directory on the way searchable."""
    return all(p.stat().st_mode & 0o001 for p in (path, *path.parents))


@pytest.fixture
def world_dir():
    """A directory every user can read, for the controls' world-readable file: the checkout where
    nobody can reach it (as in CI), else a fresh one under /tmp (a checkout inside a private folder,
    such as one `mktemp -d` made, is out of nobody's reach whatever the sandbox does)."""
    if _reachable_by_others(CHECKOUT):
        yield CHECKOUT
        return
    folder = Path(tempfile.mkdtemp(prefix="acculturate-escape-test-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def secret_files(tmp_path, world_dir):
    """A root-only file, a world-readable file (in the checkout where nobody can reach it) and a
    file in the home directory, each holding its own random token; yields {name: (path, token)}."""
    files = {}
    root_only = tmp_path / "root_only.txt"
    files["root_only"] = root_only
    fd, home_file = tempfile.mkstemp(dir=Path.home(), prefix=".acculturate-escape-test-")
    os.close(fd)
    files["home"] = Path(home_file)
    world_file = tempfile.NamedTemporaryFile(dir=world_dir, prefix=".escape-test-", delete=False)
    world_file.close()
    files["world_readable"] = Path(world_file.name)
    tokens = {}
    for name, path in files.items():
        tokens[name] = secrets.token_hex(16)
        path.write_text(tokens[name])
        path.chmod(0o600 if name == "root_only" else 0o644)
    yield {name: (str(path), tokens[name]) for name, path in files.items()}
    for name, path in files.items():
        if name != "root_only":
            path.unlink(missing_ok=True)


def test_every_os_layer_is_up_on_this_machine():
    # CI runs on this machine kind: a layer missing there is a failure, not a skip.
    layers = active_layers()
    assert set(layers) == set(LAYERS)
    assert all(layers.values()), {name: ok for name, ok in layers.items() if not ok}
    assert run_program("print(1)").layers == layers


# ------------------------------------------------------------------------------------------------
# Files


READ = """
for path in {paths!r}:
    try:
        print("READ", open(path).read())
    except OSError as e:
        print("DENIED", path, type(e).__name__)
"""


def test_reading_files_outside_is_denied(secret_files):
    paths = [path for path, _ in secret_files.values()]
    result = attempt(READ.format(paths=paths))
    assert result.stdout.count("DENIED") == 3, output(result)
    assert not any(token in output(result) for _, token in secret_files.values())
    # Control: without Landlock, nobody (65534) reads the world-readable file.
    leaked = attempt(READ.format(paths=paths), disable=("landlock_filesystem", "mount_namespace"))
    assert secret_files["world_readable"][1] in leaked.stdout
    # ... and without the uid switch too, the root-only file and the home directory's.
    leaked = attempt(READ.format(paths=paths), disable=("landlock_filesystem", "mount_namespace", "unprivileged_uid"))
    assert all(token in leaked.stdout for _, token in secret_files.values())


STAT = """
import os
for path in {paths!r}:
    try:
        print("EXISTS", path, os.stat(path).st_size)
    except OSError as e:
        print("NOPE", path, type(e).__name__)
"""


def test_stat_cannot_tell_whether_a_path_outside_exists(secret_files):
    # Landlock (ABI <= 7) does not check stat: without the mount namespace a program learns that a
    # file exists and its size. In the sandbox's own root each outside path answers exactly as a
    # made-up name beside it does (no such file; or no search right, for /root on the way to the
    # standard library).
    real = [path for path, _ in secret_files.values()] + ["/etc/passwd", str(CHECKOUT / "pyproject.toml")]
    paths = [p for path in real for p in (path, path + "-nonexistent-" + secrets.token_hex(4))]
    result = attempt(STAT.format(paths=paths))
    answers = [line.split()[2] for line in result.stdout.splitlines()]
    assert "EXISTS" not in result.stdout and len(answers) == len(paths), output(result)
    assert answers[0::2] == answers[1::2], output(result)
    assert result.layers["mount_namespace"] is True
    leaked = attempt(STAT.format(paths=paths), disable=("mount_namespace",))
    world, token = secret_files["world_readable"]
    assert f"EXISTS {world} {len(token)}" in leaked.stdout and "EXISTS /etc/passwd" in leaked.stdout, output(leaked)


def test_listing_and_reading_system_files_is_denied():
    code = """
    import os
    for path in ("/etc/shadow", "/etc/passwd", "/root", "/home", "/", "/etc", "/dev"):
        try:
            if os.path.isdir(path):
                print("LISTED", path, len(os.listdir(path)))
            else:
                print("READ", path, len(open(path).read()))
        except OSError as e:
            print("DENIED", path, type(e).__name__)
    """
    result = attempt(code)
    assert result.stdout.count("DENIED") == 7 and "LISTED" not in result.stdout, output(result)
    leaked = attempt(code, disable=("landlock_filesystem", "mount_namespace"))
    assert "READ /etc/passwd" in leaked.stdout and "LISTED / " in leaked.stdout


@pytest.fixture
def world_writable():
    """A folder under /tmp that anyone may create files in, like /tmp itself."""
    path = Path(tempfile.mkdtemp(prefix="acculturate-escape-"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path)


def test_writing_outside_is_denied(world_writable):
    shared = world_writable
    code = f"""
    import os
    for path in ({str(shared / 'escaped.txt')!r}, "/tmp/acculturate-escaped-{secrets.token_hex(4)}",
                 "/dev/shm/acculturate-escaped"):
        try:
            with open(path, "w") as f:
                f.write("escaped")
            print("WROTE", path)
        except OSError as e:
            print("DENIED", path, type(e).__name__)
    try:
        os.mkdir({str(shared / 'dir')!r})
        print("WROTE dir")
    except OSError as e:
        print("DENIED mkdir", type(e).__name__)
    """
    result = attempt(code)
    assert "WROTE" not in result.stdout and result.stdout.count("DENIED") == 4, output(result)
    assert list(shared.iterdir()) == []
    leaked = attempt(code, disable=("landlock_filesystem", "mount_namespace"))
    assert f"WROTE {shared / 'escaped.txt'}" in leaked.stdout
    assert (shared / "escaped.txt").read_text() == "escaped"
    for path in ("/dev/shm/acculturate-escaped",):
        Path(path).unlink(missing_ok=True)
    for line in leaked.stdout.splitlines():
        if line.startswith("WROTE /"):
            Path(line.split(" ", 1)[1]).unlink(missing_ok=True)


def test_changing_metadata_of_a_file_it_owns_outside_is_denied(world_writable):
    # The sandbox's uid owns this file, as a non-root caller's child owns the caller's files:
    # permissions allow chmod, Landlock does not cover it, seccomp refuses it (and in the sandbox's
    # own root the file is not there at all).
    target = world_writable / "owned.txt"
    target.write_text("x")
    target.chmod(0o600)
    if ROOT:
        os.chown(target, NOBODY_UID, NOBODY_UID)
    code = f"""
    import os
    for change in (lambda: os.chmod({str(target)!r}, 0o777), lambda: os.utime({str(target)!r}, (0, 0)),
                   lambda: os.chown({str(target)!r}, -1, -1)):
        try:
            change()
            print("CHANGED")
        except OSError as e:
            print("DENIED", type(e).__name__)
    """
    result = attempt(code)
    assert result.stdout.split() == ["DENIED", "PermissionError"] * 3, output(result)
    result = attempt(code, disable=("seccomp",))   # the mount namespace alone: no such file
    assert result.stdout.split() == ["DENIED", "FileNotFoundError"] * 3, output(result)
    assert target.stat().st_mode & 0o777 == 0o600 and target.stat().st_mtime > 0
    leaked = attempt(code, disable=("seccomp", "mount_namespace"))
    assert leaked.stdout.split() == ["CHANGED"] * 3
    assert target.stat().st_mode & 0o777 == 0o777


def test_running_a_binary_is_denied():
    code = """
    import os
    try:
        os.execv("/bin/sh", ["sh", "-c", "echo EXECUTED"])
    except OSError as e:
        print("DENIED", type(e).__name__)
    """
    result = attempt(code)
    assert "EXECUTED" not in result.stdout and "DENIED FileNotFoundError" in result.stdout, output(result)
    result = attempt(code, disable=("mount_namespace",))   # Landlock alone: no execute right anywhere
    assert "EXECUTED" not in result.stdout and "DENIED PermissionError" in result.stdout, output(result)
    assert "EXECUTED" in attempt(code, disable=("landlock_filesystem", "mount_namespace")).stdout


# ------------------------------------------------------------------------------------------------
# /proc and /sys


def test_proc_and_sys_snooping_is_denied():
    code = """
    import os
    ppid = os.getppid()
    for path in (f"/proc/{ppid}/cmdline", f"/proc/{ppid}/environ", "/proc/1/cmdline",
                 "/proc/self/maps", "/sys/kernel/mm/transparent_hugepage/enabled", "/proc/cpuinfo"):
        try:
            print("READ", path, open(path, "rb").read()[:300])
        except OSError as e:
            print("DENIED", path, type(e).__name__)
    for path in ("/proc", "/sys/class/net", f"/proc/{ppid}/fd"):
        try:
            names = os.listdir(path)   # the process ids in /proc: numbers, so sort them as numbers
            print("LISTED", path, sorted(names, key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else 0, n)))
        except OSError as e:
            print("DENIED", path, type(e).__name__)
    """
    result = attempt(code)
    assert "READ" not in result.stdout and "LISTED" not in result.stdout, output(result)
    assert result.stdout.count("DENIED") == 9
    assert "pytest" not in output(result)
    leaked = attempt(code, disable=("landlock_filesystem", "mount_namespace"))
    assert "pytest" in leaked.stdout  # the parent's command line
    assert f"'{os.getpid()}'" in leaked.stdout  # the pytest process in the /proc listing


def test_signals_to_the_parent_leave_it_running():
    # The sandbox's parent here is a separate supervisor process, so that the control (which does
    # kill it) takes nothing else with it.
    code = "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint('SENT')\n"
    # The supervisor loads sandbox.py alone (package modules with just their __path__), not the
    # package's __init__ and the torch it imports: 0.2 s instead of 5 s per supervisor.
    supervisor = textwrap.dedent(f"""
        import sys, types
        for name, path in (("acculturate", {str(CHECKOUT / 'acculturate')!r}),
                           ("acculturate.prompting", {str(CHECKOUT / 'acculturate' / 'prompting')!r})):
            sys.modules[name] = types.ModuleType(name)
            sys.modules[name].__path__ = [path]
        from acculturate.prompting import sandbox
        disable = tuple(sys.argv[1:])
        result = sandbox._run({code!r}, sandbox.SandboxLimits(allowed_modules={MODULES!r}), "",
                              guard=False, disable=disable)
        print("PARENT ALIVE", result.stdout.strip(), result.stderr.strip().splitlines()[-1:])
    """)

    def supervise(*disable):
        return subprocess.Popen([sys.executable, "-c", supervisor, *disable], text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    # Each of the two layers (uid 65534, Landlock's signal scope) stops it alone.
    runs = [supervise(), supervise("landlock_scope"), supervise("unprivileged_uid")]
    control = supervise("landlock_scope", "unprivileged_uid")
    for contained in runs:
        out, err = contained.communicate(timeout=120)
        assert contained.returncode == 0 and "PARENT ALIVE" in out, out + err
        assert "SENT" not in out and "PermissionError" in out
    out, err = control.communicate(timeout=120)
    assert control.returncode == -signal.SIGKILL and "PARENT ALIVE" not in out, out + err


@pytest.fixture
def victim():
    """A process outside the sandbox with the sandbox's own uid (65534 under root): only
    Landlock's signal scope stands between the program and it."""
    def become_nobody():
        if ROOT:
            os.setgid(NOBODY_UID)
            os.setuid(NOBODY_UID)

    proc = subprocess.Popen(["sleep", "60"], preexec_fn=become_nobody, start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def test_signals_to_a_process_of_the_same_uid_are_denied(victim):
    code = f"import os\nos.kill({victim.pid}, 9)\nprint('SENT')\n"
    result = attempt(code)
    assert "SENT" not in result.stdout and "PermissionError" in result.stderr, output(result)
    time.sleep(0.2)
    assert victim.poll() is None
    assert attempt(code, disable=("landlock_scope",)).stdout == "SENT\n"
    assert victim.wait(timeout=5) == -signal.SIGKILL


# ------------------------------------------------------------------------------------------------
# Network


@pytest.fixture
def listeners():
    """A TCP listener and a UDP socket on 127.0.0.1; yields (tcp port, accepted list, udp socket)."""
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    tcp.settimeout(0.2)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(0.5)
    accepted, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            try:
                accepted.append(tcp.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield tcp.getsockname()[1], accepted, udp
    stop.set()
    thread.join()
    for s in (tcp, udp, *accepted):
        s.close()


def test_tcp_connect_is_denied(listeners):
    port, accepted, _ = listeners
    code = f"""
    import socket
    try:
        s = socket.socket()
        s.settimeout(2)
        s.connect(("127.0.0.1", {port}))
        print("CONNECTED")
    except OSError as e:
        print("DENIED", type(e).__name__, e)
    """
    # Each of the three layers stops it alone.
    layers = ("network_namespace", "landlock_network", "seccomp")
    for keep in (None, *layers):
        result = attempt(code, disable=tuple(layer for layer in layers if keep and layer != keep))
        assert result.stdout.startswith("DENIED"), (keep, output(result))
    time.sleep(0.3)
    assert accepted == []
    assert attempt(code, disable=layers).stdout == "CONNECTED\n"
    time.sleep(0.3)
    assert len(accepted) == 1


def test_udp_send_is_denied(listeners):
    # Landlock has no UDP rules: the network namespace and seccomp stop this one, each alone.
    _, _, udp = listeners
    code = f"""
    import socket
    try:
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"ESCAPED", ("127.0.0.1", {udp.getsockname()[1]}))
        print("SENT")
    except OSError as e:
        print("DENIED", type(e).__name__)
    """
    for disable in ((), ("network_namespace",), ("seccomp",)):
        result = attempt(code, disable=disable)
        assert result.stdout.startswith("DENIED"), (disable, output(result))
    with pytest.raises(socket.timeout):
        udp.recv(100)
    assert attempt(code, disable=("network_namespace", "seccomp")).stdout == "SENT\n"
    assert udp.recv(100) == b"ESCAPED"


def test_unix_socket_connect_is_denied(world_writable):
    # A socket file anyone may connect to (as PostgreSQL's is), and an abstract socket.
    path = str(world_writable / "service.sock")
    abstract = "\0acculturate-escape-" + secrets.token_hex(4)
    servers = []
    for address in (path, abstract):
        server = socket.socket(socket.AF_UNIX)
        server.bind(address)
        server.listen()
        servers.append(server)
    os.chmod(path, 0o777)
    code = f"""
    import socket
    for address in ({path!r}, {abstract!r}):
        try:
            socket.socket(socket.AF_UNIX).connect(address)
            print("CONNECTED", address[:1] == "\\0")
        except OSError as e:
            print("DENIED", type(e).__name__)
    """
    try:
        result = attempt(code)
        assert result.stdout.split() == ["DENIED", "PermissionError"] * 2, output(result)
        # Landlock does not check connect() to a socket file: seccomp stops that one, and the mount
        # namespace, where the file is not there.
        assert attempt(code, disable=("seccomp",)).stdout.splitlines()[0] == "DENIED FileNotFoundError"
        leaked = attempt(code, disable=("seccomp", "mount_namespace"))
        assert leaked.stdout.splitlines()[0] == "CONNECTED False", output(leaked)
        # The abstract one: each of Landlock's scope and the network namespace stops it alone.
        assert "CONNECTED True" not in leaked.stdout
        assert "CONNECTED True" not in attempt(code, disable=("seccomp", "landlock_scope")).stdout
        assert "CONNECTED True" not in attempt(code, disable=("seccomp", "network_namespace")).stdout
        leaked = attempt(code, disable=("seccomp", "landlock_scope", "network_namespace"))
        assert leaked.stdout.splitlines()[1] == "CONNECTED True"
    finally:
        for server in servers:
            server.close()


# ------------------------------------------------------------------------------------------------
# ctypes and crafted bytecode


def test_ctypes_calls_into_libc_are_contained(secret_files, listeners):
    path, token = secret_files["world_readable"]
    port = listeners[0]
    code = f"""
    import ctypes, os, socket, struct
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.open({path.encode()!r}, os.O_RDONLY)
    if fd >= 0:
        buf = ctypes.create_string_buffer(100)
        libc.read(fd, buf, 100)
        print("READ", buf.value.decode())
    else:
        print("DENIED open", ctypes.get_errno())
    s = libc.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
    addr = struct.pack("=HH4s8x", socket.AF_INET, socket.htons({port}), bytes([127, 0, 0, 1]))
    if s >= 0 and libc.connect(s, addr, len(addr)) == 0:
        print("CONNECTED")
    else:
        print("DENIED connect", ctypes.get_errno())
    # Undo the confinement: a new mount namespace, or root back.
    print("unshare", libc.unshare(0x00020000), "setuid", libc.setuid(0))
    """
    result = attempt(code)
    assert "DENIED open" in result.stdout and "DENIED connect" in result.stdout, output(result)
    assert "unshare -1 setuid -1" in result.stdout and token not in output(result)
    leaked = attempt(code, disable=("landlock_filesystem", "mount_namespace", "landlock_network", "network_namespace", "seccomp"))
    assert f"READ {token}" in leaked.stdout and "CONNECTED" in leaked.stdout


def test_crafted_bytecode_is_contained(secret_files):
    path, token = secret_files["world_readable"]
    code = f"""
    import types
    # A code object assembled by hand: open() on a path swapped into its constants.
    template = compile("print('READ', open('x').read())", "crafted", "exec")
    crafted = template.replace(co_consts=tuple({path!r} if c == "x" else c for c in template.co_consts))
    try:
        exec(crafted)
    except OSError as e:
        print("DENIED", type(e).__name__)
    # Bytecode that reads past its constants: arbitrary memory access, then (usually) a crash.
    bad = types.CodeType(0, 0, 0, 0, 1, 0, bytes([151, 0, 100, 200, 83, 0]), (), (), (), "crafted",
                         "crash", "crash", 1, b"", b"")
    print("CRASHING", flush=True)
    exec(bad)
    """
    result = attempt(code)
    assert "DENIED FileNotFoundError" in result.stdout and token not in output(result), output(result)
    assert "CRASHING" in result.stdout
    assert run_program("print('parent fine')").stdout == "parent fine\n"
    leaked = attempt(code, disable=("landlock_filesystem", "mount_namespace"))
    assert f"READ {token}" in leaked.stdout


# ------------------------------------------------------------------------------------------------
# Processes, memory, CPU


FORK_BOMB = """
import os, threading
forked = 0
for _ in range(20):
    try:
        pid = os.fork()
    except OSError:
        continue
    if pid == 0:
        os._exit(0)
    forked += 1
try:
    threading.Thread(target=print).start()
    print("THREAD")
except RuntimeError:
    pass
print("forked", forked)
"""


def test_fork_bomb_cannot_fork():
    result = attempt(FORK_BOMB, allowed_modules=(*MODULES, "threading"))
    assert result.stdout == "forked 0\n", output(result)
    leaked = attempt(FORK_BOMB, disable=("rlimits",), allowed_modules=(*MODULES, "threading"))
    assert "forked 20" in leaked.stdout and "THREAD" in leaked.stdout


def test_memory_bomb_is_stopped():
    code = "x = bytearray(512 * 2**20)\nprint('ALLOCATED')\n"
    result = attempt(code, memory_mb=256)
    assert result.killed_reason == "memory" and "ALLOCATED" not in result.stdout, output(result)
    assert attempt(code, memory_mb=1024).stdout == "ALLOCATED\n"  # control: the limit is what stops it


def test_cpu_loop_is_stopped():
    code = "print('STARTED', flush=True)\nwhile True:\n    pass\n"
    result = attempt(code, cpu_seconds=1, wall_seconds=10)
    assert result.killed_reason == "cpu" and result.seconds < 4, output(result)
    # Control: with a larger CPU limit the loop runs on until the wall limit.
    assert attempt(code, cpu_seconds=30, wall_seconds=2).killed_reason == "wall"


NON_ROOT_UID = 1000


@pytest.mark.skipif(not ROOT, reason="run as a non-root user, every test here already is this test")
def test_a_non_root_caller_gets_the_same_confinement(world_writable):
    # The supervisor runs as uid 1000, from a copy of the two sandbox modules any uid can read,
    # under Debian's own python3 (the venv's lives under /root, which uid 1000 cannot enter).
    python = shutil.which("python3", path="/usr/bin:/bin")
    assert python, "this test needs Debian's python3 (/usr/bin/python3)"
    tmp_path = world_writable  # pytest's tmp_path is under /tmp/pytest-of-root, closed to uid 1000
    package = tmp_path / "pkg"
    package.mkdir()
    for name in ("sandbox.py", "sandbox_child.py"):
        shutil.copy(CHECKOUT / "acculturate" / "prompting" / name, package / name)
    secret = tmp_path / "secret.txt"  # the caller's own file, readable and changeable by it
    secret.write_text(secrets.token_hex(8))
    for path in (package, *package.iterdir(), secret):
        os.chown(path, NON_ROOT_UID, NON_ROOT_UID)
    secret.chmod(0o600)
    code = f"""
    import os
    print("UID", os.getuid())
    for name, action in (("read", lambda: open({str(secret)!r}).read()),
                         ("chmod", lambda: os.chmod({str(secret)!r}, 0o666)),
                         ("kill", lambda: os.kill(os.getppid(), 9))):
        try:
            print("DONE", name, action())
        except OSError as e:
            print("DENIED", name, type(e).__name__)
    """
    supervisor = textwrap.dedent(f"""
        import sys, types
        for name, path in (("acculturate", {str(package)!r}), ("acculturate.prompting", {str(package)!r})):
            sys.modules[name] = types.ModuleType(name)
            sys.modules[name].__path__ = [path]
        from acculturate.prompting import sandbox
        result = sandbox._run({textwrap.dedent(code)!r}, sandbox.SandboxLimits(allowed_modules=("os",)), "",
                              guard=False)
        print(result.stdout, result.layers)
    """)

    def become_user():
        os.setgroups([])
        os.setgid(NON_ROOT_UID)
        os.setuid(NON_ROOT_UID)

    run = subprocess.run([python, "-c", supervisor], preexec_fn=become_user, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin"}, timeout=60, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "UID 65534" in run.stdout and "DONE" not in run.stdout, run.stdout
    denied = [line.split()[1] for line in run.stdout.splitlines() if line.startswith("DENIED")]
    assert denied == ["read", "chmod", "kill"]
    assert "False" not in run.stdout.splitlines()[-1]  # every layer held
    assert secret.stat().st_mode & 0o777 == 0o600


# ------------------------------------------------------------------------------------------------
# Fail closed


@pytest.fixture
def without_unshare(monkeypatch):
    """This process's PATH without the unshare binary: the network namespace cannot be set up."""
    monkeypatch.setenv("PATH", "/nonexistent")
    sandbox._network_prefix.cache_clear()
    sandbox._probe.cache_clear()
    yield
    monkeypatch.undo()
    sandbox._network_prefix.cache_clear()
    sandbox._probe.cache_clear()


def test_a_missing_layer_stops_the_run_unless_allowed(without_unshare):
    with pytest.raises(SandboxUnavailable, match="network_namespace.*allow_weaker"):
        run_program("print('RAN')")
    with pytest.raises(SandboxUnavailable, match="network_namespace"):
        sandbox.check_layers()
    assert active_layers()["network_namespace"] is False
    weaker = run_program("print('RAN')", SandboxLimits(allow_weaker=("network_namespace",)))
    assert weaker.stdout == "RAN\n" and weaker.layers["network_namespace"] is False
    assert all(ok for name, ok in weaker.layers.items() if name != "network_namespace")


def test_the_child_refuses_to_run_when_a_layer_did_not_hold(monkeypatch, tmp_path):
    # An "unshare" that silently does nothing (env just runs the command): the child sees it is
    # still in the caller's network namespace and stops before the program runs.
    marker = tmp_path / "ran"
    monkeypatch.setattr(sandbox, "_network_prefix", lambda: ("/usr/bin/env",))
    with pytest.raises(SandboxUnavailable, match="still in the caller's network namespace"):
        run_program(f"open({str(marker)!r}, 'w')")
    assert not marker.exists()


def test_allow_weaker_takes_only_layer_names():
    with pytest.raises(ValueError, match="allow_weaker.*'landlock'"):
        SandboxLimits(allow_weaker=("landlock",))
    with pytest.raises(ValueError, match="allow_weaker"):
        SandboxLimits(allow_weaker="network_namespace")
