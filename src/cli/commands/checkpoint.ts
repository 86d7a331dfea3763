// Checkpoint commands as in virsh: checkpoint-create, checkpoint-create-as,
// checkpoint-list, checkpoint-dumpxml, checkpoint-parent, checkpoint-info,
// checkpoint-delete. Our addition: inconsistent checkpoints (bitmaps known
// to be missing or broken) are marked in checkpoint-list and checkpoint-info.

import type { Command } from 'commander';
import type { EntryPointTable } from '../../api/entry-points.js';
import type { Domain, DomainCheckpoint } from '../../api/public.js';
import { isVirError, virErr } from '../../errors.js';
import { attr, childText, escapeXml, firstChild } from '../../xml/node.js';
import { parseXml } from '../xml-parser.js';
import { lookupDomain, readFileArg, withConnection } from '../connection.js';
import { CliFlagOptions } from '../flag-options.js';
import { exclusive, formatInfo, formatLocalTime, formatTable, json, out, usageError } from '../output.js';

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
  from?: string;
  json?: boolean;
}

export function register(program: Command, table: EntryPointTable): void {
  registerCheckpointCreate(program, table);
  registerCheckpointCreateAs(program, table);
  registerCheckpointList(program, table);
  registerCheckpointDumpxml(program, table);
  registerCheckpointParent(program);
  registerCheckpointInfo(program);
  registerCheckpointDelete(program, table);
}

function registerCheckpointCreate(program: Command, table: EntryPointTable): void {
  const create = program
    .command('checkpoint-create')
    .description('Create a checkpoint from XML')
    .argument('<domain>', 'domain name, id or uuid')
    .argument('[xmlfile]', 'domain checkpoint XML');
  const createFlags = CliFlagOptions.add(create, table, 'checkpointCreateXML', {
    REDEFINE: 'redefine metadata for existing checkpoint',
    REDEFINE_VALIDATE: 'validate the redefined checkpoint',
    QUIESCE: "quiesce guest's file systems",
  });
  create.action(async (ref: string, file: string | undefined, _o: object, cmd: Command) => {
    const flags = createFlags.flags(cmd);
    await withConnection(cmd, async (conn) => {
      const dom = await lookupDomain(conn, ref);
      const xml = file === undefined ? '<domaincheckpoint/>' : readFileArg(file);
      const c = await dom.checkpointCreateXML(xml, flags);
      out(file === undefined ? `Domain checkpoint ${c.name} created\n` : `Domain checkpoint ${c.name} created from '${file}'\n`);
    });
  });
}

function registerCheckpointCreateAs(program: Command, table: EntryPointTable): void {
  const collect = (v: string, acc: string[]): string[] => [...acc, v];
  const createAs = program
    .command('checkpoint-create-as')
    .description('Create a checkpoint from a set of args')
    .argument('<domain>', 'domain name, id or uuid')
    .option('--name <name>', 'name of checkpoint')
    .option('--description <description>', 'description of checkpoint')
    .option('--print-xml', 'print XML document rather than create');
  const createAsFlags = CliFlagOptions.add(createAs, table, 'checkpointCreateXML', {
    QUIESCE: "quiesce guest's file systems",
    // redefining takes a whole document: checkpoint-create
    REDEFINE: null,
    REDEFINE_VALIDATE: null,
  });
  createAs
    .option('--diskspec <spec>', 'disk attributes: disk[,checkpoint=type][,bitmap=name] (repeatable)', collect, [] as string[])
    .action(async (ref: string, o: { name?: string; description?: string; printXml?: boolean; diskspec: string[] }, cmd: Command) => {
      const flags = createAsFlags.flags(cmd);
      await withConnection(cmd, async (conn) => {
        const dom = await lookupDomain(conn, ref);
        const xml = checkpointCreateAsXml({ name: o.name, description: o.description, diskspecs: o.diskspec });
        if (o.printXml) {
          out(`${xml}\n`);
          return;
        }
        const c = await dom.checkpointCreateXML(xml, flags);
        out(`Domain checkpoint ${c.name} created\n`);
      });
    });
}

function registerCheckpointList(program: Command, table: EntryPointTable): void {
  const list = program
    .command('checkpoint-list')
    .description('List checkpoints for a domain')
    .argument('<domain>', 'domain name, id or uuid')
    .option('--parent', 'add a column showing parent checkpoint');
  const listFlags = CliFlagOptions.add(list, table, 'listAllCheckpoints', {
    ROOTS: 'list only checkpoints without parents',
    LEAVES: 'list only checkpoints without children',
    NO_LEAVES: 'list only checkpoints that are not leaves (with children)',
    TOPOLOGICAL: 'sort list topologically rather than by name',
  });
  list
    .option('--tree', 'list checkpoints in a tree')
    .option('--from <checkpoint>', 'limit list to children of given checkpoint');
  // the filters it shares with listAllCheckpoints are the same options
  const childFlags = CliFlagOptions.add(list, table, 'checkpointListAllChildren', { DESCENDANTS: 'with --from, list all descendants' });
  list
    .option('--name', 'list checkpoint names only')
    .option('--json', 'print the list as JSON')
    .action(async (ref: string, o: ListOptions, cmd: Command) => {
      const leaves = listFlags.given(cmd, 'LEAVES');
      const noLeaves = listFlags.given(cmd, 'NO_LEAVES');
      const topological = listFlags.given(cmd, 'TOPOLOGICAL');
      checkListOptions(cmd, o, leaves, noLeaves, childFlags.given(cmd, 'DESCENDANTS'));
      await withConnection(cmd, async (conn) => {
        const dom = await lookupDomain(conn, ref);
        const start = o.from === undefined ? null : await lookupCheckpoint(dom, o.from);
        const list = start === null ? await dom.listAllCheckpoints(listFlags.flags(cmd)) : await start.listAllChildren(childFlags.flags(cmd));
        await printCheckpointList(dom, start, list, o, topological);
      });
    });
}

