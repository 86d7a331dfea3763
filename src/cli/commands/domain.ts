// Domain commands as in virsh: define, undefine, start, destroy, suspend,
// resume, autostart, list, dominfo, domstate, dumpxml, domblklist,
// domblkerror, qemu-monitor-command, domfsfreeze, domfsthaw.

import type { Command } from 'commander';
import type { DomainSummary } from '../../api/driver.js';
import type { EntryPointTable } from '../../api/entry-points.js';
import { ListDomainsFlags } from '../../flags.js';
import { attr, childText, firstChild, textContent, type XmlElement } from '../../xml/node.js';
import { domainDiskRefs } from '../../xml/domain-disks.js';
import { parseXml } from '../xml-parser.js';
import { lookupDomain, readFileArg, withConnection } from '../connection.js';
import { CliFlagOptions } from '../flag-options.js';
import { registerPower } from './domain-power.js';
import { registerDomxmlCheck } from './domxml-check.js';
import { registerChangeMedia } from './media.js';
import {
  diskErrorString,
  domainReasonString,
  domainStateString,
  exclusive,
  formatInfo,
  formatTable,
  json,
  out,
} from '../output.js';

interface JsonOpt {
  json?: boolean;
}

/** virshDomainSorter: running domains by id first, then the others by name. */
export function sortDomains(list: DomainSummary[]): DomainSummary[] {
  return [...list].sort((a, b) => {
    const aa = a.id > 0;
    const ba = b.id > 0;
    if (aa && ba) return a.id - b.id;
    if (aa !== ba) return aa ? -1 : 1;
    return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
  });
}

/** The JSON shape of a domain summary: numbers plus virsh's state words. */
export function summaryJson(s: DomainSummary): Record<string, unknown> {
  return {
    id: s.id > 0 ? s.id : null,
    name: s.name,
    uuid: s.uuid,
    state: domainStateString(s.state),
    reason: domainReasonString(s.state, s.reason),
    persistent: s.persistent,
    checkpoints: s.checkpoints,
    hasBackupJob: s.hasBackupJob,
  };
}

/** virsh list's table: " Id   Name   State", '-' as the id of an inactive domain. */
export function formatDomainList(list: DomainSummary[]): string {
  return formatTable(
    ['Id', 'Name', 'State'],
    sortDomains(list).map((s) => [s.id > 0 ? String(s.id) : '-', s.name, domainStateString(s.state)]),
  );
}

/** <memory>/<currentMemory> in KiB, whatever unit the element uses. */
export function memoryKiB(el: XmlElement | null): number | null {
  if (el === null) return null;
  const v = Number(textContent(el).trim());
  if (!Number.isFinite(v)) return null;
  const unit = (attr(el, 'unit') ?? 'KiB').toLowerCase();
  const scale: Record<string, number> = {
    b: 1 / 1024, bytes: 1 / 1024, k: 1, kib: 1, kb: 1000 / 1024, m: 1024, mib: 1024, mb: 1e6 / 1024, g: 1024 ** 2, gib: 1024 ** 2,
    gb: 1e9 / 1024, t: 1024 ** 3, tib: 1024 ** 3, tb: 1e12 / 1024,
  };
  return Math.floor(v * (scale[unit] ?? 1));
}

export interface DiskRow {
  type: string;
  device: string;
  target: string;
  source: string;
}

/** The disks of a domain XML in document order, as domblklist lists them. */
export function domainDisks(xml: string): DiskRow[] {
  return domainDiskRefs(parseXml(xml)).map((d) => ({ type: d.type, device: d.device, target: d.target, source: d.source ?? '-' }));
}

export function formatDiskList(rows: DiskRow[], details: boolean): string {
  return details
    ? formatTable(['Type', 'Device', 'Target', 'Source'], rows.map((r) => [r.type, r.device, r.target, r.source]))
    : formatTable(['Target', 'Source'], rows.map((r) => [r.target, r.source]));
}

export function register(program: Command, table: EntryPointTable): void {
  registerDomainLifecycle(program, table);
  registerDomainRunState(program);
  registerPower(program);
  registerDomxmlCheck(program);
  registerDomainList(program, table);
  registerDomainInfo(program);
  registerDomainXml(program, table);
  registerMonitorCommand(program, table);
  registerFsFreeze(program);
  registerChangeMedia(program, table);
}

