from __future__ import annotations

import socket

from meshtrace.listen import Address, bind


def test_listening_sockets_disable_nagle():
    """Accepted connections inherit TCP_NODELAY; without it every kept-alive request waits 40 ms."""
    sock = bind(Address("127.0.0.1", 0), "http")
    try:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
    finally:
        sock.close()
