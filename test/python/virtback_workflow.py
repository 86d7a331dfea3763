#!/usr/bin/python3
"""A backup workflow through python3-libvirt, as a backup tool built on the
bindings would run it against virtbackd's libvirt socket.

Usage: virtback_workflow.py URI CONFIG_JSON
CONFIG_JSON: {"xml": domain XML file, "name": domain name, "qdevs": {target: qdev id},
              "dir": folder for backup targets, "nbd": unix socket path for the pull}

Prints one JSON object per line; test/qemu/libvirt-python.test.ts asserts them.
"write" lines are guest writes (HMP qemu-io) in the order they happened and
"instant" lines mark a backup's instant, so the test knows each disk's bytes
at every instant. A failure prints {"step": "failed", ...} and exits 1.
"""

import json
import sys
import threading
import time
import traceback

import libvirt
import libvirt_qemu

from clientlib import out, start_event_loop

URI = sys.argv[1]
CFG = json.loads(sys.argv[2])
TIMEOUT = 40


def typed(params):
    """typed params as {name: [python type name, value]}: the test checks the types"""
    return {k: [type(v).__name__, v] for k, v in params.items()}


start_event_loop()

events = []
events_changed = threading.Condition()


def on_job_completed(conn, dom, params, opaque):
    with events_changed:
        events.append(("job-completed", dom.name(), params))
        events_changed.notify_all()


def on_lifecycle(conn, dom, event, detail, opaque):
    with events_changed:
        events.append(("lifecycle", dom.name(), [event, detail]))
        events_changed.notify_all()


def wait_events(kind, done, what):
    """the events of `kind` once done(them) holds"""
    end = time.monotonic() + TIMEOUT
    with events_changed:
        while True:
            got = [e for e in events if e[0] == kind]
            if done(got):
                return got
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{what}: got {got}")
            events_changed.wait(left)


def nth_job_completed(n):
    return wait_events("job-completed", lambda got: len(got) >= n, f"job-completed event {n}")[n - 1]


def has_subsequence(seq, sub):
    it = iter(seq)
    return all(any(x == y for x in it) for y in sub)


def error_of(fn):
    """the libvirtError fn raises, as (code, domain, message); fails when it raises none"""
    try:
        fn()
    except libvirt.libvirtError as e:
        return {"code": e.get_error_code(), "domain": e.get_error_domain(), "message": e.get_error_message()}
    raise AssertionError(f"{fn} raised no libvirtError")


