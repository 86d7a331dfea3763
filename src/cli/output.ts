// What the CLI prints, in virsh's formats: vshTable tables, "%-15s %s"
// info lines, vshPrettyCapacity sizes, local times as strftime
// "%Y-%m-%d %H:%M:%S %z". Pure functions return strings; out()/json() write
// to process.stdout at call time (tests replace process.stdout.write).

import type { Command } from 'commander';
import { DomainState, JobOperation, JobType } from '../flags.js';

/** Write to standard output. */
export function out(text: string): void {
  process.stdout.write(text);
}

/** Print a value as pretty JSON (the --json form of listing and info commands). */
export function json(value: unknown): void {
  out(`${JSON.stringify(value, null, 2)}\n`);
}

/**
 * Bad usage found by a command itself (mutually exclusive options, a
 * malformed option value): printed like commander's own usage errors and
 * ending in exit status 2.
 */
export function usageError(cmd: Command, message: string): never {
  return cmd.error(`error: ${message}`, { exitCode: 2, code: 'virtback.usage' });
}

/** virsh's VSH_EXCLUSIVE_OPTIONS: usage error when both are set. */
export function exclusive(cmd: Command, a: [string, unknown], b: [string, unknown]): void {
  if (a[1] && b[1]) usageError(cmd, `Options --${a[0]} and --${b[0]} are mutually exclusive`);
}

/** virsh's VSH_REQUIRE_OPTION: usage error when `opt` is set without `required`. */
export function requireOption(cmd: Command, opt: [string, unknown], required: [string, unknown]): void {
  if (opt[1] && !required[1]) usageError(cmd, `Option --${required[0]} is required by option --${opt[0]}`);
}

/**
 * virsh's vshTable: every cell is " " + text, padded to the column width
 * plus two spaces except in the last column; a dashed line of
 * sum(width + 3) under the header.
 */
