// Checkpoint commands as in virsh: checkpoint-create, checkpoint-create-as,
// checkpoint-list, checkpoint-dumpxml, checkpoint-parent, checkpoint-info,
// checkpoint-delete. Our addition: inconsistent checkpoints (bitmaps known
// to be missing or broken) are marked in checkpoint-list and checkpoint-info.

import type { Command } from 'commander';
import type { Domain, DomainCheckpoint } from '../../api/public.js';
import { isVirError, virErr } from '../../errors.js';
import { attr, childText, escapeXml, firstChild, parseXml } from '../../xml/tree.js';
import { lookupDomain, readFileArg, withConnection } from '../connection.js';
import { exclusive, formatInfo, formatLocalTime, formatTable, json, out, requireOption, usageError } from '../output.js';

/** What checkpoint-list shows of one checkpoint. */
export interface CheckpointRow {
  name: string;
  parent: string | null;
  /** UNIX seconds */
  creationTime: number;
  /** why the checkpoint is inconsistent; null when it is not */
  inconsistent: string | null;
}

/** Read a <domaincheckpoint> document (as the API prints it) into a row. */
export function checkpointRow(xml: string): CheckpointRow {
  const root = parseXml(xml);
  const parentEl = firstChild(root, 'parent');
  const marker = firstChild(root, 'inconsistent');
  return {
    name: childText(root, 'name') ?? '',
    parent: parentEl === null ? null : childText(parentEl, 'name'),
    creationTime: Number(childText(root, 'creationTime') ?? '0'),
    inconsistent: marker === null ? null : (attr(marker, 'reason') ?? 'inconsistent'),
  };
}

/** virsh's vshStrcasecmp order of checkpoint-list (unless --topological). */
export function sortByName<T extends { name: string }>(rows: T[]): T[] {
  return [...rows].sort((a, b) => {
    const x = a.name.toLowerCase();
    const y = b.name.toLowerCase();
    return x < y ? -1 : x > y ? 1 : 0;
  });
}

/**
 * virsh's vshTreePrint from the entry at `rootIndex`: children under
 * "+- " with "|" rails, a "  |" line before the first child and an
 * (indented) empty line after the last leaf of a branch.
 */
export function formatTree(items: { name: string; parent: string | null; label?: string }[], rootIndex: number): string {
  const lines: string[] = [];
  const walk = (dev: number, lastDev: number, root: boolean, indent: string): void => {
    const item = items[dev]!;
    lines.push(`${indent}${root ? '' : '+- '}${item.label ?? item.name}`);
    let ind = indent;
    if (!root) ind += `${dev === lastDev ? ' ' : '|'} `;
    let nextLast = -1;
    items.forEach((c, i) => {
      if (c.parent !== null && c.parent === item.name) nextLast = i;
    });
    if (nextLast !== -1) lines.push(`${ind}  |`);
    items.forEach((c, i) => {
      if (c.parent !== null && c.parent === item.name) walk(i, nextLast, false, `${ind}  `);
    });
    if (nextLast === -1 && dev === lastDev) lines.push(ind);
  };
  walk(rootIndex, rootIndex, true, '');
  return lines.map((l) => `${l}\n`).join('');
}

/** The checkpoint-list table; the Inconsistent column appears only when a checkpoint is. */
export function formatCheckpointTable(rows: CheckpointRow[], withParent: boolean): string {
  const marked = rows.some((r) => r.inconsistent !== null);
  const header = ['Name', 'Creation Time', ...(withParent ? ['Parent'] : []), ...(marked ? ['Inconsistent'] : [])];
  return formatTable(
    header,
    rows.map((r) => [
      r.name,
      formatLocalTime(r.creationTime),
      ...(withParent ? [r.parent ?? ''] : []),
      ...(marked ? [r.inconsistent ?? ''] : []),
    ]),
  );
}

/** virshParseCheckpointDiskspec: `disk[,checkpoint=type][,bitmap=name]` ("," escaped as ",,"). */
export function parseDiskspec(spec: string): { name: string; checkpoint: string | null; bitmap: string | null } {
  const fields: string[] = [];
  let cur = '';
  for (let i = 0; i < spec.length; i++) {
    if (spec[i] === ',') {
      if (spec[i + 1] === ',') {
        cur += ',';
        i++;
        continue;
      }
      fields.push(cur);
      cur = '';
    } else cur += spec[i];
  }
  fields.push(cur);
  const bad = (): Error => virErr('INVALID_ARG', 'NONE', `unable to parse diskspec: ${spec}`);
  const name = fields[0]!;
  if (name === '') throw bad();
  let checkpoint: string | null = null;
  let bitmap: string | null = null;
  for (const f of fields.slice(1)) {
    if (checkpoint === null && f.startsWith('checkpoint=')) checkpoint = f.slice('checkpoint='.length);
    else if (bitmap === null && f.startsWith('bitmap=')) bitmap = f.slice('bitmap='.length);
    else throw bad();
  }
  return { name, checkpoint, bitmap };
}

