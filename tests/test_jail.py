"""``--chroot DIR`` / ``--runas USER`` (issue 17): privileges dropped once /dev/kvm, images, sockets are open.

The privileged run needs root (the suite runs as root on this project's machines)
and uses the system's ``nobody`` user, which cannot open /dev/kvm itself.  A user created by the
test runs kvmlite with nothing but its own /dev/kvm node (bound over /dev/kvm in a private mount
namespace), and with a TAP it owns and its own /dev/net/tun node reaches the network: kvmlite
needs no other privilege.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from kvmlite.status import ExitStatus
from kvmlite.vmm.netdev import TUN_DEVICE as TUN_DEVICE_PATH
from tests.conftest import requires_kvm
from tests.guest_expectations import debug_exit_status
from tests.hostile.support import hostile_guest
from tests.virtio_runs import build

IS_ROOT = os.geteuid() == 0
requires_root = pytest.mark.skipif(not IS_ROOT, reason="dropping privileges needs root")
try:
    NOBODY = pwd.getpwnam("nobody")
except KeyError:  # pragma: no cover - every Debian system has it
    NOBODY = None

#: Says hello on COM1, then idles (HLT with interrupts on, nothing ever interrupts) until --timeout.
IDLE = """
    mov $hello, %esi
    call puts
    sti
1:  hlt
    jmp 1b
.data
hello: .asciz "hello from the jail\\n"
.text
"""


def _proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


@requires_root
@requires_kvm
def test_runas_and_chroot_drop_privileges_after_set_up(tmp_path: Path) -> None:
    assert NOBODY is not None
    guest = hostile_guest(tmp_path, "idle", IDLE)
    jail = tmp_path / "jail"
    jail.mkdir()
    out = tmp_path / "console.txt"  # outside the jail: opened before the chroot
    cmd = [sys.executable, "-m", "kvmlite", "run", "--kernel", str(guest), "--serial", f"file:{out}"]
    cmd += ["--chroot", str(jail), "--runas", "nobody", "--timeout", "6"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen: dict[str, str] = {}
    root = ""
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            seen = _proc_status(proc.pid)
            root = os.readlink(f"/proc/{proc.pid}/root")
        except OSError:
            break
        if seen.get("Uid", "").split()[0] == str(NOBODY.pw_uid):
            break
        time.sleep(0.05)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 8, err  # the --timeout: the guest idled, confined, until then
    assert seen["Uid"].split() == [str(NOBODY.pw_uid)] * 4
    assert seen["Gid"].split() == [str(NOBODY.pw_gid)] * 4
    assert seen["Groups"].strip() == ""
    assert seen["CapEff"] == seen["CapPrm"] == "0000000000000000"
    assert root == str(jail.resolve())
    assert "hello from the jail" in out.read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--runas", "no-such-user-kvmlite"], "--runas no-such-user-kvmlite: no such user"),
        (["--runas", "root"], "--runas root: that user is root"),
        (["--chroot", "/nonexistent-kvmlite"], "--chroot /nonexistent-kvmlite: not a directory"),
        (["--runas", "nobody", "--on-reset", "restart"], "--runas exclude --on-reset restart"),
    ],
)
@requires_root
def test_bad_jail_options_are_one_sentence_and_status_2(args: list[str], message: str) -> None:
    r = subprocess.run([sys.executable, "-m", "kvmlite", "run", *args], capture_output=True, text=True)
    assert r.returncode == 2, r
    assert message in r.stderr and r.stderr.count("\n") == 1


def _python_for(uid: int) -> str | None:
    """A Python >= 3.11 that ``uid`` may run (this one may live in root's home)."""
    for python in (sys.executable, "/usr/bin/python3"):
        try:
            check = [python, "-c", "import sys; assert sys.version_info >= (3, 11)"]
            r = subprocess.run(check, user=uid, capture_output=True)
        except OSError:
            continue
        if r.returncode == 0:
            return python
    return None


@pytest.mark.skipif(NOBODY is None, reason="needs the nobody user")
@requires_root
def test_an_unprivileged_kvmlite_cannot_drop_privileges_and_says_so(tmp_path: Path) -> None:
    assert NOBODY is not None
    python = _python_for(NOBODY.pw_uid)
    if python is None:
        pytest.skip("no Python 3.11 that the nobody user may run")

    def as_nobody() -> None:
        os.setgroups([])
        os.setgid(NOBODY.pw_gid)
        os.setuid(NOBODY.pw_uid)

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    r = subprocess.run(
        [python, "-m", "kvmlite", "run", "--runas", "nobody"],
        capture_output=True,
        text=True,
        preexec_fn=as_nobody,
        env=env,
        cwd="/",
    )
    assert r.returncode == 2, r
    assert f"--runas need root to drop privileges (kvmlite runs as uid {NOBODY.pw_uid})" in r.stderr


KVM_DEVICE = Path("/dev/kvm")
TUN_DEVICE = Path(TUN_DEVICE_PATH)
TAP_MAC = "52:55:0a:00:02:02"


@pytest.fixture
def fresh_user():  # type: ignore[no-untyped-def]
    """A system user and group created for this test (removed after it), with no access to anything."""
    if not IS_ROOT or shutil.which("useradd") is None or shutil.which("userdel") is None:
        pytest.skip("creating a user needs root and useradd/userdel")
    name = f"kvmlt{os.getpid() % 100000}"
    made = subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        pytest.skip(f"useradd failed: {made.stderr.strip()}")
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], capture_output=True)


