// Unmodified Debian virsh drives virtbackd through its libvirt socket
// (issue 12): a whole backup workflow on a 2-disk domain ending in undefine
// with checkpoint metadata; read-only refusals on libvirt-sock-ro; the
// lifecycle commands backup tools use (paused start, autodestroy). Every text
// asserted is what virsh printed against a real libvirtd 9.0. Guest data is
// written with `qemu-monitor-command --hmp` qemu-io and mirrored in a
// DiskModel (backup-util.ts), so every backup is compared with the disk as it
// was at the backup's instant: the full push with qemu-img compare, the
// incremental push rebased onto the full, the pull read with nbdcopy and its
// dirty bitmap with nbdinfo --map.
//
// Push jobs start rate-limited (virtbackd --backup-speed-limit) so that
// domjobinfo sees them running and writes land while they copy; the test then
// lifts the limit with QMP block-job-set-speed through qemu-monitor-command.

import assert from 'node:assert/strict';
import { readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import test, { type TestContext } from 'node:test';
import { LIBVIRT_VERSION } from '../../src/libvirt/semantics.js';
import { qdevIdForDisk } from '../../src/qemu/command-line.js';
import { parseDomainXML } from '../../src/xml/domain.js';
import {
  libvirtUri,
  parseEvents,
  parseFields,
  parseTable,
  virsh,
  virshBackground,
  virshFails,
  virshMissing,
  virshOk,
  waitOutput,
} from '../helpers/libvirt-clients.js';
import { exists, makeTestDomain, qemuProcessesFor, waitFor, type TestDomain } from '../helpers/qemu-env.js';
import { assertSameContent, DiskModel, K64, MiB, run } from './backup-util.js';
import { makeDaemonEnv, type DaemonEnv } from './daemon-util.js';

const SIZE = 16 * MiB;
const skip = virshMissing();

/** A domain driven through virsh, with a model of each disk's guest-visible bytes. */
class VirshDomain {
  readonly models: DiskModel[];
  private readonly qdev: Map<string, string>;

  constructor(readonly uri: string, readonly td: TestDomain) {
    this.models = td.disks.map((d) => new DiskModel(d.target, SIZE));
    const def = parseDomainXML(td.xml);
    this.qdev = new Map(td.disks.map((d) => [d.target, qdevIdForDisk(def, d.target)]));
  }

  get name(): string {
    return this.td.name;
  }

  /** A guest write through `virsh qemu-monitor-command --hmp` (qemu-io), mirrored in the model. */
  async write(m: DiskModel, off: number, len: number, pattern: number): Promise<void> {
    const cmd = `qemu-io -d ${this.qdev.get(m.target)} "write -P 0x${pattern.toString(16)} ${off} ${len}"`;
    const out = await virshOk(this.uri, 'qemu-monitor-command', this.name, '--hmp', cmd);
    // QEMU answers a successful qemu-io with its output or, through libvirt, with nothing
    assert.ok(out.trim() === '' || /wrote \d+\/\d+ bytes/.test(out), `${cmd}: ${out}`);
    m.apply(off, len, pattern);
  }

  /** QMP through `virsh qemu-monitor-command` (JSON mode); the reply's `return`. */
  async qmp<T>(execute: string, args?: object): Promise<T> {
    const out = await virshOk(this.uri, 'qemu-monitor-command', this.name, JSON.stringify(args ? { execute, arguments: args } : { execute }));
    const reply = JSON.parse(out) as { return?: T; error?: { desc: string } };
    assert.equal(reply.error, undefined, `${execute}: ${out}`);
    return reply.return as T;
  }

  /** Lift the rate limit of every running block job: the push copies at full speed from here. */
  async unthrottle(): Promise<void> {
    for (const j of await this.qmp<{ id: string }[]>('query-jobs')) {
      await this.qmp('block-job-set-speed', { device: j.id, speed: 0 }).catch(() => {}); // may have finished
    }
  }

  /** Bitmap names per disk format node, as QEMU holds them. */
  async bitmaps(): Promise<string[]> {
    const nodes = await this.qmp<{ 'node-name': string; 'dirty-bitmaps'?: { name: string }[] }[]>('query-named-block-nodes', { flat: true });
    return [...new Set(nodes.flatMap((n) => (n['dirty-bitmaps'] ?? []).map((b) => b.name)))].sort();
  }

  state(): Promise<string> {
    return virshOk(this.uri, 'domstate', this.name).then((s) => s.trim());
  }
}

function pushXml(d: VirshDomain, dir: string, prefix: string, incremental: string | null): string {
  const disks = d.td.disks
    .map((x) => `<disk name='${x.target}' type='file'><target file='${path.join(dir, `${prefix}-${x.target}.qcow2`)}'/><driver type='qcow2'/></disk>`)
    .join('');
  return `<domainbackup mode='push'>${incremental ? `<incremental>${incremental}</incremental>` : ''}<disks>${disks}</disks></domainbackup>`;
}

/** Clusters an NBD export's dirty-bitmap context marks dirty (nbdinfo --map). */
async function dirtyClusters(nbdUri: string, bitmap: string): Promise<number[]> {
  const { stdout } = await run('nbdinfo', ['--json', `--map=qemu:dirty-bitmap:${bitmap}`, nbdUri]);
  const out: number[] = [];
  for (const e of JSON.parse(stdout) as { offset: number; length: number; type: number }[]) {
    if ((e.type & 1) === 0) continue;
    for (let o = e.offset; o < e.offset + e.length; o += K64) out.push(o / K64);
  }
  return out;
}

/** Clusters that hold data in the image itself, not in its backing chain (qemu-img map). */
async function ownClusters(image: string): Promise<number[]> {
  const { stdout } = await run('qemu-img', ['map', '-U', '--output=json', image]);
  const out: number[] = [];
  for (const e of JSON.parse(stdout) as { start: number; length: number; depth: number; data: boolean }[]) {
    if (e.depth !== 0 || !e.data) continue;
    for (let o = e.start; o < e.start + e.length; o += K64) out.push(o / K64);
  }
  return out;
}

async function defineAndStart(env: DaemonEnv, uri: string, opts: { start?: boolean; name?: string } = {}): Promise<VirshDomain> {
  const td = await makeTestDomain(env.dir, { disks: 2, sizeMiB: SIZE / MiB, ...(opts.name ? { name: opts.name } : {}) });
  const file = path.join(env.dir, `${td.name}.xml`);
  await writeFile(file, td.xml);
  assert.equal((await virshOk(uri, 'define', file)).trim(), `Domain '${td.name}' defined from ${file}`);
  const d = new VirshDomain(uri, td);
  if (opts.start !== false) assert.equal((await virshOk(uri, 'start', td.name)).trim(), `Domain '${td.name}' started`);
  return d;
}

function listAll(uri: string): Promise<Record<string, string>[]> {
  return virshOk(uri, 'list', '--all').then(parseTable);
}

function checkpointNames(uri: string, dom: string): Promise<string[]> {
  return virshOk(uri, 'checkpoint-list', dom, '--name').then((s) => s.split('\n').map((l) => l.trim()).filter((l) => l !== '').sort());
}

async function startEvents(t: TestContext, uri: string, dom: string) {
  // -k 1 -K 2: virsh pings after 1 s of silence and gives up after 3 s without a PONG, so the
  // watcher only lives through the workflow (seconds of silence while pushes copy) if the server answers
  const ev = virshBackground(uri, ['-k', '1', '-K', '2', 'event', '--domain', dom, '--event', 'job-completed', '--loop', '--timeout', '80']);
  t.after(() => ev.stop());
  return ev;
}

/** virsh dominfo of a running domain: libvirt's fields from DOMAIN_GET_INFO, IS_PERSISTENT, GET_AUTOSTART. */
async function dominfo(uri: string, d: VirshDomain): Promise<void> {
  const id = (await virshOk(uri, 'domid', d.name)).trim();
  const info = parseFields(await virshOk(uri, 'dominfo', d.name));
  assert.equal(info.get('Name'), d.name);
  assert.equal(info.get('UUID'), d.td.uuid);
  assert.equal(info.get('Id'), id);
  assert.equal(info.get('State'), 'running');
  assert.equal(info.get('CPU(s)'), '1');
  assert.equal(info.get('Max memory'), '131072 KiB');
  assert.equal(info.get('Used memory'), '131072 KiB');
  assert.equal(info.get('Persistent'), 'yes');
  assert.equal(info.get('Autostart'), 'disable', 'GET_AUTOSTART answers (virsh prints nothing when it fails)');
}

/** define/start/list/dumpxml/domblklist/domid/domuuid of a fresh running domain. */
async function inspect(env: DaemonEnv, uri: string, d: VirshDomain): Promise<void> {
  const rows = await listAll(uri);
  const row = rows.find((r) => r.Name === d.name);
  assert.ok(row, `list --all shows ${d.name}: ${JSON.stringify(rows)}`);
  assert.equal(row.State, 'running');
  assert.match(row.Id!, /^\d+$/);
  assert.equal((await virshOk(uri, 'domid', d.name)).trim(), row.Id);
  assert.equal((await virshOk(uri, 'domuuid', d.name)).trim(), d.td.uuid);
  assert.equal(await d.state(), 'running');

  const live = await virshOk(uri, 'dumpxml', d.name);
  // libvirt's live XML also carries id='N'; virtback's QEMU driver does not write it (noted in the report)
  assert.match(live, /<domain type=.qemu./);
  assert.match(live, new RegExp(`<uuid>${d.td.uuid}</uuid>`));
  for (const x of d.td.disks) assert.ok(live.includes(`<source file='${x.path}'`) || live.includes(`<source file="${x.path}"`), `${x.path} in ${live}`);
  const inactive = await virshOk(uri, 'dumpxml', d.name, '--inactive');
  assert.match(inactive, /<domain type=.qemu.>/, 'no id in the inactive definition');
  assert.match(inactive, new RegExp(`<name>${d.name}</name>`));

  assert.deepEqual(parseTable(await virshOk(uri, 'domblklist', d.name)), d.td.disks.map((x) => ({ Target: x.target, Source: x.path })));
  // the transport-less form of the URI reaches the same socket
  const plain = libvirtUri(env.runDir, { form: 'qemu' });
  assert.ok((await listAll(plain)).some((r) => r.Name === d.name && r.State === 'running'));
}

/**
 * A push backup (full or incremental) begun throttled; once it completed,
 * returns the disks at its instant and the clusters written since the previous checkpoint.
 */
async function push(d: VirshDomain, env: DaemonEnv, events: ReturnType<typeof virshBackground>, n: number, prefix: string, incremental: string | null, checkpoint: string): Promise<{ expected: Buffer[]; dirty: number[][] }> {
  const bx = path.join(env.dir, `${prefix}-backup.xml`);
  const cx = path.join(env.dir, `${prefix}-checkpoint.xml`);
  await writeFile(bx, pushXml(d, env.dir, prefix, incremental));
  await writeFile(cx, `<domaincheckpoint><name>${checkpoint}</name><description>${prefix} push</description></domaincheckpoint>`);
  const expected = d.models.map((m) => m.snapshot());
  const dirty = d.models.map((m) => [...m.dirty].sort((a, b) => a - b));
  assert.equal((await virshOk(d.uri, 'backup-begin', d.name, '--backupxml', bx, '--checkpointxml', cx)).trim(), 'Backup started');
  // the checkpoint's bitmaps start at the instant: what follows is dirty since it
  for (const m of d.models) m.markClean();

  const running = parseFields(await virshOk(d.uri, 'domjobinfo', d.name));
  assert.equal(running.get('Job type'), 'Unbounded');
  assert.equal(running.get('Operation'), 'Backup');
  // virsh shows the disk_* stats as "File …"
  assert.match(running.get('File total') ?? '', /^\d+\.\d{3} [KMG]?i?B/, `a push reports its size: ${[...running.keys()].join(', ')}`);
  // guest writes after the instant, while the job copies: not in this backup
  for (const [i, m] of d.models.entries()) await d.write(m, (2 * n + i) * MiB, K64 * 3, 0xe0 + n);

  await d.unthrottle();
  await waitOutput(events, (out) => parseEvents(out).filter((e) => e.event === 'job-completed').length >= n, `job-completed event ${n}`);
  const ev = parseEvents(events.stdout()).filter((e) => e.event === 'job-completed')[n - 1]!;
  assert.equal(ev.domain, d.name);
  assert.equal(ev.params.get('operation'), '9');
  assert.equal(ev.params.get('success'), '1');
  assert.match(ev.params.get('disk_total') ?? '', /^[1-9]\d*$/);
  assert.equal(ev.params.get('disk_remaining'), '0');

  const done = parseFields(await virshOk(d.uri, 'domjobinfo', d.name, '--completed'));
  assert.equal(done.get('Job type'), 'Completed');
  assert.equal(done.get('Operation'), 'Backup');
  assert.equal(parseFields(await virshOk(d.uri, 'domjobinfo', d.name)).get('Job type'), 'None');
  return { expected, dirty };
}

/** Checkpoint listings and queries: c1 -> c2 (backups) -> c3 (checkpoint-create-as). */
async function checkpoints(d: VirshDomain): Promise<void> {
  const uri = d.uri;
  assert.equal((await virshOk(uri, 'checkpoint-create-as', d.name, '--name', 'c3', '--description', 'after the incremental')).trim(),
    'Domain checkpoint c3 created');
  for (const m of d.models) m.markClean();
  const table = parseTable(await virshOk(uri, 'checkpoint-list', d.name));
  assert.deepEqual(table.map((r) => r.Name), ['c1', 'c2', 'c3']);
  for (const r of table) assert.match(r['Creation Time']!, /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}$/);
  // the tree needs GET_PARENT's error 103 for the root
  const tree = (await virshOk(uri, 'checkpoint-list', d.name, '--tree')).split('\n').map((l) => l.trimEnd()).filter((l) => l !== '');
  assert.deepEqual(tree, ['c1', '  |', '  +- c2', '      |', '      +- c3']);
  assert.equal((await virshOk(uri, 'checkpoint-parent', d.name, 'c3')).trim(), 'c2');
  await virshFails(uri, ['checkpoint-parent', d.name, 'c1'], /error: checkpoint 'c1' has no parent/);
  await virshFails(uri, ['checkpoint-dumpxml', d.name, 'nope'], /error: Domain checkpoint not found: .*nope/);

  const info = parseFields(await virshOk(uri, 'checkpoint-info', d.name, 'c2'));
  assert.deepEqual([info.get('Name'), info.get('Domain'), info.get('Parent'), info.get('Children'), info.get('Descendants')],
    ['c2', d.name, 'c1', '1', '1']);

  const full = await virshOk(uri, 'checkpoint-dumpxml', d.name, 'c3');
  assert.match(full, /<name>c3<\/name>/);
  assert.match(full, /<description>after the incremental<\/description>/);
  assert.match(full, /<parent>\s*<name>c2<\/name>\s*<\/parent>/);
  assert.match(full, new RegExp(`<domain[ >][\\s\\S]*<uuid>${d.td.uuid}</uuid>`));
  // guest writes since c3: --size reports exactly the dirty bytes per disk
  await d.write(d.models[0]!, 5 * MiB, 3 * K64, 0x51);
  await d.write(d.models[0]!, 9 * MiB + K64, K64, 0x52);
  await d.write(d.models[1]!, 12 * MiB, 2 * K64, 0x53);
  const sized = await virshOk(uri, 'checkpoint-dumpxml', d.name, 'c3', '--size', '--no-domain');
  assert.doesNotMatch(sized, /<domain[ >]/);
  for (const m of d.models) {
    const attr = new RegExp(`<disk name=.${m.target}. checkpoint=.bitmap. bitmap=.c3. size=.(\\d+).`).exec(sized);
    assert.ok(attr, `size of ${m.target} in ${sized}`);
    assert.equal(Number(attr[1]), m.dirty.size * K64, `dirty bytes of ${m.target} since c3`);
  }
}