/** The document checkpoint-create-as sends (and prints with --print-xml), laid out as virsh does. */
export function checkpointCreateAsXml(o: { name?: string; description?: string; diskspecs: string[] }): string {
  const e = (s: string): string => escapeXml(s, true);
  let xml = '<domaincheckpoint>\n';
  if (o.name !== undefined) xml += `  <name>${e(o.name)}</name>\n`;
  if (o.description !== undefined) xml += `  <description>${e(o.description)}</description>\n`;
  if (o.diskspecs.length > 0) {
    xml += '  <disks>\n';
    for (const spec of o.diskspecs) {
      const d = parseDiskspec(spec);
      xml += `    <disk name='${e(d.name)}'`;
      if (d.checkpoint !== null) xml += ` checkpoint='${e(d.checkpoint)}'`;
      if (d.bitmap !== null) xml += ` bitmap='${e(d.bitmap)}'`;
      xml += '/>\n';
    }
    xml += '  </disks>\n';
  }
  return `${xml}</domaincheckpoint>\n`;
}

async function rowsOf(list: DomainCheckpoint[]): Promise<CheckpointRow[]> {
  return Promise.all(list.map(async (c) => ({ ...checkpointRow(await c.getXMLDesc({ noDomain: true })), name: c.name })));
}

/** virshGetCheckpointParent: the parent's name, null for a root. */
async function parentOf(c: DomainCheckpoint): Promise<string | null> {
  try {
    return (await c.getParent()).name;
  } catch (e) {
    if (isVirError(e, 'NO_DOMAIN_CHECKPOINT')) return null;
    throw e;
  }
}

async function lookupCheckpoint(dom: Domain, name: string): Promise<DomainCheckpoint> {
  return dom.checkpointLookupByName(name);
}

function rowJson(r: CheckpointRow): Record<string, unknown> {
  return { ...r, creationTimeText: formatLocalTime(r.creationTime) };
}

interface ListOptions {
  parent?: boolean;
  roots?: boolean;
  tree?: boolean;
  name?: boolean;
  topological?: boolean;
  from?: string;
  descendants?: boolean;
  leaves?: boolean;
  noLeaves?: boolean;
  json?: boolean;
}

