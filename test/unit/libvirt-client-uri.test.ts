// libvirt URIs as connect() reads them (pure): which socket, which name goes
// into CONNECT_OPEN, read-only; and the ssh command of qemu+ssh://.

import assert from 'node:assert/strict';
import test from 'node:test';
import { ErrorCode } from '../../src/errors.js';
import { sshCommand } from '../../src/libvirt/transport.js';
import { resolveURI, type ResolvedLibvirtURI } from '../../src/sdk/connect.js';

const resolve = (uri: string, readOnly = false, env: Record<string, string> = {}) => resolveURI(uri, { readOnly }, env, 1000) as ResolvedLibvirtURI;

test('qemu:///system and qemu+unix:///system: the system socket, read-only its -ro sibling with the RO flag', () => {
  for (const uri of ['qemu:///system', 'qemu+unix:///system']) {
    const rw = resolve(uri);
    assert.deepEqual([rw.kind, rw.openName, rw.readOnly, rw.transport], ['libvirt', 'qemu:///system', false, { type: 'unix', socket: '/run/libvirt/libvirt-sock' }]);
    const ro = resolve(uri, true);
    assert.deepEqual([ro.readOnly, ro.transport], [true, { type: 'unix', socket: '/run/libvirt/libvirt-sock-ro' }]);
  }
  assert.equal(resolve('qemu:///system?readonly').readOnly, true);
});

test('?socket= is taken as given (read-only: the -ro sibling of a libvirt-sock); the open name has no transport', () => {
  const r = resolve('qemu+unix:///system?socket=/tmp/x/libvirt-sock');
  assert.deepEqual([r.openName, r.transport], ['qemu:///system', { type: 'unix', socket: '/tmp/x/libvirt-sock' }]);
  assert.deepEqual(resolve('qemu:///system?socket=/tmp/x/libvirt-sock', true).transport, { type: 'unix', socket: '/tmp/x/libvirt-sock-ro' });
  assert.deepEqual(resolve('qemu:///system?socket=/tmp/other', true).transport, { type: 'unix', socket: '/tmp/other' });
  assert.throws(() => resolve('qemu:///system?socket=rel/sock'), (e: { code?: number }) => e.code === ErrorCode.INVALID_ARG);
});

test('qemu:///session: the per-user socket under $XDG_RUNTIME_DIR', () => {
  const r = resolve('qemu:///session', false, { XDG_RUNTIME_DIR: '/run/user/1000' });
  assert.deepEqual([r.openName, r.transport], ['qemu:///session', { type: 'unix', socket: '/run/user/1000/libvirt/libvirt-sock' }]);
  assert.throws(() => resolve('qemu:///session'), /needs \$XDG_RUNTIME_DIR/);
});

test('refused: other paths, a host without ssh; virtback URIs are unchanged', () => {
  assert.throws(() => resolve('qemu:///embed'), (e: { code?: number; message: string }) => e.code === ErrorCode.INVALID_ARG && /system and \/session/.test(e.message));
  assert.throws(() => resolve('qemu://host/system'), /qemu\+ssh:\/\//);
  assert.equal(resolveURI('virtback:///system', {}, {}, 0).kind, 'unix');
});

test('qemu+ssh://: user, host, port; netcat to an explicit socket, else virt-ssh-helper with netcat as fallback', () => {
  const r = resolve('qemu+ssh://backup@host.example:2222/system?socket=/run/x/libvirt-sock');
  assert.equal(r.transport.type, 'ssh');
  if (r.transport.type !== 'ssh') return;
  assert.deepEqual([r.transport.user, r.transport.host, r.transport.port, r.openName], ['backup', 'host.example', 2222, 'qemu:///system']);
  assert.deepEqual(sshCommand(r.transport), {
    command: 'ssh',
    args: ['-o', 'BatchMode=yes', '-e', 'none', '-p', '2222', '-l', 'backup', '--', 'host.example', 'sh', '-c', `'nc -U '\\''/run/x/libvirt-sock'\\'''`],
  });
  const d = resolve('qemu+ssh://h/system', true);
  if (d.transport.type !== 'ssh') return assert.fail('ssh');
  const remote = sshCommand(d.transport).args.at(-1)!;
  assert.match(remote, /virt-ssh-helper '\\''qemu:\/\/\/system'\\''/);
  assert.match(remote, /nc -U '\\''\/run\/libvirt\/libvirt-sock-ro'\\''/);
  assert.deepEqual(sshCommand(d.transport).args.slice(0, 6), ['-o', 'BatchMode=yes', '-e', 'none', '--', 'h']);
});

test("qemu+ssh:///session: the remote shell expands the remote user's $XDG_RUNTIME_DIR", () => {
  const r = resolve('qemu+ssh://h/session');
  if (r.transport.type !== 'ssh') return assert.fail('ssh');
  assert.match(sshCommand(r.transport).args.at(-1)!, /nc -U "\$XDG_RUNTIME_DIR"\/'\\''libvirt\/libvirt-sock'\\''/);
});
