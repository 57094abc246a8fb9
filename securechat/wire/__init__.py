"""Pure, both ends: the wire format (frames) and the protocol rules of each side, sans I/O
(ClientProtocol, ServerProtocol). No sockets, threads, clocks or files."""
