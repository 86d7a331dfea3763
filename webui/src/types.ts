// The shapes of virtbackd's console API (docs/web-console.md ## API), as the pages read them.

export type Role = 'admin' | 'readonly';

export interface Session {
  role: Role;
  csrf: string;
  expiresAt?: string | number;
}

export interface PointRef {
  repo: string;
  id: string;
  time: string;
  level: string;
}

export interface DomainJob {
  id: number | string;
  kind: 'push' | 'pull' | 'backup';
  processed: number;
  total: number;
  startedAt: string;
}

export interface DomainSummary {
  uuid: string;
  name: string;
  state: string;
  /** libvirt's state reason number */
  stateReason?: number | string;
  checkpoints: number;
  currentCheckpoint: string | null;
  lastPoint: PointRef | null;
  job: DomainJob | null;
  warnings: string[];
}

export interface CheckpointNode {
  name: string;
  parent: string | null;
  creationTime: string | number;
  disks: string[];
  inconsistent: string | null;
}

export interface JobRecord {
  id: number | string;
  kind: string;
  result: 'completed' | 'failed' | 'aborted' | 'running';
  startedAt: string;
  endedAt: string | null;
  durationMs: number | null;
  bytes: number | null;
  error: string | null;
}

export interface PointRecord {
  repo: string;
  id: string;
  time: string;
  level: string;
  sizeBytes: number | null;
  newBytes: number | null;
  verified: 'ok' | 'bad' | null;
  verifiedAt: string | null;
}

export interface DomainDetail extends DomainSummary {
  description: string | null;
  checkpointTree: CheckpointNode[];
  jobs: JobRecord[];
  points: PointRecord[];
}

export interface Repo {
  id: string | number;
  name: string;
  url: string;
}

export interface DaemonInfo {
  version: string;
  uptimeSec: number;
  rssBytes: number;
  heapUsedBytes: number;
  domains: number;
  clients: number;
  repos: Repo[];
}

export type TaskState = 'running' | 'completed' | 'failed' | 'aborted';

export interface Task {
  task: string;
  kind: string;
  domain: string | null;
  state: TaskState;
  processed: number;
  total: number;
  startedAt: string;
  endedAt: string | null;
  result: unknown;
  error: { code: number; name: string; message: string } | null;
}

export interface RestorePreview {
  format?: 'raw' | 'qcow2';
  disks: { target: string; size: number; dest: string; exists: boolean; willOverwrite: boolean }[];
}

export interface PrunePreview {
  keep: unknown[];
  remove: unknown[];
}

/** One entry of the live list: a driver event (`domain`) or a console task's progress (`task`). */
export interface LiveEvent {
  seq: number;
  channel: 'domain' | 'task';
  type: string;
  domain: string;
  detail: string;
  time: string;
}
