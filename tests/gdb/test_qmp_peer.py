"""The control socket driven by QEMU's own QMP client library (``qemu.qmp``), as QMP scripts drive QEMU.

``qemu.qmp`` frames its commands as bare JSON objects with no newline (QMP's input is a JSON stream);
a line-based server never sees them.  Both of its interfaces are used: the asyncio ``QMPClient`` and
the synchronous ``QEMUMonitorProtocol`` that QEMU's iotests and many older scripts use.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from tests.gdb.support import (
    BACKENDS,
    dbg_guest,  # noqa: F401  (a fixture)
    waiting_vm_with_api,
)

qmp = pytest.importorskip("qemu.qmp", reason="needs QEMU's QMP client library (pip install qemu.qmp)")


@pytest.mark.parametrize("backend", BACKENDS)
def test_qemu_qmp_client_negotiates_runs_commands_gets_events_and_errors(
    dbg_guest: Path,  # noqa: F811
    tmp_path: Path,
    backend: str,
) -> None:
    from qemu.qmp import ExecuteError, QMPClient

    async def session(path: Path) -> dict[str, object]:
        client = QMPClient("kvmlite-test")
        seen: dict[str, object] = {}
        with client.listener(("STOP", "RESUME")) as listener:
            await client.connect(str(path))  # greeting, then qmp_capabilities
            seen["greeting"] = client.greeting._raw if client.greeting else None  # the Message as received
            seen["running"] = await client.execute("query-status")
            await client.execute("stop")
            seen["stop_event"] = (await asyncio.wait_for(listener.get(), 30))["event"]
            seen["paused"] = await client.execute("query-status")
            seen["regs"] = await client.execute("query-regs", {"cpu": 0})
            seen["hmp"] = await client.execute("human-monitor-command", {"command-line": "info registers"})
            seen["cpus"] = await client.execute("query-cpus-fast")
            seen["version"] = await client.execute("query-version")
            seen["kvm"] = await client.execute("query-kvm")
            try:
                await client.execute("no-such-command")
            except ExecuteError as err:
                seen["error"] = err.error_class
            await client.execute("cont")
            seen["resume_event"] = (await asyncio.wait_for(listener.get(), 30))["event"]
            await client.execute("quit")
        await client.disconnect()
        return seen

    with waiting_vm_with_api(dbg_guest, tmp_path, backend) as (proc, _, path):
        seen = asyncio.run(asyncio.wait_for(session(path), 60))
        assert proc.wait(30) == 0  # quit: the VM ended as QEMU's does, status 0
    greeting = seen["greeting"]
    assert greeting is not None and "capabilities" in greeting["QMP"]  # type: ignore[index]
    assert seen["running"] == {"running": True, "status": "running"}
    assert seen["paused"] == {"running": False, "status": "paused"}
    assert seen["stop_event"] == "STOP" and seen["resume_event"] == "RESUME"
    regs = seen["regs"]
    assert isinstance(regs, dict) and regs["cr0"] & 1 and regs["rip"] > 0x100000  # in the guest's code
    assert seen["error"] == "CommandNotFound"
    hmp = seen["hmp"]
    assert isinstance(hmp, str) and hmp.startswith("CPU#0\n") and f"{regs['rip']:x}" in hmp.lower()
    cpus = seen["cpus"]
    assert isinstance(cpus, list) and [c["cpu-index"] for c in cpus] == [0]
    vcpu_thread = cpus[0]["thread-id"]
    assert vcpu_thread != proc.pid and Path(f"/proc/{proc.pid}/task/{vcpu_thread}").exists() is False  # ended
    assert seen["kvm"] == {"enabled": backend == "kvm", "present": Path("/dev/kvm").exists()}
    version = seen["version"]
    assert isinstance(version, dict) and set(version["qemu"]) == {"major", "minor", "micro"}


def test_qemu_qmp_legacy_sync_client(dbg_guest: Path, tmp_path: Path) -> None:  # noqa: F811
    from qemu.qmp.legacy import QEMUMonitorProtocol

    with waiting_vm_with_api(dbg_guest, tmp_path, "emu") as (proc, _, path):
        watchdog = threading.Timer(60, proc.kill)  # the client has no timeout of its own: never hang
        watchdog.start()
        monitor = QEMUMonitorProtocol(str(path))
        monitor.settimeout(30)
        greeting = monitor.connect(negotiate=True)
        assert "QMP" in greeting
        assert monitor.cmd("query-status") == {"running": True, "status": "running"}  # the return value
        reply = monitor.cmd_raw("read-memory", {"addr": 0x100000, "size": 4})  # the whole reply
        assert set(reply) == {"return"} and len(reply["return"]["data"]) == 8
        assert monitor.cmd_raw("query-regs", {"cpu": 99})["error"]["class"] == "GenericError"
        assert monitor.cmd_obj({"execute": "query-status", "id": "x7"})["id"] == "x7"
        assert monitor.cmd("quit") == {}
        monitor.close()
        assert proc.wait(30) == 0
        watchdog.cancel()
