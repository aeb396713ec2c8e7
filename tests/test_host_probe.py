"""Host probes are remembered across processes for the same host kernel (kvmlite.vmm.host_probe)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmlite.errors import KvmliteError
from kvmlite.vmm import host_probe
from kvmlite.vmm.host_probe import CACHE_NAME, HostProbe


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("KVMLITE_PROBE_CACHE", raising=False)
    return tmp_path / "kvmlite" / CACHE_NAME


def counting(answer: object) -> tuple[list[int], object]:
    calls: list[int] = []

    def probe(new_vm: object) -> object:
        calls.append(1)
        return answer

    return calls, probe


def test_a_later_process_takes_the_answer_from_the_cache(cache: Path) -> None:
    calls, probe = counting(False)
    assert HostProbe("quirk", probe, True)(object) is False
    assert HostProbe("quirk", probe, True)(object) is False  # a new HostProbe: as in another process
    assert calls == [1]
    assert cache.read_text().splitlines()[1:] == ["quirk bool 0"]


def test_int_answers_and_several_probes_share_the_file(cache: Path) -> None:
    HostProbe("a", counting(0)[1], 5)(object)
    HostProbe("b", counting(0xE0)[1], 0)(object)
    calls, probe = counting(7)
    assert HostProbe("a", probe, 5)(object) == 0 and calls == []
    assert cache.read_text().splitlines()[1:] == ["a int 0", f"b int {0xE0}"]


def test_another_host_kernel_probes_again(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    HostProbe("quirk", counting(True)[1], False)(object)
    monkeypatch.setattr(host_probe, "host_key", lambda: "another boot")
    calls, probe = counting(False)
    assert HostProbe("quirk", probe, True)(object) is False
    assert calls == [1]
    assert cache.read_text() == "host another boot\nquirk bool 0\n"


DAMAGED = ["", "\x00\xff", "host\n", "host x\nquirk bool 1\n", "{}", "quirk bool 0\n"]


@pytest.mark.parametrize("content", DAMAGED)
def test_a_damaged_cache_is_probed_over_and_rewritten(cache: Path, content: str) -> None:
    cache.parent.mkdir(parents=True)
    cache.write_text(content)
    calls, probe = counting(True)
    assert HostProbe("quirk", probe, False)(object) is True and calls == [1]
    assert cache.read_text().splitlines()[1:] == ["quirk bool 1"]


def test_a_garbled_entry_is_ignored_and_the_others_kept(cache: Path) -> None:
    cache.parent.mkdir(parents=True)
    cache.write_text(f"host {host_probe.host_key()}\nquirk bool 7\nother int x\nfine int 3\n")
    calls, probe = counting(False)
    assert HostProbe("quirk", probe, True)(object) is False and calls == [1]
    assert HostProbe("fine", counting(9)[1], 0)(object) == 3


def test_off_probes_every_time_and_writes_nothing(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVMLITE_PROBE_CACHE", "off")
    calls, probe = counting(True)
    HostProbe("quirk", probe, False)(object)
    HostProbe("quirk", probe, False)(object)
    assert calls == [1, 1] and not cache.exists()


def test_a_failed_probe_gives_the_default_and_is_not_remembered(cache: Path) -> None:
    def broken(new_vm: object) -> bool:
        raise KvmliteError("no KVM")

    assert HostProbe("quirk", broken, True)(object) is True
    assert not cache.exists()


def test_an_unwritable_cache_still_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # a file where the directory should be
    calls, probe = counting(False)
    assert HostProbe("quirk", probe, True)(object) is False and calls == [1]


def test_a_thread_under_a_seccomp_filter_neither_reads_nor_writes_the_cache(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a probe run after set-up (the main thread confined) must not touch files: its list has no mkdir
    from kvmlite.vmm import seccomp

    HostProbe("quirk", counting(True)[1], False)(object)
    monkeypatch.setattr(seccomp, "is_confined", lambda: True)
    calls, probe = counting(False)
    assert HostProbe("quirk", probe, True)(object) is False and calls == [1]  # probed, not read
    assert HostProbe("other", counting(3)[1], 0)(object) == 3
    assert cache.read_text().splitlines()[1:] == ["quirk bool 1"]  # nothing written
