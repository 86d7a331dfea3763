// Reaching the daemon from a command: the global -c/--connect URI and
// -r/--readonly options, one connection per command invocation (closed
// afterwards, also on failure), and virsh's way of naming a domain by id,
// UUID or name.

import fs from 'node:fs';
import type { Command } from 'commander';
import { canonicalUUID } from '../api/checked-driver.js';
import type { Connect, Domain } from '../api/public.js';
import { isVirError, virErr } from '../errors.js';
import { loadXml } from './xml-parser.js';

export interface GlobalOptions {
  connect?: string;
  readonly?: boolean;
}

/** Register -c/--connect and -r/--readonly on the program (virsh's global options). */
export function addGlobalOptions(program: Command): void {
  program
    .option('-c, --connect <uri>', 'hypervisor connection URI (default: $VIRTBACK_URI, else virtback:///session, root: virtback:///system; qemu:///system, qemu+unix:///system?socket=…, qemu+ssh://host/system: a libvirt daemon)')
    .option('-r, --readonly', 'connect read-only');
}

/**
 * Open the connection the global options ask for, run `fn`, close it.
 * `xml: false` for a command that parses no XML (saves loading libxml2).
 */
export async function withConnection<T>(cmd: Command, fn: (conn: Connect) => Promise<T>, opts: { xml?: boolean } = {}): Promise<T> {
  const g = cmd.optsWithGlobals<GlobalOptions>();
  // The SDK (wire protocol, zod schemas) and the XML parser (for the daemon's
  // documents) load only for a command that connects.
  const [{ connect }] = await Promise.all([import('../sdk/connect.js'), opts.xml === false ? null : loadXml()]);
  const conn = await connect(g.connect, { readOnly: g.readonly === true });
  try {
    return await fn(conn);
  } finally {
    await conn.close().catch(() => {});
  }
}

/** virshCommandOptDomain: a domain by id (digits), then UUID, then name. */
export async function lookupDomain(conn: Connect, ref: string): Promise<Domain> {
  if (/^\d+$/.test(ref)) {
    const id = Number(ref);
    const hit = (await conn.listAllDomainSummaries()).find((s) => s.id === id && id > 0);
    if (hit) return conn.domain({ name: hit.name, uuid: hit.uuid });
  }
  const uuid = canonicalUUID(ref);
  if (uuid !== null) {
    try {
      return await conn.lookupByUUID(uuid);
    } catch (e) {
      if (!isVirError(e, 'NO_DOMAIN')) throw e;
    }
  }
  try {
    return await conn.lookupByName(ref);
  } catch (e) {
    if (isVirError(e, 'NO_DOMAIN')) throw virErr('NO_DOMAIN', 'NONE', `failed to get domain '${ref}'`, e);
    throw e;
  }
}

/** Read a file argument (virFileReadAll); a VirError naming the file when it cannot be read. */
export function readFileArg(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (e) {
    const why = (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'No such file or directory' : (e as Error).message;
    throw virErr('SYSTEM_ERROR', 'NONE', `Failed to open file '${file}': ${why}`, e);
  }
}