function registerDomainLifecycle(program: Command, table: EntryPointTable): void {
  program
    .command('define')
    .description('define (but do not start) a domain from an XML file')
    .argument('<file>', 'file containing an XML domain description')
    .action(async (file: string, _o: object, cmd: Command) => {
      const xml = readFileArg(file);
      await withConnection(cmd, async (conn) => {
        const dom = await conn.defineXML(xml);
        out(`Domain '${dom.name}' defined from ${file}\n`);
      });
    });

  const undefine = program.command('undefine').description('undefine a domain').argument('<domain>', 'domain name, id or uuid');
  const undefineFlags = CliFlagOptions.add(undefine, table, 'domainUndefine', {
    CHECKPOINTS_METADATA: 'remove all domain checkpoint metadata (vm must be inactive)',
    NVRAM: 'remove nvram file',
    KEEP_NVRAM: 'keep nvram file',
  });
  undefine.action(async (ref: string, _o: object, cmd: Command) => {
    const flags = undefineFlags.flags(cmd);
    await withConnection(cmd, async (conn) => {
      const dom = await lookupDomain(conn, ref);
      await dom.undefine(flags);
      out(`Domain '${dom.name}' has been undefined\n`);
    });
  });

  const start = program.command('start').description('start a (previously defined) inactive domain')
    .argument('<domain>', 'name of the inactive domain');
  const startFlags = CliFlagOptions.add(start, table, 'domainCreate', {
    PAUSED: 'leave the guest paused after creation',
    AUTODESTROY: 'automatically destroy the guest when virtback exits',
    BYPASS_CACHE: 'avoid file system cache when loading',
    FORCE_BOOT: 'force fresh boot by discarding any managed save',
    RESET_NVRAM: 're-initialize NVRAM from its pristine template',
  });
  start.action(async (ref: string, _o: object, cmd: Command) => {
    const flags = startFlags.flags(cmd);
    await withConnection(cmd, async (conn) => {
      const dom = await lookupDomain(conn, ref);
      await dom.create(flags);
      out(`Domain '${dom.name}' started\n`);
    });
  });

  const destroy = program.command('destroy').description('destroy (stop) a domain').argument('<domain>', 'domain name, id or uuid');
  const destroyFlags = CliFlagOptions.add(destroy, table, 'domainDestroy', {
    GRACEFUL: 'terminate gracefully',
  });
  destroy.action(async (ref: string, _o: object, cmd: Command) => {
    const flags = destroyFlags.flags(cmd);
    await withConnection(cmd, async (conn) => {
      const dom = await lookupDomain(conn, ref);
      await dom.destroy(flags);
      out(`Domain '${dom.name}' destroyed\n`);
    });
  });
}

function registerDomainRunState(program: Command): void {
  program
    .command('suspend')
    .description('suspend a domain')
    .argument('<domain>', 'domain name, id or uuid')
    .action(async (ref: string, _o: object, cmd: Command) => {
      await withConnection(cmd, async (conn) => {
        const dom = await lookupDomain(conn, ref);
        await dom.suspend();
        out(`Domain '${dom.name}' suspended\n`);
      });
    });

  program
    .command('resume')
    .description('resume a domain')
    .argument('<domain>', 'domain name, id or uuid')
    .action(async (ref: string, _o: object, cmd: Command) => {
      await withConnection(cmd, async (conn) => {
        const dom = await lookupDomain(conn, ref);
        await dom.resume();
        out(`Domain '${dom.name}' resumed\n`);
      });
    });

  program
    .command('autostart')
    .description('autostart a domain (started when virtbackd starts, once per boot)')
    .argument('<domain>', 'domain name, id or uuid')
    .option('--disable', 'disable autostarting')
    .action(async (ref: string, o: { disable?: boolean }, cmd: Command) => {
      await withConnection(cmd, async (conn) => {
        const dom = await lookupDomain(conn, ref);
        await dom.setAutostart(!o.disable);
        out(o.disable ? `Domain '${dom.name}' unmarked as autostarted\n` : `Domain '${dom.name}' marked as autostarted\n`);
      });
    });
}

