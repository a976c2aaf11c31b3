"""Where a bundle runs: this machine, an SSH host, or an Android device through adb.

Every transport does the same three things: push the bundle, run
``run_bundle.py`` there with the device's Python, and pull ``outputs/`` back
into a local folder. ``parse_device`` reads the ``--device`` spec:
``local``, ``ssh://[user@]host[:port]`` or ``adb:SERIAL``.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from edgeopt.core.errors import DeviceError

ADB_ROOT = "/data/local/tmp/edgeopt-bundle"
_TIMEOUT_S = 3600


class Device(Protocol):
    @property
    def spec(self) -> str:
        """The ``--device`` spec, as shown in reports."""
        ...

    def run_bundle(self, bundle: Path, results: Path) -> str:
        """Push ``bundle``, run it, pull its outputs into ``results`` (created); return the runner's log."""
        ...


def parse_device(
    spec: str, *, python: str | None = None, identity: str | None = None, ssh_options: Sequence[str] = (),
    adb: str = "adb",
) -> Device:
    """The device a ``--device`` spec names.

    Raises:
        DeviceError: the spec is none of local, ssh://[user@]host[:port], adb:SERIAL.
    """
    if spec == "local":
        return LocalDevice(spec, python or sys.executable)
    if spec.startswith("ssh://"):
        parts = urlsplit(spec)
        if not parts.hostname or parts.path not in ("", "/"):
            raise DeviceError(f"device '{spec}': expected ssh://[user@]host[:port].")
        try:
            port = parts.port
        except ValueError as e:
            raise DeviceError(f"device '{spec}': the port is not a number. Use ssh://host:2222.") from e
        return SshDevice(spec, parts.hostname, parts.username, port, python or "python3", identity,
                         tuple(ssh_options))
    if spec.startswith("adb:") and spec[4:]:
        return AdbDevice(spec, spec[4:], python or "python3", adb)
    raise DeviceError(f"device '{spec}': unknown. Use local, ssh://[user@]host[:port] or adb:SERIAL.")


