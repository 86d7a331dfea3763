#!/usr/bin/python3
"""How backup tools built on the bindings back up a shut-off domain: start it
paused and auto-destroyed (it dies with this connection), push a full backup,
and exit without closing the connection.

Usage: offline_backup.py URI NAME TARGET_DIR
Prints one JSON object per line; test/qemu/libvirt-python.test.ts asserts them.
"""

import sys
import threading

import libvirt

from clientlib import out, start_event_loop

URI, NAME, DIR = sys.argv[1:4]


start_event_loop()
done = threading.Event()
completed = {}


def on_job_completed(conn, dom, params, opaque):
    completed.update(params)
    done.set()


conn = libvirt.open(URI)
dom = conn.lookupByName(NAME)
out("before", state=dom.state(), autostart=dom.autostart(), lookup_id=dom.ID())
dom.setAutostart(1)
out("autostart", on=dom.autostart())
dom.setAutostart(0)
conn.domainEventRegisterAny(dom, libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, on_job_completed, None)
dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED | libvirt.VIR_DOMAIN_START_AUTODESTROY)
# [state, maxMem KiB, memory KiB, vcpus, cpu time]: the time varies
out("started", state=dom.state(), info=dom.info()[:4], active=dom.isActive(), blockjob=dom.blockJobInfo("sda", 0))
backup = f"<domainbackup><disks><disk name='sda' type='file'><target file='{DIR}/offline-sda.qcow2'/><driver type='qcow2'/></disk></disks></domainbackup>"
out("begin", ret=dom.backupBegin(backup, None, 0))
if not done.wait(40):
    out("failed", error="no job-completed event")
    sys.exit(1)
out("completed", success=completed.get("success"), operation=completed.get("operation"))
# no close(): the process ends and the connection with it; the domain must go too
out("exit")