function registerDomainList(program: Command, table: EntryPointTable): void {
  const list = program
    .command('list')
    .description('list domains')
    .option('--all', 'list inactive & active domains');
  const listFlags = CliFlagOptions.add(list, table, 'listAllDomains', {
    // ACTIVE is the default, dropped by --inactive; --all sets both
    ACTIVE: null,
    INACTIVE: 'list inactive domains',
    // virsh's --persistent, --transient and --state-* are not offered yet
    PERSISTENT: null,
    TRANSIENT: null,
    RUNNING: null,
    PAUSED: null,
    SHUTOFF: null,
    OTHER: null,
    HAS_CHECKPOINT: { option: 'with-checkpoint', help: 'list domains with existing checkpoint' },
    NO_CHECKPOINT: { option: 'without-checkpoint', help: 'list domains without a checkpoint' },
    HAS_BACKUP_JOB: { option: 'with-backup', help: 'list domains with a backup job (virtback)' },
    NO_BACKUP_JOB: { option: 'without-backup', help: 'list domains without a backup job (virtback)' },
  });
  list
    .option('--name', 'list domain names only')
    .option('--uuid', 'list uuid\'s only')
    .option('--json', 'print the list as JSON')
    .action(async (o: JsonOpt & { all?: boolean; name?: boolean; uuid?: boolean }, cmd: Command) => {
      exclusive(cmd, ['json', o.json], ['name', o.name]);
      exclusive(cmd, ['json', o.json], ['uuid', o.uuid]);
      let flags = listFlags.flags(cmd);
      if (o.all) flags |= ListDomainsFlags.ACTIVE | ListDomainsFlags.INACTIVE;
      if (!(flags & ListDomainsFlags.INACTIVE)) flags |= ListDomainsFlags.ACTIVE;
      await withConnection(cmd, async (conn) => {
        const list = sortDomains(await conn.listAllDomainSummaries(flags));
        if (o.json) json(list.map(summaryJson));
        else if (o.name && o.uuid) out(list.map((s) => `${s.uuid.padEnd(36)} ${s.name}\n`).join(''));
        else if (o.name) out(list.map((s) => `${s.name}\n`).join(''));
        else if (o.uuid) out(list.map((s) => `${s.uuid}\n`).join(''));
        else out(formatDomainList(list));
      }, { xml: false });
    });
}

function registerDomainInfo(program: Command): void {
  program
    .command('dominfo')
    .description('domain information')
    .argument('<domain>', 'domain name, id or uuid')
    .option('--json', 'print the information as JSON')
    .action(async (ref: string, o: JsonOpt, cmd: Command) => {
      await withConnection(cmd, async (conn) => {
        const dom = await lookupDomain(conn, ref);
        const s = await dom.getInfo();
        const root = parseXml(await dom.getXMLDesc());
        const os = firstChild(root, 'os');
        const osType = (os === null ? null : childText(os, 'type')) ?? 'hvm';
        // virDomainInfo's fields when the driver fills them, else the XML's
        const vcpu = s.nrVirtCpu ?? Number(childText(root, 'vcpu') ?? '1');
        const maxMem = s.maxMem ?? memoryKiB(firstChild(root, 'memory')) ?? 0;
        const curMem = s.memory ?? memoryKiB(firstChild(root, 'currentMemory')) ?? maxMem;
        const autostart = await dom.getAutostart();
        const cpuTime = s.cpuTime !== undefined && s.id > 0 ? s.cpuTime : null;
        if (o.json) {
          json({
            ...summaryJson(s), osType, cpus: vcpu, maxMemoryKiB: maxMem, usedMemoryKiB: curMem, autostart,
            ...(cpuTime !== null ? { cpuTimeNs: cpuTime } : {}),
          });
          return;
        }
        out(
          formatInfo([
            ['Id:', s.id > 0 ? String(s.id) : '-'],
            ['Name:', s.name],
            ['UUID:', s.uuid],
            ['OS Type:', osType],
            ['State:', domainStateString(s.state)],
            ['CPU(s):', vcpu],
            ...(cpuTime !== null ? [['CPU time:', `${(cpuTime / 1e9).toFixed(1)}s`] as [string, string]] : []),
            ['Max memory:', `${maxMem} KiB`],
            ['Used memory:', `${curMem} KiB`],
            ['Persistent:', s.persistent ? 'yes' : 'no'],
            ['Autostart:', autostart ? 'enable' : 'disable'],
            ['Managed save:', 'no'],
            ['Security model:', 'none'],
            ['Security DOI:', '0'],
            ['Checkpoints:', s.checkpoints],
            ['Backup job:', s.hasBackupJob ? 'yes' : 'no'],
          ]),
        );
      });
    });

  program
    .command('domstate')
    .description('domain state')
    .argument('<domain>', 'domain name, id or uuid')
    .option('--reason', 'also print reason for the state')
    .option('--json', 'print the state as JSON')
    .action(async (ref: string, o: JsonOpt & { reason?: boolean }, cmd: Command) => {
      await withConnection(cmd, async (conn) => {
        const s = await (await lookupDomain(conn, ref)).getInfo();
        const state = domainStateString(s.state);
        const reason = domainReasonString(s.state, s.reason);
        if (o.json) json({ state, reason });
        else out(o.reason ? `${state} (${reason})\n` : `${state}\n`);
      });
    });
}

