"""The sandbox's child side: runs inside the sandboxed process, never in the caller.

:mod:`.sandbox` (the supervisor) starts ``python -I -S -c <this file's source> <config>``; the
call ``_child_main()`` appended to the source sets up the OS layers on the running process, reports
which ones hold on a private pipe, installs the Python guard and executes the program. This module
imports only the standard library and has no side effects at import, so the supervisor (and the
tests) can import it to read ``LAYERS`` and inspect ``_install_guards``.

The OS layers, in the order they are set up (names as they appear in errors and in
``SandboxLimits.allow_weaker``):
  * ``network_namespace``: the supervisor starts the child through ``unshare --net``; the child
    checks that its network namespace differs from the supervisor's. A fresh namespace has only a
    down loopback: no TCP, UDP, raw or netlink traffic reaches anything outside.
  * ``mount_namespace``: the child enters a new mount namespace (``unshare(CLONE_NEWNS)``; a non-root
    caller's child has the capability inside its user namespace through ``unshare --keep-caps``),
    builds a new root on an empty tmpfs holding only bind mounts of the standard library
    directories (read-only) and the program's temporary directory (read-write), and
    ``pivot_root``s into it, detaching the old root. Every other path does not exist for the
    program: ``stat`` (which Landlock, up to ABI 7, does not check) cannot tell whether /etc/passwd
    or a file of the checkout is there. No /proc, /sys or /dev either. Capabilities are then
    dropped (the non-root caller's child kept them only for this step).
  * ``no_new_privs``: ``prctl(PR_SET_NO_NEW_PRIVS)``; execve can never grant privileges again
    (set-uid binaries, file capabilities), and Landlock requires it from an unprivileged process.
  * ``landlock_filesystem``: a Landlock ruleset that handles every filesystem right the kernel
    knows and grants only read (files and directory listings) beneath the standard library
    directories of ``sys.path`` and read-write beneath the program's temporary directory. No
    execute right anywhere (no execve of anything). /proc, /sys, /etc, /dev, the checkout and
    every home directory are out of reach, for every uid, and the child can neither lift the
    ruleset nor mount anything to get around it.
  * ``landlock_network`` (Landlock ABI >= 4): TCP bind and connect denied on every port.
  * ``landlock_scope`` (ABI >= 6): signals only to processes inside the same sandbox, and no
    connecting to abstract Unix sockets created outside it.
  * ``unprivileged_uid``: a root parent's child gives up root (uid/gid 65534, no supplementary
    groups); a non-root parent's child already is unprivileged (it runs as uid 65534 in a user
    namespace mapped to the caller's uid).
  * ``rlimits``: RLIMIT_NPROC=1 (no fork, no thread; binds because the child is not root). The
    supervisor set RLIMIT_CPU, RLIMIT_AS, RLIMIT_FSIZE, RLIMIT_NOFILE and RLIMIT_CORE before exec.
  * ``seccomp``: a libseccomp filter (Debian's libseccomp2, called through ctypes) that fails with
    EPERM what Landlock leaves open: changing file metadata (chmod, chown, utime, xattrs: Landlock
    does not cover them, and a non-root caller's child owns the caller's files), new sockets of
    any family (Landlock does not check connecting to a Unix socket file), namespaces and mounts,
    ptrace and process_vm_*, bpf, perf_event_open, userfaultfd, keyrings, io_uring (whose
    operations bypass seccomp) and module loading. Other architectures' system call tables
    (int 0x80, x32) kill the process (libseccomp's default for a foreign architecture).

Landlock goes on after the allowed modules are imported and the program is read, so the rules can
stay this small: the interpreter, its shared libraries and the extension modules are already
mapped. The Landlock, prctl and libseccomp calls are made with ctypes on the documented ABIs
(include/uapi/linux/landlock.h, seccomp.h); ctypes is imported for the set-up and then removed
from ``sys.modules``.
"""

from __future__ import annotations

# Every OS layer, in set-up order. A layer missing at run time stops the program before it runs
# (the supervisor raises SandboxUnavailable) unless SandboxLimits.allow_weaker names it.
LAYERS = (
    "network_namespace",
    "mount_namespace",
    "no_new_privs",
    "landlock_filesystem",
    "landlock_network",
    "landlock_scope",
    "unprivileged_uid",
    "rlimits",
    "seccomp",
)


