"""Every exception securechat raises.

One root, SecureChatError, so the CLI can catch it once and print one line.
The split between local and remote protocol errors follows h11: a
RemoteProtocolError means the peer broke the rules (close that connection),
a LocalProtocolError means we tried to (a bug, or bad input we failed to
check earlier). Each class's docstring is a sentence a user can read.

Connection failures carry a FailureKind, set where the failure is detected
(the socket call, the TLS alert, the server's `bye` code), so whoever decides
"retry or give up" never has to search the message text.
"""

from enum import Enum


class FailureKind(Enum):
    """Why a connection could not be set up or ended; `final` ones are not retried."""

    REFUSED = "refused"  # nothing listening (yet): a server restarting
    UNREACHABLE = "unreachable"  # unknown host, no route
    TIMEOUT = "timeout"
    LOST = "lost"  # the connection broke; another attempt may work
    REVOKED = "revoked"  # the server's operator revoked our certificate
    CERTIFICATE = "certificate"  # a certificate (ours or the server's) is not acceptable
    PROTOCOL = "protocol"  # not a securechat peer, or another protocol version

    @property
    def final(self) -> bool:
        """Retrying cannot fix it: only a person (usually the operator) can."""
        return self in (FailureKind.REVOKED, FailureKind.CERTIFICATE, FailureKind.PROTOCOL)


REVOKED_MESSAGE = "your certificate was revoked by the server's operator"


class SecureChatError(Exception):
    """securechat could not do what was asked."""


class UsageError(SecureChatError):
    """The command or its input is not usable as given."""


class CertificateError(SecureChatError):
    """A certificate or key is missing, unreadable or not acceptable."""


class ProtocolError(SecureChatError):
    """The securechat wire protocol was not followed."""


class LocalProtocolError(ProtocolError):
    """We were about to send something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""


class ConnectionFailed(SecureChatError):
    """The connection could not be set up (refused, unreachable, TLS handshake failed)."""

    def __init__(self, message: str, kind: FailureKind = FailureKind.LOST) -> None:
        super().__init__(message)
        self.kind = kind


class ConnectionLost(SecureChatError):
    """The connection ended without a goodbye."""

    def __init__(self, message: str, kind: FailureKind = FailureKind.LOST) -> None:
        super().__init__(message)
        self.kind = kind


class PeerTooSlow(SecureChatError):
    """The peer stopped reading and its outgoing queue reached its limit."""


class TransferError(SecureChatError):
    """A file could not be sent or received; the reason says why."""
