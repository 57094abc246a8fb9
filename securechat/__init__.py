"""securechat: private chat and SHA-256 verified file exchange over mutual TLS 1.3."""

from securechat.errors import SecureChatError

__version__ = "0.1.0"
__all__ = ["SecureChatError", "__version__"]
