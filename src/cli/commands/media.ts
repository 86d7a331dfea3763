// virsh change-media: a CD-ROM drive's medium ejected, inserted or replaced.
// As virsh does, the drive's <disk> is taken from the domain's XML (live when
// running, the definition with --config), its <source> replaced or removed,
// and the element sent with virDomainUpdateDeviceFlags.

import type { Command } from 'commander';
import type { EntryPointTable } from '../../api/entry-points.js';
import { attr, childElements, element, firstChild, formatXml, type XmlElement } from '../../xml/node.js';
import { parseXml } from '../xml-parser.js';
import { lookupDomain, withConnection } from '../connection.js';
import { CliFlagOptions } from '../flag-options.js';
import { out, usageError } from '../output.js';

/** The drive named by target ('hdc') or by its source path. */
function findDrive(domainXml: string, path: string): XmlElement | null {
  const devices = firstChild(parseXml(domainXml), 'devices');
  const disks = devices === null ? [] : childElements(devices, 'disk');
  return disks.find((d) => {
    const target = firstChild(d, 'target');
    const source = firstChild(d, 'source');
    return (target !== null && attr(target, 'dev') === path) || (source !== null && (attr(source, 'file') === path || attr(source, 'dev') === path));
  }) ?? null;
}

/** The drive's <disk> with `source` (null: no medium) in place of its own. */
export function driveWithMedium(drive: XmlElement, source: string | null, block: boolean): string {
  const type = source === null ? (attr(drive, 'type') ?? 'file') : block ? 'block' : 'file';
  const children = drive.children.filter((c) => typeof c !== 'string' && c.name !== 'source' && c.name !== 'address' && c.name !== 'alias') as XmlElement[];
  if (source !== null) {
    const at = children.findIndex((c) => c.name === 'driver') + 1;
    children.splice(at, 0, element('source', [[block ? 'dev' : 'file', source]]));
  }
  return formatXml(element('disk', [['type', type], ...drive.attrs.filter(([k]) => k !== 'type')], children));
}

export function registerChangeMedia(program: Command, table: EntryPointTable): void {
  const cmd = program
    .command('change-media')
    .description('change media of CD or floppy drive')
    .argument('<domain>', 'domain name, id or uuid')
    .argument('<path>', 'fully-qualified path or target of disk device')
    .argument('[source]', 'source of the media')
    .option('--eject', 'eject the media')
    .option('--insert', 'insert the media')
    .option('--update', 'update the media')
    .option('--block', 'source media is a block device')
    .option('--current', 'can be either or both of --live and --config, depends on implementation of hypervisor driver');
  const flags = CliFlagOptions.add(cmd, table, 'domainUpdateDevice', {
    LIVE: 'alter live configuration of running domain',
    CONFIG: 'alter persistent configuration, effect observed on next boot',
    FORCE: 'force media changing',
  });
  cmd.action(async (ref: string, path: string, source: string | undefined, o: { eject?: boolean; insert?: boolean; update?: boolean; block?: boolean; current?: boolean }, c: Command) => {
    const actions = [o.eject, o.insert, o.update].filter(Boolean).length;
    if (actions > 1) usageError(c, 'Options --eject, --insert, and --update are mutually exclusive');
    if (o.current && (flags.given(c, 'LIVE') || flags.given(c, 'CONFIG'))) usageError(c, 'Options --current and --live or --config are mutually exclusive');
    // virsh: no action given means update when a source is, else eject
    const action = o.eject ? 'eject' : o.insert ? 'insert' : o.update || source !== undefined ? 'update' : 'eject';
    if (action === 'eject' && source !== undefined) usageError(c, 'Option --eject does not take a source');
    if (action !== 'eject' && source === undefined) usageError(c, `No source is given for ${action} media`);
    const f = flags.flags(c);
    await withConnection(c, async (conn) => {
      const dom = await lookupDomain(conn, ref);
      const xml = await dom.getXMLDesc(flags.given(c, 'CONFIG') ? { inactive: true } : undefined);
      const drive = findDrive(xml, path);
      if (drive === null) throw new Error(`No disk found whose source path or target is ${path}`);
      const hasMedium = firstChild(drive, 'source') !== null;
      if (action === 'eject' && !hasMedium) throw new Error(`The disk device '${path}' doesn't have media`);
      if (action === 'insert' && hasMedium) throw new Error(`The disk device '${path}' already has media`);
      await dom.updateDevice(driveWithMedium(drive, source ?? null, o.block === true), f);
      out({ eject: 'Successfully ejected media.\n', insert: 'Successfully inserted media.\n', update: 'Successfully updated media.\n' }[action]);
    });
  });
}
