// <graphics type='vnc'> and <video>: the display virtback's runtime runs.
//
// VNC listens on one address (listen= or <listen type='address'>; libvirt's
// default vnc_listen, 127.0.0.1, when neither is given). autoport='yes' (or
// port='-1') lets QEMU take the first free display from 5900 up; the live
// definition shows the port taken, as libvirt's does. A display needs a
// video device: without <video> the definition gets libvirt's default for
// x86 q35, a VGA.

import { virErr } from '../errors.js';
import { clip } from './limits.js';
import { unexpectedAttr, unsupported } from './domain-support.js';
import { attr, childElements, element, firstChild } from './node.js';
import type { XmlElement } from './node.js';

export interface VncDef {
  /** null = the first free port from 5900 (autoport) */
  port: number | null;
  listen: string;
}

export const VIDEO_MODELS = ['vga', 'virtio', 'cirrus'] as const;
export type VideoModel = (typeof VIDEO_MODELS)[number];

export interface VideoDef {
  model: VideoModel;
  /** KiB of video memory (vga, cirrus) */
  vramKiB: number | null;
}

export const VNC_BASE_PORT = 5900;
const DEFAULT_LISTEN = '127.0.0.1';
const ADDRESS_RE = /^[0-9a-fA-F.:]{2,45}$/;

function refuse(path: string, el: XmlElement, why: string | null): void {
  if (why !== null) throw unsupported(path, el, why);
}

/** A checked <graphics>. */
export function vncDef(el: XmlElement): VncDef {
  const head = element('graphics', el.attrs);
  if (attr(el, 'type') !== 'vnc') {
    throw unsupported('devices/graphics', head, `type='${clip(attr(el, 'type') ?? '')}' is not supported`, "type='vnc'");
  }
  refuse('devices/graphics', head, unexpectedAttr(el, { type: null, port: null, autoport: ['yes', 'no'], listen: null }));
  const portAttr = attr(el, 'port');
  const auto = attr(el, 'autoport') === 'yes' || portAttr === null || portAttr === '-1';
  let port: number | null = null;
  if (!auto) {
    if (!/^[0-9]{4,5}$/.test(portAttr!) || Number(portAttr) < VNC_BASE_PORT || Number(portAttr) > 65535) {
      throw virErr('XML_ERROR', 'DOMAIN', `invalid VNC port '${clip(portAttr!)}' (${VNC_BASE_PORT}..65535, or autoport='yes')`);
    }
    port = Number(portAttr);
  }
  const listens = childElements(el);
  const bad = listens.find((c) => c.name !== 'listen');
  if (bad !== undefined) refuse(`devices/graphics/${bad.name}`, bad, 'not supported');
  if (listens.length > 1) refuse('devices/graphics/listen', listens[1]!, 'only one <listen> is supported');
  let listen = attr(el, 'listen');
  const l = listens[0];
  if (l !== undefined) {
    refuse('devices/graphics/listen', l, unexpectedAttr(l, { type: ['address'], address: null }));
    const a = attr(l, 'address');
    if (listen !== null && a !== null && a !== listen) {
      throw virErr('XML_ERROR', 'DOMAIN', `graphics 'listen' attribute '${listen}' must match 'address' attribute of first listen element (found '${a}')`);
    }
    listen ??= a;
  }
  listen ??= DEFAULT_LISTEN;
  if (!ADDRESS_RE.test(listen)) throw virErr('XML_ERROR', 'DOMAIN', `invalid VNC listen address '${clip(listen)}'`);
  return { port, listen };
}

/** A checked <video>. */
export function videoDef(el: XmlElement): VideoDef {
  const bad = childElements(el).find((c) => c.name !== 'model');
  if (bad !== undefined) refuse(`devices/video/${bad.name}`, bad, 'not supported');
  const model = firstChild(el, 'model');
  if (model === null) return { model: 'vga', vramKiB: null };
  const type = attr(model, 'type') ?? 'vga';
  refuse('devices/video/model', model, unexpectedAttr(model, {
    type: VIDEO_MODELS, vram: type === 'virtio' ? [] : null, heads: ['1'], primary: ['yes'],
  }) ?? (childElements(model).length > 0 ? 'child elements are not supported' : null));
  const vram = attr(model, 'vram');
  if (vram !== null && (!/^[0-9]{1,7}$/.test(vram) || Number(vram) < 1024 || (Number(vram) & (Number(vram) - 1)) !== 0)) {
    throw virErr('XML_ERROR', 'DOMAIN', `video vram '${clip(vram)}' must be a power of two KiB, at least 1024`);
  }
  return { model: type as VideoModel, vramKiB: vram === null ? null : Number(vram) };
}

/**
 * Check <graphics> and <video> of `devices` (in place): at most one of each;
 * a display without a video device gets libvirt's default one.
 */
export function completeDisplay(devices: XmlElement[]): void {
  const graphics = devices.filter((e) => e.name === 'graphics');
  const video = devices.filter((e) => e.name === 'video');
  graphics.forEach(vncDef);
  video.forEach(videoDef);
  if (graphics.length > 1) refuse('devices/graphics', graphics[1]!, 'only one <graphics> is supported');
  if (video.length > 1) refuse('devices/video', video[1]!, 'only one <video> is supported');
  if (graphics.length === 1 && video.length === 0) {
    devices.push(element('video', [], [element('model', [['type', 'vga'], ['heads', '1'], ['primary', 'yes']])]));
  }
}

export function vncOf(devices: readonly XmlElement[]): VncDef | null {
  const g = devices.find((e) => e.name === 'graphics');
  return g === undefined ? null : vncDef(g);
}

export function videoOf(devices: readonly XmlElement[]): VideoDef | null {
  const v = devices.find((e) => e.name === 'video');
  return v === undefined ? null : videoDef(v);
}

/** The live <graphics>: the port QEMU took, autoport kept, the listen address spelled out as libvirt does. */
export function liveGraphics(el: XmlElement, port: number, listen: string): XmlElement {
  const auto = vncDef(el).port === null;
  return element('graphics', [['type', 'vnc'], ['port', String(port)], ['autoport', auto ? 'yes' : 'no'], ['listen', listen]], [
    element('listen', [['type', 'address'], ['address', listen]]),
  ]);
}
