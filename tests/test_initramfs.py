"""The initramfs builder, checked by reading its archives back (here and with ``cpio`` when present)."""

from __future__ import annotations

import gzip
import os
import select
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from kvmlite.tools import assets, initramfs
from kvmlite.tools.initramfs import Entry, InitramfsError
from tests.images import FAKE_ELF, read_newc

FEW_APPLETS = ["mount", "sh"]


def build(tmp_path: Path, **kwargs) -> dict[str, tuple[int, bytes, tuple[int, int]]]:
    busybox = tmp_path / "busybox"
    busybox.write_bytes(FAKE_ELF)
    kwargs.setdefault("applets", FEW_APPLETS)
    return read_newc(gzip.decompress(initramfs.build_initramfs(busybox, **kwargs)))


def test_archive_holds_busybox_applet_links_and_base_dirs(tmp_path: Path) -> None:
    members = build(tmp_path)
    mode, data, _ = members["bin/busybox"]
    assert stat.S_ISREG(mode) and mode & 0o111
    assert data == FAKE_ELF
    for applet in FEW_APPLETS:
        mode, target, _ = members[f"bin/{applet}"]
        assert stat.S_ISLNK(mode)
        assert target == b"busybox"
    for d in ("dev", "proc", "sys", "tmp", "bin"):
        assert stat.S_ISDIR(members[d][0]), d


def test_dev_console_is_the_char_device_5_1(tmp_path: Path) -> None:
    mode, data, rdev = build(tmp_path)["dev/console"]
    assert stat.S_ISCHR(mode)
    assert rdev == (5, 1)
    assert data == b""


def test_default_init_mounts_filesystems_and_prints_the_marker(tmp_path: Path) -> None:
    mode, data, _ = build(tmp_path)["init"]
    assert mode & 0o111
    script = data.decode()
    assert script.startswith("#!/bin/sh\n")
    for fs in ("proc proc /proc", "sysfs sysfs /sys", "devtmpfs devtmpfs /dev"):
        assert f"mount -t {fs}" in script
    assert initramfs.READY_MARKER in script
    assert "cttyhack" in script and "poweroff -f" in script


def test_default_init_starts_acpid_whose_power_button_handler_powers_off(tmp_path: Path) -> None:
    members = build(tmp_path)
    script = members["init"][1].decode()
    assert "acpid -c /etc/acpi" in script and "/dev/input/event0" in script
    assert script.index("acpid") < script.index(initramfs.READY_MARKER)  # running when the shell is
    mode, handler, _ = members[initramfs.POWER_BUTTON_HANDLER.lstrip("/")]
    assert stat.S_ISREG(mode) and mode & 0o111
    assert handler.startswith(b"#!/bin/sh\n")
    assert initramfs.POWER_BUTTON_MARKER.encode() in handler
    assert handler.rstrip().endswith(b"poweroff -f")  # the shell as /init ignores poweroff's signal


def test_given_init_replaces_the_default(tmp_path: Path) -> None:
    init = tmp_path / "myinit"
    init.write_text("#!/bin/sh\necho mine\n")
    members = build(tmp_path, init=init)
    mode, data, _ = members["init"]
    assert data == b"#!/bin/sh\necho mine\n"
    assert mode & 0o111
    assert initramfs.POWER_BUTTON_HANDLER.lstrip("/") not in members  # the default init's only


def test_added_files_and_trees_land_at_their_destinations_with_parents(tmp_path: Path) -> None:
    hello = tmp_path / "hello"
    hello.write_bytes(b"#!/bin/sh\necho hi\n")
    hello.chmod(0o755)
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "data.txt").write_text("payload")
    (tree / "link").symlink_to("sub/data.txt")
    members = build(tmp_path, adds=[(hello, "/opt/tools/hello"), (tree, "/srv/tree")])
    mode, data, _ = members["opt/tools/hello"]
    assert data == b"#!/bin/sh\necho hi\n" and mode & 0o777 == 0o755
    assert stat.S_ISDIR(members["opt"][0]) and stat.S_ISDIR(members["opt/tools"][0])
    assert members["srv/tree/sub/data.txt"][1] == b"payload"
    assert stat.S_ISLNK(members["srv/tree/link"][0])
    assert members["srv/tree/link"][1] == b"sub/data.txt"


def test_members_are_sorted_so_parents_come_first(tmp_path: Path) -> None:
    names = list(build(tmp_path))
    assert names == sorted(names)


