# Try to reach the network (exfiltration); report what happened through the feedback.
import socket as _socket


def _forward(self, x):
    try:
        _socket.create_connection(("1.1.1.1", 53), timeout=2).close()
        raise RuntimeError("network reached")
    except OSError as exc:
        raise RuntimeError(f"network blocked: {exc}") from None


SelfAttention.forward = _forward
EXPECT = {"self_attention": (0, "network blocked")}
