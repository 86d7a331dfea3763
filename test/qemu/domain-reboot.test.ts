// A guest's reboot as libvirt reports it, against the tiny guest under
// virtbackd: VIR_DOMAIN_EVENT_ID_REBOOT (every QEMU RESET: the guest's own
// reboot and the fake reboot's system_reset) reaches the SDK over virtbackd's
// socket, `virsh event --event reboot` and libvirt-python's
// domainEventRegisterAny over its libvirt socket (procedure 319).
// domain-reboot-restart.test.ts: a fake reboot across a daemon restart.

import assert from 'node:assert/strict';
import path from 'node:path';
import test from 'node:test';
import type { RebootEvent } from '../../src/api/driver.js';
import { waitFor } from '../helpers/qemu-env.js';
import { guestBoots } from '../helpers/tiny-guest.js';
import {
  libvirtPython, libvirtUri, parseEvents, runPythonJson, virsh, virshBackground, virshMissing, virshOk, waitOutput,
} from '../helpers/libvirt-clients.js';
import { makeDaemonEnv, virshDefinedGuest } from './daemon-util.js';

const script = path.resolve(import.meta.dirname, '..', 'python', 'reboot_event.py');

const whyNot = virshMissing() ?? (libvirtPython() === null ? 'python3-libvirt is not installed' : undefined);

test('the reboot event: SDK, virsh event --event reboot and libvirt-python see every reset', { skip: whyNot, timeout: 600_000 }, async (t) => {
  const env = await makeDaemonEnv(t);
  await env.start();
  const uri = libvirtUri(env.runDir);
  const { name, uuid } = await virshDefinedGuest(env, { agent: true });
  const conn = await env.connect();
  const sdk: RebootEvent[] = [];
  conn.on('reboot', (ev) => sdk.push(ev));
  const watcher = virshBackground(uri, ['event', name, '--event', 'reboot', '--loop']);
  t.after(() => watcher.stop());
  await virshOk(uri, 'start', name);
  await waitFor(async () => (await guestBoots(env.runDir, uuid)) === 1, 'the first boot', 120_000);
  assert.equal(sdk.length, 0, 'booting is no reboot');

  // the guest's own reboot (agent guest-shutdown mode=reboot: QEMU resets it, RESET guest=true);
  // qemu-ga may not answer yet right after READY
  const agentReboot = await waitFor(async () => {
    const r = await virsh(uri, ['reboot', name, '--mode', 'agent']);
    return r.code === 0 ? r.stdout : undefined;
  }, 'an agent reboot', 60_000);
  assert.equal(agentReboot.trim(), `Domain '${name}' is being rebooted`);
  await waitFor(async () => (await guestBoots(env.runDir, uuid)) === 2, 'the second boot', 120_000);
  await waitFor(() => sdk.length >= 1 || undefined, 'the SDK reboot event', 10_000);
  const afterAgent = sdk.length;
  const out = await waitOutput(watcher, (o) => parseEvents(o).length >= afterAgent, 'virsh\'s reboot event');
  assert.deepEqual(parseEvents(out)[0], { event: 'reboot', domain: name, detail: '', params: new Map() });

  // libvirt-python registers VIR_DOMAIN_EVENT_ID_REBOOT and asks for an ACPI (fake) reboot: the driver's system_reset
  const r = await runPythonJson(script, [uri, name], 150_000);
  assert.equal(r.code, 0, `reboot_event.py failed: ${r.stderr}`);
  assert.deepEqual(r.lines.map((l) => l.step), ['registered', 'rebooting', 'reboot']);
  assert.equal(r.lines[2]!.domain, name);
  await waitFor(async () => (await guestBoots(env.runDir, uuid)) === 3, 'the third boot', 120_000);
  assert.ok(sdk.length > afterAgent, 'the fake reboot\'s reset is a reboot event too');

  // one event per QEMU RESET, the same on every client (SeaBIOS may reset a warm-rebooted guest once more: libvirt reports that too)
  await virshOk(uri, 'destroy', name);
  const total = sdk.length;
  await waitOutput(watcher, (o) => parseEvents(o).length >= total, 'virsh\'s reboot events');
  assert.deepEqual(sdk.map((e) => [e.type, e.domain.name]), Array.from({ length: total }, () => ['reboot', name]));
  assert.deepEqual(parseEvents(watcher.stdout()).map((e) => e.event), Array.from({ length: total }, () => 'reboot'), 'destroy is no reboot');
});