def test_same_inputs_give_the_same_bytes(tmp_path: Path) -> None:
    busybox = tmp_path / "busybox"
    busybox.write_bytes(FAKE_ELF)
    first = initramfs.build_initramfs(busybox, applets=FEW_APPLETS)
    busybox.touch()  # a newer mtime on the host must not change the archive
    second = initramfs.build_initramfs(busybox, applets=FEW_APPLETS)
    assert first == second
    assert first[4:8] == bytes(4)  # gzip header mtime


def test_names_are_padded_so_data_starts_4_aligned() -> None:
    for length in range(1, 9):
        record = initramfs.newc_entry("x" * length, Entry(stat.S_IFREG | 0o644, b"abc"), 1)
        assert len(record) % 4 == 0
        assert record.index(b"abc") % 4 == 0


@pytest.mark.parametrize("dst", ["../etc/passwd", "/", "a/../../b"])
def test_destinations_escaping_the_root_are_rejected(tmp_path: Path, dst: str) -> None:
    src = tmp_path / "f"
    src.write_text("x")
    with pytest.raises(InitramfsError, match="bad destination path"):
        build(tmp_path, adds=[(src, dst)])


def test_file_under_a_file_is_rejected(tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_text("x")
    with pytest.raises(InitramfsError, match="init is not a directory"):
        build(tmp_path, adds=[(src, "/init/oops")])


def test_missing_or_non_elf_busybox_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InitramfsError, match="cannot read busybox"):
        initramfs.build_initramfs(tmp_path / "nope", applets=[])
    script = tmp_path / "busybox"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(InitramfsError, match="not an ELF executable"):
        initramfs.build_initramfs(script, applets=[])


def test_missing_added_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InitramfsError, match=r"cannot read .*missing"):
        build(tmp_path, adds=[(tmp_path / "missing", "/x")])


def test_applets_come_from_busybox_list_when_it_runs(tmp_path: Path) -> None:
    fake = tmp_path / "lister"
    fake.write_text("#!/bin/sh\nprintf 'sh\\nmount\\n[[\\nbusybox\\nbad/name\\n'\n")
    fake.chmod(0o755)
    assert initramfs.busybox_applets(fake) == ["[[", "mount", "sh"]


def test_applets_fall_back_to_the_defaults_when_busybox_cannot_run(tmp_path: Path) -> None:
    fake = tmp_path / "busybox"
    fake.write_bytes(FAKE_ELF)  # not executable
    assert initramfs.busybox_applets(fake) == list(initramfs.DEFAULT_APPLETS)


def test_main_writes_the_archive_and_reports_bad_add_specs(tmp_path: Path, capsys) -> None:
    busybox = tmp_path / "busybox"
    busybox.write_bytes(FAKE_ELF)
    out = tmp_path / "initrd.cpio.gz"
    assert initramfs.main(["--busybox", str(busybox), "-o", str(out)]) == 0
    assert "init" in read_newc(gzip.decompress(out.read_bytes()))
    assert initramfs.main(["--busybox", str(busybox), "--add", "nocolon", "-o", str(out)]) == 2
    assert "expected SRC:DST" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("cpio") is None, reason="the cpio command is not installed")
def test_cpio_command_lists_the_same_members(tmp_path: Path) -> None:
    busybox = tmp_path / "busybox"
    busybox.write_bytes(FAKE_ELF)
    archive = gzip.decompress(initramfs.build_initramfs(busybox, applets=FEW_APPLETS))
    listed = subprocess.run(["cpio", "-t", "--quiet"], input=archive, capture_output=True, check=True)
    assert sorted(listed.stdout.decode().split()) == sorted(read_newc(archive))


FOUND, MISSING = assets.find_assets()


