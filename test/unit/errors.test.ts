import { test } from 'node:test';
import assert from 'node:assert/strict';
import { VirError, virErr, toVirError, ErrorCode, ErrorDomain } from '../../src/errors.js';
import { checkFlags, CheckpointListFlags } from '../../src/flags.js';

test('virErr builds a VirError with libvirt numeric code and domain', () => {
  const e = virErr('NO_DOMAIN_CHECKPOINT', 'DOMAIN_CHECKPOINT', "no domain checkpoint with matching name 'c1'");
  assert.ok(e instanceof VirError);
  assert.equal(e.code, 103);
  assert.equal(e.domain, 69);
  assert.equal(e.codeName, 'NO_DOMAIN_CHECKPOINT');
  assert.deepEqual(JSON.parse(JSON.stringify(e)), { code: 103, domain: 69, message: "no domain checkpoint with matching name 'c1'" });
});

test('libvirt error code values used by the API', () => {
  assert.equal(ErrorCode.XML_INVALID_SCHEMA, 92);
  assert.equal(ErrorCode.NO_DOMAIN_BACKUP, 104);
  assert.equal(ErrorCode.CHECKPOINT_INCONSISTENT, 109);
  assert.equal(ErrorCode.OPERATION_INVALID, 55);
  assert.equal(ErrorCode.OPERATION_DENIED, 29);
  assert.equal(ErrorCode.INVALID_ARG, 8);
  assert.equal(ErrorCode.CONFIG_UNSUPPORTED, 67);
  assert.equal(ErrorCode.OPERATION_UNSUPPORTED, 84);
  assert.equal(ErrorCode.NO_DOMAIN, 42);
  assert.equal(ErrorCode.XML_ERROR, 27);
  assert.equal(ErrorDomain.QEMU, 10);
  assert.equal(ErrorDomain.DOMAIN, 20);
});

test('VirError survives a JSON round trip unchanged', () => {
  const e = VirError.fromJSON({ code: 55, domain: 10, message: 'another backup job is already running' });
  assert.equal(e.code, 55);
  assert.equal(e.message, 'another backup job is already running');
});

test('toVirError wraps foreign errors as INTERNAL_ERROR and keeps VirErrors', () => {
  const inner = virErr('INVALID_ARG', 'NONE', 'x');
  assert.equal(toVirError(inner), inner);
  const w = toVirError(new Error('boom'), 'QEMU');
  assert.equal(w.code, ErrorCode.INTERNAL_ERROR);
  assert.equal(w.domain, ErrorDomain.QEMU);
  assert.equal(w.message, 'boom');
});

test('checkFlags rejects unknown bits like virCheckFlags', () => {
  const allowed = CheckpointListFlags.ROOTS | CheckpointListFlags.TOPOLOGICAL;
  checkFlags(allowed, allowed, 'virDomainListAllCheckpoints');
  assert.throws(() => checkFlags(0x10, allowed, 'virDomainListAllCheckpoints'), (e: unknown) =>
    e instanceof VirError && e.code === 8 && e.message === 'unsupported flags (0x10) in function virDomainListAllCheckpoints');
  assert.throws(() => checkFlags(-1, allowed, 'f'), (e: unknown) => e instanceof VirError && e.code === 8);
});
