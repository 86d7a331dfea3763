// One domain's checkpoint metadata on disk and in memory:
// <stateDir>/checkpoints/<uuid>/<name>.xml per checkpoint (with the internal
// <inconsistent> mark), `current` naming the current checkpoint, and the tree.

import { mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import type { UnknownBitmap } from '../api/driver.js';
import { virErr } from '../errors.js';
import { errField, silentLogger, type Logger } from '../log.js';
import { formatCheckpointXML, parseCheckpointXML, type CheckpointDef } from '../xml/checkpoint.js';
import { CheckpointTree } from './checkpoint-tree.js';
import { listIds, removeFileDurably, writeFileAtomic } from './state.js';

const CP = 'DOMAIN_CHECKPOINT';

/** Per-domain checkpoint metadata: definitions by name and the tree. */
export class CheckpointStore {
  readonly defs = new Map<string, CheckpointDef>();
  tree = new CheckpointTree();
  /** bitmaps seen in the images at the last check that no checkpoint knows */
  unknownBitmaps: UnknownBitmap[] = [];

  constructor(readonly dir: string, private readonly log: Logger = silentLogger) {}

  count(): number {
    return this.defs.size;
  }

  get(name: string): CheckpointDef {
    const def = this.defs.get(name);
    if (!def) throw virErr('NO_DOMAIN_CHECKPOINT', CP, `no domain checkpoint with matching name '${name}'`);
    return def;
  }

  file(name: string): string {
    return path.join(this.dir, `${name}.xml`);
  }

  get currentFile(): string {
    return path.join(this.dir, 'current');
  }

  async load(): Promise<void> {
    this.defs.clear();
    for (const name of await listIds(this.dir, '.xml')) {
      try {
        const def = parseCheckpointXML(await readFile(this.file(name), 'utf8'), { redefine: true, internal: true });
        this.defs.set(def.name, def);
      } catch (e) {
        this.log.warn({ ...errField(e), file: this.file(name) }, 'cannot load checkpoint metadata');
      }
    }
    const current = await readFile(this.currentFile, 'utf8').then((t) => t.trim() || null, () => null);
    this.tree = new CheckpointTree(
      [...this.defs.values()].map((d) => ({ name: d.name, parent: d.parent, creationTime: d.creationTime })),
      current,
    );
    // The tree drops parents whose metadata is gone; keep the definitions in step.
    for (const d of this.defs.values()) d.parent = this.tree.get(d.name).parent;
  }

  async save(def: CheckpointDef): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    await writeFileAtomic(this.file(def.name), formatCheckpointXML(def, { secure: true }));
  }

  async saveCurrent(): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    if (this.tree.current === null) await removeFileDurably(this.currentFile);
    else await writeFileAtomic(this.currentFile, `${this.tree.current}\n`);
  }
}
