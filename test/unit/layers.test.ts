// The layer check (.dependency-cruiser.mjs, run by scripts/test.sh) must pass
// on src/ and must fail on upward imports and cycles: run with the very same
// rules and options on the real tree and on a small tree that breaks them.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { cruise, type ICruiseOptions, type ICruiseResult } from 'dependency-cruiser';
import extractDepcruiseOptions from 'dependency-cruiser/config-utl/extract-depcruise-options';
import extractTSConfig from 'dependency-cruiser/config-utl/extract-ts-config';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const CONFIG = path.join(ROOT, '.dependency-cruiser.mjs');
const KNOWN = path.join(ROOT, '.dependency-cruiser-known-violations.json');

async function cruiseTree(baseDir: string, known: unknown[] = []): Promise<ICruiseResult> {
  const options: ICruiseOptions = await extractDepcruiseOptions(CONFIG);
  options.baseDir = baseDir;
  options.knownViolations = known as ICruiseOptions['knownViolations'];
  const tsConfig = extractTSConfig(path.join(baseDir, 'tsconfig.json'));
  const { output } = await cruise(['src'], options, {}, { tsConfig });
  return output as ICruiseResult;
}

/** "rule: from → to", ignoring violations the baseline lists (they are reported as warnings then). */
function violations(result: ICruiseResult): string[] {
  const lines = result.summary.violations
    .filter((v) => v.rule.severity === 'error')
    .map((v) => `${v.rule.name}: ${v.from} → ${v.to}`);
  return [...new Set(lines)].sort();
}

test('src/ keeps its layers: no cycles, no upward imports', async () => {
  const known = fs.existsSync(KNOWN) ? (JSON.parse(fs.readFileSync(KNOWN, 'utf8')) as unknown[]) : [];
  const result = await cruiseTree(ROOT, known);
  assert.deepEqual(violations(result), []);
  // The check only means something if it sees the edges: '.js' specifiers
  // resolve to the .ts sources, and type-only imports count.
  const edges = new Set(
    result.modules.flatMap((m) => m.dependencies.map((d) => `${m.source} → ${d.resolved}${d.dependencyTypes.includes('type-only') ? ' (type)' : ''}`)),
  );
  for (const edge of [
    'src/sdk/connect.ts → src/remote/client.ts',
    'src/cli/virtbackd.ts → src/daemon/daemon.ts',
    'src/daemon/backlog.ts → src/api/driver.ts (type)',
  ]) {
    assert.ok(edges.has(edge), `edge ${edge} not seen`);
  }
});

test('upward imports, a cycle, a type from qemu/ in daemon/, I/O in a codec and src/ importing test/ fail, each naming its rule', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'virtback-layers-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const tree: Record<string, string> = {
    'tsconfig.json': JSON.stringify({ compilerOptions: { module: 'NodeNext', moduleResolution: 'NodeNext', strict: true }, include: ['src/**/*.ts'] }),
    'src/errors.ts': 'export const INTERNAL_ERROR = 1;\n',
    'src/daemon/paths.ts': "export const SOCKET_NAME = 'virtbackd.sock';\n",
    // The issue's own example: the contract reaching up for the daemon's paths.
    'src/api/connect.ts': "import { SOCKET_NAME } from '../daemon/paths.js';\nexport const socket = SOCKET_NAME;\n",
    // A cycle closed by a type-only import.
    'src/xml/tree.ts': "import { DOMAIN } from './domain.js';\nexport const TREE = DOMAIN + 1;\n",
    'src/xml/domain.ts': "import type { TREE } from './tree.js';\nexport const DOMAIN = 1;\nexport type Tree = typeof TREE;\n",
    'src/qemu/driver.ts': 'export class QemuDriver { recoveredEvents(): void {} }\n',
    'src/daemon/daemon.ts': "import type { QemuDriver } from '../qemu/driver.js';\nexport type Served = QemuDriver;\n",
    'src/nbd/codec.ts': "import * as net from 'node:net';\nexport const sock = net.Socket;\n",
    // Even the top may not reach into the tests, and nothing reaches up into cli/.
    'test/helpers/guest.ts': "export const GUEST = 'tiny';\n",
    'src/cli/virtback.ts': "import { GUEST } from '../../test/helpers/guest.js';\nexport const guest = GUEST;\n",
    'src/remote/server.ts': "import { guest } from '../cli/virtback.js';\nexport const served = guest;\n",
    // Allowed: xml/ on the base.
    'src/xml/backup.ts': "import { INTERNAL_ERROR } from '../errors.js';\nexport const code = INTERNAL_ERROR;\n",
  };
  for (const [file, text] of Object.entries(tree)) {
    fs.mkdirSync(path.dirname(path.join(dir, file)), { recursive: true });
    fs.writeFileSync(path.join(dir, file), text);
  }
  const result = await cruiseTree(dir);
  assert.deepEqual(violations(result), [
    'api-only-base-and-xml: src/api/connect.ts → src/daemon/paths.ts',
    'codecs-no-io-builtins: src/nbd/codec.ts → net',
    'daemon-gets-a-driver: src/daemon/daemon.ts → src/qemu/driver.ts',
    'no-circular: src/xml/domain.ts → src/xml/tree.ts',
    'nothing-imports-cli: src/remote/server.ts → src/cli/virtback.ts',
    'remote-carries-driver-calls: src/remote/server.ts → src/cli/virtback.ts',
    'src-not-tests-or-bench: src/cli/virtback.ts → test/helpers/guest.ts',
  ]);
});