/** checkpoint-list's usage errors, before connecting. */
function checkListOptions(cmd: Command, o: ListOptions, leaves: boolean, noLeaves: boolean, descendants: boolean): void {
  exclusive(cmd, ['tree', o.tree], ['name', o.name]);
  exclusive(cmd, ['parent', o.parent], ['roots', o.roots]);
  exclusive(cmd, ['parent', o.parent], ['tree', o.tree]);
  exclusive(cmd, ['roots', o.roots], ['tree', o.tree]);
  exclusive(cmd, ['roots', o.roots], ['from', o.from !== undefined]);
  exclusive(cmd, ['json', o.json], ['tree', o.tree]);
  exclusive(cmd, ['json', o.json], ['name', o.name]);
  if (o.tree && leaves) usageError(cmd, '--leaves and --tree are mutually exclusive');
  if (o.tree && noLeaves) usageError(cmd, '--no-leaves and --tree are mutually exclusive');
  if (descendants && o.from === undefined) usageError(cmd, '--descendants requires --from');
}

/** checkpoint-list's output: names, a tree, JSON or the table. */
async function printCheckpointList(
  dom: Domain,
  start: DomainCheckpoint | null,
  list: DomainCheckpoint[],
  o: ListOptions,
  topological: boolean,
): Promise<void> {
  // virtback: bitmaps no checkpoint knows are reported, never deleted behind the user's back
  // a driver that cannot see bitmaps (libvirt's) has nothing to warn about
  const unknown = await dom.listUnknownBitmaps().catch((e: unknown) => {
    if (isVirError(e, 'NO_SUPPORT')) return [];
    throw e;
  });
  for (const u of unknown) {
    process.stderr.write(`warning: bitmap '${u.bitmap}' on disk '${u.disk}' belongs to no checkpoint ` +
      `(adopt it with 'checkpoint-create --redefine', or remove it with qemu-img bitmap --remove when the domain is off)\n`);
  }
  if (o.name) {
    const names = list.map((c) => ({ name: c.name }));
    out((topological ? names : sortByName(names)).map((c) => `${c.name}\n`).join(''));
    return;
  }
  let rows = await rowsOf(list);
  if (o.tree) {
    // virsh asks each checkpoint for its parent; with --from, the start is the one root
    const items = await Promise.all(
      list.map(async (c, i) => ({ ...rows[i]!, parent: await parentOf(c) })),
    );
    if (start !== null) items.push({ ...(await rowsOf([start]))[0]!, parent: null });
    const shown = (topological ? items : sortByName(items)).map((r) => ({
      ...r,
      label: r.inconsistent === null ? r.name : `${r.name} (inconsistent)`,
    }));
    out(shown.map((r, i) => (r.parent === null ? formatTree(shown, i) : '')).join(''));
    return;
  }
  if (!topological) rows = sortByName(rows);
  if (o.json) json(rows.map(rowJson));
  else out(formatCheckpointTable(rows, o.parent === true));
}

function registerCheckpointDumpxml(program: Command, table: EntryPointTable): void {
  const dumpxml = program
    .command('checkpoint-dumpxml')
    .description('Dump XML for a domain checkpoint')
    .argument('<domain>', 'domain name, id or uuid')
    .argument('<checkpoint>', 'checkpoint name');
  const dumpxmlFlags = CliFlagOptions.add(dumpxml, table, 'checkpointGetXMLDesc', {
    SECURE: { option: 'security-info', help: 'include security sensitive information in XML dump' },
    NO_DOMAIN: 'exclude <domain> from XML',
    SIZE: 'include backup size estimate in XML dump',
  });
  dumpxml.action(async (ref: string, name: string, _o: object, cmd: Command) => {
    const flags = dumpxmlFlags.flags(cmd);
    await withConnection(cmd, async (conn) => {
      const c = await lookupCheckpoint(await lookupDomain(conn, ref), name);
      const xml = await c.getXMLDesc(flags);
      out(xml.endsWith('\n') ? xml : `${xml}\n`);
    });
  });
}

function registerCheckpointParent(program: Command): void {
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
}

function registerCheckpointInfo(program: Command): void {
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
}

function registerCheckpointDelete(program: Command, table: EntryPointTable): void {
  const del = program
    .command('checkpoint-delete')
    .description('Delete a domain checkpoint')
    .argument('<domain>', 'domain name, id or uuid')
    .argument('<checkpoint>', 'checkpoint name');
  const deleteFlags = CliFlagOptions.add(del, table, 'checkpointDelete', {
    CHILDREN: 'delete checkpoint and all children',
    CHILDREN_ONLY: 'delete children but not checkpoint',
    METADATA_ONLY: { option: 'metadata', help: 'delete only libvirt metadata, leaving checkpoint contents behind' },
  });
  del.action(async (ref: string, name: string, _o: object, cmd: Command) => {
    const flags = deleteFlags.flags(cmd);
    await withConnection(cmd, async (conn) => {
      const c = await lookupCheckpoint(await lookupDomain(conn, ref), name);
      await c.delete(flags);
      out(deleteFlags.given(cmd, 'CHILDREN_ONLY') ? `Domain checkpoint ${c.name} children deleted\n` : `Domain checkpoint ${c.name} deleted\n`);
    });
  });
}
