// The taps of type='bridge' interfaces, which the
// runtime creates before QEMU starts and removes when the domain stops,
// as libvirt does (vnetN, attached to the bridge and up). A type='ethernet'
// tap belongs to whoever made it: QEMU only opens it.
// (The arguments: net-args.ts.)

import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { promisify } from 'node:util';
import { virErr } from '../errors.js';
import type { Logger } from '../log.js';
import { interfacesOf } from '../xml/domain-net.js';
import { element, firstChild } from '../xml/tree.js';
import type { XmlElement } from '../xml/tree.js';

const run = promisify(execFile);

async function ip(args: string[]): Promise<void> {
  try {
    await run('ip', args, { timeout: 10_000 });
  } catch (e) {
    const stderr = (e as { stderr?: string }).stderr?.trim() ?? (e as Error).message;
    throw virErr('SYSTEM_ERROR', 'QEMU', `ip ${args.join(' ')} failed: ${stderr}`, e);
  }
}

function linkExists(name: string): boolean {
  return existsSync(`/sys/class/net/${name}`);
}

/**
 * Create a tap for each type='bridge' interface of `devices` and attach it to
 * its bridge; check that every type='ethernet' tap exists. Returns the live
 * devices (bridge interfaces with <target dev='vnetN'/>) and the taps made,
 * which the caller removes with removeTaps when QEMU stops or fails to start.
 */
export async function prepareTaps(devices: readonly XmlElement[], log: Logger): Promise<{ devices: XmlElement[]; created: string[] }> {
  const created: string[] = [];
  const out: XmlElement[] = [];
  try {
    for (const el of devices) {
      if (el.name !== 'interface') {
        out.push(el);
        continue;
      }
      const def = interfacesOf([el])[0]!;
      if (def.type === 'ethernet' && !linkExists(def.tap!)) {
        throw virErr('OPERATION_FAILED', 'QEMU', `Unable to get index for interface ${def.tap}: No such device`);
      }
      if (def.type !== 'bridge') {
        out.push(el);
        continue;
      }
      if (!linkExists(def.bridge!)) {
        throw virErr('OPERATION_FAILED', 'QEMU', `Unable to add bridge ${def.bridge} port: No such device`);
      }
      const tap = await createTap();
      created.push(tap);
      await ip(['link', 'set', 'dev', tap, 'master', def.bridge!]);
      await ip(['link', 'set', 'dev', tap, 'up']);
      log.info({ tap, bridge: def.bridge }, 'tap created');
      const rest = el.children.filter((c) => typeof c === 'string' || c.name !== 'target');
      out.push(element('interface', el.attrs, [...rest, element('target', [['dev', tap]])]));
    }
  } catch (e) {
    await removeTaps(created, log);
    throw e;
  }
  return { devices: out, created };
}

/** The first free vnetN, created as a persistent tap (a name taken meanwhile by another start: the next one). */
async function createTap(): Promise<string> {
  for (let n = 0; n < 1024; n++) {
    const name = `vnet${n}`;
    if (linkExists(name)) continue;
    try {
      await ip(['tuntap', 'add', 'dev', name, 'mode', 'tap']);
      return name;
    } catch (e) {
      if (!linkExists(name)) throw e;
    }
  }
  throw virErr('OPERATION_FAILED', 'QEMU', 'no free tap name vnet0..vnet1023');
}

/** The taps this runtime created for type='bridge' interfaces, as the live definition names them. */
export function bridgeTaps(devices: readonly XmlElement[]): string[] {
  return devices
    .filter((e) => e.name === 'interface' && e.attrs.some(([k, v]) => k === 'type' && v === 'bridge'))
    .map((e) => firstChild(e, 'target'))
    .map((t) => t?.attrs.find(([k]) => k === 'dev')?.[1] ?? null)
    .filter((t): t is string => t !== null);
}

/** Remove taps we created; one that is already gone is fine. */
export async function removeTaps(taps: readonly string[], log: Logger): Promise<void> {
  for (const tap of taps) {
    if (!linkExists(tap)) continue;
    await ip(['link', 'del', 'dev', tap]).then(
      () => log.info({ tap }, 'tap removed'),
      (e: unknown) => log.warn({ tap, error: (e as Error).message }, 'cannot remove tap'),
    );
  }
}
