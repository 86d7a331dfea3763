// <domain>: the subset of libvirt's domain XML that virtback runs.
// Parse and format live side by side here (like libvirt's domain_conf.c).
// Elements we do not interpret are kept as raw XML nodes and written back.

import type { XmlElement } from './tree.js';

export type DiskBus = 'scsi' | 'sata' | 'virtio';
export type DiskFormat = 'qcow2' | 'raw';

export interface DiskDef {
  type: 'file' | 'block';
  device: 'disk' | 'cdrom';
  /** <driver name='qemu' type=.../> */
  format: DiskFormat;
  /** <source file=.../> or <source dev=.../>; null for an empty cdrom */
  source: string | null;
  /** <target dev=.../> e.g. 'sda' */
  target: string;
  bus: DiskBus;
  readonly: boolean;
  /** children of <disk> we do not interpret, in document order */
  extra: XmlElement[];
}

/** A guest-agent channel: <channel type='unix'><source mode='bind' path=.../><target type='virtio' name='org.qemu.guest_agent.0'/></channel> */
export interface AgentChannelDef {
  /** socket path; null means "let the driver choose one in its run directory" */
  path: string | null;
}

export interface OsDef {
  /** <os><kernel>, <initrd>, <cmdline>: direct kernel boot (the tiny test guest) */
  kernel: string | null;
  initrd: string | null;
  cmdline: string | null;
}

export interface DomainDef {
  type: 'qemu' | 'kvm';
  name: string;
  uuid: string;
  /** <memory unit=...> normalised to KiB */
  memoryKiB: number;
  vcpu: number;
  os: OsDef;
  disks: DiskDef[];
  agent: AgentChannelDef | null;
  /** top-level children of <domain> we do not interpret, in document order */
  extra: XmlElement[];
}
