"""Protocols: one module per protocol, each registering itself in :data:`PROTOCOLS` (and the rules
that need it in the rule registry); importing this package imports them all and re-exports each
module's ``__all__``."""
from common.params import discover
from common.protocols.base import PROTOCOLS, Protocol, protocol_of

__all__ = ["PROTOCOLS", "Protocol", "protocol_of"]

__all__ += discover(__name__, __path__, globals())
