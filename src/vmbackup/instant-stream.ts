// `instant-restore --stream`: QEMU's block-stream copies the served backing
// data into each overlay while the guest runs; when a job ends the overlay no
// longer has a backing file (in QEMU and in its qcow2 header). Driven through
// the Driver's QMP passthrough (virDomainQemuMonitorCommand, what
// `virsh qemu-monitor-command` sends), so it works through virtbackd too.

import type { Domain } from '../api/public.js';
import { virErr } from '../errors.js';

interface BlockNode {
  'node-name': string;
  drv: string;
  file: string;
  backing_file?: string;
}

interface Job {
  id: string;
  status: string;
  'current-progress': number;
  'total-progress': number;
  error?: string;
}

async function qmp<T>(dom: Domain, execute: string, args?: object): Promise<T> {
  const reply = JSON.parse(await dom.qemuMonitorCommand(JSON.stringify(args ? { execute, arguments: args } : { execute }))) as { return?: T; error?: { desc: string } };
  if (reply.error) throw virErr('OPERATION_FAILED', 'QEMU', `${execute} failed: ${reply.error.desc}`);
  return reply.return as T;
}

/** The qcow2 node QEMU opened `overlay` as. */
async function overlayNode(dom: Domain, overlay: string): Promise<BlockNode> {
  const nodes = await qmp<BlockNode[]>(dom, 'query-named-block-nodes', { flat: true });
  const node = nodes.find((n) => n.drv === 'qcow2' && n.file === overlay);
  if (!node) throw virErr('OPERATION_FAILED', 'QEMU', `domain '${dom.name}' has no qcow2 node on '${overlay}'`);
  return node;
}

export interface StreamProgress {
  target: string;
  done: number;
  total: number;
}

/**
 * Streams every overlay's backing data into it, all disks at once, and waits
 * for the jobs to end; fails naming the disk whose job failed.
 */
export async function streamOverlays(dom: Domain, disks: ReadonlyArray<{ target: string; overlay: string }>, onProgress?: (p: StreamProgress) => void, pollMs = 250): Promise<void> {
  const jobs = new Map<string, string>();
  for (const d of disks) {
    const node = await overlayNode(dom, d.overlay);
    const id = `virtback-instant-${d.target}`;
    // auto-dismiss off: a finished job stays queryable, so its error is not lost
    await qmp(dom, 'block-stream', { 'job-id': id, device: node['node-name'], 'auto-dismiss': false });
    jobs.set(id, d.target);
  }
  const failures: string[] = [];
  while (jobs.size > 0) {
    await new Promise((r) => setTimeout(r, pollMs));
    for (const job of await qmp<Job[]>(dom, 'query-jobs')) {
      const target = jobs.get(job.id);
      if (target === undefined) continue;
      onProgress?.({ target, done: job['current-progress'], total: job['total-progress'] });
      if (job.status !== 'concluded') continue;
      if (job.error !== undefined) failures.push(`${target}: ${job.error}`);
      await qmp(dom, 'job-dismiss', { id: job.id });
      jobs.delete(job.id);
    }
  }
  if (failures.length > 0) throw virErr('OPERATION_FAILED', 'QEMU', `block-stream failed: ${failures.join('; ')}`);
  for (const d of disks) {
    const node = await overlayNode(dom, d.overlay);
    if (node.backing_file !== undefined) throw virErr('OPERATION_FAILED', 'QEMU', `disk ${d.target} still has the backing file '${node.backing_file}' after block-stream`);
  }
}
