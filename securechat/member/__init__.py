"""I/O, one local member: what `join`, `send` and the server's own operator share. A
connection and its I/O thread, the member (commands, files sent and received), and, for
`join`, connecting and reconnecting."""
