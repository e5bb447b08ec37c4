"""A TCP port for a test's distributed rendezvous."""
import socket


def free_port() -> int:
    """A port free on 127.0.0.1 now; the OS picks it, so parallel runs do not collide on a fixed one."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
