#!/usr/bin/python3
"""A libvirt-python client waiting for a domain's reboot event
(VIR_DOMAIN_EVENT_ID_REBOOT): register it, ask for an ACPI reboot, and print
the event when it comes.

Usage: reboot_event.py URI NAME
Prints one JSON object per line; test/qemu/domain-reboot.test.ts asserts them.
"""

import sys
import threading

import libvirt

from clientlib import out, start_event_loop

URI, NAME = sys.argv[1:3]


start_event_loop()
seen = threading.Event()
reboots = []


def on_reboot(conn, dom, opaque):
    reboots.append(dom.name())
    seen.set()


conn = libvirt.open(URI)
dom = conn.lookupByName(NAME)
cb = conn.domainEventRegisterAny(dom, libvirt.VIR_DOMAIN_EVENT_ID_REBOOT, on_reboot, None)
out("registered", callback=cb)
dom.reboot(libvirt.VIR_DOMAIN_REBOOT_ACPI_POWER_BTN)
out("rebooting")
if not seen.wait(100):
    out("failed", error="no reboot event")
    sys.exit(1)
out("reboot", domain=reboots[0], state=dom.state())
conn.domainEventDeregisterAny(cb)
conn.close()
