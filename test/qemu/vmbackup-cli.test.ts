// `virtback backup` and `virtback restore` as commands, against virtbackd on
// real QEMU (the tiny guest): a result line and one log line per run; a
// `virtback backup` client killed with SIGKILL at random moments (a child
// process) leaves no half point, and the next run ends its orphaned pull job
// and succeeds; every point restores exact; `restore --define NEWNAME` defines
// a copy under a new identity that boots (its guest agent answers).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ChunkRepository } from '../../src/chunkstore/repo.js';
import { openFolderStore } from '../../src/chunkstore/object-store.js';
import { cliOnQemu } from '../helpers/cli-qemu.js';
import { makeTestDomain } from '../helpers/qemu-env.js';
import { tinyGuest, tinyGuestOsXml, waitForAgent } from '../helpers/tiny-guest.js';
import { DiskModel, run, write } from './backup-util.js';
import { checkpointName, repositoryId } from '../../src/vmbackup/index.js';
import { MiB, assertRestores, sha } from './vmbackup-helpers.js';
import { programArgs } from '../helpers/entry.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');


/**
 * `virtback backup` in a child process, SIGKILLed `ms` after its first progress
 * line (the pull job is running then), or after `ms` from its start when
 * `early`; resolves when it is gone (or ended by itself).
 */
function killedBackup(uri: string, name: string, repo: string, logFile: string, ms: number, early: boolean): Promise<{ killed: boolean; code: number | null }> {
  const args = [...programArgs('cli/virtback'), '-c', uri, 'backup', name, '--repo', repo, '--level', 'full', '--log-file', logFile];
  const child = spawn(process.execPath, args, { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
  let timer: NodeJS.Timeout | undefined;
  const arm = () => (timer ??= setTimeout(() => child.kill('SIGKILL'), ms));
  if (early) arm();
  child.stderr.on('data', (b: Buffer) => {
    if (b.toString().includes('sda: ')) arm();
  });
  return new Promise((resolve) => {
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ killed: signal === 'SIGKILL', code });
    });
  });
}

/**
 * The ExecStart lines of a systemd unit as argv lists, expanded as systemd
 * does: %i is the instance, ${VAR} one word, $VAR split at spaces; `env`
 * overrides the unit's Environment= defaults.
 */
async function unitCommands(file: string, instance: string, env: Record<string, string>): Promise<string[][]> {
  const vars: Record<string, string> = {};
  const lines = (await fs.readFile(file, 'utf8')).split('\n');
  for (const l of lines) {
    const m = /^Environment="?([A-Z_]+)=(.*?)"?$/.exec(l);
    if (m) vars[m[1]!] = m[2]!;
  }
  Object.assign(vars, env);
  return lines
    .filter((l) => l.startsWith('ExecStart='))
    .map((l) =>
      l
        .slice('ExecStart='.length)
        .split(' ')
        .flatMap((w) => {
          const braced = /^\$\{([A-Z_]+)\}$/.exec(w);
          if (braced) return [vars[braced[1]!]!];
          const bare = /^\$([A-Z_]+)$/.exec(w);
          if (bare) return vars[bare[1]!]!.split(' ');
          return [w.replaceAll('%i', instance)];
        }),
    );
}

