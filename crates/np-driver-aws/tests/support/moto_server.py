"""Runs moto in server mode on 127.0.0.1 for the np-driver-aws tests.

Binds a free port, prints it on stdout, and exits when stdin closes (that
is, when the test process that started it exits, however it exits).
"""
import os
import sys

try:
    from moto.server import ThreadedMotoServer
except ImportError as e:  # pragma: no cover
    print(f"ERROR moto is missing ({e}): tools/setup.sh must install moto[server]", flush=True)
    sys.exit(3)

server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server._server.port, flush=True)
sys.stdin.read()
os._exit(0)
