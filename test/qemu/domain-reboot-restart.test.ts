// libvirt's fake reboot surviving a daemon restart, against the tiny guest
// under virtbackd: an ACPI reboot in progress when virtbackd is killed still
// ends in a boot. The status file says so, and the restarted daemon resets
// the guest QEMU paused at its power-off.

import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import test from 'node:test';
import { QmpClient } from '../../src/qemu/qmp/client.js';
import { waitFor } from '../helpers/qemu-env.js';
import { guestBoots } from '../helpers/tiny-guest.js';
import { libvirtUri, virshMissing, virshOk } from '../helpers/libvirt-clients.js';
import { makeDaemonEnv, stopVirtbackd, virshDefinedGuest } from './daemon-util.js';

test('an ACPI reboot survives a virtbackd restart: the guest powers off while no daemon runs and boots again', { skip: virshMissing(), timeout: 600_000 }, async (t) => {
  const env = await makeDaemonEnv(t);
  const first = await env.start();
  const uri = libvirtUri(env.runDir);
  const { name, uuid } = await virshDefinedGuest(env, { agent: false, cmdline: 'tg.acpi_delay=5' });
  await virshOk(uri, 'start', name);
  await waitFor(async () => (await guestBoots(env.runDir, uuid)) === 1, 'the first boot', 120_000);

  // the power button is pressed, and virtbackd dies before the guest has powered off
  await virshOk(uri, 'reboot', name, '--mode', 'acpi');
  await stopVirtbackd(first, 'SIGKILL');
  const status = JSON.parse(await readFile(path.join(env.stateDir, 'status', `${uuid}.json`), 'utf8')) as { extra: Record<string, unknown> };
  assert.equal(status.extra.fakeReboot, true, 'the status file records the reboot in progress');

  // no daemon: QEMU pauses at the guest's power-off (shutdown action pause) and waits
  // (the button is pressed again every 30 s: a TCG guest on a loaded machine once sat on the first press for 2 minutes)
  const qmp = await QmpClient.connect(path.join(env.runDir, uuid, 'qmp.sock'), { timeoutMs: 10_000 });
  let pressed = Date.now();
  try {
    await waitFor(async () => {
      if (((await qmp.executeRaw('query-status')) as { status: string }).status === 'shutdown') return true;
      if (Date.now() - pressed > 30_000) [pressed] = [Date.now(), await qmp.executeRaw('system_powerdown')];
      return undefined;
    }, 'QEMU paused at the guest\'s power-off', 180_000);
  } finally {
    await qmp.close();
  }
  assert.equal(await guestBoots(env.runDir, uuid), 1, 'no boot while no daemon runs');

  // the restarted daemon finishes the reboot
  await env.start();
  await waitFor(async () => (await guestBoots(env.runDir, uuid)) === 2, 'the boot after the restart', 120_000);
  assert.equal((await virshOk(uri, 'domstate', name, '--reason')).trim(), 'running (booted)');
  const after = JSON.parse(await readFile(path.join(env.stateDir, 'status', `${uuid}.json`), 'utf8')) as { extra: Record<string, unknown> };
  assert.equal(after.extra.fakeReboot, undefined, 'the reboot is over');

  // the next power-off is a real one again
  await virshOk(uri, 'shutdown', name, '--mode', 'acpi');
  await waitFor(async () => (await virshOk(uri, 'domstate', name, '--reason')).trim() === 'shut off (shutdown)', 'shut off (shutdown)', 120_000);
});
