// <cpu>: the guest CPU model and topology, read from the kept <cpu> element
// (pure). domain-support.ts checks the element with checkCpu at define;
// command-line.ts runs cpuArgs as -cpu and the -smp topology.
//
// Modes, as libvirt's QEMU driver runs them:
// - host-passthrough: the host CPU as is (-cpu host). It needs KVM: libvirt
//   refuses it for a type='qemu' domain ("... is not supported by hypervisor")
//   and so does this at define; type='kvm' without /dev/kvm fails at start with
//   "Domain requires KVM" like any KVM domain.
// - host-model: under KVM the host CPU (-cpu host: no migration, so no need for
//   libvirt's migratable expansion); under TCG libvirt expands host-model from
//   QEMU's 'max' CPU (its TCG host model is query-cpu-model-expansion of
//   'max'), so 'max' is what runs.
// - custom: <model> is a QEMU CPU model (QEMU refuses an unknown one at
//   start); <feature policy=require|force> turns a flag on, disable|forbid off.

import { clip } from './limits.js';
import { attr, childElements, textContent } from './node.js';
import type { XmlElement } from './node.js';

export type CpuMode = 'host-passthrough' | 'host-model' | 'custom';

export interface CpuTopology {
  sockets: number;
  dies: number;
  cores: number;
  threads: number;
}

export interface CpuDef {
  mode: CpuMode;
  /** <model> text (custom); null: QEMU's default model */
  model: string | null;
  /** QEMU property name -> on/off, from <feature policy name> */
  features: [string, boolean][];
  topology: CpuTopology | null;
}

const MODES: readonly string[] = ['host-passthrough', 'host-model', 'custom'];
const ATTRS: Record<string, readonly string[] | null> = {
  mode: MODES, match: ['exact', 'minimum', 'strict'], check: ['none', 'partial', 'full'], migratable: ['on', 'off'],
};
const FEATURE_ON: Record<string, boolean> = { require: true, force: true, disable: false, forbid: false };
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

/** libvirt's message for a CPU mode the hypervisor cannot run (virQEMUCapsIsCPUModeSupported failing). */
export function cpuModeUnsupported(mode: string, virtType: string): string {
  return `CPU mode '${mode}' for x86_64 ${virtType} domain on x86_64 host is not supported by hypervisor`;
}

function positive(el: XmlElement, name: string): number | string {
  const v = attr(el, name);
  if (v === null) return 1;
  return /^[1-9][0-9]{0,5}$/.test(v) ? Number(v) : `${name}='${clip(v)}' must be a positive integer`;
}

function parseTopology(el: XmlElement): CpuTopology | string {
  for (const [k, v] of el.attrs) {
    if (!['sockets', 'dies', 'cores', 'threads', 'clusters'].includes(k)) return `attribute ${k}='${clip(v)}' of <topology> is not supported`;
  }
  if ((attr(el, 'clusters') ?? '1') !== '1') return "clusters other than '1' are not supported";
  const t = { sockets: positive(el, 'sockets'), dies: positive(el, 'dies'), cores: positive(el, 'cores'), threads: positive(el, 'threads') };
  for (const v of Object.values(t)) if (typeof v === 'string') return v;
  return t as CpuTopology;
}

function parseFeature(el: XmlElement): [string, boolean] | string {
  for (const [k, v] of el.attrs) if (k !== 'policy' && k !== 'name') return `attribute ${k}='${clip(v)}' of <feature> is not supported`;
  const name = attr(el, 'name') ?? '';
  const policy = attr(el, 'policy') ?? 'require';
  if (!NAME.test(name)) return `feature name '${clip(name)}' is not valid`;
  const on = FEATURE_ON[policy];
  if (on === undefined) return `feature policy '${clip(policy)}' is not supported (only require, force, disable, forbid)`;
  return [name, on];
}

/** The <cpu> element read, or the reason it cannot run. */
export function parseCpu(el: XmlElement): CpuDef | string {
  for (const [k, v] of el.attrs) {
    const allowed = ATTRS[k];
    if (allowed === undefined) return `attribute ${k}='${clip(v)}' is not supported`;
    if (allowed !== null && !allowed.includes(v)) return `${k}='${clip(v)}' is not supported (only ${allowed.map((x) => `'${x}'`).join(', ')})`;
  }
  const mode = (attr(el, 'mode') ?? 'custom') as CpuMode;
  const def: CpuDef = { mode, model: null, features: [], topology: null };
  for (const c of childElements(el)) {
    if (c.name === 'model' && mode === 'custom') {
      const why = c.attrs.find(([k, v]) => !(k === 'fallback' && ['allow', 'forbid'].includes(v)));
      if (why) return `attribute ${why[0]}='${clip(why[1])}' of <model> is not supported`;
      def.model = textContent(c).trim();
      if (!NAME.test(def.model)) return `CPU model '${clip(def.model)}' is not valid`;
    } else if (c.name === 'topology') {
      const t = parseTopology(c);
      if (typeof t === 'string') return t;
      def.topology = t;
    } else if (c.name === 'feature' && mode === 'custom') {
      const f = parseFeature(c);
      if (typeof f === 'string') return f;
      def.features.push(f);
    } else {
      return `child <${c.name}> is not supported${mode === 'custom' ? '' : ` with mode='${mode}'`}`;
    }
  }
  if (mode === 'custom' && def.model === null && def.features.length > 0) return '<feature> needs a <model>';
  return def;
}

/** The check of domain-support.ts: null when `el` can run for a domain of `virtType`. */
export function checkCpu(el: XmlElement, virtType: string): string | null {
  const cpu = parseCpu(el);
  if (typeof cpu === 'string') return cpu;
  if (cpu.mode === 'host-passthrough' && virtType !== 'kvm') return cpuModeUnsupported(cpu.mode, virtType);
  return null;
}

/** The kept <cpu> of a domain (its top-level children), read; null when there is none. */
export function cpuOf(extra: readonly XmlElement[]): CpuDef | null {
  const el = extra.find((e) => e.name === 'cpu');
  if (el === undefined) return null;
  const cpu = parseCpu(el);
  return typeof cpu === 'string' ? null : cpu;
}

/** vCPUs a topology holds (libvirt's virDomainDefGetVcpusTopology). */
export function topologyCpus(t: CpuTopology): number {
  return t.sockets * t.dies * t.cores * t.threads;
}

/** -cpu and -smp for `cpu` (null: QEMU's default CPU), `vcpu` CPUs, on `accel`. */
export function cpuArgs(cpu: CpuDef | null, vcpu: number, accel: 'kvm' | 'tcg'): string[] {
  const t = cpu?.topology ?? null;
  const smp = t === null ? String(vcpu) : `${vcpu},sockets=${t.sockets},dies=${t.dies},cores=${t.cores},threads=${t.threads}`;
  const args = ['-smp', smp];
  if (cpu === null) return args;
  let model: string | null;
  switch (cpu.mode) {
    case 'host-passthrough':
      model = 'host';
      break;
    case 'host-model':
      model = accel === 'kvm' ? 'host' : 'max';
      break;
    case 'custom':
      model = cpu.model;
      break;
  }
  if (model !== null) args.push('-cpu', [model, ...cpu.features.map(([n, on]) => `${n}=${on ? 'on' : 'off'}`)].join(','));
  return args;
}

