// Network, VNC and serial devices of a real QEMU under the QEMU driver:
// type='user' with a port forwarded into the tiny guest, the VNC port in the
// live XML answering an RFB handshake, MACs kept in the stored definition,
// bridge and ethernet taps, and the interface types we do not run refused.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import net from 'node:net';
import test from 'node:test';
import { promisify } from 'node:util';
import { isVirError } from '../../src/errors.js';
import { makeTestDomain, makeTestEnv, waitFor } from '../helpers/qemu-env.js';
import { tinyGuest, tinyGuestOsXml, waitForAgent } from '../helpers/tiny-guest.js';

const run = promisify(execFile);

/** A free TCP port on loopback (bound, read, released). */
async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

/** The server's first 12 bytes: an RFB server greets with its version. */
async function rfbGreeting(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.createConnection(port, '127.0.0.1');
    let got = Buffer.alloc(0);
    s.on('data', (d) => {
      got = Buffer.concat([got, d]);
      if (got.length >= 12) {
        s.destroy();
        resolve(got.subarray(0, 12).toString('latin1'));
      }
    });
    s.on('error', reject);
    setTimeout(() => {
      s.destroy();
      reject(new Error('no RFB greeting'));
    }, 10_000).unref();
  });
}

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
