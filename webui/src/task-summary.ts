// One line for a console task's outcome: what a backup made, what a verify found, where a restore
// wrote; the result's full JSON stays in the API (GET /api/tasks/:task).
import { bytes } from './format.js';
import type { Task } from './types.js';

type Result = Record<string, unknown>;
const list = (v: unknown): Result[] => (Array.isArray(v) ? (v as Result[]) : []);
const num = (v: unknown): number | null => (typeof v === 'number' ? v : null);

function backupLine(r: Result): string {
  return `point ${String(r.pointId)} (${String(r.level)}), read ${bytes(num(r.bytesRead))}, stored ${bytes(num(r.bytesNew))}`;
}

function verifyLine(r: Result): string {
  const points = list(r.points);
  const bad = list(r.badChunks).length;
  const verdict = r.ok === true ? 'ok' : 'BAD';
  return `${verdict}: ${points.length} point(s), ${String(r.chunksChecked ?? '?')} chunk(s) checked${bad ? `, ${bad} bad` : ''}`;
}

function restoreLine(r: Result): string {
  const disks = list(r.disks).map((d) => String(d.path ?? d.target ?? '?'));
  return `point ${String(r.pointId)} → ${disks.join(', ')}`;
}

function instantLine(r: Result): string {
  return `domain ${String(r.name)} on point ${String(r.pointId)}`;
}

const LINES: Record<string, (r: Result) => string> = {
  backup: backupLine,
  verify: verifyLine,
  restore: restoreLine,
  'instant-restore': instantLine,
};

export function taskSummary(t: Task): string {
  if (t.error) return `${t.error.name}: ${t.error.message}`;
  if (t.result === null || t.result === undefined) return '';
  const line = LINES[t.kind];
  if (line && typeof t.result === 'object') {
    try {
      return line(t.result as Result);
    } catch {
      // an unexpected shape: the JSON below says it
    }
  }
  return JSON.stringify(t.result);
}
