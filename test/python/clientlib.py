"""What the libvirt-python test clients share: one JSON line per step, and the
event loop in its own thread, as the bindings' documentation says (the client
then negotiates keepalive and receives the domain events)."""

import json
import threading

import libvirt


def out(step, **fields):
    """One step as a JSON line on stdout; the tests assert them."""
    print(json.dumps({"step": step, **fields}), flush=True)


def start_event_loop():
    libvirt.virEventRegisterDefaultImpl()
    # errors are asserted through the exceptions; the default handler would also print them
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

    def run_loop():
        while True:
            libvirt.virEventRunDefaultImpl()

    threading.Thread(target=run_loop, daemon=True).start()
