// The run directory holds the daemon's sockets: it is created private for a
// session daemon, and one that another user made (the /tmp fallback can be
// pre-created by anyone) or that others may enter is refused, by
// prepareRunDir and by virtbackd itself.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { prepareRunDir, sessionRunDir } from '../../src/daemon/paths.js';
import { isVirError } from '../../src/errors.js';
import { programArgs } from '../helpers/entry.js';

const root = path.resolve(import.meta.dirname, '..', '..');
const me = process.getuid!();
const NOBODY = 65534;

function tmp(t: TestContext): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'virtback-rundir-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

const refused = (re: RegExp) => (e: unknown) => isVirError(e) && e.code === 55 && re.test(e.message);

test('without XDG_RUNTIME_DIR the session run dir is /tmp/virtback-UID', () => {
  assert.equal(sessionRunDir({}, 1000), path.join(os.tmpdir(), 'virtback-1000'));
  assert.equal(sessionRunDir({ XDG_RUNTIME_DIR: '/run/user/1000' }, 1000), '/run/user/1000/virtback');
});

test('a session run dir is created 0700; an existing one must be ours and private', (t) => {
  const dir = tmp(t);
  const fresh = path.join(dir, 'virtback-1000');
  prepareRunDir(fresh, me, { private: true });
  assert.equal(fs.statSync(fresh).mode & 0o777, 0o700);
  prepareRunDir(fresh, me, { private: true }); // again: fine

  const open = path.join(dir, 'open');
  fs.mkdirSync(open, { mode: 0o755 });
  fs.chmodSync(open, 0o755);
  assert.throws(() => prepareRunDir(open, me, { private: true }), refused(/has mode 0755: others may enter it/));

  const theirs = path.join(dir, 'theirs');
  fs.mkdirSync(theirs, { mode: 0o700 });
  fs.chownSync(theirs, NOBODY, NOBODY);
  assert.throws(() => prepareRunDir(theirs, me, { private: true }), refused(new RegExp(`is owned by uid ${NOBODY}, not by us \\(uid ${me}\\)`)));

  const link = path.join(dir, 'link');
  fs.symlinkSync(fresh, link);
  assert.throws(() => prepareRunDir(link, me, { private: true }), refused(/is not a directory/));
});

test('the system run dir may be 0755 (read-only socket for everyone) but not writable by others', (t) => {
  const dir = tmp(t);
  const sys = path.join(dir, 'run-virtback');
  prepareRunDir(sys, me, { private: false });
  assert.equal(fs.statSync(sys).mode & 0o777, 0o755);
  fs.chmodSync(sys, 0o777);
  assert.throws(() => prepareRunDir(sys, me, { private: false }), refused(/has mode 0777: others may write into it/));
});

test('virtbackd refuses a run dir another user created, and puts no socket in it', (t) => {
  const dir = tmp(t);
  const run = path.join(dir, 'run');
  fs.mkdirSync(run, { mode: 0o700 });
  fs.chownSync(run, NOBODY, NOBODY);
  const r = spawnSync(process.execPath, [...programArgs('cli/virtbackd'), '--driver', 'test', '--state-dir', path.join(dir, 'state'), '--run-dir', run], {
    cwd: root,
    encoding: 'utf8',
    timeout: 30_000,
  });
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, new RegExp(`run directory '${run}' is owned by uid ${NOBODY}, not by us`));
  assert.deepEqual(fs.readdirSync(run), []);
});