@pytest.mark.skipif(FOUND is None, reason=f"no cached busybox: {MISSING}")
def test_real_busybox_lists_its_applets_and_parses_the_default_init(tmp_path: Path) -> None:
    assert FOUND is not None
    _, busybox = FOUND
    applets = initramfs.busybox_applets(busybox)
    assert {"sh", "mount", "cttyhack", "setsid", "poweroff"} <= set(applets)
    init = tmp_path / "init"
    init.write_text(initramfs.DEFAULT_INIT)
    check = subprocess.run([str(busybox), "sh", "-n", str(init)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


@pytest.mark.skipif(FOUND is None, reason=f"no cached busybox: {MISSING}")
def test_real_busybox_acpid_maps_a_power_button_press_to_our_handler_path(tmp_path: Path) -> None:
    """This busybox's acpid, told of a power-button press, names the action our handler's path is.

    acpid logs the action (a path under its ``-c`` directory) before it runs it.
    The press comes through ``-e`` (a FIFO, in the text form of /proc/acpi/event),
    which acpid maps through the same table as an evdev KEY_POWER.  Nothing is
    run: the directory is empty (the real handler would power this machine off).
    """
    assert FOUND is not None
    _, busybox = FOUND
    conf = tmp_path / "acpi"
    conf.mkdir()
    events = tmp_path / "events"
    os.mkfifo(events)
    missing = str(tmp_path / "none")  # no action or map file: acpid's built-in tables
    cmd = [str(busybox), "acpid", "-f", "-d", "-c", str(conf), "-e", str(events)]
    cmd += ["-a", missing, "-M", missing]
    action = initramfs.POWER_BUTTON_HANDLER.removeprefix(f"/{initramfs.ACPI_EVENT_DIR}/")
    expected = f"acpid: {action}\n".encode()
    acpid = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert acpid.stdout is not None
    out = b""
    try:
        fd = os.open(events, os.O_WRONLY)  # returns once acpid has opened its end
        os.write(fd, b"button/power PWRF 00000080 00000000\n")
        deadline = time.monotonic() + 60  # a loaded machine
        while expected not in out and time.monotonic() < deadline:
            if select.select([acpid.stdout], [], [], 0.5)[0]:
                chunk = os.read(acpid.stdout.fileno(), 4096)
                if not chunk:  # acpid ended
                    break
                out += chunk
        os.close(fd)
    finally:
        acpid.kill()
        acpid.wait()
    assert expected in out, out


# --- the asset cache the real-binary tests above use -------------------------------------


def test_find_assets_gives_the_reason_when_the_cache_is_empty(tmp_path: Path) -> None:
    found, reason = assets.find_assets(tmp_path)
    assert found is None
    assert "vmlinuz and busybox not found" in reason and str(tmp_path) in reason


def test_find_assets_returns_both_paths_when_cached(tmp_path: Path) -> None:
    (tmp_path / "vmlinuz").write_bytes(b"k")
    (tmp_path / "busybox").write_bytes(b"b")
    assert assets.find_assets(tmp_path) == ((tmp_path / "vmlinuz", tmp_path / "busybox"), "")
    # a cache hit needs no package manager at all
    assert assets.fetch_assets(tmp_path) == (tmp_path / "vmlinuz", tmp_path / "busybox")


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KVMLITE_ASSETS", str(tmp_path))
    assert assets.cache_dir() == tmp_path
    monkeypatch.delenv("KVMLITE_ASSETS")
    assert assets.cache_dir() == Path("~/.cache/kvmlite/assets").expanduser()


def test_fetch_without_apt_says_what_is_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(assets.shutil, "which", lambda name: None)
    with pytest.raises(assets.AssetsError, match="needs apt-get"):
        assets.fetch_assets(tmp_path)


def test_metapackage_dependency_names_the_real_kernel_package() -> None:
    depends = "linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)"
    match = assets.DEPENDS_IMAGE.search(depends)
    assert match is not None and match.group(1) == "linux-image-6.1.0-56-cloud-amd64"


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb is not installed")
def test_only_the_wanted_file_is_taken_from_a_package(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN" / "control").write_text(
        "Package: fake-kernel\nVersion: 1.0\nArchitecture: amd64\nMaintainer: t <t@t>\nDescription: t\n"
    )
    (pkg / "boot").mkdir()
    (pkg / "boot" / "config-1.0").write_text("CONFIG_X=y\n")
    (pkg / "boot" / "vmlinuz-1.0").write_bytes(b"kernel bytes")
    deb = tmp_path / "fake-kernel_1.0_amd64.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-b", str(pkg), str(deb)], check=True, capture_output=True
    )
    dest = tmp_path / "vmlinuz"
    assert assets._extract_member(deb, assets.KERNEL_MEMBER, dest) == "./boot/vmlinuz-1.0"
    assert dest.read_bytes() == b"kernel bytes"
    with pytest.raises(assets.AssetsError, match="holds no file matching"):
        assets._extract_member(deb, assets.BUSYBOX_MEMBER, tmp_path / "busybox")


