// <os> firmware and the boot order, parsed and formatted (pure).
//
// Firmware: BIOS (SeaBIOS, QEMU's own) unless <os firmware='efi'> or a pflash
// <loader> asks for UEFI. firmware='efi' leaves the choice of loader and NVRAM
// template to the runtime (libvirt's autoselection; qemu/firmware.ts); an
// explicit <loader readonly='yes' type='pflash'>CODE</loader> with
// <nvram template='VARS'>PATH</nvram> names them. The NVRAM is the domain's
// own copy of the template, made at its first start.
//
// Boot order: <os><boot dev='hd'|'cdrom'|'network'/> in order, or <boot
// order='N'/> on devices (never both, libvirt's rule). Both become QEMU's
// per-device bootindex (libvirt does the same since QEMU has it): the first
// disk of each named kind, or the first <interface> for 'network', gets the
// next index. A NIC boots through its option ROM: QEMU's iPXE (Debian's
// ipxe-qemu, a dependency of qemu-system-x86).

import { virErr } from '../errors.js';
import { checkPath } from './limits.js';
import { unexpectedAttr, unsupported } from './domain-support.js';
import { attr, childElements, element, textContent } from './node.js';
import type { XmlElement } from './node.js';

export interface FirmwareDef {
  /** <os firmware='efi'>: the runtime picks what <loader>/<nvram> leave open */
  efi: boolean;
  /** <loader readonly='yes' type='pflash'>: the UEFI code image; null = autoselected */
  loader: string | null;
  /** <nvram>PATH</nvram>: the domain's variable store; null = the driver's default path */
  nvram: string | null;
  /** <nvram template=...>: what a new variable store is copied from; null = autoselected */
  nvramTemplate: string | null;
}

/** What needs only a loader and an NVRAM, given or chosen. */
export function usesUefi(fw: FirmwareDef | null | undefined): fw is FirmwareDef {
  return fw != null && (fw.efi || fw.loader !== null);
}

function absolute(what: string, p: string): string {
  checkPath('DOMAIN', what, p);
  if (!p.startsWith('/')) throw virErr('XML_ERROR', 'DOMAIN', `${what} '${p}' must be an absolute path`);
  return p;
}

/**
 * <os firmware=...> with its <loader> and <nvram> children; null for BIOS.
 * Refuses what the runtime would not run: a ROM or writable loader, Secure
 * Boot (it needs SMM), an NVRAM without UEFI.
 */
export function parseFirmware(firmware: string | null, loaderEl: XmlElement | null, nvramEl: XmlElement | null): FirmwareDef | null {
  if (firmware === 'bios' && loaderEl !== null) {
    throw unsupported('os/loader', loaderEl, "a pflash loader with firmware='bios'");
  }
  if (loaderEl !== null) {
    const why = unexpectedAttr(loaderEl, { readonly: ['yes'], type: ['pflash'], secure: ['no'] }) ??
      (attr(loaderEl, 'readonly') === null ? "readonly='yes' is required (the code image is never written)" : null) ??
      (childElements(loaderEl).length > 0 ? 'child elements are not supported' : null);
    if (why !== null) throw unsupported('os/loader', loaderEl, why);
  }
  if (nvramEl !== null) {
    const why = unexpectedAttr(nvramEl, { template: null }) ??
      (childElements(nvramEl).length > 0 ? 'child elements are not supported' : null) ??
      (firmware !== 'efi' && loaderEl === null ? 'an NVRAM needs UEFI (<os firmware=\'efi\'> or a pflash <loader>)' : null);
    if (why !== null) throw unsupported('os/nvram', nvramEl, why);
  }
  if (firmware !== 'efi' && loaderEl === null) return null;
  const loaderText = loaderEl === null ? '' : textContent(loaderEl).trim();
  const nvramText = nvramEl === null ? '' : textContent(nvramEl).trim();
  const template = nvramEl === null ? null : attr(nvramEl, 'template');
  return {
    efi: firmware === 'efi',
    loader: loaderText === '' ? null : absolute('UEFI loader', loaderText),
    nvram: nvramText === '' ? null : absolute('NVRAM', nvramText),
    nvramTemplate: template === null ? null : absolute('NVRAM template', template),
  };
}