export function register(program: Command): void {
  program
    .command('checkpoint-create')
    .description('Create a checkpoint from XML')
    .argument('<domain>', 'domain name, id or uuid')
    .argument('[xmlfile]', 'domain checkpoint XML')
    .option('--redefine', 'redefine metadata for existing checkpoint')
    .option('--redefine-validate', 'validate the redefined checkpoint')
    .option('--quiesce', "quiesce guest's file systems")
    .action(async (ref: string, file: string | undefined, o: { redefine?: boolean; redefineValidate?: boolean; quiesce?: boolean }, cmd: Command) => {
      requireOption(cmd, ['redefine-validate', o.redefineValidate], ['redefine', o.redefine]);
      await withConnection(cmd, async (conn) => {
        const dom = await lookupDomain(conn, ref);
        const xml = file === undefined ? '<domaincheckpoint/>' : readFileArg(file);
        const c = await dom.checkpointCreateXML(xml, {
          redefine: o.redefine === true,
          redefineValidate: o.redefineValidate === true,
          quiesce: o.quiesce === true,
        });
        out(file === undefined ? `Domain checkpoint ${c.name} created\n` : `Domain checkpoint ${c.name} created from '${file}'\n`);
      });
    });

  const collect = (v: string, acc: string[]): string[] => [...acc, v];
  program
    .command('checkpoint-create-as')
    .description('Create a checkpoint from a set of args')
    .argument('<domain>', 'domain name, id or uuid')
    .option('--name <name>', 'name of checkpoint')
    .option('--description <description>', 'description of checkpoint')
    .option('--print-xml', 'print XML document rather than create')
    .option('--quiesce', "quiesce guest's file systems")
    .option('--diskspec <spec>', 'disk attributes: disk[,checkpoint=type][,bitmap=name] (repeatable)', collect, [] as string[])
    .action(
      async (ref: string, o: { name?: string; description?: string; printXml?: boolean; quiesce?: boolean; diskspec: string[] }, cmd: Command) => {
        await withConnection(cmd, async (conn) => {
          const dom = await lookupDomain(conn, ref);
          const xml = checkpointCreateAsXml({ name: o.name, description: o.description, diskspecs: o.diskspec });
          if (o.printXml) {
            out(`${xml}\n`);
            return;
          }
          const c = await dom.checkpointCreateXML(xml, { quiesce: o.quiesce === true });
          out(`Domain checkpoint ${c.name} created\n`);
        });
      },
    );

  program
    .command('checkpoint-list')
    .description('List checkpoints for a domain')
    .argument('<domain>', 'domain name, id or uuid')
    .option('--parent', 'add a column showing parent checkpoint')
    .option('--roots', 'list only checkpoints without parents')
    .option('--leaves', 'list only checkpoints without children')
    .option('--no-leaves', 'list only checkpoints that are not leaves (with children)')
    .option('--tree', 'list checkpoints in a tree')
    .option('--from <checkpoint>', 'limit list to children of given checkpoint')
    .option('--descendants', 'with --from, list all descendants')
    .option('--name', 'list checkpoint names only')
    .option('--topological', 'sort list topologically rather than by name')
    .option('--json', 'print the list as JSON')
    .action(async (ref: string, rawOpts: ListOptions & { leaves?: boolean }, cmd: Command) => {
      // commander turns --leaves/--no-leaves into one option 'leaves'; tell them apart from the raw argv
      const o = { ...rawOpts, ...splitLeaves(cmd) };
      exclusive(cmd, ['tree', o.tree], ['name', o.name]);
      exclusive(cmd, ['parent', o.parent], ['roots', o.roots]);
      exclusive(cmd, ['parent', o.parent], ['tree', o.tree]);
      exclusive(cmd, ['roots', o.roots], ['tree', o.tree]);
      exclusive(cmd, ['roots', o.roots], ['from', o.from !== undefined]);
      exclusive(cmd, ['json', o.json], ['tree', o.tree]);
      exclusive(cmd, ['json', o.json], ['name', o.name]);
      if (o.tree && o.leaves) usageError(cmd, '--leaves and --tree are mutually exclusive');
      if (o.tree && o.noLeaves) usageError(cmd, '--no-leaves and --tree are mutually exclusive');
      if (o.descendants && o.from === undefined) usageError(cmd, '--descendants requires --from');
      await withConnection(cmd, async (conn) => {
        const dom = await lookupDomain(conn, ref);
        const filter = { topological: o.topological === true, leaves: o.leaves === true, noLeaves: o.noLeaves === true };
        const start = o.from === undefined ? null : await lookupCheckpoint(dom, o.from);
        const list =
          start === null
            ? await dom.listAllCheckpoints({ ...filter, roots: o.roots === true })
            : await start.listAllChildren({ ...filter, descendants: o.descendants === true });
        // virtback: bitmaps no checkpoint knows are reported, never deleted behind the user's back
        for (const u of await dom.listUnknownBitmaps()) {
          process.stderr.write(`warning: bitmap '${u.bitmap}' on disk '${u.disk}' belongs to no checkpoint ` +
            `(adopt it with 'checkpoint-create --redefine', or remove it with qemu-img bitmap --remove when the domain is off)\n`);
        }
        if (o.name) {
          const names = list.map((c) => ({ name: c.name }));
          out((o.topological ? names : sortByName(names)).map((c) => `${c.name}\n`).join(''));
          return;
        }
        let rows = await rowsOf(list);
        if (o.tree) {
          // virsh asks each checkpoint for its parent; with --from, the start is the one root
          const items = await Promise.all(
            list.map(async (c, i) => ({ ...rows[i]!, parent: await parentOf(c) })),
          );
          if (start !== null) items.push({ ...(await rowsOf([start]))[0]!, parent: null });
          const shown = (o.topological ? items : sortByName(items)).map((r) => ({
            ...r,
            label: r.inconsistent === null ? r.name : `${r.name} (inconsistent)`,
          }));
          out(shown.map((r, i) => (r.parent === null ? formatTree(shown, i) : '')).join(''));
          return;
        }
        if (!o.topological) rows = sortByName(rows);
        if (o.json) json(rows.map(rowJson));
        else out(formatCheckpointTable(rows, o.parent === true));
      });
    });

  program
    .command('checkpoint-dumpxml')
    .description('Dump XML for a domain checkpoint')
    .argument('<domain>', 'domain name, id or uuid')
    .argument('<checkpoint>', 'checkpoint name')
    .option('--security-info', 'include security sensitive information in XML dump')
    .option('--no-domain', 'exclude <domain> from XML')
    .option('--size', 'include backup size estimate in XML dump')
    .action(async (ref: string, name: string, o: { securityInfo?: boolean; domain?: boolean; size?: boolean }, cmd: Command) => {
      await withConnection(cmd, async (conn) => {
        const c = await lookupCheckpoint(await lookupDomain(conn, ref), name);
        // commander stores --no-domain as domain=false
        const xml = await c.getXMLDesc({ secure: o.securityInfo === true, noDomain: o.domain === false, size: o.size === true });
        out(xml.endsWith('\n') ? xml : `${xml}\n`);
      });
    });

  program
    .command('checkpoint-parent')
    .description('Get the name of the parent of a checkpoint')
    .argument('<domain>', 'domain name, id or uuid')
    .argument('<checkpoint>', 'find parent of checkpoint name')
    .action(async (ref: string, name: string, _o: object, cmd: Command) => {
      await withConnection(cmd, async (conn) => {
        const c = await lookupCheckpoint(await lookupDomain(conn, ref), name);
        const parent = await parentOf(c);
        if (parent === null) throw virErr('NO_DOMAIN_CHECKPOINT', 'NONE', `checkpoint '${c.name}' has no parent`);
        out(`${parent}\n`);
      });
    });

  program
    .command('checkpoint-info')
    .description('checkpoint information')
    .argument('<domain>', 'domain name, id or uuid')
    .argument('<checkpoint>', 'checkpoint name')
    .option('--json', 'print the information as JSON')
    .action(async (ref: string, name: string, o: { json?: boolean }, cmd: Command) => {
      await withConnection(cmd, async (conn) => {
        const dom = await lookupDomain(conn, ref);
        const c = await lookupCheckpoint(dom, name);
        const parent = await parentOf(c);
        const children = (await c.listAllChildren()).length;
        const descendants = (await c.listAllChildren({ descendants: true })).length;
        const { inconsistent } = checkpointRow(await c.getXMLDesc({ noDomain: true }));
        if (o.json) {
          json({ name: c.name, domain: dom.name, parent, children, descendants, inconsistent });
          return;
        }
        const pairs: [string, string | number][] = [
          ['Name:', c.name],
          ['Domain:', dom.name],
          ['Parent:', parent ?? '-'],
          ['Children:', children],
          ['Descendants:', descendants],
        ];
        if (inconsistent !== null) pairs.push(['Inconsistent:', inconsistent]);
        out(formatInfo(pairs));
      });
    });

  program
    .command('checkpoint-delete')
    .description('Delete a domain checkpoint')
    .argument('<domain>', 'domain name, id or uuid')
    .argument('<checkpoint>', 'checkpoint name')
    .option('--children', 'delete checkpoint and all children')
    .option('--children-only', 'delete children but not checkpoint')
    .option('--metadata', 'delete only libvirt metadata, leaving checkpoint contents behind')
    .action(async (ref: string, name: string, o: { children?: boolean; childrenOnly?: boolean; metadata?: boolean }, cmd: Command) => {
      await withConnection(cmd, async (conn) => {
        const c = await lookupCheckpoint(await lookupDomain(conn, ref), name);
        await c.delete({ children: o.children === true, childrenOnly: o.childrenOnly === true, metadataOnly: o.metadata === true });
        out(o.childrenOnly ? `Domain checkpoint ${c.name} children deleted\n` : `Domain checkpoint ${c.name} deleted\n`);
      });
    });
}

/** --leaves and --no-leaves are separate filters in virsh; commander would merge them into one boolean. */
function splitLeaves(cmd: Command): { leaves: boolean; noLeaves: boolean } {
  // rawArgs is set by commander at run time but missing from its type declarations
  const args = (cmd.parent as unknown as { rawArgs?: string[] } | null)?.rawArgs ?? [];
  return { leaves: args.includes('--leaves'), noLeaves: args.includes('--no-leaves') };
}