/** A pull backup since c3: the dirty map is exactly what was written since c3, the export is the disk at the instant. */
async function pull(d: VirshDomain, env: DaemonEnv, events: ReturnType<typeof virshBackground>): Promise<void> {
  const sock = path.join(env.dir, 'nbd.sock');
  const disks = d.td.disks.map((x) => `<disk name='${x.target}' type='file'><scratch file='${path.join(env.dir, `scratch-${x.target}.qcow2`)}'/></disk>`).join('');
  const bx = path.join(env.dir, 'pull.xml');
  await writeFile(bx, `<domainbackup mode='pull'><incremental>c3</incremental><server transport='unix' socket='${sock}'/><disks>${disks}</disks></domainbackup>`);
  const expected = d.models.map((m) => m.snapshot());
  const dirty = d.models.map((m) => [...m.dirty].sort((a, b) => a - b));
  assert.equal((await virshOk(d.uri, 'backup-begin', d.name, '--backupxml', bx)).trim(), 'Backup started');
  // after the instant: neither in the export nor in its bitmap
  await d.write(d.models[0]!, 5 * MiB, K64, 0x61);
  await d.write(d.models[1]!, 0, 4 * K64, 0x62);

  const xml = await virshOk(d.uri, 'backup-dumpxml', d.name);
  assert.match(xml, /<domainbackup mode=.pull./);
  assert.match(xml, /<incremental>c3<\/incremental>/);
  assert.ok(xml.includes(sock), `the server socket in ${xml}`);
  for (const x of d.td.disks) {
    assert.match(xml, new RegExp(`<disk name=.${x.target}. backup=.yes. type=.file. backupmode=.incremental. incremental=.c3. exportname=.${x.target}. exportbitmap=.backup-${x.target}.`));
  }
  const info = parseFields(await virshOk(d.uri, 'domjobinfo', d.name));
  assert.equal(info.get('Job type'), 'Unbounded');
  assert.equal(info.get('Operation'), 'Backup');
  assert.ok(info.has('Temporary disk space total'), `pull stats: ${[...info.keys()].join(', ')}`);

  for (const [i, x] of d.td.disks.entries()) {
    const nbd = `nbd+unix:///${x.target}?socket=${sock}`;
    assert.deepEqual(await dirtyClusters(nbd, `backup-${x.target}`), dirty[i], `dirty map of ${x.target}`);
    const raw = path.join(env.dir, `pull-${x.target}.raw`);
    await run('nbdcopy', [nbd, raw]);
    await assertSameContent(expected[i]!, raw, path.join(env.dir, 'expected.raw'));
  }
  assert.equal((await virshOk(d.uri, 'domjobabort', d.name)).trim(), '');
  assert.equal(parseFields(await virshOk(d.uri, 'domjobinfo', d.name)).get('Job type'), 'None');
  assert.equal(parseFields(await virshOk(d.uri, 'domjobinfo', d.name, '--completed')).get('Job type'), 'Completed');
  await virshFails(d.uri, ['domjobabort', d.name], /^error: Requested operation is not valid: no job is active on the domain$/m);
  await waitOutput(events, (out) => parseEvents(out).filter((e) => e.event === 'job-completed').length >= 3, 'job-completed of the pull');
  assert.equal(await exists(sock), false, 'the NBD socket is gone with the job');
  for (const x of d.td.disks) assert.equal(await exists(path.join(env.dir, `scratch-${x.target}.qcow2`)), false, 'scratch deleted');
}

