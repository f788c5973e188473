"""Free ports for servers other processes start later."""

from __future__ import annotations

import socket
from pathlib import Path

from meshtrace import listen
from meshtrace.listen import free_port


def ephemeral() -> range:
    low, high = (int(part) for part in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    return range(low, high + 1)


def test_a_free_port_is_outside_the_range_outgoing_connections_take_theirs_from():
    """A port from the ephemeral range can become some connection's local end before the server binds it
    (a backend once failed to start so); fifty ports are all outside it, distinct, and can be listened on."""
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert not [port for port in ports if port in ephemeral()]
    for port in ports[:5]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
            sock.listen()


def test_the_preferred_port_when_free_else_another():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", free_port()))
        busy.listen()
        taken = busy.getsockname()[1]
        other = free_port("127.0.0.1", taken)
        assert other != taken
        assert other not in ephemeral()
    assert free_port("127.0.0.1", taken) == taken


def test_when_every_port_is_ephemeral_any_free_one(tmp_path, monkeypatch):
    wide = tmp_path / "ip_local_port_range"
    wide.write_text("1024\t65535\n")
    monkeypatch.setattr(listen, "_EPHEMERAL", wide)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port()))
