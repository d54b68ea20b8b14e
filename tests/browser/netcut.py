"""A loopback TCP relay between the page and the server whose connections the test can cut (a network drop)."""

from __future__ import annotations

import socket
import struct
import threading


class NetCut:
    """Relays 127.0.0.1:<port> to the server's WebSocket port; `cut()` resets every relayed connection.

    With `refuse(True)` new connections are reset as soon as they are accepted, as if the network were
    still down; the page keeps retrying until `refuse(False)`.
    """

    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.refusing = False
        self.accepted = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True, name="netcut-accept").start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            if self.refusing:
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.target)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=_pump, args=(a, b), daemon=True, name="netcut-pump").start()

    def cut(self) -> None:
        """Reset every relayed connection in both directions (no WebSocket close frame reaches either side)."""
        with self._lock:
            sockets, self.sockets = self.sockets, []
        for sock in sockets:
            _reset(sock)

    def refuse(self, refusing: bool) -> None:
        self.refusing = refusing

    def close(self) -> None:
        self.cut()
        self.listener.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    _reset(dst)


def _reset(sock: socket.socket) -> None:
    """End the connection now without a WebSocket close frame, the way a dead network path ends it.

    shutdown() wakes the relay thread blocked reading this socket (close() alone would wait for it); the
    final close with SO_LINGER 0 resets the connection.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
