"""The fork server ("zygote") of the local Cloud Run runtime: a Python that has imported a web
server once and forks a revision from itself for each start. Standard library only: it runs
as a script, under the interpreter setup revisions get (no cf2run, no venv on the path):

    <base python> -S zygote_server.py FD MODULE [PRELOAD ...]

FD is its end of a ``SOCK_SEQPACKET`` socket pair; each message is one JSON object. It imports
MODULE's package (what ``python -m MODULE`` imports before running ``MODULE.__main__``) and,
best effort, the PRELOAD modules (then forgets MODULE's own package: each revision imports it
again, in its own directory and env), says ``{"ready": true, "modules": [top-level names it
imported], "env_read": [env var names those imports looked up]}`` (or ``{"error":
traceback}``, and exits), then serves, single-threaded:

- ``{"argv": [MODULE, *args], "env": {...}, "cwd": DIR}`` with one file descriptor attached
  (where the revision's stdout and stderr go) -> it forks; the child becomes what
  ``python -S -m MODULE args`` started in DIR with that env would be (`_become`); the answer
  is ``{"pid": PID}`` (or ``{"error": message}``);
- when a child exits it says ``{"exited": PID, "code": CODE}`` (negative: killed by a signal,
  as `subprocess` says it);
- when the socket closes (the local cloud stopped it or died) it kills its children's process
  groups and exits; a child also dies when the zygote dies (``PR_SET_PDEATHSIG``, prctl(2)),
  as the local cloud's kill -9 kills the zygote (children.py) before it can do that.

`send` and `receive` are the wire format, for both ends.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # run as a script, its directory (cf2run/localcloud) is first on the path
    del sys.path[0]
#: Modules a bare ``python -S`` has before running anything: nothing can shadow these.
_AT_STARTUP = frozenset(sys.modules)

import atexit  # noqa: E402
import contextlib  # noqa: E402
import importlib  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import runpy  # noqa: E402
import selectors  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import traceback  # noqa: E402
from typing import TYPE_CHECKING, Any, ClassVar  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Mapping

MAX_MESSAGE = 1 << 20


def send(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode()
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.send(data)


def receive(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """The next message and the file descriptors it carried; None when the other end closed."""
    data, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 1)
    message: dict[str, Any] | None = json.loads(data) if data else None
    return message, fds


# -- the zygote ----------------------------------------------------------------------------------

def main(argv: list[str]) -> int:
    sock = socket.socket(fileno=int(argv[1]))
    module, preload = argv[2], argv[3:]
    layers = {os.path.abspath(entry) for entry in pythonpath(os.environ)}
    stdlib = [entry for entry in sys.path if entry not in layers]
    os.environ.__class__ = _RecordingEnviron
    try:
        imported = _preload(module, preload)
    except BaseException:
        send(sock, {"error": traceback.format_exc()})
        return 1
    finally:
        os.environ.__class__ = os._Environ
    send(sock, {"ready": True, "modules": sorted(imported), "env_read": sorted(_RecordingEnviron.names)})
    return _serve(sock, stdlib)


class _RecordingEnviron(os._Environ):  # type: ignore[type-arg]
    """os.environ while the zygote imports: notes the names looked up (``get``, ``in`` and
    ``[]`` all come here), which a revision's env must then agree on with the zygote's."""

    names: ClassVar[set[str]] = set()

    def __getitem__(self, key: str) -> str:
        _RecordingEnviron.names.add(key)
        return str(super().__getitem__(key))


def _preload(module: str, extras: list[str]) -> set[str]:
    """Import what ``python -m MODULE`` imports before running it, then `extras` (best effort);
    the top-level names imported (a revision whose working directory has one of them must not
    use this zygote: there, its own module would win)."""
    spec = importlib.util.find_spec(module)  # imports the parent packages
    if spec is None:
        raise ModuleNotFoundError(f"No module named {module!r}")
    if spec.submodule_search_locations is not None:  # a package: its __main__ is what runs
        importlib.import_module(module)
    for name in extras:
        try:
            importlib.import_module(name)
        except Exception:  # an optional extra, or one that needs the revision's env
            continue
    # MODULE's own package is imported again by each revision: its module-level code may read
    # the working directory or the env (the Functions Framework's default source is ./main.py).
    package = module.partition(".")[0]
    for name in [name for name in sys.modules if name.partition(".")[0] == package]:
        del sys.modules[name]
    return {name.partition(".")[0] for name in sys.modules} - {n.partition(".")[0] for n in _AT_STARTUP}


#: prctl(2), loaded once serving (not at import: ctypes is not one of the revisions' modules).
_prctl: Any = None
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _serve(sock: socket.socket, stdlib: list[str]) -> int:
    global _prctl
    with contextlib.suppress(ImportError, OSError, AttributeError):
        import ctypes

        _prctl = ctypes.CDLL(None).prctl
    wake_read, wake_write = os.pipe()
    for fd in (wake_read, wake_write):
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # so SIGCHLD writes to wake_write
    children: set[int] = set()
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    selector.register(wake_read, selectors.EVENT_READ)
    try:
        while True:
            for key, _ in selector.select():
                if key.fileobj is not sock:
                    _drain(wake_read)
                    continue
                request, fds = receive(sock)
                if request is None:
                    return 0
                pid = _fork(sock, request, fds, stdlib)
                if pid:
                    children.add(pid)
            for pid, code in _reap(children):
                send(sock, {"exited": pid, "code": code})
    except OSError:  # the local cloud went away mid-message
        return 0
    finally:
        for pid in children:  # a revision does not outlive its runtime
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)


def _fork(sock: socket.socket, request: dict[str, Any], fds: list[int], stdlib: list[str]) -> int:
    """Fork a revision; its pid, or 0 if the fork failed (then the answer is an error)."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        if len(fds) != 1:
            raise ValueError(f"a start request carries one file descriptor, not {len(fds)}")
        pid = os.fork()
    except (OSError, ValueError) as exc:
        for fd in fds:
            os.close(fd)
        send(sock, {"error": f"fork failed: {exc}"})
        return 0
    if pid == 0:
        _become(request, fds[0], stdlib)  # never returns
    os.close(fds[0])
    send(sock, {"pid": pid})
    return pid