def write(dom, target, offset, length, pattern):
    cmd = f'qemu-io -d {CFG["qdevs"][target]} "write -P {pattern:#x} {offset} {length}"'
    reply = libvirt_qemu.qemuMonitorCommand(dom, cmd, libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
    # QEMU answers a successful qemu-io with its output or, through libvirt, with nothing
    if reply.strip() and "wrote" not in reply:
        raise RuntimeError(f"{cmd}: {reply}")
    out("write", disk=target, offset=offset, length=length, pattern=pattern)


def push_xml(prefix, incremental):
    disks = "".join(
        f"<disk name='{t}' type='file'><target file='{CFG['dir']}/{prefix}-{t}.qcow2'/><driver type='qcow2'/></disk>"
        for t in CFG["qdevs"])
    inc = f"<incremental>{incremental}</incremental>" if incremental else ""
    return f"<domainbackup mode='push'>{inc}<disks>{disks}</disks></domainbackup>"


def push(conn, dom, prefix, incremental, checkpoint, n):
    ret = dom.backupBegin(push_xml(prefix, incremental), f"<domaincheckpoint><name>{checkpoint}</name></domaincheckpoint>", 0)
    out("instant", backup=prefix, ret=ret)
    # after the instant: not in this backup
    write(dom, "sda", 15 * 1024 * 1024, 65536, 0xd0 + n)
    (_, name, params) = nth_job_completed(n)
    out("job-completed", backup=prefix, domain=name, params=typed(params))
    stats = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    out("job-stats-completed", backup=prefix, params=typed(stats))


def workflow(conn):
    out("connection", libVersion=conn.getLibVersion(), hostname=conn.getHostname(), type=conn.getType(),
        alive=conn.isAlive())
    out("error", what="unknown domain", **error_of(lambda: conn.lookupByName("no-such-domain")))

    with open(CFG["xml"]) as f:
        dom = conn.defineXML(f.read())
    conn.domainEventRegisterAny(dom, libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, on_job_completed, None)
    conn.domainEventRegisterAny(dom, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, on_lifecycle, None)
    dom.create()
    dom = conn.lookupByName(CFG["name"])
    out("domain", name=dom.name(), uuid=dom.UUIDString(), id=dom.ID(), state=dom.state(), active=dom.isActive())
    out("domains", list=sorted([d.name(), d.state()[0]] for d in conn.listAllDomains(0)))

    for i, t in enumerate(CFG["qdevs"]):
        for k in range(4):
            write(dom, t, k * 3 * 1024 * 1024, 512 * 1024, 0x10 + 4 * i + k)
    push(conn, dom, "full", None, "c1", 1)

    for i, t in enumerate(CFG["qdevs"]):
        for k in range(5):
            write(dom, t, (k * 5 + 1) * 256 * 1024, 65536, 0x40 + 5 * i + k)
    push(conn, dom, "inc", "c1", "c2", 2)

    cp = dom.checkpointCreateXML("<domaincheckpoint><name>c3</name><description>from python</description></domaincheckpoint>", 0)
    out("checkpoint", name=cp.getName(), parent=cp.getParent().getName(), xml=cp.getXMLDesc(libvirt.VIR_DOMAIN_CHECKPOINT_XML_NO_DOMAIN))
    out("checkpoints", names=sorted(c.getName() for c in dom.listAllCheckpoints(0)))
    out("error", what="unknown checkpoint", **error_of(lambda: dom.checkpointLookupByName("nope")))
    out("error", what="parent of the root", **error_of(lambda: dom.checkpointLookupByName("c1").getParent()))
    out("error", what="fsFreeze without an agent", **error_of(dom.fsFreeze))

    disks = "".join(f"<disk name='{t}' type='file'><scratch file='{CFG['dir']}/scratch-{t}.qcow2'/></disk>" for t in CFG["qdevs"])
    ret = dom.backupBegin(f"<domainbackup mode='pull'><server transport='unix' socket='{CFG['nbd']}'/><disks>{disks}</disks></domainbackup>", None, 0)
    out("instant", backup="pull", ret=ret)
    out("pull", xml=dom.backupGetXMLDesc(0), stats=typed(dom.jobStats(0)))
    out("abort", ret=dom.abortJob())
    (_, name, params) = nth_job_completed(3)
    out("job-completed", backup="pull", domain=name, params=typed(params))
    out("job-stats-completed", backup="pull", params=typed(dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)))
    out("error", what="abort without a job", **error_of(dom.abortJob))

    dom.destroy()
    dom.create()
    # started/booted (first create), stopped/destroyed, started/booted: libvirt's numbers
    want = [[2, 0], [5, 1], [2, 0]]
    lifecycle = wait_events("lifecycle", lambda got: has_subsequence([e[2] for e in got], want), f"lifecycle events {want}")
    out("lifecycle", events=[e[2] for e in lifecycle])
    dom.destroy()
    out("undefine", ret=dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA))
    out("domains", list=sorted([d.name(), d.state()[0]] for d in conn.listAllDomains(0)))


def main():
    conn = libvirt.open(URI)
    # as long-running tools do: ping after 1 s of silence, drop the connection after 2 unanswered pings
    conn.setKeepAlive(1, 2)
    try:
        workflow(conn)
    except Exception as e:  # the test prints the traceback with the failed step
        out("failed", error=repr(e), traceback=traceback.format_exc())
        sys.exit(1)
    out("done")


main()