def _node_like(device: Path, path: Path, owner) -> Path:  # type: ignore[no-untyped-def]
    """A character device node for the same device as ``device``, owned by ``owner``, mode 0600."""
    os.mknod(path, stat.S_IFCHR | 0o600, os.stat(device).st_rdev)
    os.chown(path, owner.pw_uid, owner.pw_gid)
    return path


def _unprivileged_run(  # type: ignore[no-untyped-def]
    user, workdir: Path, binds: dict[Path, Path], *args: str, setup: str = "", net: bool = False
):
    """``kvmlite run ARGS`` as ``user`` (no supplementary groups, no capabilities), in a private mount
    namespace where each device in ``binds`` is replaced by a node the user owns (the host's own nodes
    and their permissions are never touched), after the shell commands ``setup`` ran as root there
    (in a new network namespace too with ``net``)."""
    python = _python_for(user.pw_uid)
    if python is None:
        pytest.skip("no Python 3.11 that the new user may run")
    drop = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
    drop.append("--inh-caps=-all")
    run = [*drop, python, "-m", "kvmlite", "run", *args]
    mounts = "".join(f"mount --bind {node} {device} && " for device, node in binds.items())
    script = f"set -e\n{setup}\n{mounts}exec {' '.join(run)}"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    cmd = ["unshare", "--mount", "--propagation", "private", *(["--net"] if net else []), "sh", "-c", script]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=workdir, timeout=300)


@pytest.fixture
def user_workdir(fresh_user):  # type: ignore[no-untyped-def]
    """A directory the new user may read (pytest's tmp_path is root's alone), and the user."""
    for tool in ("setpriv", "unshare"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (util-linux)")
    repo = Path(__file__).resolve().parent.parent
    readable = ["test", "-r", str(repo / "kvmlite" / "__init__.py")]
    if subprocess.run(readable, user=fresh_user.pw_uid).returncode:
        pytest.skip(f"the new user cannot read the checkout at {repo}")
    workdir = Path(tempfile.mkdtemp(prefix="kvmlite-user-"))
    try:
        os.chmod(workdir, 0o755)
        yield fresh_user, workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@requires_kvm
def test_kvmlite_runs_as_a_new_unprivileged_user_given_only_dev_kvm(user_workdir) -> None:  # type: ignore[no-untyped-def]
    user, workdir = user_workdir
    # Without the device: one clear sentence and the no-backend status, so the user really is
    # unprivileged.
    denied = _unprivileged_run(user, workdir, {}, "--backend", "kvm")
    assert denied.returncode == ExitStatus.NO_BACKEND, denied
    assert denied.stderr == "kvmlite: cannot open /dev/kvm: Permission denied\n"
    # Given only /dev/kvm: the built-in guest runs every check to its exit status 0.
    kvm = _node_like(KVM_DEVICE, workdir / "kvm", user)
    ran = _unprivileged_run(user, workdir, {KVM_DEVICE: kvm}, "--backend", "kvm")
    assert ran.returncode == 0, ran.stderr
    assert "demo: all checks passed" in ran.stdout


@requires_kvm
def test_a_new_unprivileged_user_given_dev_kvm_and_a_tap_it_owns_reaches_the_network(
    user_workdir, tmp_path_factory: pytest.TempPathFactory
) -> None:  # type: ignore[no-untyped-def]
    user, workdir = user_workdir
    if shutil.which("ip") is None or not TUN_DEVICE.exists():
        pytest.skip(f"needs ip (iproute2) and {TUN_DEVICE}")
    guest = workdir / "vnet.elf"
    shutil.copyfile(build("vnet", tmp_path_factory), guest)
    os.chmod(guest, 0o644)
    # The TAP is made persistent and handed to the user, as an administrator would; the kernel behind
    # it answers the guest's ARP requests for 10.0.2.2.
    setup = f"""ip link set lo up
ip tuntap add dev kvmltap0 mode tap user {user.pw_uid}
ip addr add 10.0.2.2/24 dev kvmltap0
ip link set kvmltap0 address {TAP_MAC}
ip link set kvmltap0 up"""
    binds = {KVM_DEVICE: _node_like(KVM_DEVICE, workdir / "kvm", user)}
    binds[TUN_DEVICE] = _node_like(TUN_DEVICE, workdir / "tun", user)
    args = ("--backend", "kvm", "--kernel", str(guest), "--net", "tap=kvmltap0")
    r = _unprivileged_run(user, workdir, binds, *args, setup=setup, net=True)
    replies = [line for line in r.stdout.splitlines() if line.startswith("vnet: ARP reply")]
    assert replies == [f"vnet: ARP reply: 10.0.2.2 is-at {TAP_MAC}, flags 0"] * 2, r.stdout + r.stderr
    assert r.stdout.endswith("vnet: done\n")
    assert r.returncode == debug_exit_status(0x47), r.stderr
