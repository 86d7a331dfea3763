// QEMU arguments for a domain's serial ports, VNC display and video device
// (pure). Names follow libvirt's: chardev `charserial<N>`, device id
// (alias) `serial<N>`, `video0`. A pty's path and the VNC port are only
// known once QEMU runs: console.ts reads them back over QMP.

import { VNC_BASE_PORT, videoOf, vncOf, type VideoDef, type VncDef } from '../xml/domain-graphics.js';
import { interfacesOf } from '../xml/domain-net.js';
import { serialsOf, type SerialDef } from '../xml/domain-serial.js';
import type { XmlElement } from '../xml/tree.js';
import { netArgs } from './net-args.js';

/** QemuOpts value escaping: a comma inside a value is written twice. */
function opt(v: string): string {
  return v.replace(/,/g, ',,');
}

export function serialChardevId(port: number): string {
  return `charserial${port}`;
}

export function serialArgs(serials: readonly SerialDef[]): string[] {
  const args: string[] = [];
  for (const s of serials) {
    const id = serialChardevId(s.port);
    const backend = s.type === 'pty' ? `pty,id=${id}` : `file,id=${id},path=${opt(s.path!)}`;
    const log = s.log === null ? '' : `,logfile=${opt(s.log.file)},logappend=${s.log.append ? 'on' : 'off'}`;
    args.push('-chardev', backend + log, '-device', JSON.stringify({
      driver: 'isa-serial', chardev: id, id: `serial${s.port}`, index: s.port,
    }));
  }
  return args;
}

// Displays QEMU may try from the first (autoport): libvirt's range is 5900..65535.
const AUTOPORT_DISPLAYS = 1000;

/** -vnc: a fixed display, or the first free one from 5900 (to=). */
export function vncArgs(vnc: VncDef): string[] {
  const host = vnc.listen.includes(':') ? `[${vnc.listen}]` : vnc.listen;
  const display = vnc.port === null ? `0,to=${AUTOPORT_DISPLAYS}` : String(vnc.port - VNC_BASE_PORT);
  return ['-vnc', `${host}:${display}`];
}

const VIDEO_DEVICE: Record<VideoDef['model'], string> = { vga: 'VGA', virtio: 'virtio-vga', cirrus: 'cirrus-vga' };

export function videoArgs(video: VideoDef): string[] {
  const mem = video.vramKiB === null || video.model === 'virtio' ? {} : { vgamem_mb: Math.max(1, video.vramKiB / 1024) };
  return ['-device', JSON.stringify({ driver: VIDEO_DEVICE[video.model], id: 'video0', ...mem })];
}

/**
 * Arguments for the serial ports, network, display and video of `devices`
 * (a definition's other devices); `consoleLog` is the runtime's own serial
 * log, used when the definition has no serial port of its own;
 * `nicBootIndex` is the first interface's bootindex.
 */
export function peripheralArgs(devices: readonly XmlElement[], consoleLog: string | null, nicBootIndex?: number): string[] {
  const serials = serialsOf(devices);
  const args: string[] = serials.length > 0 || consoleLog === null
    ? serialArgs(serials)
    : ['-chardev', `file,id=charserial0,path=${opt(consoleLog)}`, '-serial', 'chardev:charserial0'];
  args.push(...netArgs(interfacesOf(devices), nicBootIndex));
  const vnc = vncOf(devices);
  if (vnc !== null) args.push(...vncArgs(vnc));
  const video = videoOf(devices);
  if (video !== null) args.push(...videoArgs(video));
  return args;
}
