// Network, VNC and serial devices of a real QEMU under the QEMU driver:
// type='user' with a port forwarded into the tiny guest, the VNC port in the
// live XML answering an RFB handshake, MACs kept in the stored definition,
// bridge and ethernet taps, and the interface types we do not run refused.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import net from 'node:net';
import test from 'node:test';
import { promisify } from 'node:util';
import { existsSync } from 'node:fs';
import { ErrorCode, type VirError } from '../../src/errors.js';
import { QemuDriver } from '../../src/qemu/driver.js';
import { startCliDaemon } from '../helpers/cli.js';
import { makeTestDomain, makeTestEnv, waitFor } from '../helpers/qemu-env.js';
import { tinyGuest, tinyGuestOsXml } from '../helpers/tiny-guest.js';
import http from 'node:http';
import { freePort, rfbGreeting } from '../helpers/net.js';

const run = promisify(execFile);

function attrOf(xml: string, re: RegExp): string | null {
  return re.exec(xml)?.[1] ?? null;
}

test('VNC autoport: the port QEMU took is in the live XML and answers RFB; the pty serial is named', { timeout: 120_000 }, async (t) => {
  const env = await makeTestEnv(t);
  const dom = await makeTestDomain(env.dir, {
    devicesXml: "    <serial type='pty'><log file='" + env.dir + "/serial.log' append='off'/></serial>\n" +
      "    <graphics type='vnc' autoport='yes' listen='127.0.0.1'/>\n",
  });
  const driver = await env.openDriver();
  await driver.domainDefineXML(dom.xml, 0);
  const inactive = await driver.domainGetXMLDesc(dom.uuid, 0);
  assert.match(inactive, /<console type='pty'>\s*<log file='[^']+' append='off'\/>\s*<target type='serial' port='0'\/>/);
  assert.match(inactive, /<video>\s*<model type='vga' heads='1' primary='yes'\/>/, "libvirt's default video device is added");
  await driver.domainCreate(dom.uuid, 0);
  const live = await driver.domainGetXMLDesc(dom.uuid, 0);
  const port = Number(attrOf(live, /<graphics type='vnc' port='(\d+)' autoport='yes' listen='127.0.0.1'>/));
  assert.ok(port >= 5900, `live graphics has a port: ${live}`);
  assert.match(live, /<listen type='address' address='127.0.0.1'\/>/);
  assert.equal(await rfbGreeting(port), 'RFB 003.008\n');
  const pty = attrOf(live, /<serial type='pty' tty='(\/dev\/pts\/\d+)'>/);
  assert.ok(pty !== null, `live serial names its pty: ${live}`);
  assert.match(live, new RegExp(`<console type='pty' tty='${pty}'>\\s*<source path='${pty}'/>`));
  await driver.domainDestroy(dom.uuid, 0);
  assert.doesNotMatch(await driver.domainGetXMLDesc(dom.uuid, 0), /port='59/);
  await env.assertClean();
});

/** `ip` as root; the test's own bridge and tap. */
async function ip(...args: string[]): Promise<string> {
  return (await run('ip', args)).stdout;
}

function sysNet(dev: string, file: string): Promise<string> {
  return readFile(`/sys/class/net/${dev}/${file}`, 'utf8').then((s) => s.trim());
}

/** Whether something listens on 127.0.0.1:`port` (TCP). */
async function listening(port: number): Promise<boolean> {
  const hex = port.toString(16).toUpperCase().padStart(4, '0');
  const table = await readFile('/proc/net/tcp', 'utf8');
  return table.split('\n').some((l) => l.includes(`:${hex} `) && / 0A /.test(l) && l.trim().split(/\s+/)[1]?.endsWith(`:${hex}`));
}

test('user, bridge and ethernet interfaces: taps attached, forwarded port listening, domiflist, vncdisplay; MACs kept across a daemon restart', { timeout: 180_000 }, async (t) => {
  const tag = Math.random().toString(16).slice(2, 8);
  const bridge = `vbbr${tag}`;
  const tap = `vbtap${tag}`;
  await ip('link', 'add', 'name', bridge, 'type', 'bridge');
  t.after(() => ip('link', 'del', 'dev', bridge).catch(() => {}));
  await ip('tuntap', 'add', 'dev', tap, 'mode', 'tap');
  t.after(() => ip('link', 'del', 'dev', tap).catch(() => {}));
  await ip('link', 'set', 'dev', tap, 'up');

  const env = await makeTestEnv(t);
  const fwd = await freePort();
  const dom = await makeTestDomain(env.dir, {
    devicesXml:
      `    <interface type='user'><model type='virtio'/><portForward proto='tcp' address='127.0.0.1'><range start='${fwd}' to='22'/></portForward></interface>\n` +
      `    <interface type='bridge'><source bridge='${bridge}'/><model type='e1000'/></interface>\n` +
      `    <interface type='ethernet'><target dev='${tap}' managed='no'/><model type='rtl8139'/></interface>\n` +
      "    <graphics type='vnc' autoport='yes'/>\n",
  });
  const xmlFile = path.join(env.dir, 'net.xml');
  await (await import('node:fs/promises')).writeFile(xmlFile, dom.xml);
  const dirs = { stateDir: env.stateDir, runDir: env.runDir };
  const openDriver = () => QemuDriver.open(dirs);
  let cli = await startCliDaemon(t, { dir: env.dir, openDriver });
  assert.equal((await cli.run('define', xmlFile)).code, 0);
  const inactive = await cli.driver.domainGetXMLDesc(dom.uuid, 0);
  const macs = [...inactive.matchAll(/<mac address='(52:54:00(?::[0-9a-f]{2}){3})'\/>/g)].map((m) => m[1]);
  assert.equal(macs.length, 3, `a MAC for each interface: ${inactive}`);
  const inactiveList = await cli.run('domiflist', dom.name, '--inactive');
  assert.equal(inactiveList.code, 0, inactiveList.stderr);
  assert.deepEqual(inactiveList.stdout.trim().split('\n').slice(2).map((l) => l.trim().split(/\s+/)), [
    ['-', 'user', '-', 'virtio', macs[0]],
    ['-', 'bridge', bridge, 'e1000', macs[1]],
    [tap, 'ethernet', '-', 'rtl8139', macs[2]],
  ]);

  assert.equal((await cli.run('start', dom.name)).code, 0);
  const live = await cli.driver.domainGetXMLDesc(dom.uuid, 0);
  const vnet = /<interface type='bridge'>[\s\S]*?<target dev='(vnet\d+)'\/>/.exec(live)?.[1];
  assert.ok(vnet !== undefined, `the bridge interface names its tap: ${live}`);
  assert.match(await ip('-o', 'link', 'show', 'dev', vnet), new RegExp(`master ${bridge} `));
  assert.match(await ip('-o', 'link', 'show', 'dev', vnet), /<[^>]*\bUP\b/);
  assert.equal(await sysNet(vnet, 'carrier'), '1', 'QEMU holds the bridge tap');
  assert.equal(await sysNet(tap, 'carrier'), '1', 'QEMU holds the ethernet tap');
  assert.equal(await listening(fwd), true, `the forwarded port ${fwd} listens on 127.0.0.1`);
  const liveList = await cli.run('domiflist', dom.name);
  assert.match(liveList.stdout, new RegExp(`^ ${vnet}\\s+bridge\\s+${bridge}\\s+e1000\\s+${macs[1]}$`, 'm'));
  const port = Number(/<graphics type='vnc' port='(\d+)'/.exec(live)?.[1]);
  assert.equal((await cli.run('vncdisplay', dom.name)).stdout.trim(), `127.0.0.1:${port - 5900}`);

  assert.equal((await cli.run('destroy', dom.name)).code, 0);
  assert.equal(existsSync(`/sys/class/net/${vnet}`), false, 'the bridge tap is removed with the domain');
  assert.equal(existsSync(`/sys/class/net/${tap}`), true, "the ethernet tap is not ours: it stays");
  assert.equal(await listening(fwd), false);
  const stopped = await cli.run('vncdisplay', dom.name);
  assert.match(stopped.stderr, /domain is not running/);

  // a daemon restart: the MACs are the stored definition's
  await cli.daemon.stop();
  cli = await startCliDaemon(t, { dir: env.dir, openDriver });
  const again = await cli.driver.domainGetXMLDesc(dom.uuid, 0);
  assert.deepEqual([...again.matchAll(/<mac address='([^']+)'\/>/g)].map((m) => m[1]), macs);
  await cli.daemon.stop();
});

test('interfaces virtback does not run are refused at define naming them; a missing bridge fails the start and leaves no tap', { timeout: 60_000 }, async (t) => {
  const env = await makeTestEnv(t);
  const dom = await makeTestDomain(env.dir);
  const driver = await env.openDriver();
  const refused = async (iface: string, re: RegExp): Promise<void> => {
    await assert.rejects(driver.domainDefineXML(dom.xml.replace('</devices>', `${iface}</devices>`), 0),
      (e: VirError) => e.code === ErrorCode.CONFIG_UNSUPPORTED && re.test(e.message), iface);
  };
  await refused("<interface type='network'><source network='default'/></interface>", /^<interface type='network'> \(devices\/interface\).*libvirt's network driver/);
  await refused("<interface type='direct'><source dev='eth0' mode='bridge'/></interface>", /^<interface type='direct'> .*macvtap/);
  await refused("<interface type='ethernet'/>", /needs an existing tap/);
  await refused("<interface type='user'><model type='ne2k_pci'/></interface>", /<model type='ne2k_pci'> \(devices\/interface\/model\)/);
  await refused("<interface type='user'><backend type='passt'/></interface>", /<backend type='passt'>/);
  assert.deepEqual(await driver.listAllDomains(0), []);

  const before = (await readFile('/proc/net/dev', 'utf8')).match(/vnet\d+/g) ?? [];
  await driver.domainDefineXML(dom.xml.replace('</devices>', "<interface type='bridge'><source bridge='vbnosuchbr0'/></interface></devices>"), 0);
  await assert.rejects(driver.domainCreate(dom.uuid, 0), (e: VirError) => /Unable to add bridge vbnosuchbr0 port: No such device/.test(e.message));
  assert.deepEqual((await readFile('/proc/net/dev', 'utf8')).match(/vnet\d+/g) ?? [], before);
  await env.assertClean();
});

test('the tiny guest on user networking takes a DHCP lease from slirp and fetches a file the test serves on the host', { timeout: 300_000 }, async (t) => {
  const guest = await tinyGuest();
  const token = `token-${Math.random().toString(16).slice(2)}`;
  const server = http.createServer((req, res) => res.end(req.url === '/token' ? `${token}\n` : 'no\n'));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => server.close());
  const port = (server.address() as net.AddressInfo).port;

  const env = await makeTestEnv(t);
  const log = path.join(env.dir, 'serial.log');
  const dom = await makeTestDomain(env.dir, {
    disks: 0,
    memoryMiB: 256,
    osXml: tinyGuestOsXml(guest, 'tg.debug=1 tg.net=dhcp tg.disks=none'),
    devicesXml: `    <interface type='user'><model type='virtio'/></interface>\n    <serial type='pty'><log file='${log}'/></serial>\n`,
    domainXml: '  <on_reboot>destroy</on_reboot>\n',
  });
  const driver = await env.openDriver();
  await driver.domainDefineXML(dom.xml, 0);
  await driver.domainCreate(dom.uuid, 0);
  const guestLog = () => readFile(log, 'utf8').catch(() => '');
  await waitFor(async () => (await guestLog()).includes('tiny-guest: READY'), 'the guest to boot', 240_000);
  assert.match(await guestLog(), /tiny-guest: eth0 10\.0\.2\.15\/24/, 'the lease slirp hands out');

  const console = await driver.openConsole(dom.uuid, null, 0);
  let out = '';
  console.onData((d) => (out += Buffer.from(d).toString('latin1')));
  // 10.0.2.2 is slirp's gateway: the host's loopback
  console.write(Buffer.from(`\rwget -q -O - http://10.0.2.2:${port}/token; echo fetched-$?\r`));
  await waitFor(() => out.includes('fetched-0'), 'wget in the guest', 60_000);
  assert.match(out, new RegExp(`\\r?\\n${token}\\r?\\n`));
  console.close();
  await driver.domainDestroy(dom.uuid, 0);
  await env.assertClean();
});
