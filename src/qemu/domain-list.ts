// What listAllDomains and domainGetInfo report of a domain, and libvirt's
// list filters (virDomainObjListFilter): OR inside a group, AND across groups.

import type { DomainSummary } from '../api/driver.js';
import { DomainState, ListDomainsFlags as F } from '../flags.js';
import { parseMemoryKiB } from '../xml/domain.js';
import type { DomainObject } from './domain-object.js';

/** Every flag virConnectListAllDomains accepts. */
export const LIST_DOMAINS_FLAGS = F.ACTIVE | F.INACTIVE | F.PERSISTENT | F.TRANSIENT | F.RUNNING | F.PAUSED |
  F.SHUTOFF | F.OTHER | F.HAS_CHECKPOINT | F.NO_CHECKPOINT | F.HAS_BACKUP_JOB | F.NO_BACKUP_JOB;

export function summarize(dom: DomainObject): DomainSummary {
  return {
    name: dom.name,
    uuid: dom.uuid,
    id: dom.run ? dom.run.pid : -1,
    state: dom.state,
    reason: dom.reason,
    persistent: dom.persistent,
    checkpoints: dom.checkpoints?.count() ?? 0,
    hasBackupJob: dom.backupJobs?.hasActiveJob() ?? false,
  };
}

/**
 * virDomainGetInfo's fields beyond the summary, from the definition QEMU runs
 * (else the persistent one): <memory>, <currentMemory> (at most <memory>, as
 * libvirt clamps it), <vcpu>; `cpuTimeNs` is the caller's (0 when shut off).
 */
export function domainInfo(dom: DomainObject, cpuTimeNs: number): DomainSummary {
  const def = dom.liveDef ?? dom.def;
  const current = def.extra.find((e) => e.name === 'currentMemory');
  const maxMem = def.memoryKiB;
  return {
    ...summarize(dom),
    maxMem,
    memory: current === undefined ? maxMem : Math.min(parseMemoryKiB(current), maxMem),
    nrVirtCpu: def.vcpu,
    cpuTime: cpuTimeNs,
  };
}

/** The summaries that pass `flags` (ListDomainsFlags). */
export function filterDomains(all: DomainSummary[], flags: number): DomainSummary[] {
  const group = (mask: number, test: (d: DomainSummary) => number): ((d: DomainSummary) => boolean) =>
    (d) => (flags & mask) === 0 || (flags & test(d)) !== 0;
  const tests = [
    group(F.ACTIVE | F.INACTIVE, (d) => (d.state !== DomainState.SHUTOFF ? F.ACTIVE : F.INACTIVE)),
    group(F.PERSISTENT | F.TRANSIENT, (d) => (d.persistent ? F.PERSISTENT : F.TRANSIENT)),
    group(F.RUNNING | F.PAUSED | F.SHUTOFF | F.OTHER, (d) =>
      d.state === DomainState.RUNNING ? F.RUNNING
        : d.state === DomainState.PAUSED ? F.PAUSED
          : d.state === DomainState.SHUTOFF ? F.SHUTOFF : F.OTHER),
    group(F.HAS_CHECKPOINT | F.NO_CHECKPOINT, (d) => (d.checkpoints > 0 ? F.HAS_CHECKPOINT : F.NO_CHECKPOINT)),
    group(F.HAS_BACKUP_JOB | F.NO_BACKUP_JOB, (d) => (d.hasBackupJob ? F.HAS_BACKUP_JOB : F.NO_BACKUP_JOB)),
  ];
  return all.filter((s) => tests.every((t) => t(s)));
}
