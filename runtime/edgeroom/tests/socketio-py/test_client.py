"""python-socketio against a real Edgeroom node (started by runtime/edgeroom/tests/it/socketio.rs,
which passes its URL in EDGEROOM_URL; the default app is `echo`).

Connect over both transports, emit with an ack, and a broadcast between two clients.
Events from rooms carry a connection-state-recovery offset as their last argument.
"""

import os
import sys
import threading
import uuid

import socketio

URL = os.environ["EDGEROOM_URL"]
WAIT = 10


def connect(transport, room):
    c = socketio.Client(reconnection=False)
    c.connect(URL, auth={"room": room}, transports=[transport], wait_timeout=WAIT)
    return c


def main():
    for transport in ("websocket", "polling"):
        room = f"py-{transport}-{uuid.uuid4().hex[:8]}"
        a = connect(transport, room)
        b = connect("websocket", room)
        try:
            # Emit with an ack: the echo handler replies with the arguments.
            assert a.call("echo", {"héllo": ["wörld", 1, None]}, timeout=WAIT) == {
                "héllo": ["wörld", 1, None]
            }
            assert a.call("echo", (1, "2", {"3": [True]}), timeout=WAIT) == (
                1,
                "2",
                {"3": [True]},
            )
            assert a.call("echo", b"\x00\x01\xff", timeout=WAIT) == b"\x00\x01\xff"

            # A broadcast from a reaches b (and not a), in order.
            got = []
            done = threading.Event()

            @b.on("broadcast")
            def on_broadcast(*args):
                value, offset = args[:-1], args[-1]
                assert isinstance(offset, str), f"no offset in {args!r}"
                got.append(value)
                if len(got) == 50:
                    done.set()

            mine = []
            a.on("broadcast", lambda *args: mine.append(args))
            for i in range(50):
                assert a.call("broadcast", {"n": i}, timeout=WAIT) is None
            assert done.wait(WAIT), f"only {len(got)} broadcasts arrived"
            assert got == [({"n": i},) for i in range(50)], got
            a.call("echo", "sync", timeout=WAIT)
            assert mine == [], mine
        finally:
            a.disconnect()
            b.disconnect()
        print(f"ok: {transport}")


if __name__ == "__main__":
    main()
    sys.exit(0)
