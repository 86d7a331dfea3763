// `virtback xml-validate`: run as a real process (exit codes,
// output), plus in-process calls of main() for the other cases.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { REPO_ROOT, fixturePath } from './xml-helpers.js';
import { programArgs } from '../helpers/entry.js';
import { runMain } from '../helpers/cli.js';


function run(...args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [...programArgs('cli/virtback'), ...args], { cwd: REPO_ROOT, encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/**
 * main() in this process, its stderr captured (test/helpers/cli.ts: the test
 * runner's own reports pass through; a stub of process.stdout.write that
 * swallowed them made this file's other tests vanish from the run's count).
 */
async function runInProcess(...args: string[]): Promise<{ code: number; stderr: string }> {
  const { code, stderr } = await runMain(args);
  return { code, stderr };
}

let tmp = '';
before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'virtback-xml-cli-'));
});
after(() => {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

test('process: valid -> exit 0, silent; invalid -> exit 1 with error:; bad usage -> exit 2', () => {
  const ok = run('xml-validate', fixturePath('backup/in/pull-tcp.xml'));
  assert.deepEqual(ok, { code: 0, stdout: '', stderr: '' });

  const bad = run('xml-validate', fixturePath('checkpoint/in/path-name-invalid.xml'));
  assert.equal(bad.code, 1);
  assert.equal(bad.stdout, '');
  assert.match(bad.stderr, /^error: XML document failed to validate against schema: Unable to validate doc against domaincheckpoint\.rng: .*name/);

  const usage = run('xml-validate', fixturePath('backup/in/bare.xml'), 'snapshot');
  assert.equal(usage.code, 2);
  assert.match(usage.stderr, /invalid for argument 'type'/);
});

test('in process: type guessed from the root element, or given', async () => {
  for (const f of ['backup/out/push-targets.xml', 'checkpoint/out/redefined-with-domain.xml', 'checkpoint/in/bare.xml']) {
    assert.deepEqual(await runInProcess('xml-validate', fixturePath(f)), { code: 0, stderr: '' }, f);
  }
  const dom = path.join(tmp, 'dom.xml');
  fs.writeFileSync(dom, "<domain type='qemu'><name>x</name><memory>1024</memory></domain>");
  assert.deepEqual(await runInProcess('xml-validate', dom, 'domain'), { code: 0, stderr: '' });

  const wrong = await runInProcess('xml-validate', dom, 'domainbackup');
  assert.deepEqual(wrong, { code: 1, stderr: "error: expecting root element of 'domainbackup', not 'domain'\n" });
});

test('in process: semantic errors, unknown roots, unreadable and malformed files', async () => {
  const f = path.join(tmp, 'x.xml');
  fs.writeFileSync(f, "<domain type='xen'><name>x</name><memory>1024</memory></domain>");
  assert.deepEqual(await runInProcess('xml-validate', f), { code: 1, stderr: 'error: unexpected domain type xen, expecting one of these: qemu, kvm\n' });

  fs.writeFileSync(f, '<network/>');
  const unknown = await runInProcess('xml-validate', f);
  assert.equal(unknown.code, 1);
  assert.match(unknown.stderr, /^error: cannot tell the document type from root element 'network'/);

  fs.writeFileSync(f, '<domainbackup>\n  <disks>\n</domainbackup>');
  const malformed = await runInProcess('xml-validate', f);
  assert.equal(malformed.code, 1);
  assert.match(malformed.stderr, /^error: malformed XML document at line 3/);

  const missing = await runInProcess('xml-validate', path.join(tmp, 'nope.xml'));
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /^error: cannot read '.*nope\.xml': ENOENT/);

  assert.equal((await runInProcess('xml-validate')).code, 2);
  assert.equal((await runInProcess('no-such-command')).code, 2);
  assert.equal((await runInProcess('xml-validate', f, '--bogus')).code, 2);
  assert.equal((await runInProcess('--help')).code, 0);
});
