// Captures libvirt's RPC wire bytes as the golden frames the XDR codec's tests
// decode: a private real libvirtd (test/helpers/private-libvirtd.ts), a
// logging proxy in front of its socket, and unmodified virsh and
// python3-libvirt talking through the proxy. Run by hand, never by the suite:
//
//   node --import tsx scripts/libvirt-capture.ts [OUTDIR]   (default test/fixtures/libvirt-wire)
//
// Writes one JSON file per scenario, { scenario, command, frames: [{ conn,
// dir: "c2s"|"s2c", hex }] } — `hex` is a whole frame, its 4-byte length word
// included; `conn` numbers the scenario's connections (most have one) — and a
// README.md saying how they were captured. Repeated keepalive PING/PONG frames
// are dropped (the first of each per connection is kept).

import { execFile } from 'node:child_process';
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { smallDomainXml, startPrivateLibvirtd, type PrivateLibvirtd } from '../test/helpers/private-libvirtd.js';

const run = promisify(execFile);

const REMOTE_PROGRAM = 0x20008086;
const KEEPALIVE_PROGRAM = 0x6b656570;
const PROC_EVENT_REGISTER_ANY = 316;
const MSG_REPLY = 1;

interface Frame {
  conn: number;
  dir: 'c2s' | 's2c';
  hex: string;
}

interface Scenario {
  scenario: string;
  command: string;
  frames: Frame[];
  connections: number;
}

/** Splits one direction of a byte stream into frames by their length word. */
class FrameSplitter {
  private buf = Buffer.alloc(0);
  constructor(private readonly onFrame: (frame: Buffer) => void) {}

  push(chunk: Buffer): void {
    this.buf = Buffer.concat([this.buf, chunk]);
    while (this.buf.length >= 4) {
      const len = this.buf.readUInt32BE(0);
      if (len < 4 || this.buf.length < len) return;
      this.onFrame(this.buf.subarray(0, len));
      this.buf = this.buf.subarray(len);
    }
  }
}

/**
 * A unix-socket pass-through in front of libvirtd that records every frame.
 * A connection belongs to the scenario that was current when it was accepted.
 */
class RecordingProxy {
  readonly scenarios: Scenario[] = [];
  private current: Scenario | undefined;
  private readonly server: net.Server;

  constructor(readonly socket: string, private readonly upstream: string) {
    this.server = net.createServer((client) => this.accept(client));
  }

  listen(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.socket, () => resolve());
    });
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  begin(scenario: string, command: string): Scenario {
    this.current = { scenario, command, frames: [], connections: 0 };
    this.scenarios.push(this.current);
    return this.current;
  }

  private accept(client: net.Socket): void {
    const sc = this.current;
    if (!sc) throw new Error('a connection outside any scenario');
    const conn = sc.connections++;
    const server = net.connect(this.upstream);
    const seenKeepalive = new Set<string>();
    const record = (dir: Frame['dir']) => (frame: Buffer) => {
      if (frame.length >= 16 && frame.readUInt32BE(4) === KEEPALIVE_PROGRAM) {
        const key = `${dir}:${frame.readInt32BE(12)}`;
        if (seenKeepalive.has(key)) return;
        seenKeepalive.add(key);
      }
      sc.frames.push({ conn, dir, hex: frame.toString('hex') });
    };
    const up = new FrameSplitter(record('c2s'));
    const down = new FrameSplitter(record('s2c'));
    client.on('data', (d) => { up.push(d); server.write(d); });
    server.on('data', (d) => { down.push(d); client.write(d); });
    client.on('end', () => server.end());
    server.on('end', () => client.end());
    client.on('error', () => server.destroy());
    server.on('error', () => client.destroy());
  }
}

const header = (hex: string) => {
  const b = Buffer.from(hex, 'hex');
  return { prog: b.readUInt32BE(4), proc: b.readInt32BE(12), type: b.readUInt32BE(16) };
};

