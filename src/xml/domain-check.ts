// domxml-check: what of a domain definition (say, `virsh dumpxml` of a
// libvirt VM) virtback's runtime would refuse or change, every element at
// once instead of define's first refusal. Pure.
//
// Each child of <domain> and of <devices> is tried alone, in a minimal domain,
// through the same parse define uses (parseDomainElement), so the reasons are
// define's own words and cannot drift from it. Disks and the agent channel go
// first: those accepted are context for the controllers that depend on them
// (a virtio-scsi controller needs a scsi disk). <vcpu> is context for <cpu>
// (its topology must hold the count). What is accepted but not kept as given
// is reported as changed: device <address>/<alias> (dropped) and a
// <currentMemory> above <memory> (clamped).

import { isVirError, type VirError } from '../errors.js';
import { DROPPED_DEVICE_CHILDREN, describeElement } from './domain-support.js';
import { parseDomainElement, parseMemoryKiB } from './domain.js';
import { attr, childElements, element, firstChild, parseXml, type XmlElement } from './tree.js';

export type FindingKind = 'refused' | 'changed';

export interface DomainCheckFinding {
  kind: FindingKind;
  /** where: 'cpu', 'devices/interface', 'devices/*\/address' */
  path: string;
  /** the element as written, e.g. <interface type='network'> */
  element: string;
  /** define's message (refused) or what happens to it (changed) */
  reason: string;
}

// the children parsed before the others, as context
const CONTEXT_DEVICES = ['disk', 'channel'];

/** Every element of `xml` that define would refuse, or keep otherwise than written. */
export function checkDomainXML(xml: string): DomainCheckFinding[] {
  const root = parseXml(xml);
  const findings: DomainCheckFinding[] = [];
  const type = attr(root, 'type');
  const virtType = type === 'kvm' ? 'kvm' : 'qemu';
  const probeRoot = (children: XmlElement[]): XmlElement => element('domain', [['type', virtType]], children);
  if (type !== 'qemu' && type !== 'kvm') {
    findings.push({ kind: 'refused', path: 'domain', element: `<domain type='${type ?? ''}'>`, reason: 'the domain type must be qemu or kvm' });
  }
  const others = root.attrs.filter(([k]) => k !== 'type' && k !== 'id' && k !== 'xmlns' && !k.startsWith('xmlns:'));
  for (const [k, v] of others) findings.push({ kind: 'refused', path: 'domain', element: `<domain ${k}='${v}'>`, reason: `attribute ${k} is not supported` });

  const top = childElements(root);
  const skeleton = [
    firstChild(root, 'name') ?? element('name', [], ['check']),
    element('memory', [['unit', 'KiB']], ['65536']),
  ];
  const tryAlone = (path: string, el: XmlElement, children: XmlElement[]): boolean => {
    const why = refusal(probeRoot(children));
    if (why === null) return true;
    findings.push({ kind: 'refused', path, element: describeElement(el), reason: why.message });
    return false;
  };

  // top-level elements other than <devices>, each with the skeleton (and <vcpu> for <cpu>)
  const vcpu = top.find((c) => c.name === 'vcpu');
  let vcpuOk = true;
  for (const c of top) {
    if (c.name === 'devices' || c.name === 'name') continue;
    const base = skeleton.filter((s) => s.name !== c.name);
    const context = c.name === 'cpu' && vcpu !== undefined && vcpuOk ? [vcpu] : [];
    const ok = tryAlone(c.name, c, [...base, ...context, c]);
    if (c.name === 'vcpu') vcpuOk = ok;
  }
  findings.push(...memoryChanges(top));

  // devices: context first, then the rest with the accepted context
  const devices = firstChild(root, 'devices');
  if (devices !== null) {
    const all = childElements(devices);
    const context = all.filter((d) => CONTEXT_DEVICES.includes(d.name))
      .filter((d) => tryAlone(`devices/${d.name}`, d, [...skeleton, element('devices', [], [d])]));
    for (const d of all.filter((x) => !CONTEXT_DEVICES.includes(x.name))) {
      tryAlone(`devices/${d.name}`, d, [...skeleton, element('devices', [], [...context, d])]);
    }
    findings.push(...droppedChildren(all));
  }

  // what only the whole definition shows (duplicate disk targets, ...), once each element passes
  if (findings.every((f) => f.kind !== 'refused')) {
    const why = refusal(root);
    if (why !== null) findings.push({ kind: 'refused', path: 'domain', element: '<domain>', reason: why.message });
  }
  return findings;
}

/** define's error for a <domain> element, or null when it is accepted. */
function refusal(root: XmlElement): VirError | null {
  try {
    parseDomainElement(root, { generateUUID: () => '00000000-0000-4000-8000-000000000000' });
    return null;
  } catch (e) {
    if (isVirError(e)) return e;
    throw e;
  }
}

/** <currentMemory> above <memory>: libvirt and virtback print <memory> instead. */
function memoryChanges(top: XmlElement[]): DomainCheckFinding[] {
  const mem = top.find((c) => c.name === 'memory');
  const cur = top.find((c) => c.name === 'currentMemory');
  if (mem === undefined || cur === undefined) return [];
  try {
    const [m, c] = [parseMemoryKiB(mem), parseMemoryKiB(cur)];
    if (c <= m) return [];
    return [{ kind: 'changed', path: 'currentMemory', element: describeElement(cur), reason: `above <memory>: ${m} KiB is kept` }];
  } catch {
    return []; // refused already, with the reason
  }
}

/** <address>/<alias> of devices: accepted and dropped (one finding per name, with the count). */
function droppedChildren(devices: XmlElement[]): DomainCheckFinding[] {
  return DROPPED_DEVICE_CHILDREN.flatMap((name) => {
    const n = devices.filter((d) => firstChild(d, name) !== null).length;
    if (n === 0) return [];
    return [{
      kind: 'changed' as const,
      path: `devices/*/${name}`,
      element: `<${name}>`,
      reason: `dropped from ${n} device${n === 1 ? '' : 's'}: libvirt's record of where it put a device; virtback places devices itself`,
    }];
  });
}

/** The report as text, one finding a line ('' when there is nothing); a refusal in define's words. */
export function formatDomainCheck(findings: readonly DomainCheckFinding[]): string {
  return findings.map((f) => (f.kind === 'refused'
    ? `refused: ${f.reason.startsWith(f.element) ? f.reason : `${f.element} (${f.path}): ${f.reason}`}\n`
    : `changed: ${f.element} (${f.path}): ${f.reason}\n`)).join('');
}