function registerDomainXml(program: Command, table: EntryPointTable): void {
  const dumpxml = program.command('dumpxml').description('domain information in XML').argument('<domain>', 'domain name, id or uuid');
  const dumpxmlFlags = CliFlagOptions.add(dumpxml, table, 'domainGetXMLDesc', {
    INACTIVE: 'show inactive defined XML',
    SECURE: { option: 'security-info', help: 'include security sensitive information in XML dump' },
  });
  dumpxml.action(async (ref: string, _o: object, cmd: Command) => {
    const flags = dumpxmlFlags.flags(cmd);
    await withConnection(cmd, async (conn) => {
      const xml = await (await lookupDomain(conn, ref)).getXMLDesc(flags);
      out(xml.endsWith('\n') ? xml : `${xml}\n`);
    });
  });

  const domblklist = program.command('domblklist').description('list all domain blocks').argument('<domain>', 'domain name, id or uuid');
  const domblklistFlags = CliFlagOptions.add(domblklist, table, 'domainGetXMLDesc', {
    INACTIVE: 'get inactive rather than running configuration',
    SECURE: null,
  });
  domblklist
    .option('--details', 'additionally display the type and device value')
    .option('--json', 'print the list as JSON')
    .action(async (ref: string, o: JsonOpt & { details?: boolean }, cmd: Command) => {
      const flags = domblklistFlags.flags(cmd);
      await withConnection(cmd, async (conn) => {
        const rows = domainDisks(await (await lookupDomain(conn, ref)).getXMLDesc(flags));
        if (o.json) json(rows.map((r) => ({ ...r, source: r.source === '-' ? null : r.source })));
        else out(formatDiskList(rows, o.details === true));
      });
    });

  program
    .command('domblkerror')
    .description('Show errors on block devices')
    .argument('<domain>', 'domain name, id or uuid')
    .option('--json', 'print the errors as JSON')
    .action(async (ref: string, o: JsonOpt, cmd: Command) => {
      await withConnection(cmd, async (conn) => {
        const errors = await (await lookupDomain(conn, ref)).getDiskErrors();
        if (o.json) json(errors.map((e) => ({ disk: e.disk, error: diskErrorString(e.error) })));
        else out(errors.length === 0 ? 'No errors found\n' : errors.map((e) => `${e.disk}: ${diskErrorString(e.error)}\n`).join(''));
      });
    });
}

function registerMonitorCommand(program: Command, table: EntryPointTable): void {
  const monitor = program
    .command('qemu-monitor-command')
    .description('QEMU Monitor Command')
    .argument('<domain>', 'domain name, id or uuid')
    .argument('<cmd...>', 'command');
  const monitorFlags = CliFlagOptions.add(monitor, table, 'qemuMonitorCommand', { HMP: 'command is in human monitor protocol' });
  monitor
    .option('--pretty', 'pretty-print any qemu monitor protocol output')
    .action(async (ref: string, words: string[], o: { pretty?: boolean }, cmd: Command) => {
      exclusive(cmd, ['hmp', monitorFlags.given(cmd, 'HMP')], ['pretty', o.pretty]);
      const flags = monitorFlags.flags(cmd);
      await withConnection(cmd, async (conn) => {
        const dom = await lookupDomain(conn, ref);
        let result = await dom.qemuMonitorCommand(words.join(' '), flags);
        if (o.pretty) result = JSON.stringify(JSON.parse(result), null, 2);
        out(result.endsWith('\n') ? result : `${result}\n`);
      });
    });
}

function registerFsFreeze(program: Command): void {
  const collect = (v: string, acc: string[]): string[] => [...acc, v];

  program
    .command('domfsfreeze')
    .description('Freeze domain\'s mounted filesystems.')
    .argument('<domain>', 'domain name, id or uuid')
    .option('--mountpoint <mountpoint>', 'mountpoint path to be frozen (repeatable)', collect, [] as string[])
    .action(async (ref: string, o: { mountpoint: string[] }, cmd: Command) => {
      await withConnection(cmd, async (conn) => {
        const n = await (await lookupDomain(conn, ref)).fsFreeze(o.mountpoint);
        out(`Froze ${n} filesystem(s)\n`);
      });
    });

  program
    .command('domfsthaw')
    .description('Thaw domain\'s mounted filesystems.')
    .argument('<domain>', 'domain name, id or uuid')
    .option('--mountpoint <mountpoint>', 'mountpoint path to be thawed (repeatable)', collect, [] as string[])
    .action(async (ref: string, o: { mountpoint: string[] }, cmd: Command) => {
      await withConnection(cmd, async (conn) => {
        const n = await (await lookupDomain(conn, ref)).fsThaw(o.mountpoint);
        out(`Thawed ${n} filesystem(s)\n`);
      });
    });
}
