// Builds the web console (webui/) into dist/webui/: index.html, app.js (preact bundled by esbuild,
// no CDN, no inline script: the server's CSP is default-src 'self') and app.css.
// Usage: node scripts/build-web.mjs [outDir]
import { build } from 'esbuild';
import process from 'node:process';
import { copyFile, mkdir } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const outDir = resolve(process.argv[2] ?? join(root, 'dist', 'webui'));

await mkdir(outDir, { recursive: true });
await build({
  entryPoints: [join(root, 'webui', 'src', 'main.tsx')],
  outfile: join(outDir, 'app.js'),
  bundle: true,
  format: 'esm',
  target: 'es2022',
  jsx: 'automatic',
  jsxImportSource: 'preact',
  minify: true,
  sourcemap: false,
  legalComments: 'none',
  logLevel: 'warning',
});
await copyFile(join(root, 'webui', 'index.html'), join(outDir, 'index.html'));
await copyFile(join(root, 'webui', 'app.css'), join(outDir, 'app.css'));
