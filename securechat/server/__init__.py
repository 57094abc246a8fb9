"""I/O, server only: `securechat serve`. One selectors loop owns every client socket
(handshakes, reads, coalesced writes), feeding frames to the pure protocol and room;
admission caps and the CRL in force."""