test('virsh: define, start, inspect, checkpoints, push full + incremental with events, pull with its dirty map, abort, delete, undefine', { skip, timeout: 90_000 }, async (t) => {
  const env = await makeDaemonEnv(t);
  await env.start(['--backup-speed-limit', String(256 * 1024)]);
  const uri = libvirtUri(env.runDir);
  const d = await defineAndStart(env, uri, { start: false });
  assert.equal((await listAll(uri)).find((r) => r.Name === d.name)?.State, 'shut off');
  assert.equal((await listAll(uri)).find((r) => r.Name === d.name)?.Id, '-');
  assert.equal(await d.state(), 'shut off');
  assert.equal((await virshOk(uri, 'start', d.name)).trim(), `Domain '${d.name}' started`);
  await inspect(env, uri, d);

  const events = await startEvents(t, uri, d.name);
  for (const [i, m] of d.models.entries()) for (let k = 0; k < 4; k++) await d.write(m, k * 4 * MiB, MiB / 2, 0x10 + 4 * i + k);

  const full = await push(d, env, events, 1, 'full', null, 'c1');
  for (const [i, x] of d.td.disks.entries()) await assertSameContent(full.expected[i]!, path.join(env.dir, `full-${x.target}.qcow2`), path.join(env.dir, 'expected.raw'));
  // the same targets again: libvirt's error for an existing store, and no job
  await virshFails(uri, ['backup-begin', d.name, '--backupxml', path.join(env.dir, 'full-backup.xml')],
    new RegExp(`^error: invalid argument: store '${path.join(env.dir, 'full-sda.qcow2')}' for backup of 'sda' exists$`, 'm'));
  assert.equal(parseFields(await virshOk(uri, 'domjobinfo', d.name)).get('Job type'), 'None');

  for (const [i, m] of d.models.entries()) for (let k = 0; k < 6; k++) await d.write(m, (k * 5 + 1) * 512 * 1024, K64, 0x30 + 6 * i + k);
  const inc = await push(d, env, events, 2, 'inc', 'c1', 'c2');
  for (const [i, x] of d.td.disks.entries()) {
    // the incremental holds exactly what changed since c1; on top of the full it is the disk at its instant
    const incFile = path.join(env.dir, `inc-${x.target}.qcow2`);
    assert.deepEqual(await ownClusters(incFile), inc.dirty[i], `clusters copied into ${incFile}`);
    await run('qemu-img', ['rebase', '-u', '-f', 'qcow2', '-F', 'qcow2', '-b', path.join(env.dir, `full-${x.target}.qcow2`), incFile]);
    await assertSameContent(inc.expected[i]!, incFile, path.join(env.dir, 'expected.raw'));
  }

  await checkpoints(d);
  await pull(d, env, events);
  assert.deepEqual(await d.bitmaps(), ['c1', 'c2', 'c3']);

  // delete: a leaf; metadata only (QEMU keeps the bitmap, the child moves up); a subtree
  assert.equal((await virshOk(uri, 'checkpoint-delete', d.name, 'c3')).trim(), 'Domain checkpoint c3 deleted');
  assert.deepEqual(await checkpointNames(uri, d.name), ['c1', 'c2']);
  assert.deepEqual(await d.bitmaps(), ['c1', 'c2']);
  await virshOk(uri, 'checkpoint-create-as', d.name, '--name', 'c4');
  assert.equal((await virshOk(uri, 'checkpoint-delete', d.name, 'c2', '--metadata')).trim(), 'Domain checkpoint c2 deleted');
  assert.deepEqual(await checkpointNames(uri, d.name), ['c1', 'c4']);
  assert.deepEqual(await d.bitmaps(), ['c1', 'c2', 'c4']);
  assert.equal((await virshOk(uri, 'checkpoint-parent', d.name, 'c4')).trim(), 'c1');
  assert.equal((await virshOk(uri, 'checkpoint-delete', d.name, 'c1', '--children')).trim(), 'Domain checkpoint c1 deleted');
  assert.deepEqual(await checkpointNames(uri, d.name), []);
  assert.deepEqual(parseTable(await virshOk(uri, 'checkpoint-list', d.name)), []);
  assert.deepEqual(await d.bitmaps(), ['c2'], "c2's bitmap outlives its metadata, as in libvirt");

  // undefine of an inactive domain that has checkpoints needs --checkpoints-metadata
  await virshOk(uri, 'checkpoint-create-as', d.name, '--name', 'c5');
  assert.equal((await virshOk(uri, 'destroy', d.name)).trim(), `Domain '${d.name}' destroyed`);
  assert.equal(await d.state(), 'shut off');
  await virshFails(uri, ['undefine', d.name], /error: Requested operation is not valid: cannot delete inactive domain with 1 checkpoints/);
  assert.ok((await listAll(uri)).some((r) => r.Name === d.name), 'still defined');
  assert.equal((await virshOk(uri, 'undefine', d.name, '--checkpoints-metadata')).trim(), `Domain '${d.name}' has been undefined`);
  assert.equal((await listAll(uri)).some((r) => r.Name === d.name), false);
  await virshFails(uri, ['domstate', d.name], new RegExp(`error: failed to get domain '${d.name}'`));
  assert.equal(await exists(path.join(env.stateDir, 'domains', `${d.td.uuid}.xml`)), false, 'definition removed');
  assert.deepEqual(await readdir(path.join(env.stateDir, 'checkpoints', d.td.uuid)).catch(() => []), [], 'checkpoint metadata removed');

  await events.stop();
  assert.equal(parseEvents(events.stdout()).filter((e) => e.event === 'job-completed').length, 3, events.stdout());
  assert.equal(events.stderr(), '', 'the watcher stayed connected (keepalive answered)');
  assert.deepEqual(await qemuProcessesFor(env.dir), [], 'no QEMU left');
});

