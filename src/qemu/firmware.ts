// UEFI firmware for a domain: which code image and NVRAM template it runs
// (libvirt's firmware autoselection, reduced to Debian's OVMF), its own NVRAM
// (a copy of the template made at its first start, libvirt's
// /var/lib/libvirt/qemu/nvram/NAME_VARS.fd, here <state-dir>/nvram/NAME_VARS.fd),
// the QEMU arguments that map both as pflash, and the NVRAM's end at undefine
// (libvirt's UNDEFINE_NVRAM / UNDEFINE_KEEP_NVRAM).

import { chmod, copyFile, mkdir, readdir, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { virErr } from '../errors.js';
import { UndefineFlags } from '../flags.js';
import { usesUefi } from '../xml/domain-boot.js';
import type { DomainDef } from '../xml/domain.js';

/** Debian's ovmf package: 4 MiB non-Secure-Boot OVMF, what firmware='efi' selects (the descriptor 60-edk2-x86_64.json). */
export const OVMF_CODE = '/usr/share/OVMF/OVMF_CODE_4M.fd';
export const OVMF_VARS = '/usr/share/OVMF/OVMF_VARS_4M.fd';

// The NVRAM template of a known code image when <nvram template> names none
// (libvirt reads the pairs from /usr/share/qemu/firmware/*.json).
const TEMPLATES: Readonly<Record<string, string>> = {
  [OVMF_CODE]: OVMF_VARS,
  '/usr/share/OVMF/OVMF_CODE.fd': '/usr/share/OVMF/OVMF_VARS.fd',
};

/** What a UEFI domain runs with. */
export interface FirmwareFiles {
  /** read-only code image (pflash0) */
  code: string;
  /** the domain's own variable store (pflash1) */
  vars: string;
  /** what `vars` is made from when missing; null when no template is known */
  template: string | null;
}

/** The domain's NVRAM default: <dir>/NAME_VARS.fd, as libvirt names it. */
export function defaultNvramPath(nvramDir: string, name: string): string {
  return path.join(nvramDir, `${name}_VARS.fd`);
}

/** The firmware files of a definition; null for BIOS. */
export function resolveFirmware(def: DomainDef, nvramDir: string): FirmwareFiles | null {
  const fw = def.os.firmware;
  if (!usesUefi(fw)) return null;
  const code = fw.loader ?? OVMF_CODE;
  return {
    code,
    vars: fw.nvram ?? defaultNvramPath(nvramDir, def.name),
    template: fw.nvramTemplate ?? TEMPLATES[code] ?? null,
  };
}

/** The live definition names what runs, as libvirt's live XML does. */
export function withFirmwareFiles(def: DomainDef, files: FirmwareFiles): DomainDef {
  const fw = def.os.firmware!;
  return { ...def, os: { ...def.os, firmware: { ...fw, loader: files.code, nvram: files.vars, nvramTemplate: files.template } } };
}

/**
 * Before a start: the code image must be there, and the NVRAM (copied from
 * the template, 0600, when missing or when `reset` asks for a fresh one).
 */
export async function prepareNvram(files: FirmwareFiles, opts: { reset: boolean }): Promise<void> {
  if ((await stat(files.code).catch(() => null))?.isFile() !== true) {
    throw virErr('OPERATION_FAILED', 'QEMU',
      `operation failed: Unable to find 'efi' firmware '${files.code}' (Debian package ovmf)`);
  }
  if (!opts.reset && (await stat(files.vars).catch(() => null)) !== null) return;
  if (files.template === null) {
    throw virErr('OPERATION_FAILED', 'QEMU', `unable to find any master var store for loader: ${files.code}`);
  }
  await mkdir(path.dirname(files.vars), { recursive: true, mode: 0o700 });
  const tmp = `${files.vars}.tmp-${process.pid}`;
  await removeStaleCopies(files.vars);
  try {
    await copyFile(files.template, tmp);
    await chmod(tmp, 0o600);
    await rename(tmp, files.vars);
  } catch (e) {
    await rm(tmp, { force: true });
    throw virErr('SYSTEM_ERROR', 'QEMU', `cannot create NVRAM '${files.vars}' from '${files.template}': ${(e as Error).message}`, e);
  }
}

/**
 * Remove the copies (`<vars>.tmp-<pid>`) that starts SIGKILLed before their
 * rename left: the next start copies under its own pid's name, and the state
 * directory's sweep matches neither this name nor an NVRAM path set in the
 * XML. One daemon owns a domain, so another pid's copy is nobody's.
 */
async function removeStaleCopies(vars: string): Promise<void> {
  const dir = path.dirname(vars);
  const prefix = `${path.basename(vars)}.tmp-`;
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    const pid = name.startsWith(prefix) ? name.slice(prefix.length) : '';
    if (/^\d+$/.test(pid) && Number(pid) !== process.pid) await rm(path.join(dir, name), { force: true }).catch(() => {});
  }
}

/**
 * At undefine (libvirt's qemuDomainUndefineFlags): NVRAM removes the domain's
 * variable store, KEEP_NVRAM keeps it, neither is refused while it exists
 * (its boot entries would be lost without anyone asking).
 */
export async function undefineNvram(def: DomainDef, nvramDir: string, flags: number): Promise<void> {
  const files = resolveFirmware(def, nvramDir);
  if (files === null) return;
  if (flags & UndefineFlags.NVRAM) {
    await rm(files.vars, { force: true });
  } else if (!(flags & UndefineFlags.KEEP_NVRAM) && (await stat(files.vars).catch(() => null)) !== null) {
    throw virErr('OPERATION_INVALID', 'QEMU', 'Requested operation is not valid: cannot undefine domain with nvram');
  }
}

/** -blockdev nodes and -machine properties mapping the code (read-only) and the NVRAM as pflash0/pflash1 (libvirt's names). */
export function pflashArgs(files: FirmwareFiles): { blockdevs: string[]; machineProps: string } {
  const blockdevs: string[] = [];
  ([[files.code, 0, true], [files.vars, 1, false]] as const).forEach(([file, unit, readOnly]) => {
    blockdevs.push(
      '-blockdev', JSON.stringify({ driver: 'file', filename: file, 'node-name': `libvirt-pflash${unit}-storage`, 'auto-read-only': true, discard: 'unmap' }),
      '-blockdev', JSON.stringify({ 'node-name': `libvirt-pflash${unit}-format`, 'read-only': readOnly, driver: 'raw', file: `libvirt-pflash${unit}-storage` }),
    );
  });
  return { blockdevs, machineProps: ',pflash0=libvirt-pflash0-format,pflash1=libvirt-pflash1-format' };
}