/** <loader> and <nvram> as given (or as the runtime chose them, in the live XML). */
export function firmwareToElements(fw: FirmwareDef | null | undefined): XmlElement[] {
  if (!usesUefi(fw)) return [];
  const out: XmlElement[] = [];
  if (fw.loader !== null) out.push(element('loader', [['readonly', 'yes'], ['type', 'pflash']], [fw.loader]));
  if (fw.nvram !== null || fw.nvramTemplate !== null) {
    out.push(element('nvram', fw.nvramTemplate === null ? [] : [['template', fw.nvramTemplate]], fw.nvram === null ? [] : [fw.nvram]));
  }
  return out;
}

// ---------------------------------------------------------------- boot order

/** <boot order='N'/> of a device: a positive index. */
export function parseBootOrder(el: XmlElement, device: string): number {
  const why = unexpectedAttr(el, { order: null }) ?? (childElements(el).length > 0 ? 'child elements are not supported' : null);
  if (why !== null) throw unsupported(`devices/${device}/boot`, el, why);
  const order = attr(el, 'order') ?? '';
  if (!/^[0-9]+$/.test(order) || Number(order) === 0 || Number(order) > 0xffff) {
    throw virErr('XML_ERROR', 'DOMAIN', `incorrect boot order '${order}', expecting positive integer`);
  }
  return Number(order);
}

/** What the boot order needs of a disk. */
export interface BootDisk {
  target: string;
  device: 'disk' | 'cdrom';
  bootOrder?: number | null;
}

/** The <os><boot dev=...> values, in order. */
export function osBootDevs(osExtra: readonly XmlElement[]): string[] {
  return osExtra.filter((e) => e.name === 'boot').map((e) => attr(e, 'dev') ?? '');
}

/** libvirt's post-parse checks: per-device and <os> boot elements exclude each other; orders are unique. */
export function checkBootOrder(disks: readonly BootDisk[], osExtra: readonly XmlElement[]): void {
  const ordered = disks.filter((d) => d.bootOrder != null);
  if (ordered.length > 0 && osBootDevs(osExtra).length > 0) {
    throw virErr('XML_ERROR', 'DOMAIN', 'per-device boot elements cannot be used together with os/boot elements');
  }
  const seen = new Map<number, string>();
  for (const d of ordered) {
    const other = seen.get(d.bootOrder!);
    if (other !== undefined) throw virErr('XML_ERROR', 'DOMAIN', `boot order ${d.bootOrder} used for more than one device`);
    seen.set(d.bootOrder!, d.target);
  }
}

/**
 * QEMU's bootindex per disk target: the per-device orders, else for each
 * <os><boot dev> the first disk of that kind. Empty without boot elements
 * (the firmware's own order: SeaBIOS and OVMF try the disks in turn).
 */
export function diskBootIndexes(disks: readonly BootDisk[], osExtra: readonly XmlElement[]): Map<string, number> {
  const out = new Map<string, number>();
  if (disks.some((d) => d.bootOrder != null)) {
    for (const d of disks) if (d.bootOrder != null) out.set(d.target, d.bootOrder);
    return out;
  }
  let index = 1;
  for (const dev of osBootDevs(osExtra)) {
    const kind = dev === 'hd' ? 'disk' : dev === 'cdrom' ? 'cdrom' : null; // 'network': networkBootIndex
    const disk = disks.find((d) => d.device === kind && !out.has(d.target));
    if (disk !== undefined) out.set(disk.target, index);
    index++;
  }
  return out;
}

/** The bootindex of the domain's first <interface>: where <os><boot dev='network'/> stands in the order, if it does. */
export function networkBootIndex(osExtra: readonly XmlElement[]): number | undefined {
  const at = osBootDevs(osExtra).indexOf('network');
  return at < 0 ? undefined : at + 1;
}