def _run(command: list[str], what: str, *, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    try:
        done = subprocess.run(command, input=stdin, capture_output=True, timeout=_TIMEOUT_S, check=False)
    except FileNotFoundError as e:
        raise DeviceError(f"{what}: '{command[0]}' is not installed or not on PATH. Install it first.") from e
    except subprocess.TimeoutExpired as e:
        raise DeviceError(f"{what}: no answer after {_TIMEOUT_S} s. Check the device.") from e
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()[-3:]
        raise DeviceError(f"{what} failed (exit {done.returncode}): {' | '.join(tail) or 'no output'}.")
    return done


@dataclass(frozen=True)
class LocalDevice:
    """Runs the bundle in a subprocess on this machine (``python`` defaults to the current one)."""

    spec: str
    python: str

    def run_bundle(self, bundle: Path, results: Path) -> str:
        command = [self.python, str(bundle / "run_bundle.py"), str(bundle), "--out", str(results)]
        return _run(command, "local bundle run").stdout.decode(errors="replace")


@dataclass(frozen=True)
class SshDevice:
    """Runs the bundle over OpenSSH: tar over the connection in, run, tar the outputs back.

    Needs ``ssh`` here and ``tar``, ``mktemp`` and ``python`` (with numpy and the runtime) there.
    ``options`` are extra ``ssh`` arguments (e.g. ``-o UserKnownHostsFile=...``).
    """

    spec: str
    host: str
    user: str | None
    port: int | None
    python: str
    identity: str | None = None
    options: tuple[str, ...] = field(default_factory=tuple)

    def _ssh(self, remote: str) -> list[str]:
        command = ["ssh", "-o", "BatchMode=yes"]
        command += ["-p", str(self.port)] if self.port else []
        command += ["-i", self.identity] if self.identity else []
        return [*command, *self.options, f"{self.user}@{self.host}" if self.user else self.host, remote]

    def run_bundle(self, bundle: Path, results: Path) -> str:
        where = self._ssh("mktemp -d")
        remote = _run(where, f"{self.spec}: mktemp").stdout.decode().strip()
        if not remote.startswith("/"):
            raise DeviceError(f"{self.spec}: mktemp -d answered {remote!r}, not a folder. Check the remote shell.")
        folder = shlex.quote(remote)
        try:
            _stream(self._ssh(f"tar -C {folder} -xf -"), f"{self.spec}: push", send=bundle)
            log = _run(self._ssh(f"cd {folder} && {shlex.quote(self.python)} run_bundle.py . --out outputs"),
                       f"{self.spec}: run_bundle.py").stdout.decode(errors="replace")
            _stream(self._ssh(f"tar -C {folder}/outputs -cf - ."), f"{self.spec}: pull", receive=results)
        finally:
            subprocess.run(self._ssh(f"rm -rf {folder}"), capture_output=True, timeout=120, check=False)
        return log


@dataclass(frozen=True)
class AdbDevice:
    """Runs the bundle on an Android device with adb's documented commands: push, shell, pull.

    The device needs a Python with numpy and the runtime (e.g. Termux's); ``python``
    names it. The bundle goes to ``/data/local/tmp/edgeopt-bundle`` and is removed after.
    """

    spec: str
    serial: str
    python: str
    adb: str = "adb"
    root: str = ADB_ROOT

    def _adb(self, *args: str) -> list[str]:
        return [self.adb, "-s", self.serial, *args]

    def run_bundle(self, bundle: Path, results: Path) -> str:
        folder = shlex.quote(self.root)
        _run(self._adb("shell", f"rm -rf {folder}"), f"{self.spec}: clean")
        _run(self._adb("push", str(bundle), self.root), f"{self.spec}: push")
        # older adb does not pass the remote exit status back, so the shell echoes it
        command = f"cd {folder} && {shlex.quote(self.python)} run_bundle.py . --out outputs; echo EDGEOPT_RC=$?"
        log = _run(self._adb("shell", command), f"{self.spec}: run_bundle.py").stdout.decode(errors="replace")
        if "EDGEOPT_RC=0" not in log:
            tail = " | ".join(log.strip().splitlines()[-3:])
            raise DeviceError(f"{self.spec}: run_bundle.py failed on the device: {tail}.")
        if results.exists():
            shutil.rmtree(results)
        results.parent.mkdir(parents=True, exist_ok=True)
        _run(self._adb("pull", f"{self.root}/outputs", str(results)), f"{self.spec}: pull")
        _run(self._adb("shell", f"rm -rf {folder}"), f"{self.spec}: clean")
        return log


def _stream(command: list[str], what: str, *, send: Path | None = None, receive: Path | None = None) -> None:
    """Run ``command`` with the contents of ``send`` tarred into its stdin, or its stdout untarred into
    ``receive``, a block at a time: memory stays bounded whatever the bundle's size."""
    with tempfile.TemporaryFile() as errors:
        try:
            process = subprocess.Popen(command, stdin=subprocess.PIPE if send else subprocess.DEVNULL,
                                       stdout=subprocess.PIPE if receive else subprocess.DEVNULL, stderr=errors)
        except FileNotFoundError as e:
            raise DeviceError(f"{what}: '{command[0]}' is not installed or not on PATH. Install it first.") from e
        broken = ""
        try:
            if send is not None:
                assert process.stdin is not None
                with process.stdin, tarfile.open(fileobj=process.stdin, mode="w|") as archive:
                    for path in sorted(send.iterdir()):
                        archive.add(path, arcname=path.name)
            if receive is not None:
                assert process.stdout is not None
                receive.mkdir(parents=True, exist_ok=True)
                with process.stdout, tarfile.open(fileobj=process.stdout, mode="r|") as archive:
                    archive.extractall(receive, filter="data")
            code = process.wait(timeout=_TIMEOUT_S)
        except (OSError, tarfile.TarError, subprocess.TimeoutExpired) as e:
            process.kill()
            code, broken = process.wait() or 1, f"{type(e).__name__}: {e}"
        if code != 0:
            errors.seek(0)
            tail = errors.read().decode(errors="replace").strip().splitlines()[-3:] or [broken]
            raise DeviceError(f"{what} failed (exit {code}): {' | '.join(t for t in tail if t) or 'no output'}.")
