// XML parsing for the commands, loaded on demand: libxml2-wasm (a wasm
// module) is most of what a bare `virtback --help` would otherwise load.
// withConnection() loads it before a command's work starts, so the sync
// helpers that read the daemon's documents can call parseXml() unchanged.

import type { XmlElement } from '../xml/node.js';

let tree: typeof import('../xml/tree.js') | null = null;

/** Load the parser (once); parseXml() needs it. */
export async function loadXml(): Promise<void> {
  tree ??= await import('../xml/tree.js');
}

/** xml/tree's parseXml, once loadXml() has run (a programming error otherwise). */
export function parseXml(xml: string): XmlElement {
  if (tree === null) throw new Error('internal error: parseXml() before loadXml()');
  return tree.parseXml(xml);
}