def _child_main() -> None:  # pragma: no cover - runs in the sandbox process
    """Set up the OS layers and the Python guard, then execute program.py as ``__main__``."""
    import builtins
    import json
    import os
    import signal
    import sys
    import types

    config = json.loads(sys.argv[1])
    sys.argv = ["program.py"]
    with open("program.py", encoding="utf-8") as f:
        source = f.read()

    # Import everything the program may use now: once the layers are up the child can read only
    # the standard library's files (and with the Python guard, not even those).
    for name in [*config["allowed"], *config["internals"]]:
        try:
            __import__(name)
        except ImportError as e:
            sys.stderr.write(f"sandbox setup failed: cannot import {name}: {e}\n")
            os._exit(config["exit_setup"])

    layers, errors = _confine(config)
    missing = [name for name in config["required"] if not layers.get(name)]
    if missing:
        details = "; ".join(f"{name} ({errors.get(name, 'not set up')})" for name in missing)
        sys.stderr.write(f"sandbox setup failed: layer(s) not available: {details}\n")
        os._exit(config["exit_setup"])
    # The report travels on its own pipe, closed before the program runs: the program cannot
    # forge it, so the supervisor knows set-up finished whatever the program prints or returns.
    os.write(config["report_fd"], json.dumps({"layers": layers, "errors": errors}).encode())
    os.close(config["report_fd"])
    # Second wall-clock bound in case the parent dies: SIGALRM's default action ends the process.
    signal.alarm(config["alarm"])

    try:
        code = compile(source, "program.py", "exec")
    except (SyntaxError, ValueError) as e:  # ValueError: source with a NUL byte
        sys.__excepthook__(type(e), e, None)
        sys.exit(1)

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


# Landlock ABI (include/uapi/linux/landlock.h). Syscall numbers 444-446 are the same on x86-64 and
# on the generic table (arm64, riscv).
_SYS_LANDLOCK_CREATE_RULESET, _SYS_LANDLOCK_ADD_RULE, _SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
_PR_SET_NO_NEW_PRIVS = 38
# Mount namespace set-up (include/uapi/linux/sched.h, mount.h); pivot_root has no glibc wrapper.
_CLONE_NEWNS = 0x00020000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
_MNT_DETACH = 2
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41}


def _new_root(libc, ctypes, os, library: list[str], tmp: str) -> str | None:  # pragma: no cover - child
    """Enter a new mount namespace whose root holds only ``library`` (read-only) and ``tmp``
    (read-write) at their own paths; returns None, or what failed."""
    def call(what, result):
        if result != 0:
            raise OSError(ctypes.get_errno(), f"{what}: {os.strerror(ctypes.get_errno())}")

    number = _SYS_PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        return f"pivot_root: unknown system call number on {os.uname().machine}"
    try:
        call("unshare(CLONE_NEWNS)", libc.unshare(_CLONE_NEWNS))
        # Nothing done here propagates back to the caller's mounts.
        call("making / private", libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None))
        root = os.path.join(tmp, ".root")   # a mount point only: hidden under the new root's own tmp
        os.mkdir(root, 0o700)
        call("tmpfs for the new root", libc.mount(b"tmpfs", root.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV,
                                                   b"size=1m,mode=0755"))
        mounts = [(p, True) for p in library] + [(tmp, False)]
        for path, _ in mounts:   # every folder first: a later bind may cover part of the tree
            os.makedirs(root + path, exist_ok=True)
            # Each folder on the way gets the owner and mode it has outside, so the new root grants
            # no search right the real one does not (e.g. /root, 0700, stays closed to uid 65534).
            parts = path.strip("/").split("/")
            for depth in range(1, len(parts)):
                outside = "/" + "/".join(parts[:depth])
                info = os.stat(outside)
                os.chmod(root + outside, info.st_mode & 0o7777)
                try:
                    os.chown(root + outside, info.st_uid, info.st_gid)
                except OSError:   # a non-root caller's user namespace maps no other owner
                    pass
        for path, read_only in mounts:
            target = (root + path).encode()
            # tmp non-recursively: the new root's own mount point inside it stays an empty folder.
            flags = _MS_BIND | (_MS_REC if read_only else 0)
            call(f"bind {path}", libc.mount(path.encode(), target, None, flags, None))
            if read_only:
                call(f"read-only {path}", libc.mount(None, target, None,
                                                     _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV, None))
        call("read-only new root", libc.mount(None, root.encode(), None,
                                             _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV, None))
        os.chdir(root)
        call("pivot_root", libc.syscall(number, b".", b"."))   # the old root ends stacked under "."
        call("detaching the old root", libc.umount2(b".", _MNT_DETACH))
        os.chdir(tmp)
    except OSError as e:
        return e.strerror or str(e)
    return None