/** Something each mutating command would change, and how to see that it did not. */
async function snapshotState(uri: string, d: VirshDomain, other: string): Promise<string> {
  return JSON.stringify({
    list: await listAll(uri),
    checkpoints: await checkpointNames(uri, d.name),
    job: parseFields(await virshOk(uri, 'domjobinfo', d.name)).get('Job type'),
    other,
  });
}

test('virsh on libvirt-sock-ro: every mutating command is refused and changes nothing; -r reads work; dominfo, version', { skip, timeout: 90_000 }, async (t) => {
  const env = await makeDaemonEnv(t);
  await env.start();
  const uri = libvirtUri(env.runDir);
  const ro = libvirtUri(env.runDir, { ro: true });
  const d = await defineAndStart(env, uri);
  const idle = await defineAndStart(env, uri, { start: false });
  await virshOk(uri, 'checkpoint-create-as', d.name, '--name', 'c1');
  const other = await makeTestDomain(env.dir, { disks: 1, sizeMiB: 8 });
  const otherFile = path.join(env.dir, 'other.xml');
  await writeFile(otherFile, other.xml);
  const bx = path.join(env.dir, 'ro-backup.xml');
  await writeFile(bx, pushXml(d, env.dir, 'ro', null));
  const before = await snapshotState(uri, d, other.name);

  const denied: [string[], string][] = [
    [['define', otherFile], 'virDomainDefineXML'],
    [['start', idle.name], 'virDomainCreate'],
    [['destroy', d.name], 'virDomainDestroy'],
    [['checkpoint-create-as', d.name, '--name', 'c2'], 'virDomainCheckpointCreateXML'],
    [['checkpoint-delete', d.name, 'c1'], 'virDomainCheckpointDelete'],
    [['backup-begin', d.name, '--backupxml', bx], 'virDomainBackupBegin'],
    [['domjobabort', d.name], 'virDomainAbortJob'],
    [['undefine', idle.name], 'virDomainUndefine'],
    [['suspend', d.name], 'virDomainSuspend'],
    [['resume', d.name], 'virDomainResume'],
    [['autostart', d.name], 'virDomainSetAutostart'],
  ];
  for (const [args, api] of denied) {
    await virshFails(ro, args, new RegExp(`^error: operation forbidden: read only access prevents ${api}`, 'm'));
  }
  assert.equal(await snapshotState(uri, d, other.name), before);
  assert.equal(await exists(path.join(env.dir, 'ro-sda.qcow2')), false, 'no backup target created');
  assert.equal((await listAll(uri)).some((r) => r.Name === other.name), false);

  // reads work on the read-only socket, with -r as well as without
  for (const readOnly of [true, false]) {
    const rows = parseTable((await virsh(ro, ['list', '--all'], { readOnly })).stdout);
    assert.deepEqual(rows.map((r) => [r.Name, r.State]).sort(), [[d.name, 'running'], [idle.name, 'shut off']].sort());
    const r = await virsh(ro, ['checkpoint-list', d.name, '--name'], { readOnly });
    assert.equal(r.stdout.trim(), 'c1', r.stderr);
  }
  const x = await virsh(ro, ['dumpxml', d.name], { readOnly: true });
  assert.match(x.stdout, new RegExp(`<uuid>${d.td.uuid}</uuid>`), x.stderr);
  const plainRo = libvirtUri(env.runDir, { ro: true, form: 'qemu' });
  assert.equal((await virsh(plainRo, ['domstate', d.name], { readOnly: true })).stdout.trim(), 'running');

  // version: QEMU's version as the hypervisor's, and the libvirt release virtbackd implements
  const { stdout: qv } = await run('qemu-system-x86_64', ['--version']);
  const qemuVersion = /version (\d+\.\d+\.\d+)/.exec(qv)![1]!;
  const v = parseFields(await virshOk(libvirtUri(env.runDir, { form: 'qemu' }), 'version', '--daemon'));
  assert.equal(v.get('Running hypervisor'), `QEMU ${qemuVersion}`);
  assert.equal(v.get('Running against daemon'), `${LIBVIRT_VERSION.major}.${LIBVIRT_VERSION.minor}.${LIBVIRT_VERSION.micro}`);
  assert.match(v.get('Using API') ?? '', /^QEMU \d/);
  // what tools read before they define: the guest kind virtbackd runs
  const caps = await virshOk(libvirtUri(env.runDir), 'capabilities');
  assert.match(caps, /<os_type>hvm<\/os_type>[^]*<machine>q35<\/machine>[^]*<domain type='qemu'\/>/);

  await dominfo(uri, d);
});

