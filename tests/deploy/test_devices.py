"""Device transports: ssh against a real OpenSSH server on loopback, adb against a stand-in.

The ssh test starts Debian's ``/usr/sbin/sshd`` as the current user on a free
loopback port with a host key and a client key made in a temp folder, and runs
the bundle there with this venv's Python. No phone is reachable here, so the adb
test puts a fake ``adb`` on PATH that implements ``-s SERIAL push/shell/pull``
on a local folder: it checks the transport's commands and file flow only, not
adb or Android themselves.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from edgeopt.cli import demo_model
from edgeopt.core.errors import DeviceError
from edgeopt.deploy.bundle import run_on_device, write_bundle
from edgeopt.deploy.compile import compile_model
from edgeopt.deploy.devices import AdbDevice, LocalDevice, SshDevice, parse_device

SSHD = Path("/usr/sbin/sshd")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("devices")
    data = demo_model.load_data()
    np.savez(folder / "calib.npz", image=data.x_train[:32])
    np.savez(folder / "val.npz", image=data.x_val[:12], label=data.y_val[:12].astype(np.int64))
    shutil.copy(demo_model.ONNX_MODEL, folder / "model.onnx")
    compile_model(folder / "model.onnx", folder / "out", targets=["ort-cpu", "ort-cpu-int8"],
                  calibration=folder / "calib.npz")
    return write_bundle(folder / "out", folder / "bundle", data=folder / "val.npz", reference=folder / "model.onnx",
                        labels="label", batch_size=4, warmup=1).path


def _assert_same_as_host(report, bundle: Path) -> None:  # noqa: ANN001
    host = json.loads((bundle / "host_report.json").read_text())
    assert report.samples == 12
    for row, host_row in zip(report.artifacts, host["artifacts"], strict=True):
        assert row.status == "ok" and row.matches_host, row.message
        assert asdict(row.scores) == host_row["scores"]


def test_parse_device() -> None:
    assert parse_device("local") == LocalDevice("local", sys.executable)
    ssh = parse_device("ssh://pi@edge.local:2222", python="/opt/py/bin/python", identity="k")
    assert isinstance(ssh, SshDevice)
    assert (ssh.user, ssh.host, ssh.port, ssh.python, ssh.identity) == ("pi", "edge.local", 2222, "/opt/py/bin/python",
                                                                        "k")
    assert parse_device("ssh://edge").port is None  # type: ignore[attr-defined]
    assert parse_device("adb:R58M123") == AdbDevice("adb:R58M123", "R58M123", "python3")
    for bad in ("usb", "adb:", "ssh://", "ssh://host:port"):
        with pytest.raises(DeviceError, match="device '"):
            parse_device(bad)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    if not SSHD.exists() or shutil.which("ssh") is None:
        pytest.skip("needs openssh-server and openssh-client: apt-get install -y openssh-server")
    tmp = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / key)], check=True)
    shutil.copy(tmp / "client_key.pub", tmp / "authorized_keys")
    port = _free_port()
    (tmp / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp / 'host_key'}\nPidFile {tmp / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {tmp / 'authorized_keys'}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\n"
        "LogLevel ERROR\n")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation folder, as root
    server = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(tmp / "sshd_config")], stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            if server.poll() is not None:
                pytest.fail(f"sshd exited: {server.stderr.read().decode() if server.stderr else ''}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        yield port, tmp / "client_key"
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_ssh_bundle_run_equals_the_host_run(bundle: Path, sshd: tuple[int, Path]) -> None:
    port, key = sshd
    device = parse_device(f"ssh://127.0.0.1:{port}", python=sys.executable, identity=str(key),
                          ssh_options=("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                                       "-o", "LogLevel=ERROR"))
    report = run_on_device(bundle, device)
    assert report.where == f"ssh://127.0.0.1:{port}"
    _assert_same_as_host(report, bundle)


def test_cli_validate_over_ssh(bundle: Path, sshd: tuple[int, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from edgeopt.cli import app

    port, key = sshd
    result = CliRunner().invoke(app, [
        "validate", str(bundle), "--device", f"ssh://127.0.0.1:{port}", "--python", sys.executable,
        "--identity", str(key), "--ssh-option=-oStrictHostKeyChecking=no",
        "--ssh-option=-oUserKnownHostsFile=/dev/null", "--ssh-option=-oLogLevel=ERROR",
        "--report-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["artifacts"]
    assert [r["matches_host"] for r in rows] == [True, True]
    assert "(= host)" in (tmp_path / "report.md").read_text()


def test_ssh_failure_is_one_line(bundle: Path, sshd: tuple[int, Path]) -> None:
    port, _ = sshd
    device = SshDevice("ssh://x", "127.0.0.1", None, port, sys.executable, identity="/nonexistent-key",
                       options=("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                                "-o", "PreferredAuthentications=publickey", "-o", "IdentitiesOnly=yes"))
    with pytest.raises(DeviceError, match=r"^ssh://x: mktemp failed \(exit 255\)") as caught:
        run_on_device(bundle, device)
    assert "\n" not in str(caught.value)


FAKE_ADB = """#!{python}
# A stand-in for adb: -s SERIAL push|shell|pull on a folder that plays the device's file system.
import os, shutil, subprocess, sys
root = {root!r}
args = sys.argv[1:]
with open(os.path.join(root, "calls.log"), "a") as log:
    log.write(" ".join(args) + "\\n")