export function formatTable(header: string[], rows: string[][], withHeader = true): string {
  const widths = header.map((h, i) => Math.max(withHeader ? h.length : 0, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string =>
    cells.map((c, i) => ` ${c}${i < cells.length - 1 ? ' '.repeat(widths[i]! - c.length + 2) : ''}`).join('') + '\n';
  let s = '';
  if (withHeader) s += line(header) + '-'.repeat(widths.reduce((a, w) => a + w + 3, 0)) + '\n';
  for (const r of rows) s += line(header.map((_h, i) => r[i] ?? ''));
  return s;
}

/** virsh's "%-15s %s" lines (dominfo, checkpoint-info). */
export function formatInfo(pairs: [string, string | number][], labelWidth = 15): string {
  return pairs.map(([k, v]) => `${k.padEnd(labelWidth)} ${v}\n`).join('');
}

/** vshPrettyCapacity: the value in the largest binary unit it reaches. */
export function prettyCapacity(bytes: number): { value: number; unit: string } {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];
  let limit = 1024;
  for (let i = 0; i < units.length - 1; i++) {
    if (bytes < limit) return { value: i === 0 ? bytes : bytes / (limit / 1024), unit: units[i]! };
    limit *= 1024;
  }
  return { value: bytes / (limit / 1024), unit: 'EiB' };
}

/** "%-.3lf %s" of a pretty capacity, e.g. "1.500 MiB". */
export function formatCapacity(bytes: number): string {
  const { value, unit } = prettyCapacity(bytes);
  return `${value.toFixed(3)} ${unit}`;
}

const pad2 = (n: number): string => String(n).padStart(2, '0');

/** strftime "%Y-%m-%d %H:%M:%S %z" of UNIX seconds in local time (checkpoint-list). */
export function formatLocalTime(unixSeconds: number): string {
  const d = new Date(unixSeconds * 1000);
  return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())} ${tzOffset(d)}`;
}

function tzOffset(d: Date): string {
  const off = -d.getTimezoneOffset();
  const a = Math.abs(off);
  return `${off < 0 ? '-' : '+'}${pad2(Math.floor(a / 60))}${pad2(a % 60)}`;
}

/** virTimeStringNow: "%Y-%m-%d %H:%M:%S.%03d%z" in local time (event --timestamp). */
export function formatTimestamp(d: Date): string {
  return (
    `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ` +
    `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}.${String(d.getMilliseconds()).padStart(3, '0')}${tzOffset(d)}`
  );
}

// ---------------------------------------------------------------- virsh's enum strings

const DOMAIN_STATES: Record<number, string> = {
  [DomainState.NOSTATE]: 'no state',
  [DomainState.RUNNING]: 'running',
  [DomainState.BLOCKED]: 'idle',
  [DomainState.PAUSED]: 'paused',
  [DomainState.SHUTDOWN]: 'in shutdown',
  [DomainState.SHUTOFF]: 'shut off',
  [DomainState.CRASHED]: 'crashed',
  7: 'pmsuspended',
};

export function domainStateString(state: number): string {
  return DOMAIN_STATES[state] ?? 'no state';
}

const RUNNING_REASONS = ['unknown', 'booted', 'migrated', 'restored', 'from snapshot', 'unpaused', 'migration canceled', 'save canceled', 'event wakeup', 'crashed', 'post-copy'];
const PAUSED_REASONS = ['unknown', 'user', 'migrating', 'saving', 'dumping', 'I/O error', 'watchdog', 'from snapshot', 'shutting down', 'creating snapshot', 'starting up', 'post-copy', 'post-copy failed', 'api error'];
const SHUTOFF_REASONS = ['unknown', 'shutdown', 'destroyed', 'crashed', 'migrated', 'saved', 'failed', 'from snapshot', 'daemon'];

/** virshDomainStateReasonToString for the states we report. */
export function domainReasonString(state: number, reason: number): string {
  const table = state === DomainState.RUNNING ? RUNNING_REASONS
    : state === DomainState.PAUSED ? PAUSED_REASONS
      : state === DomainState.SHUTOFF ? SHUTOFF_REASONS : ['unknown'];
  return table[reason] ?? 'unknown';
}

/** virshDomainIOError: virDomainDiskErrorCode as virsh domblkerror says it */
const DISK_ERRORS = ['no error', 'unspecified error', 'no space'];

export function diskErrorString(code: number): string {
  return DISK_ERRORS[code] ?? 'unknown';
}

const JOB_TYPES: Record<number, string> = {
  [JobType.NONE]: 'None',
  [JobType.BOUNDED]: 'Bounded',
  [JobType.UNBOUNDED]: 'Unbounded',
  [JobType.COMPLETED]: 'Completed',
  [JobType.FAILED]: 'Failed',
  [JobType.CANCELLED]: 'Cancelled',
};

export function jobTypeString(type: number): string {
  return JOB_TYPES[type] ?? 'unknown';
}

const JOB_OPERATIONS = [
  'Unknown', 'Start', 'Save', 'Restore', 'Incoming migration', 'Outgoing migration', 'Snapshot', 'Snapshot revert', 'Dump', 'Backup',
  'Snapshot delete',
];

export function jobOperationString(op: number): string {
  return JOB_OPERATIONS[op] ?? JOB_OPERATIONS[JobOperation.UNKNOWN]!;
}

const BLOCK_JOB_TYPES = ['Unknown job', 'Block Pull', 'Block Copy', 'Block Commit', 'Active Block Commit', 'Backup'];

export function blockJobTypeString(type: number): string {
  return BLOCK_JOB_TYPES[type] ?? 'Unknown job';
}

const BLOCK_JOB_STATUSES = ['completed', 'failed', 'canceled', 'ready'];

export function blockJobStatusString(status: number): string {
  return BLOCK_JOB_STATUSES[status] ?? 'unknown';
}

/** "Started", "Booted": virsh prints lifecycle event and detail names capitalised. */
export function capitalise(s: string): string {
  return s.length === 0 ? s : s[0]!.toUpperCase() + s.slice(1);
}
