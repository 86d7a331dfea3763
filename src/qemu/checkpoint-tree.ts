// The checkpoint tree of one domain: parent links, the "current" checkpoint
// (the one a new checkpoint hangs under), libvirt's list filters and the
// effect of a delete. Pure: the metadata store and QEMU live elsewhere.

import { virErr } from '../errors.js';
import { CheckpointDeleteFlags, CheckpointListFlags } from '../flags.js';

export interface CheckpointNode {
  name: string;
  parent: string | null;
  creationTime: number;
}

export interface DeletePlan {
  /** checkpoints whose bitmaps and metadata go, children before parents */
  remove: string[];
  /** surviving checkpoints whose parent changes: [name, new parent] */
  reparent: [string, string | null][];
  /** the current checkpoint after the delete */
  current: string | null;
}

// Sibling order: oldest first, then by name, so listings are deterministic.
function byAge(a: CheckpointNode, b: CheckpointNode): number {
  return a.creationTime - b.creationTime || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
}

export class CheckpointTree {
  private readonly nodes = new Map<string, CheckpointNode>();
  current: string | null;

  constructor(nodes: Iterable<CheckpointNode> = [], current: string | null = null) {
    for (const n of nodes) this.nodes.set(n.name, { ...n });
    // A parent that no longer exists (metadata lost) makes its child a root.
    for (const n of this.nodes.values()) {
      if (n.parent !== null && !this.nodes.has(n.parent)) n.parent = null;
    }
    this.current = current !== null && this.nodes.has(current) ? current : this.newestLeaf();
  }

  get size(): number {
    return this.nodes.size;
  }

  has(name: string): boolean {
    return this.nodes.has(name);
  }

  get(name: string): CheckpointNode {
    const n = this.nodes.get(name);
    if (!n) throw virErr('NO_DOMAIN_CHECKPOINT', 'DOMAIN_CHECKPOINT', `no domain checkpoint with matching name '${name}'`);
    return n;
  }

  all(): CheckpointNode[] {
    return [...this.nodes.values()].sort(byAge);
  }

  children(name: string | null): CheckpointNode[] {
    return this.all().filter((n) => n.parent === name);
  }

  isLeaf(name: string): boolean {
    for (const n of this.nodes.values()) if (n.parent === name) return false;
    return true;
  }

  /** Depth-first pre-order below `name` (not including it): parents always before children. */
  descendants(name: string | null): CheckpointNode[] {
    const out: CheckpointNode[] = [];
    const walk = (parent: string | null): void => {
      for (const c of this.children(parent)) {
        out.push(c);
        walk(c.name);
      }
    };
    walk(name);
    return out;
  }

  newestLeaf(): string | null {
    const leaves = this.all().filter((n) => this.isLeaf(n.name));
    return leaves.length ? leaves[leaves.length - 1]!.name : null;
  }

  /**
   * virDomainListAllCheckpoints (from === undefined) or virDomainCheckpointListAllChildren (from = name).
   * Bit 0 is ROOTS for the first and DESCENDANTS for the second. LEAVES/NO_LEAVES form a filter group:
   * neither or both set means no filtering.
   */
  list(flags: number, from?: string): string[] {
    const bit0 = (flags & CheckpointListFlags.ROOTS) !== 0;
    const topological = (flags & CheckpointListFlags.TOPOLOGICAL) !== 0;
    let picked: CheckpointNode[];
    if (from === undefined) {
      picked = bit0 ? this.children(null) : this.descendants(null);
    } else {
      this.get(from);
      picked = bit0 ? this.descendants(from) : this.children(from);
    }
    const leaves = (flags & CheckpointListFlags.LEAVES) !== 0;
    const noLeaves = (flags & CheckpointListFlags.NO_LEAVES) !== 0;
    if (leaves !== noLeaves) picked = picked.filter((n) => this.isLeaf(n.name) === leaves);
    // descendants() is already topological; otherwise present oldest first.
    if (!topological) picked = [...picked].sort(byAge);
    return picked.map((n) => n.name);
  }

  /** Where a new checkpoint goes: under the current one. */
  add(node: Omit<CheckpointNode, 'parent'> & { parent?: string | null }): CheckpointNode {
    const n: CheckpointNode = { name: node.name, creationTime: node.creationTime, parent: node.parent === undefined ? this.current : node.parent };
    this.nodes.set(n.name, n);
    this.current = n.name;
    return n;
  }

  /**
   * REDEFINE: replace in place (children kept) or insert; refuse a parent cycle.
   * The first redefined checkpoint, or a child of the current one, becomes current (as libvirt).
   */
  redefine(node: CheckpointNode): void {
    if (node.parent !== null) {
      for (let p: string | null = node.parent; p !== null; p = this.nodes.get(p)?.parent ?? null) {
        if (p === node.name) {
          throw virErr('INVALID_ARG', 'DOMAIN_CHECKPOINT', `parent ${node.parent} would create cycle to ${node.name}`);
        }
      }
    }
    this.nodes.set(node.name, { ...node });
    if (this.current === null || node.parent === this.current) this.current = node.name;
  }

  /** The effect of virDomainCheckpointDelete(name, flags), without applying it. */
  planDelete(name: string, flags: number): DeletePlan {
    const target = this.get(name);
    const children = (flags & CheckpointDeleteFlags.CHILDREN) !== 0;
    const childrenOnly = (flags & CheckpointDeleteFlags.CHILDREN_ONLY) !== 0;
    const below = this.descendants(name).map((n) => n.name);
    if (children || childrenOnly) {
      const remove = [...below].reverse();
      if (children) remove.push(name);
      const gone = new Set(remove);
      let current = this.current;
      if (current !== null && gone.has(current)) current = children ? target.parent : name;
      return { remove, reparent: [], current };
    }
    const reparent = this.children(name).map((c): [string, string | null] => [c.name, target.parent]);
    const current = this.current === name ? target.parent : this.current;
    return { remove: [name], reparent, current };
  }

  applyDelete(plan: DeletePlan): void {
    for (const name of plan.remove) this.nodes.delete(name);
    for (const [name, parent] of plan.reparent) {
      const n = this.nodes.get(name);
      if (n) n.parent = parent;
    }
    this.current = plan.current;
  }
}