test('virsh: start --paused, resume, suspend, autostart, blockjob --info, destroy --graceful, start --autodestroy', { skip, timeout: 60_000 }, async (t) => {
  const env = await makeDaemonEnv(t);
  await env.start();
  const uri = libvirtUri(env.runDir);
  const d = await defineAndStart(env, uri, { start: false });
  const reason = () => virshOk(uri, 'domstate', d.name, '--reason').then((s) => s.trim());
  const lifecycle = virshBackground(uri, ['event', '--domain', d.name, '--event', 'lifecycle', '--loop', '--timeout', '50']);
  t.after(() => lifecycle.stop());
  // registered once it prints the event of a redefinition (define again until it does)
  await waitFor(async () => {
    await virshOk(uri, 'define', path.join(env.dir, `${d.name}.xml`));
    return parseEvents(lifecycle.stdout()).some((e) => e.event === 'lifecycle' && e.detail === 'Defined Updated');
  }, 'the lifecycle watcher registered');
  assert.equal(await reason(), 'shut off (unknown)');
  assert.equal((await virshOk(uri, 'start', d.name, '--paused')).trim(), `Domain '${d.name}' started`);
  assert.equal(await reason(), 'paused (user)');
  assert.equal((await virshOk(uri, 'resume', d.name)).trim(), `Domain '${d.name}' resumed`);
  assert.equal(await reason(), 'running (unpaused)');
  assert.equal((await virshOk(uri, 'suspend', d.name)).trim(), `Domain '${d.name}' suspended`);
  assert.equal(await reason(), 'paused (user)');

  assert.equal((await virshOk(uri, 'autostart', d.name)).trim(), `Domain '${d.name}' marked as autostarted`);
  assert.equal(parseFields(await virshOk(uri, 'dominfo', d.name)).get('Autostart'), 'enable');
  assert.deepEqual(parseTable(await virshOk(uri, 'list', '--all', '--autostart')).map((r) => r.Name), [d.name]);
  assert.equal((await virshOk(uri, 'autostart', d.name, '--disable')).trim(), `Domain '${d.name}' unmarked as autostarted`);
  assert.deepEqual(parseTable(await virshOk(uri, 'list', '--all', '--autostart')), []);

  assert.equal((await virshOk(uri, 'blockjob', d.name, 'sda', '--info')).trim(), 'No current block job for sda');
  assert.equal((await virshOk(uri, 'destroy', d.name, '--graceful')).trim(), `Domain '${d.name}' destroyed`);
  assert.equal(await reason(), 'shut off (destroyed)');
  // an autodestroy domain dies with the connection that started it: here the virsh process itself
  assert.equal((await virshOk(uri, 'start', d.name, '--autodestroy')).trim(), `Domain '${d.name}' started`);
  await waitFor(async () => (await reason()) === 'shut off (destroyed)', 'the autodestroy domain shut off');
  await waitFor(async () => (await qemuProcessesFor(env.dir)).length === 0, 'its QEMU gone');
  assert.ok((await listAll(uri)).some((r) => r.Name === d.name), 'still defined');

  const want = ['Started Booted', 'Resumed Unpaused', 'Suspended Paused', 'Stopped Destroyed', 'Started Booted', 'Stopped Destroyed'];
  const seen = (out: string) => parseEvents(out).filter((e) => e.event === 'lifecycle').map((e) => e.detail);
  await waitOutput(lifecycle, (out) => isSubsequence(want, seen(out)), `lifecycle events ${want.join(', ')}`);
});

function isSubsequence(want: string[], got: string[]): boolean {
  let i = 0;
  for (const g of got) if (g === want[i]) i++;
  return i === want.length;
}
