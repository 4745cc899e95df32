"""A TCP proxy that injects network faults between one client and a server, for tests.

``FaultProxy(upstream_port)`` listens on a free port of 127.0.0.1 and forwards every
connection to ``127.0.0.1:upstream_port``, on a thread of its own. ``set_mode`` switches
all connections, present and future, at once:

- ``forward``: bytes pass both ways.
- ``hang``: a partition. Nothing is forwarded and nothing is refused: bytes sent are
  accepted by the kernel and never answered; new connections are accepted and left silent.
  This is what a client sees when a network path stops forwarding, a server is SIGSTOPped,
  or a firewall starts dropping packets: no error, just silence.
- ``drop``: every connection is cut with a reset and new ones are reset at once (a refused
  or broken network: the client gets an error straight away).
- ``close``: connections are closed cleanly (FIN) and new ones are closed on accept.

Switching back to ``forward`` resumes the connections a ``hang`` kept (their bytes flow
again, in order), as a healed partition does.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
from dataclasses import dataclass, field

MODES = ("forward", "hang", "drop", "close")


@dataclass(eq=False)
class _Pair:
    client: socket.socket
    upstream: socket.socket | None
    to_upstream: bytearray = field(default_factory=bytearray)
    to_client: bytearray = field(default_factory=bytearray)


class FaultProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.mode = "forward"
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port = int(self._listener.getsockname()[1])
        self._pairs: list[_Pair] = []
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._stop = False
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, name=f"faultproxy-{self.port}",
                                        daemon=True)
        self._thread.start()

    # ----- control --------------------------------------------------------------------------
    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got: {mode!r}")
        with self._lock:
            self.mode = mode
        self._wake()

    def close(self) -> None:
        self._stop = True
        self._wake()
        self._thread.join(5)
        with self._lock:
            for pair in self._pairs:
                self._close_pair(pair, reset=False)
            self._pairs.clear()
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    # ----- the relay ------------------------------------------------------------------------
    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        while not self._stop:
            with self._lock:
                mode = self.mode
                if mode in ("drop", "close"):
                    for pair in self._pairs:
                        self._close_pair(pair, reset=mode == "drop")
                    self._pairs.clear()
                pairs = list(self._pairs)
            sel_map: dict[int, tuple[str, _Pair | None]] = {}
            for fileobj in list(sel.get_map().values()):
                sel.unregister(fileobj.fileobj)
            sel.register(self._listener, selectors.EVENT_READ, ("accept", None))
            sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
            if mode == "forward":
                for pair in pairs:
                    assert pair.upstream is not None
                    for sock, out in ((pair.client, pair.to_client),
                                      (pair.upstream, pair.to_upstream)):
                        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if out else 0)
                        sel.register(sock, events, ("data", pair))
                        sel_map[sock.fileno()] = ("data", pair)
            for key, events in sel.select(timeout=1.0):
                kind, pair = key.data
                if kind == "wake":
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                elif kind == "accept":
                    self._accept(mode)
                elif pair is not None and mode == "forward":
                    self._relay(key.fileobj, events, pair)  # type: ignore[arg-type]
        sel.close()

    def _accept(self, mode: str) -> None:
        try:
            client, _ = self._listener.accept()
        except OSError:
            return
        self.accepted += 1
        if mode in ("drop", "close"):
            self._close_sock(client, reset=mode == "drop")
            return
        upstream = None
        try:
            upstream = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            self._close_sock(client, reset=True)
            return
        client.setblocking(False)
        upstream.setblocking(False)
        with self._lock:
            self._pairs.append(_Pair(client, upstream))

    def _relay(self, sock: socket.socket, events: int, pair: _Pair) -> None:
        assert pair.upstream is not None
        inbound = sock is pair.client
        other_buffer = pair.to_upstream if inbound else pair.to_client
        own_buffer = pair.to_client if inbound else pair.to_upstream
        if events & selectors.EVENT_READ:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                data = None
            except OSError:
                data = b""
            if data == b"":
                with self._lock:
                    if pair in self._pairs:
                        self._pairs.remove(pair)
                self._close_pair(pair, reset=False)
                return
            if data:
                other_buffer.extend(data)
        if events & selectors.EVENT_WRITE and own_buffer:
            try:
                sent = sock.send(own_buffer)
                del own_buffer[:sent]
            except BlockingIOError:
                pass
            except OSError:
                with self._lock:
                    if pair in self._pairs:
                        self._pairs.remove(pair)
                self._close_pair(pair, reset=False)
                return
        # flush what arrived for the other side at once when it can take it
        target = pair.upstream if inbound else pair.client
        if other_buffer:
            try:
                sent = target.send(other_buffer)
                del other_buffer[:sent]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                pass

    def _close_pair(self, pair: _Pair, reset: bool) -> None:
        for sock in (pair.client, pair.upstream):
            if sock is not None:
                self._close_sock(sock, reset)

    @staticmethod
    def _close_sock(sock: socket.socket, reset: bool) -> None:
        with contextlib.suppress(OSError):
            if reset:  # SO_LINGER 0: close sends RST
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