def _drop_capabilities(libc, ctypes) -> bool:  # pragma: no cover - child
    """capset: no effective, permitted or inheritable capability left (ambient ones go with them)."""
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)   # _LINUX_CAPABILITY_VERSION_3, this thread
    data = (ctypes.c_uint32 * 6)()                  # two {effective, permitted, inheritable}, all 0
    return libc.capset(header, data) == 0


def _confine(config: dict) -> tuple[dict, dict]:  # pragma: no cover - runs in the sandbox process
    """Set up every OS layer not in ``config["disable"]`` on this process.

    Returns:
        ({layer: True when it holds}, {layer: why it does not}) for every name in LAYERS.
    """
    import ctypes
    import os
    import resource
    import sys

    disabled = set(config["disable"])
    layers = dict.fromkeys(LAYERS, False)
    errors = {}
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    try:  # loaded now: once Landlock is on, the dynamic loader could not read it
        libseccomp = ctypes.CDLL("libseccomp.so.2")
    except OSError as e:
        libseccomp = None
        errors["seccomp"] = f"libseccomp.so.2 not found (Debian package libseccomp2): {e}"

    def fail(name, what):
        errno = ctypes.get_errno()
        errors[name] = f"{what}: {os.strerror(errno)}" if errno else what

    if "network_namespace" not in disabled:
        outside = config["outside_netns"]
        if outside is None:
            errors["network_namespace"] = "unshare --net is not available here"
        elif os.readlink("/proc/self/ns/net") == outside:
            errors["network_namespace"] = "still in the caller's network namespace"
        else:
            layers["network_namespace"] = True

    library = [p for p in sys.path if p.startswith("/") and os.path.isdir(p)]
    if "mount_namespace" not in disabled:
        failed = _new_root(libc, ctypes, os, library, config["tmp"])
        if failed:
            errors["mount_namespace"] = failed
        elif os.path.exists("/proc/self") or not os.path.isdir(config["tmp"]):
            errors["mount_namespace"] = "the new root still shows the old one's paths"
        else:
            layers["mount_namespace"] = True
    # A root caller's child loses its capabilities with its uid (unprivileged_uid, below).
    if config["drop_uid"] is None and not _drop_capabilities(libc, ctypes):
        errors["mount_namespace"] = "capset: cannot drop the capabilities kept for the mount set-up"
        layers["mount_namespace"] = False

    if "no_new_privs" not in disabled:
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0:
            layers["no_new_privs"] = True
        else:
            fail("no_new_privs", "prctl(PR_SET_NO_NEW_PRIVS)")

    abi = libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, 0, 1)  # 1: LANDLOCK_CREATE_RULESET_VERSION
    if abi < 1:
        fail("landlock_filesystem", "Landlock is not enabled in this kernel")
        abi = 0
    # Filesystem rights by ABI: bits 0-12 from v1, REFER (13) v2, TRUNCATE (14) v3, IOCTL_DEV (15) v5.
    handled_fs = 0
    if abi >= 1:
        handled_fs = (1 << 13) - 1 | (abi >= 2) << 13 | (abi >= 3) << 14 | (abi >= 5) << 15
    read = (1 << 2) | (1 << 3)  # READ_FILE, READ_DIR
    # WRITE_FILE, REMOVE_DIR, REMOVE_FILE, MAKE_DIR, MAKE_REG (+ TRUNCATE from v3); no devices,
    # sockets, fifos, symlinks, no REFER (moving files between hierarchies).
    write = (1 << 1) | (1 << 4) | (1 << 5) | (1 << 7) | (1 << 8) | ((1 << 14) if abi >= 3 else 0)
    want_fs = abi >= 1 and "landlock_filesystem" not in disabled
    want_net = abi >= 4 and "landlock_network" not in disabled
    want_scope = abi >= 6 and "landlock_scope" not in disabled
    if abi and abi < 4:
        errors["landlock_network"] = f"Landlock ABI {abi} has no network rules (needs 4)"
    if abi and abi < 6:
        errors["landlock_scope"] = f"Landlock ABI {abi} has no scopes (needs 6)"

    class RulesetAttr(ctypes.Structure):
        _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                    ("scoped", ctypes.c_uint64)]

    class PathBeneathAttr(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    if want_fs or want_net or want_scope:
        attr = RulesetAttr(handled_fs if want_fs else 0, 3 if want_net else 0, 3 if want_scope else 0)
        size = 24 if abi >= 6 else 16 if abi >= 4 else 8  # the struct grew with the ABI
        ruleset = libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), size, 0)
        ok = ruleset >= 0
        if not ok:
            fail("landlock_filesystem", "landlock_create_ruleset")
        paths = [(p, read) for p in library] + [(config["tmp"], read | write)] if want_fs else []
        for path, access in paths:
            if not ok:
                break
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            rule = PathBeneathAttr(access & handled_fs, fd)
            ok = libc.syscall(_SYS_LANDLOCK_ADD_RULE, ruleset, 1, ctypes.byref(rule), 0) == 0
            if not ok:
                fail("landlock_filesystem", f"landlock_add_rule {path}")
            os.close(fd)
        if ok and libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0) != 0:
            ok = False
            fail("landlock_filesystem", "landlock_restrict_self")
        if ruleset >= 0:
            os.close(ruleset)
        layers["landlock_filesystem"] = ok and want_fs
        layers["landlock_network"] = ok and want_net
        layers["landlock_scope"] = ok and want_scope

    if "unprivileged_uid" not in disabled:
        try:
            uid = config["drop_uid"]
            if uid is not None:
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
            if 0 in os.getresuid():
                errors["unprivileged_uid"] = "the child still runs as root"
            else:
                layers["unprivileged_uid"] = True
        except OSError as e:
            errors["unprivileged_uid"] = f"cannot switch to uid {config['drop_uid']}: {e}"

    if "rlimits" not in disabled:
        # Counts every process and thread of the real user; 1 = this one, so fork and thread
        # creation fail with EAGAIN. Root is exempt, hence the uid layer above. Set here rather
        # than before exec because the network namespace set-up (unshare) runs first.
        try:
            resource.setrlimit(resource.RLIMIT_NPROC, (1, 1))
            layers["rlimits"] = True
        except (OSError, ValueError) as e:
            errors["rlimits"] = f"RLIMIT_NPROC: {e}"

    if "seccomp" not in disabled and libseccomp is not None:
        failed = _seccomp_filter(ctypes, libseccomp)
        if failed:
            errors["seccomp"] = failed
        else:
            layers["seccomp"] = True

    if "ctypes" not in config["allowed"]:
        for name in [m for m in sys.modules if m == "ctypes" or m.startswith("ctypes.") or m == "_ctypes"]:
            del sys.modules[name]
    return layers, errors