test('virtback backup/restore through virtbackd: killed clients leave no half point, restore --define boots', { timeout: 600_000 }, async (t) => {
  const { env, cli, qemu: driver } = await cliOnQemu(t);
  const guest = await tinyGuest();
  const def = await makeTestDomain(env.dir, { name: 'vbk-cli', sizeMiB: 64, agent: true, osXml: tinyGuestOsXml(guest) });
  const xmlFile = path.join(env.dir, 'vbk-cli.xml');
  await fs.writeFile(xmlFile, def.xml);
  assert.equal((await cli.run('define', xmlFile)).code, 0);
  assert.equal((await cli.run('start', 'vbk-cli')).code, 0);
  const model = new DiskModel('sda', 64 * MiB);
  for (let i = 0; i < 12; i++) await write(driver(), def.uuid, model, i * 5 * MiB + (i % 3) * 65536, 2 * MiB, 0x20 + i);

  const repoDir = path.join(env.dir, 'repo');
  const repo = await ChunkRepository.init(await openFolderStore(repoDir));
  const logFile = path.join(env.dir, 'backup.log');
  let r = await cli.run('backup', 'vbk-cli', '--repo', repoDir, '--json', '--log-file', logFile);
  assert.equal(r.code, 0, r.stderr);
  const first = JSON.parse(r.stdout) as { pointId: string; level: string; reason: string; bytesRead: number; bytesNew: number; durationMs: number };
  assert.equal(first.level, 'full');
  assert.equal(first.reason, 'no previous point of this domain in this repository');
  assert.equal(first.bytesRead, 24 * MiB);
  assert.ok(first.bytesNew > 0 && first.bytesNew < first.bytesRead, 'patterns compress');
  const log = (await fs.readFile(logFile, 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.equal(log.length, 1, 'one log line per run');
  assert.deepEqual([log[0]!.msg, log[0]!.point, log[0]!.level, log[0]!.domain], ['backup complete', first.pointId, 'full', 'vbk-cli']);
  const snap = new Map([['sda', model.snapshot()]]);

  // clients killed at random moments: every point that exists is complete and exact
  const outcomes: string[] = [];
  const rounds = [[300, true], [0, false], [50, false], [150, false], [300, false]] as const;
  for (const [base, early] of rounds) {
    const ms = base + Math.floor(Math.random() * (early ? 2000 : 100));
    const k = await killedBackup(cli.uri, 'vbk-cli', repoDir, logFile, ms, early);
    outcomes.push(`${k.killed ? 'killed' : `exit ${k.code}`} ${ms} ms ${early ? 'after start' : 'into the read'}`);
  }
  t.diagnostic(`backup clients: ${outcomes.join(', ')}`);
  r = await cli.run('backup', 'vbk-cli', '--repo', repoDir, '--json', '--log-file', logFile);
  assert.equal(r.code, 0, r.stderr);
  const after = JSON.parse(r.stdout) as { pointId: string; level: string };
  assert.deepEqual(await driver().listJobIds(def.uuid), [], 'orphaned pull jobs were ended');
  const lines = (await fs.readFile(logFile, 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as { msg: string });
  assert.ok(lines.some((l) => l.msg === 'ended the pull job of a backup run that died'), 'a run killed mid-read left a job that the next run ended');
  const points = await repo.listPoints('vbk-cli');
  assert.ok(points.some((p) => p.id === after.pointId));
  for (const p of points) await assertRestores(repo, 'vbk-cli', p.id, snap, env.dir);
  const cps = (await driver().listAllCheckpoints(def.uuid, 0)).filter((n) => n.startsWith('vb-'));
  assert.equal(cps.length, 1, `one checkpoint of this repository is left: ${cps.join(', ')}`);

  // prune --checkpoints: older points go, and so do this repository's checkpoints no kept point needs (not another's)
  const stale = checkpointName(repositoryId(repo.config), new Date(0));
  const foreign = 'vb-00000000-19700101T000000000Z';
  for (const n of [stale, foreign]) await driver().checkpointCreateXML(def.uuid, `<domaincheckpoint><name>${n}</name></domaincheckpoint>`, 0);
  r = await cli.run('prune', 'vbk-cli', '--repo', repoDir, '--keep-last', '1', '--checkpoints', '--json');
  assert.equal(r.code, 0, r.stderr);
  const pruned = JSON.parse(r.stdout) as { keep: { id: string }[]; remove: string[]; checkpointsDeleted: string[] };
  assert.deepEqual(pruned.keep.map((k) => k.id), [after.pointId]);
  assert.equal(pruned.remove.length, points.length - 1);
  assert.deepEqual(pruned.checkpointsDeleted, [stale]);
  assert.deepEqual((await driver().listAllCheckpoints(def.uuid, 0)).sort(), [...cps, foreign].sort());

  // the timer's service: its commands, as systemd would expand them with this test's settings, all succeed
  const unit = path.join(ROOT, 'contrib/systemd/virtback-backup@.service');
  const cmds = await unitCommands(unit, 'vbk-cli', { VIRTBACK_REPO: repoDir, VIRTBACK_LOG: logFile, VIRTBACK_KEEP: '--keep-last 2' });
  assert.deepEqual(cmds.map((c) => c.slice(0, 2).join(' ')), ['/usr/local/bin/virtback backup', '/usr/local/bin/virtback prune', '/usr/local/bin/virtback gc']);
  for (const c of cmds) {
    r = await cli.run(...c.slice(1));
    assert.equal(r.code, 0, `${c.join(' ')}: ${r.stderr}`);
  }
  const unitLog = (await fs.readFile(logFile, 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as { msg: string; level: string; point: string });
  assert.deepEqual([unitLog.at(-1)!.msg, unitLog.at(-1)!.level], ['backup complete', 'inc']);
  const kept = await repo.listPoints('vbk-cli');
  assert.deepEqual(kept.map((p) => p.id), [after.pointId, unitLog.at(-1)!.point]);

  // restore under a new name: a second domain with its own identity that boots from the restored disk
  const out = path.join(env.dir, 'restored');
  r = await cli.run('restore', 'vbk-cli', '--repo', repoDir, '--output-dir', out, '--define', 'vbk-copy', '--json');
  assert.equal(r.code, 0, r.stderr);
  const res = JSON.parse(r.stdout) as { pointId: string; disks: { target: string; path: string }[]; defined: { name: string; uuid: string } };
  assert.equal(res.pointId, kept[1]!.id);
  assert.equal(res.defined.name, 'vbk-copy');
  assert.notEqual(res.defined.uuid, def.uuid);
  const image = res.disks[0]!.path;
  assert.equal(image, path.join(out, 'vbk-copy-sda.qcow2'));
  const raw = `${image}.raw`;
  await run('qemu-img', ['convert', '-O', 'raw', image, raw]);
  assert.equal(sha(await fs.readFile(raw)), sha(snap.get('sda')!));
  const copyXml = (await cli.run('dumpxml', 'vbk-copy')).stdout;
  assert.match(copyXml, new RegExp(`<source file='${image}'/>`));
  assert.doesNotMatch(copyXml, new RegExp(def.disks[0]!.path));
  assert.equal((await cli.run('destroy', 'vbk-cli')).code, 0);
  r = await cli.run('start', 'vbk-copy');
  assert.equal(r.code, 0, r.stderr);
  await waitForAgent(driver(), res.defined.uuid);
  assert.equal((await cli.run('destroy', 'vbk-copy')).code, 0);
});
