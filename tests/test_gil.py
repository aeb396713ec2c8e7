"""kvmlite.gil: an emulated vCPU waits for a server that has work in hand, and only then."""

from __future__ import annotations

import socket
import threading

import pytest

from kvmlite import gil
from kvmlite.gil import GilTurns


def vcpu_turn(turns: GilTurns, kicked: threading.Event) -> threading.Thread:
    thread = threading.Thread(target=turns.give_turn, args=(kicked.is_set,), daemon=True)
    thread.start()
    return thread


@pytest.fixture
def pair():  # type: ignore[no-untyped-def]
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_no_wait_without_a_readable_socket_or_a_busy_server(pair) -> None:  # type: ignore[no-untyped-def]
    turns = GilTurns()
    turns.give_turn(lambda: False)  # nothing watched
    turns.watch(pair[0].fileno())
    turns.give_turn(lambda: False)  # watched, nothing to read
    assert turns.turns == 0


def test_a_readable_socket_holds_the_vcpu_until_the_server_round(pair, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(gil, "MAX_WAIT_S", 60.0)
    turns, kicked = GilTurns(), threading.Event()
    turns.watch(pair[0].fileno())
    pair[1].sendall(b"{}\n")
    thread = vcpu_turn(turns, kicked)
    thread.join(0.3)
    assert thread.is_alive() and turns.turns == 1
    pair[0].recv(16)  # the server reads: the vCPU still waits for the end of the round
    thread.join(0.1)
    assert thread.is_alive()
    turns.served()
    thread.join(10)
    assert not thread.is_alive() and turns.timeouts == 0


def test_a_busy_server_holds_the_vcpu_and_a_kick_releases_it(pair, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(gil, "MAX_WAIT_S", 60.0)
    turns, kicked = GilTurns(), threading.Event()
    turns.watch(pair[0].fileno())
    turns.busy()  # the server has read its socket empty already
    thread = vcpu_turn(turns, kicked)
    thread.join(0.3)
    assert thread.is_alive()
    kicked.set()  # the command pauses the VM: EmuVcpu.kick wakes the wait
    turns.wake()
    thread.join(10)
    assert not thread.is_alive()


def test_a_server_that_does_not_come_back_costs_one_wait_then_none(pair, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(gil, "MAX_WAIT_S", 0.05)
    monkeypatch.setattr(gil, "BACKOFF_S", 3600.0)
    turns = GilTurns()
    turns.watch(pair[0].fileno())
    pair[1].sendall(b"x")
    turns.give_turn(lambda: False)
    assert (turns.turns, turns.timeouts) == (1, 1)
    turns.give_turn(lambda: False)  # within BACKOFF_S: no second wait
    assert turns.turns == 1
    turns.unwatch(pair[0].fileno())
    assert turns.fds == ()
