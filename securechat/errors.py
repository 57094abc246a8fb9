"""Every exception securechat raises.

One root, SecureChatError, so the CLI can catch it once and print one line.
The split between local and remote protocol errors follows h11: a
RemoteProtocolError means the peer broke the rules (close that connection),
a LocalProtocolError means we tried to (a bug, or bad input we failed to
check earlier). Each class's docstring is a sentence a user can read.
"""


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


class ConnectionLost(SecureChatError):
    """The connection ended without a goodbye."""


class PeerTooSlow(SecureChatError):
    """The peer stopped reading and its outgoing queue reached its limit."""


class TransferError(SecureChatError):
    """A file could not be sent or received; the reason says why."""