/** true once libvirtd has answered an event registration in `sc`. */
function eventRegistered(sc: Scenario): boolean {
  return sc.frames.some((f) => {
    const h = header(f.hex);
    return f.dir === 's2c' && h.prog === REMOTE_PROGRAM && h.proc === PROC_EVENT_REGISTER_ANY && h.type === MSG_REPLY;
  });
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function until(what: string, fn: () => boolean | Promise<boolean>, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await fn())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

// ---------------------------------------------------------------- the session

interface Session {
  lv: PrivateLibvirtd;
  proxy: RecordingProxy;
  proxyUri: string;
  name: string;
  work: string;
}

/** One recorded scenario: `virsh -c <proxy uri> ...args`; virsh failing is expected when `fails`. */
async function virsh(s: Session, scenario: string, args: string[], fails = false): Promise<string> {
  s.proxy.begin(scenario, `virsh -c 'qemu+unix:///system?socket=<proxy>' ${args.join(' ')}`);
  try {
    const { stdout } = await run('virsh', ['-c', s.proxyUri, ...args], { timeout: 60_000 });
    if (fails) throw new Error(`${scenario}: virsh was expected to fail`);
    return stdout;
  } catch (e) {
    if (!fails) throw e;
    return (e as { stderr?: string }).stderr ?? '';
  }
}

const pushXml = (target: string) => `<domainbackup mode='push'>
  <disks><disk name='vda' type='file'><target file='${target}'/><driver type='qcow2'/></disk></disks>
</domainbackup>
`;

const pullXml = (socket: string, scratch: string) => `<domainbackup mode='pull'>
  <server transport='unix' socket='${socket}'/>
  <disks><disk name='vda' type='file'><scratch file='${scratch}'/></disk></disks>
</domainbackup>
`;

async function domainScenarios(s: Session): Promise<void> {
  const { lv, name, work } = s;
  const disk = path.join(work, 'disk.qcow2');
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', disk, '32M']);
  const xml = path.join(work, 'domain.xml');
  await writeFile(xml, smallDomainXml(name, disk, { uuid: '5d1c2b9e-6f4a-4c8e-9b0a-3e7f1a2b4c6d' }));
  await virsh(s, 'version', ['version']);
  await virsh(s, 'define', ['define', xml]);
  await virsh(s, 'start', ['start', name]);
  await virsh(s, 'list-all', ['list', '--all']);
  await virsh(s, 'domstate', ['domstate', name]);
  await virsh(s, 'dumpxml', ['dumpxml', name]);
  await lv.virsh('qemu-monitor-command', name, '--hmp',
    'qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend "write -P 0xab 0 1M"');
  await virsh(s, 'checkpoint-create-as', ['checkpoint-create-as', name, 'cp1', '--description', 'first']);
  await lv.virsh('checkpoint-create-as', name, 'cp2');
  await virsh(s, 'checkpoint-list', ['checkpoint-list', name]);
  await virsh(s, 'checkpoint-list-tree', ['checkpoint-list', name, '--tree']);
  await virsh(s, 'checkpoint-dumpxml', ['checkpoint-dumpxml', name, 'cp1']);
  await virsh(s, 'checkpoint-parent', ['checkpoint-parent', name, 'cp2']);
  await virsh(s, 'checkpoint-info', ['checkpoint-info', name, 'cp2']);
  await virsh(s, 'unknown-domain', ['dominfo', 'no-such-domain'], true);
  // idle for 3 s with a 1 s keepalive interval: virsh PINGs, libvirtd PONGs (no event: virsh exits 1)
  await virsh(s, 'keepalive', ['-k', '1', 'event', name, '--event', 'lifecycle', '--timeout', '3'], true);
}

async function jobScenarios(s: Session): Promise<void> {
  const { lv, name, work } = s;
  const push = path.join(work, 'push.xml');
  await writeFile(push, pushXml(path.join(work, 'full.qcow2')));
  await virsh(s, 'backup-begin-push', ['backup-begin', name, '--backupxml', push]);
  await until('the push backup to complete', async () =>
    /Job type:\s+Completed/.test(await lv.virsh('domjobinfo', name, '--completed', '--keep-completed')));
  await virsh(s, 'domjobinfo-completed', ['domjobinfo', name, '--completed']);

  const pull = path.join(work, 'pull.xml');
  await writeFile(pull, pullXml(path.join(work, 'nbd.sock'), path.join(work, 'scratch.qcow2')));
  await virsh(s, 'backup-begin-pull', ['backup-begin', name, '--backupxml', pull]);
  await virsh(s, 'backup-dumpxml', ['backup-dumpxml', name]);
  await virsh(s, 'domjobinfo', ['domjobinfo', name]);
  // the listener's connection stays in its scenario; domjobabort gets its own
  const events = virsh(s, 'event-job-completed', ['event', name, '--event', 'job-completed', '--timeout', '30']);
  const listening = s.proxy.scenarios[s.proxy.scenarios.length - 1]!;
  await until('virsh event to register', () => eventRegistered(listening));
  await virsh(s, 'domjobabort', ['domjobabort', name]);
  const got = await events;
  if (!/event 'job-completed'/.test(got)) throw new Error(`virsh event saw no job-completed: ${got}`);
}

// python3-libvirt is Debian's: a python3 earlier on PATH (pyenv) does not have it.
const DEBIAN_PYTHON = '/usr/bin/python3';

// The python3-libvirt client: the calls and the event loop an SDK user's script makes.
const PYTHON_CLIENT = `
import sys, libvirt
uri, name, backup_xml = sys.argv[1:4]
libvirt.virEventRegisterDefaultImpl()
conn = libvirt.open(uri)
print("domains", sorted(d.name() for d in conn.listAllDomains(0)))
dom = conn.lookupByName(name)
print("jobStats", dom.jobStats())
done = []
def on_job_completed(conn, dom, params, opaque):
    print("job-completed", dom.name(), params.get("success"))
    done.append(params)
cb = conn.domainEventRegisterAny(dom, libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, on_job_completed, None)
dom.backupBegin(backup_xml, None, 0)
while not done:
    libvirt.virEventRunDefaultImpl()
conn.domainEventDeregisterAny(cb)
conn.close()
`;

async function pythonScenario(s: Session): Promise<void> {
  const backupXml = pushXml(path.join(s.work, 'python-full.qcow2'));
  s.proxy.begin('python-libvirt', 'python3 (open, listAllDomains, jobStats, domainEventRegisterAny JOB_COMPLETED, backupBegin, virEventRunDefaultImpl)');
  const { stdout } = await run(DEBIAN_PYTHON, ['-c', PYTHON_CLIENT, s.proxyUri, s.name, backupXml], { timeout: 60_000 });
  if (!/job-completed/.test(stdout)) throw new Error(`python3-libvirt saw no job-completed: ${stdout}`);
}

async function teardownScenarios(s: Session): Promise<void> {
  await virsh(s, 'destroy', ['destroy', s.name]);
  await virsh(s, 'undefine', ['undefine', s.name, '--checkpoints-metadata']);
}

// ---------------------------------------------------------------- output

function readme(libvirtVersion: string, qemuVersion: string, scenarios: Scenario[]): string {
  const rows = scenarios.map((sc) => `| \`${sc.scenario}.json\` | ${sc.frames.length} | \`${sc.command}\` |`);
  return `# Golden libvirt wire frames

Captured from a real libvirtd by \`scripts/libvirt-capture.ts\`
(\`node --import tsx scripts/libvirt-capture.ts test/fixtures/libvirt-wire\`): a private
libvirtd (\`test/helpers/private-libvirtd.ts\`), a logging unix-socket proxy in front of
its socket, and unmodified virsh and python3-libvirt connected to
\`qemu+unix:///system?socket=<proxy>\`.

- libvirt ${libvirtVersion} (libvirtd, virsh, python3-libvirt from Debian 12), QEMU ${qemuVersion} (TCG)
- captured ${new Date().toISOString().slice(0, 10)}
- domain \`capture\` (uuid 5d1c2b9e-6f4a-4c8e-9b0a-3e7f1a2b4c6d), a 32 MiB qcow2 virtio disk;
  paths are in a throwaway /tmp/vblv-* dir

Each file: \`{ scenario, command, frames: [{ conn, dir, hex }] }\`. \`hex\` is one whole
frame, its 4-byte length word included; \`dir\` is \`c2s\` (client to libvirtd) or \`s2c\`;
\`conn\` numbers the scenario's connections (0 unless it made several). Frames are in the
order the proxy saw them. Repeated keepalive PING/PONG frames are dropped (the first of
each per connection is kept). Setup steps that are not scenarios (the guest write, the
second checkpoint cp2, waiting for the push job) went straight to libvirtd, unrecorded.

The scenarios, in the order they ran against one domain:

| file | frames | command |
| --- | --- | --- |
${rows.join('\n')}

\`python-libvirt.json\` is this script (\`/usr/bin/python3 -c SCRIPT URI capture BACKUP_XML\`):

\`\`\`python${PYTHON_CLIENT}\`\`\`
`;
}

async function writeFixtures(outDir: string, scenarios: Scenario[]): Promise<void> {
  await mkdir(outDir, { recursive: true });
  for (const f of await readdir(outDir)) if (f.endsWith('.json')) await rm(path.join(outDir, f));
  const host = os.hostname();
  for (const sc of scenarios) {
    const json = JSON.stringify({ scenario: sc.scenario, command: sc.command, frames: sc.frames }, null, 1);
    if (host.length > 2 && json.includes(Buffer.from(host).toString('hex'))) {
      console.warn(`${sc.scenario}: the frames hold this host's name (${host})`);
    }
    await writeFile(path.join(outDir, `${sc.scenario}.json`), `${json}\n`);
  }
  const libvirt = (await run('libvirtd', ['--version'])).stdout.trim().split(' ').pop() ?? '?';
  const qemu = /version (\S+)/.exec((await run('qemu-system-x86_64', ['--version'])).stdout)?.[1] ?? '?';
  await writeFile(path.join(outDir, 'README.md'), readme(libvirt, qemu, scenarios));
}

async function main(): Promise<void> {
  const outDir = path.resolve(process.argv[2] ?? 'test/fixtures/libvirt-wire');
  const lv = await startPrivateLibvirtd();
  try {
    const work = path.join(lv.dir, 'capture');
    await mkdir(work);
    const proxy = new RecordingProxy(path.join(lv.dir, 'proxy.sock'), lv.socket);
    await proxy.listen();
    const s: Session = { lv, proxy, proxyUri: `qemu+unix:///system?socket=${proxy.socket}`, name: 'capture', work };
    await domainScenarios(s);
    await jobScenarios(s);
    await pythonScenario(s);
    await teardownScenarios(s);
    await proxy.close();
    await writeFixtures(outDir, proxy.scenarios);
    const total = proxy.scenarios.reduce((n, sc) => n + sc.frames.length, 0);
    console.log(`${proxy.scenarios.length} scenarios, ${total} frames written to ${outDir}`);
  } finally {
    await lv.stop();
  }
}

await main();
