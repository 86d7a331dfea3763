// domxml-check: every element of a definition that define would refuse or
// change, in define's own words; the `virsh dumpxml` of a typical libvirt VM
// (test/fixtures/domain/libvirt-typical.xml) gets an exact report.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import { parseDomainXML } from '../../src/xml/domain.js';
import { DEVICE_ELEMENTS, DOMAIN_ELEMENTS, type Handling } from '../../src/xml/domain-support.js';
import { checkDomainXML, formatDomainCheck } from '../../src/xml/domain-check.js';
import { runMain } from '../helpers/cli.js';

const fixtures = path.join(import.meta.dirname, '..', 'fixtures', 'domain');
const typical = path.join(fixtures, 'libvirt-typical.xml');

const CLEAN = `<domain type='qemu'><name>ok</name><memory unit='MiB'>64</memory><vcpu>2</vcpu>
  <cpu mode='custom'><model>qemu64</model><topology sockets='1' cores='2' threads='1'/></cpu>
  <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/img/a.qcow2'/><target dev='vda' bus='virtio'/></disk></devices>
</domain>`;

test('the typical libvirt VM: the exact report (refusals in define\'s words, dropped addresses and aliases counted)', () => {
  const expected = fs.readFileSync(path.join(fixtures, 'libvirt-typical.check.txt'), 'utf8');
  assert.equal(formatDomainCheck(checkDomainXML(fs.readFileSync(typical, 'utf8'))), expected);
});

test('a refusal is exactly what define says; every element is reported, not only the first', () => {
  const xml = fs.readFileSync(typical, 'utf8');
  const findings = checkDomainXML(xml);
  // define stops at the first refusal: the report holds it, word for word
  assert.throws(() => parseDomainXML(xml), (e: unknown) => findings.some((f) => f.kind === 'refused' && f.reason === (e as Error).message));
  assert.deepEqual(findings.filter((f) => f.path === 'devices/controller').map((f) => f.element), [
    "<controller type='usb' index='0' model='qemu-xhci' ports='15'>",
    "<controller type='pci' index='1' model='pcie-root-port'>",
  ], 'pcie-root, sata 0 and virtio-serial (with the agent channel) are accepted');
  // the agent channel and both disks are accepted; so is host-passthrough on a kvm domain
  assert.equal(findings.some((f) => f.path === 'devices/disk' || f.path === 'cpu'), false);
  const asQemu = checkDomainXML(xml.replace("<domain type='kvm' id='3'>", "<domain type='qemu'>"));
  assert.match(asQemu.find((f) => f.path === 'cpu')?.reason ?? '', /CPU mode 'host-passthrough' for x86_64 qemu domain on x86_64 host is not supported by hypervisor/);
});

test('a definition that runs as written has no findings; cross-element checks are found on the whole', () => {
  assert.deepEqual(checkDomainXML(CLEAN), []);
  parseDomainXML(CLEAN);
  const big = CLEAN.replace('</domain>', "<currentMemory unit='MiB'>128</currentMemory></domain>");
  assert.deepEqual(checkDomainXML(big).map((f) => [f.kind, f.path]), [['changed', 'currentMemory']]);
  const dup = CLEAN.replace('</devices>', "<disk type='file' device='disk'><source file='/img/b.qcow2'/><target dev='vda' bus='virtio'/></disk></devices>");
  assert.deepEqual(checkDomainXML(dup).map((f) => [f.kind, f.path]), [['refused', 'domain']]);
  const topo = CLEAN.replace('<vcpu>2</vcpu>', '<vcpu>3</vcpu>');
  assert.match(checkDomainXML(topo)[0]?.reason ?? '', /CPU topology doesn't match maximum vcpu count/);
});

test('virtback domxml-check: exit 0 and no output when nothing changes, exit 0 with the list when virtback only drops or clamps; the report and exit 1 when something is refused; --json', async (t) => {
  const dir = fs.mkdtempSync(path.join(fs.realpathSync('/tmp'), 'vb-check-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const clean = path.join(dir, 'clean.xml');
  fs.writeFileSync(clean, CLEAN);
  assert.deepEqual(await runMain(['domxml-check', clean]), { code: 0, stdout: '', stderr: '' });
  const moved = await runMain(['domxml-check', path.join(fixtures, 'libvirt-typical.moved.xml')]);
  assert.equal(moved.code, 0, moved.stderr);
  assert.match(moved.stdout, /^changed: <address> \(devices\/\*\/address\): dropped from 4 devices: .*\nchanged: <alias> \(devices\/\*\/alias\): dropped from 7 devices: .*\n$/);
  const r = await runMain(['domxml-check', typical]);
  assert.equal(r.code, 1);
  assert.equal(r.stdout, fs.readFileSync(path.join(fixtures, 'libvirt-typical.check.txt'), 'utf8'));
  assert.equal(r.stderr, 'error: 17 parts of the definition would be refused\n');
  const j = await runMain(['domxml-check', '--json', typical]);
  const findings = JSON.parse(j.stdout) as { kind: string; path: string; element: string; reason: string }[];
  assert.deepEqual(findings, checkDomainXML(fs.readFileSync(typical, 'utf8')));
  assert.equal(j.code, 1);
});

/** The table of domain-support.ts as docs/domain.md shows it: one row per element, by handling. */
function supportTableMarkdown(): string {
  const order: Handling[] = ['honoured', 'metadata', 'default', 'refused'];
  const rows = [
    ...Object.entries(DOMAIN_ELEMENTS).map(([name, r]) => [name, r] as const),
    ...Object.entries(DEVICE_ELEMENTS).map(([name, r]) => [`devices/${name}`, r] as const),
  ].sort(([a, x], [b, y]) => order.indexOf(x.handling) - order.indexOf(y.handling) || (a < b ? -1 : a > b ? 1 : 0));
  const cell = (s: string): string => s.replace(/\|/g, '\\|').replace(/</g, '&lt;').replace(/>/g, '&gt;');
  return ['| Element | Handling | Accepted |', '|---|---|---|',
    ...rows.map(([name, r]) => `| \`${name}\` | ${r.handling} | ${cell(r.accepts ?? '')} |`)].join('\n');
}

test('docs/domain.md shows the support table as domain-support.ts has it', () => {
  const doc = fs.readFileSync(path.join(import.meta.dirname, '..', '..', 'docs', 'domain.md'), 'utf8');
  const m = /<!-- support-table:begin -->\n([^]*?)\n<!-- support-table:end -->/.exec(doc);
  assert.ok(m, 'the table markers are in docs/domain.md');
  assert.equal(m[1], supportTableMarkdown(), 'docs/domain.md is out of date: paste supportTableMarkdown() between the markers');
});