assert args[0] == "-s" and args[1] == "FAKE123", args
command, rest = args[2], args[3:]
def on_device(path):
    return root + path
if command == "push":
    shutil.copytree(rest[0], on_device(rest[1]))
elif command == "pull":
    shutil.copytree(on_device(rest[0]), rest[1])
elif command == "shell":
    line = " ".join(rest).replace("/data/", root + "/data/")
    sys.exit(subprocess.run(["sh", "-c", line]).returncode)
else:
    sys.exit("fake adb: unknown command " + command)
"""


def test_adb_transport_with_a_fake_adb(bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "device"
    (root / "data" / "local" / "tmp").mkdir(parents=True)
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "adb").write_text(FAKE_ADB.format(python=sys.executable, root=str(root)))
    (tools / "adb").chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
    report = run_on_device(bundle, parse_device("adb:FAKE123", python=sys.executable))
    _assert_same_as_host(report, bundle)
    calls = [line.split()[2] for line in (root / "calls.log").read_text().splitlines()]
    assert calls == ["shell", "push", "shell", "pull", "shell"]
    assert not (root / "data" / "local" / "tmp" / "edgeopt-bundle").exists()  # cleaned up on the device


def test_ssh_transfers_stream_in_bounded_memory(tmp_path: Path) -> None:
    """Push and pull go through tar a block at a time (here against a local tar, as ssh would run it)."""
    import tracemalloc

    from edgeopt.deploy.devices import _stream

    source, device, back = tmp_path / "bundle", tmp_path / "device", tmp_path / "back"
    source.mkdir()
    device.mkdir()
    payload = np.random.default_rng(0).integers(0, 255, 24 << 20, dtype=np.uint8)
    np.save(source / "inputs.npy", payload)
    del payload
    tracemalloc.start()
    try:
        _stream(["tar", "-C", str(device), "-xf", "-"], "push", send=source)
        _stream(["tar", "-C", str(device), "-cf", "-", "."], "pull", receive=back)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (back / "inputs.npy").read_bytes() == (source / "inputs.npy").read_bytes()
    assert peak < 4 << 20, f"{peak / 2**20:.1f} MiB held for a 24 MiB bundle"
    with pytest.raises(DeviceError, match=r"^pull failed \(exit 2\): tar: .*missing"):
        _stream(["tar", "-C", str(tmp_path / "missing"), "-cf", "-", "."], "pull", receive=back)