def _fake_dbg_package(tmp_path: Path) -> Path:
    """A -dbg package laid out as Debian's: /usr/lib/debug/boot/{vmlinux,System.map}-<release>."""
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed")
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        "Package: linux-image-9.9-cloud-amd64-dbg\nVersion: 1\nArchitecture: amd64\n"
        "Maintainer: kvmlite tests <tests@example.org>\nDescription: test\n"
    )
    debug_boot = root / "usr" / "lib" / "debug" / "boot"
    debug_boot.mkdir(parents=True)
    (debug_boot / "vmlinux-9.9").write_bytes(b"\x7fELF not really")
    (debug_boot / "System.map-9.9").write_text("ffffffff81000000 T _stext\n")
    (root / "usr" / "lib" / "debug" / "lib" / "modules").mkdir(parents=True)
    (root / "usr" / "lib" / "debug" / "lib" / "modules" / "evdev.ko").write_bytes(b"module")
    deb = tmp_path / "linux-image-9.9-cloud-amd64-dbg_1_amd64.deb"
    subprocess.run(
        ["dpkg-deb", "--build", "--root-owner-group", str(root), str(deb)], check=True, capture_output=True
    )
    return deb


def test_symbols_come_from_the_dbg_package_s_system_map(tmp_path: Path) -> None:
    deb = _fake_dbg_package(tmp_path)
    dest = tmp_path / "System.map"
    member = assets._extract_member(deb, assets.SYSTEM_MAP_MEMBER, dest)
    assert member.endswith("usr/lib/debug/boot/System.map-9.9")
    assert dest.read_text() == "ffffffff81000000 T _stext\n"


def test_the_debug_vmlinux_and_system_map_come_from_one_pass_over_the_dbg_package(tmp_path: Path) -> None:
    deb = _fake_dbg_package(tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir()
    assert assets.find_debug_vmlinux(cache)[0] is None
    assert "fetch-assets --debug-vmlinux" in assets.find_debug_vmlinux(cache)[1]
    wanted = {"System.map": assets.SYSTEM_MAP_MEMBER, "vmlinux-dbg": assets.DEBUG_VMLINUX_MEMBER}
    assets._extract_debug_files(deb, wanted, cache)
    assert sorted(p.name for p in cache.iterdir()) == ["System.map", "vmlinux-dbg"]  # no module files
    assert (cache / "vmlinux-dbg").read_bytes() == b"\x7fELF not really"
    assert assets.find_debug_vmlinux(cache) == (cache / "vmlinux-dbg", "")
    with pytest.raises(assets.AssetsError, match="holds no file matching"):
        assets._extract_debug_files(deb, {"x": assets.KERNEL_MEMBER}, cache)


def test_cached_assets_without_symbols_are_fetched_again_when_symbols_are_asked_for(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "vmlinuz").write_bytes(b"k")
    (tmp_path / "busybox").write_bytes(b"b")
    monkeypatch.setattr(assets.shutil, "which", lambda name: None)  # so a fetch attempt shows as an error
    with pytest.raises(assets.AssetsError, match="needs apt-get"):
        assets.fetch_assets(tmp_path, symbols=True)
    (tmp_path / "System.map").write_text("ffffffff81000000 T _stext\n")
    assert assets.fetch_assets(tmp_path, symbols=True) == (tmp_path / "vmlinuz", tmp_path / "busybox")
    with pytest.raises(assets.AssetsError, match="needs apt-get"):  # the same for the debug vmlinux
        assets.fetch_assets(tmp_path, symbols=True, debug_vmlinux=True)
    (tmp_path / "vmlinux-dbg").write_bytes(b"\x7fELF")
    assert assets.fetch_assets(tmp_path, debug_vmlinux=True) == (tmp_path / "vmlinuz", tmp_path / "busybox")


def test_uncompressed_archive_is_the_same_cpio(tmp_path: Path) -> None:
    busybox = tmp_path / "busybox"
    busybox.write_bytes(FAKE_ELF)
    plain = initramfs.build_initramfs(busybox, applets=FEW_APPLETS, compress=False)
    assert plain[:6] == b"070701"  # newc magic: the kernel unpacks it as it is
    assert gzip.decompress(initramfs.build_initramfs(busybox, applets=FEW_APPLETS)) == plain
    out = tmp_path / "initrd.cpio"
    assert initramfs.main(["--busybox", str(busybox), "--no-compress", "-o", str(out)]) == 0
    assert out.read_bytes()[:6] == b"070701"
