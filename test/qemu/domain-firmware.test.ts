// Firmware on real QEMU (issue 13): <os firmware='efi'> selects Debian's OVMF,
// the domain gets its own NVRAM copied from the template at its first start,
// and the tiny guest boots through UEFI (its kernel reports EDK II) up to its
// guest agent; undefine keeps or removes the NVRAM as libvirt's flags say.
// An explicit <loader>/<nvram> pair is run as given. BIOS stays the default.

import assert from 'node:assert/strict';
import { readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import test from 'node:test';
import { DomainCreateFlags, UndefineFlags } from '../../src/flags.js';
import { OVMF_CODE, OVMF_VARS } from '../../src/qemu/firmware.js';
import { refused } from '../helpers/errors.js';
import { exists, makeTestEnv, waitFor } from '../helpers/qemu-env.js';
import { tinyGuest, waitForAgent } from '../helpers/tiny-guest.js';
import { qmp } from './backup-util.js';

interface Node { 'node-name': string; 'ro': boolean; file: string }

async function pflashNodes(driver: Parameters<typeof qmp>[0], uuid: string): Promise<Record<string, { file: string; ro: boolean }>> {
  const nodes = (await qmp(driver, uuid, 'query-named-block-nodes', { flat: true })) as Node[];
  const out: Record<string, { file: string; ro: boolean }> = {};
  for (const n of nodes) if (n['node-name'].includes('pflash') && n['node-name'].endsWith('-format')) out[n['node-name']] = { file: n.file, ro: n.ro };
  return out;
}

test("firmware='efi': OVMF, an NVRAM from the template, the guest boots through UEFI; undefine and the NVRAM", { timeout: 300_000 }, async (t) => {
  const guest = await tinyGuest();
  const env = await makeTestEnv(t);
  const driver = await env.openDriver();
  const name = `efi-${path.basename(env.dir)}`;
  const xml = `<domain type='qemu'><name>${name}</name><memory unit='MiB'>256</memory>
    <os firmware='efi'><type arch='x86_64' machine='q35'>hvm</type><kernel>${guest.kernel}</kernel><initrd>${guest.initrd}</initrd>
      <cmdline>console=ttyS0 panic=-1</cmdline></os>
    <devices><channel type='unix'><source mode='bind'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel></devices>
    <on_reboot>destroy</on_reboot></domain>`;
  const { uuid } = await driver.domainDefineXML(xml, 0);
  const nvram = path.join(env.stateDir, 'nvram', `${name}_VARS.fd`);
  assert.equal(await exists(nvram), false, 'made at the first start, not at define');
  await driver.domainCreate(uuid, 0);

  const st = await stat(nvram);
  assert.ok(st.isFile());
  assert.equal(st.mode & 0o777, 0o600);
  assert.equal(st.size, (await stat(OVMF_VARS)).size);
  assert.deepEqual(await pflashNodes(driver, uuid), {
    'libvirt-pflash0-format': { file: OVMF_CODE, ro: true },
    'libvirt-pflash1-format': { file: nvram, ro: false },
  });
  const live = await driver.domainGetXMLDesc(uuid, 0);
  assert.match(live, new RegExp(`<os firmware='efi'>[^]*<loader readonly='yes' type='pflash'>${OVMF_CODE}</loader>\\s*<nvram template='${OVMF_VARS}'>${nvram}</nvram>`));
  const inactive = await driver.domainGetXMLDesc(uuid, 2 /* INACTIVE */);
  assert.doesNotMatch(inactive, /<loader|<nvram/, 'the definition keeps the autoselection open');

  await waitForAgent(driver, uuid);
  const consoleLog = path.join(env.runDir, uuid, 'console.log');
  const text = await waitFor(async () => {
    const s = await readFile(consoleLog, 'utf8').catch(() => '');
    return /efi: EFI v[0-9.]+ by EDK II/.test(s) ? s : null;
  }, 'the kernel booted by OVMF', 10_000);
  assert.match(text, /efi: EFI v[0-9.]+ by EDK II/);
  await driver.domainDestroy(uuid, 0);

  // undefine: refused while the NVRAM exists unless a flag says what becomes of it
  await refused(driver.domainUndefine(uuid, 0), 55, 'Requested operation is not valid: cannot undefine domain with nvram');
  await driver.domainUndefine(uuid, UndefineFlags.KEEP_NVRAM);
  assert.equal(await exists(nvram), true, 'KEEP_NVRAM');
  const again = await driver.domainDefineXML(xml, 0);
  await driver.domainUndefine(again.uuid, UndefineFlags.NVRAM);
  assert.equal(await exists(nvram), false, 'NVRAM removes it');
});

test('explicit pflash <loader> and <nvram template>: run as given; BIOS by default', async (t) => {
  const env = await makeTestEnv(t);
  const driver = await env.openDriver();
  const vars = path.join(env.dir, 'my_VARS.fd');
  const efi = `<domain type='qemu'><name>pf-${path.basename(env.dir)}</name><memory unit='MiB'>128</memory>
    <os><type arch='x86_64' machine='q35'>hvm</type><loader readonly='yes' type='pflash'>${OVMF_CODE}</loader>
      <nvram template='${OVMF_VARS}'>${vars}</nvram></os><devices/></domain>`;
  const { uuid } = await driver.domainDefineXML(efi, 0);
  await driver.domainCreate(uuid, 0);
  assert.deepEqual(await pflashNodes(driver, uuid), {
    'libvirt-pflash0-format': { file: OVMF_CODE, ro: true },
    'libvirt-pflash1-format': { file: vars, ro: false },
  });
  assert.deepEqual(await readFile(vars).then((b) => b.length), (await stat(OVMF_VARS)).size);
  await driver.domainDestroy(uuid, 0);
  // an existing store is kept at start; START_RESET_NVRAM copies the template again
  await writeFile(vars, 'not a variable store');
  await assert.rejects(driver.domainCreate(uuid, 0), /size must be a non-zero multiple of 0x1000/, 'QEMU refuses the damaged store');
  assert.equal(await readFile(vars, 'utf8'), 'not a variable store', 'kept as it was');
  await driver.domainCreate(uuid, DomainCreateFlags.RESET_NVRAM);
  await driver.domainDestroy(uuid, 0);
  assert.equal((await stat(vars)).size, (await stat(OVMF_VARS)).size);
  await driver.domainUndefine(uuid, UndefineFlags.NVRAM);
  assert.equal(await exists(vars), false);

  const bios = `<domain type='qemu'><name>bios-${path.basename(env.dir)}</name><memory unit='MiB'>128</memory><os><type>hvm</type></os><devices/></domain>`;
  const b = await driver.domainDefineXML(bios, 0);
  await driver.domainCreate(b.uuid, 0);
  assert.deepEqual(await pflashNodes(driver, b.uuid), {}, 'SeaBIOS, no pflash');
  await driver.domainDestroy(b.uuid, 0);
  await driver.domainUndefine(b.uuid, 0);
  assert.equal(await exists(path.join(env.stateDir, 'nvram')), false, 'no NVRAM for BIOS');
});