def _reap(children: set[int]) -> list[tuple[int, int]]:
    exited = []
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        children.discard(pid)
        exited.append((pid, os.waitstatus_to_exitcode(status)))
    return exited


def _drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        os.read(fd, 4096)


# -- the child -----------------------------------------------------------------------------------

def _become(request: dict[str, Any], output: int, stdlib: list[str]) -> None:
    """Turn this fresh fork into ``python -S -m MODULE args`` run in request's cwd with its env,
    its stdin /dev/null (the zygote's) and stdout + stderr on `output`; leave via os._exit."""
    code = 1
    try:
        os.setsid()  # its own process group, as start_new_session gives
        if _prctl is not None:  # it dies with the zygote (whose one thread forked it)
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.dup2(output, 1)
        os.dup2(output, 2)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # the zygote's socket, pipes, and `output`
        os.chdir(request["cwd"])
        env: dict[str, str] = request["env"]
        os.environ.clear()
        os.environ.update(env)
        sys.dont_write_bytecode = bool(env.get("PYTHONDONTWRITEBYTECODE"))
        # As a new interpreter sets it: the working directory (-m), PYTHONPATH, the stdlib.
        sys.path[:] = [os.getcwd(), *(os.path.abspath(entry) for entry in pythonpath(env)), *stdlib]
        sys.path_importer_cache.clear()
        importlib.invalidate_caches()
        module, *args = request["argv"]
        sys.argv[:] = ["-m", *args]
        sys.orig_argv[:] = [sys.orig_argv[0], "-S", "-m", module, *args]
        code = _run_module(module)
    except BaseException:
        traceback.print_exc()
    finally:
        _exit(code)


def _run_module(module: str) -> int:
    """Run `module` as __main__; the exit code the interpreter would give."""
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        print(exc.code, file=sys.stderr)
        return 1
    except BaseException as exc:  # what the interpreter prints, without this frame
        if exc.__traceback__ is not None:
            exc.with_traceback(exc.__traceback__.tb_next)
        sys.excepthook(type(exc), exc, exc.__traceback__)
        return 1
    return 0


def _exit(code: int) -> None:
    """Leave as the interpreter does: join non-daemon threads, run atexit hooks, flush."""
    try:
        threading = sys.modules.get("threading")
        if threading is not None:
            threading._shutdown()  # type: ignore[attr-defined]
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except BaseException:  # nothing to tell anyone any more
        pass
    finally:
        os._exit(code & 0xFF)


def pythonpath(env: Mapping[str, str]) -> list[str]:
    """The PYTHONPATH entries of `env`, as the interpreter splits them."""
    value = env.get("PYTHONPATH")
    return value.split(os.pathsep) if value else []


if __name__ == "__main__":
    sys.exit(main(sys.argv))
