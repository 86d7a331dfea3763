// `event [DOM] --event NAME [--loop] [--timeout S] [--timestamp]`: virsh's
// event watcher for the events we deliver: job-completed, block-job,
// lifecycle, reboot, io-error and io-error-reason (virsh's two names for the
// one io-error event, which carries the reason). Without --loop it ends after the first event; it ends with
// "events received: N", except with --json: then stdout holds only the
// events, one JSON object per line.

import { Option, type Command } from 'commander';
import type { DriverEvent } from '../../api/driver.js';
import { CheckedDriver } from '../../api/checked-driver.js';
import type { Connect } from '../../api/public.js';
import { lookupDomain, withConnection } from '../connection.js';
import { blockJobStatusString, blockJobTypeString, capitalise, formatTimestamp, out, usageError } from '../output.js';
import { jsonLine } from '../progress.js';

export const EVENT_NAMES = ['lifecycle', 'reboot', 'io-error', 'io-error-reason', 'block-job', 'job-completed'] as const;
type EventName = (typeof EVENT_NAMES)[number];

/** The driver event each name prints. */
const DRIVER_TYPE: Record<EventName, DriverEvent['type']> = {
  lifecycle: 'lifecycle',
  reboot: 'reboot',
  'io-error': 'io-error',
  'block-job': 'block-job',
  'io-error-reason': 'io-error',
  'job-completed': 'job-completed',
};

/** virshEventIOErrorAction */
const IO_ERROR_ACTIONS = ['none', 'pause', 'report'];

/** The raw (typed-parameter) form of job-completed stats, in libvirt's order. */
const JOB_KEYS = ['operation', 'time_elapsed', 'disk_total', 'disk_processed', 'disk_remaining', 'disk_temp_used', 'disk_temp_total', 'success', 'errmsg'] as const;

/** One event as virsh prints it (without the timestamp); `name` picks virsh's io-error or io-error-reason line. */
export function formatEvent(ev: DriverEvent, name: EventName = ev.type): string {
  const head = `event '${name}' for domain '${ev.domain.name}'`;
  switch (ev.type) {
    case 'io-error': {
      const line = `${head}: ${ev.srcPath} (${ev.devAlias}) ${IO_ERROR_ACTIONS[ev.action] ?? 'unknown'}`;
      return name === 'io-error-reason' ? `${line} due to ${ev.reason}\n` : `${line}\n`;
    }
    case 'lifecycle':
      return `${head}: ${capitalise(ev.event)} ${capitalise(ev.detail)}\n`;
    case 'reboot':
      return `${head}\n`;
    case 'block-job':
      return `${head}: ${blockJobTypeString(ev.blockJobType)} for ${ev.path} ${blockJobStatusString(ev.status)}\n`;
    case 'job-completed': {
      let s = `${head}:\n`;
      for (const k of JOB_KEYS) {
        const v = ev.stats[k];
        if (v !== undefined) s += `\t${k}: ${typeof v === 'boolean' ? (v ? 'yes' : 'no') : String(v)}\n`;
      }
      return s;
    }
  }
}

/** Test seam: called once the daemon has confirmed the subscription. */
let readyHook: (() => void) | null = null;
export function onEventLoopReady(fn: (() => void) | null): void {
  readyHook = fn;
}

async function whenSubscribed(conn: Connect): Promise<void> {
  const raw = conn.rawDriver;
  const inner = raw instanceof CheckedDriver ? raw.inner : raw;
  const w = (inner as { whenSubscribed?: () => Promise<void> }).whenSubscribed;
  if (typeof w === 'function') await w.call(inner);
}

interface EventOptions {
  event?: EventName;
  all?: boolean;
  list?: boolean;
  loop?: boolean;
  timeout?: string;
  timestamp?: boolean;
  json?: boolean;
}

export function register(program: Command): void {
  program
    .command('event')
    .description('Domain Events')
    .argument('[domain]', 'filter by domain name, id or uuid')
    .addOption(new Option('--event <name>', 'which event type to wait for').choices([...EVENT_NAMES]))
    .option('--all', 'wait for all events instead of just one type')
    .option('--list', 'list valid event types')
    .option('--loop', 'loop until timeout or interrupt, rather than one-shot')
    .option('--timeout <seconds>', 'timeout seconds')
    .option('--timestamp', 'show timestamp for each printed event')
    .option('--json', 'print each event as one line of JSON, and nothing else')
    .action(async (ref: string | undefined, o: EventOptions, cmd: Command) => {
      if (o.list) {
        out(EVENT_NAMES.map((n) => `${n}\n`).join(''));
        return;
      }
      if (o.event === undefined && !o.all) usageError(cmd, 'one of --list, --all, or --event <type> is required');
      if (o.event !== undefined && o.all) usageError(cmd, 'Options --event and --all are mutually exclusive');
      let timeoutMs: number | null = null;
      if (o.timeout !== undefined) {
        if (!/^\d+$/.test(o.timeout) || Number(o.timeout) < 1) usageError(cmd, `invalid timeout '${o.timeout}'`);
        timeoutMs = Number(o.timeout) * 1000;
      }
      const types: EventName[] = o.event === undefined ? [...EVENT_NAMES] : [o.event];
      await withConnection(cmd, async (conn) => {
        const uuid = ref === undefined ? null : (await lookupDomain(conn, ref)).uuid;
        let count = 0;
        let finish = (): void => {};
        const outcome = await new Promise<'done' | 'timeout' | 'interrupt'>((resolve) => {
          const print = (ev: DriverEvent, names: EventName[]): void => {
            if (uuid !== null && ev.domain.uuid !== uuid) return;
            // JSON has one line per driver event; virsh's text one per name (io-error and io-error-reason)
            for (const name of o.json ? names.slice(0, 1) : names) {
              if (!o.loop && count > 0) return;
              count++;
              const stamp = o.timestamp ? `${formatTimestamp(new Date())}: ` : '';
              if (o.json) out(jsonLine({ ...(o.timestamp ? { timestamp: new Date().toISOString() } : {}), ...ev }));
              else out(stamp + formatEvent(ev, name));
              if (!o.loop) resolve('done');
            }
          };
          const driverTypes = [...new Set(types.map((t) => DRIVER_TYPE[t]))];
          const offs = driverTypes.map((d) => conn.on(d, (ev) => print(ev as DriverEvent, types.filter((t) => DRIVER_TYPE[t] === d))));
          const timer = timeoutMs === null ? null : setTimeout(() => resolve('timeout'), timeoutMs);
          const onSigint = (): void => resolve('interrupt');
          process.once('SIGINT', onSigint);
          void whenSubscribed(conn).then(() => readyHook?.());
          finish = () => {
            for (const off of offs) off();
            if (timer !== null) clearTimeout(timer);
            process.removeListener('SIGINT', onSigint);
          };
        });
        finish();
        if (o.json) return;
        if (outcome === 'timeout') out('event loop timed out\n');
        else if (outcome === 'interrupt') out('event loop interrupted\n');
        out(`events received: ${count}\n`);
      });
    });
}