# System calls the seccomp layer refuses with EPERM (names unknown to the installed libseccomp,
# such as fchmodat2 on libseccomp 2.5, are skipped).
_SECCOMP_DENIED = (
    # file metadata, which Landlock does not cover
    "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat", "utime",
    "utimes", "futimesat", "utimensat", "setxattr", "lsetxattr", "fsetxattr", "removexattr",
    "lremovexattr", "fremovexattr", "setxattrat", "removexattrat",
    # namespaces and mounts
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree",
    "fsopen", "fsmount", "fsconfig", "fspick", "mount_setattr",
    # every new socket: Unix ones included, since Landlock (ABI <= 7) does not check connect() to
    # a socket file, and a non-root caller's child could reach the caller's own (ssh-agent...)
    "socket", "socketpair",
    # other processes' memory, kernel surfaces a number-crunching program has no use for
    "ptrace", "process_vm_readv", "process_vm_writev", "bpf", "perf_event_open", "userfaultfd",
    "keyctl", "add_key", "request_key", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "acct",
    "quotactl", "swapon", "swapoff", "reboot", "name_to_handle_at", "open_by_handle_at",
)  # fmt: skip


def _seccomp_filter(ctypes, libseccomp) -> str | None:  # pragma: no cover - runs in the sandbox process
    """Load the seccomp filter on this process; None when it holds, else what failed.

    Constants from seccomp.h (no imports here: the child can no longer read the standard library
    when this runs).
    """
    allow = 0x7FFF0000  # SCMP_ACT_ALLOW
    deny = 0x00050000 | 1  # SCMP_ACT_ERRNO(EPERM)

    libseccomp.seccomp_init.restype = ctypes.c_void_p
    libseccomp.seccomp_init.argtypes = [ctypes.c_uint32]
    libseccomp.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                                  ctypes.c_void_p]
    libseccomp.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    libseccomp.seccomp_load.argtypes = [ctypes.c_void_p]
    libseccomp.seccomp_release.argtypes = [ctypes.c_void_p]
    ctx = libseccomp.seccomp_init(allow)
    if not ctx:
        return "seccomp_init failed"
    try:
        for name in _SECCOMP_DENIED:
            number = libseccomp.seccomp_syscall_resolve_name(name.encode())
            if number == -1:  # __NR_SCMP_ERROR: not a system call libseccomp knows
                continue
            if libseccomp.seccomp_rule_add_array(ctx, deny, number, 0, None) != 0:
                return f"seccomp_rule_add {name}"
        if libseccomp.seccomp_load(ctx) != 0:
            return "seccomp_load"
    finally:
        libseccomp.seccomp_release(ctx)
    return None


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
