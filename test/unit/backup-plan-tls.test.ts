// planBackup with <server tls='yes'>: the tls-creds-x509 object (libvirt's
// qemuBuildTLSx509BackendProps for a server) and nbd-server-start naming it.

import assert from 'node:assert/strict';
import test from 'node:test';
import { planBackup, type PlanDiskInput } from '../../src/qemu/backup-plan.js';
import { alignBackupDisks, applyBackupDefaults, parseBackupXML } from '../../src/xml/backup.js';

const domain = { disks: [{ target: 'sda', source: '/v/a.qcow2', readonly: false, type: 'file' }] };

const sda: PlanDiskInput = {
  target: 'sda', diskNode: 'libvirt-1-format', qdevId: 'scsi0-0-0-0', diskPath: '/v/a.qcow2', diskFormat: 'qcow2',
  virtualSize: 64 << 20, nodeIndex: 3, base: null, previous: null,
};

function aligned(xml: string) {
  const def = parseBackupXML(xml);
  alignBackupDisks(def, domain, 'c1');
  applyBackupDefaults(def);
  return def;
}

const tls = { id: 'virtback-backup-tls-7', dir: '/etc/pki/backup', verifyPeer: true };

test("tls='yes': object-add tls-creds-x509 (server endpoint) and nbd-server-start with tls-creds", () => {
  const plan = planBackup({
    def: aligned("<domainbackup mode='pull'><server name='localhost' port='10809' tls='yes'/></domainbackup>"),
    disks: [sda], checkpointActions: [], reuseExternal: false, port: null, tls,
  });
  assert.deepEqual(plan.tlsCreds, {
    'qom-type': 'tls-creds-x509', id: 'virtback-backup-tls-7', dir: '/etc/pki/backup', endpoint: 'server', 'verify-peer': true,
  });
  assert.deepEqual(plan.nbdServer, {
    addr: { type: 'inet', data: { host: 'localhost', port: '10809' } }, 'tls-creds': 'virtback-backup-tls-7',
  });
  const unix = planBackup({
    def: aligned("<domainbackup mode='pull'><server transport='unix' socket='/r/s' tls='yes'/></domainbackup>"),
    disks: [sda], checkpointActions: [], reuseExternal: false, port: null, tls: { ...tls, verifyPeer: false },
  });
  assert.equal(unix.tlsCreds?.['verify-peer'], false);
  assert.equal(unix.nbdServer?.['tls-creds'], 'virtback-backup-tls-7');
});

test("tls='no' or absent: no object even when credentials are configured; tls='yes' without them: OPERATION_INVALID", () => {
  for (const attr of ["tls='no'", '']) {
    const plan = planBackup({
      def: aligned(`<domainbackup mode='pull'><server name='localhost' port='10809' ${attr}/></domainbackup>`),
      disks: [sda], checkpointActions: [], reuseExternal: false, port: null, tls,
    });
    assert.equal(plan.tlsCreds, null);
    assert.equal(plan.nbdServer && 'tls-creds' in plan.nbdServer, false);
  }
  assert.throws(() => planBackup({
    def: aligned("<domainbackup mode='pull'><server name='localhost' port='10809' tls='yes'/></domainbackup>"),
    disks: [sda], checkpointActions: [], reuseExternal: false, port: null,
  }), { code: 55, message: /backup TLS directory not configured/ });
});
