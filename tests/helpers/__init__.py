"""Everything the tests share that is not a fixture; the fixtures are in tests/conftest.py.

- commands: the installed `securechat` command: run() to completion, Proc to drive one live.
- network: the room on 127.0.0.1 and what talks to it by hand (RawClient, CuttingProxy, frames
  our encoder would refuse).
- tls: handshakes and certificates with one thing wrong (a client that presents anything,
  a one-shot server).
- files: test files (sparse, random, images) and what a downloads folder holds.
- terminal: a real terminal (tmux) whose screen a test reads.
- processes: no process outlives its test (the autouse fixture and the session hooks).

Test modules import from here, never from each other nor from conftest.
"""
