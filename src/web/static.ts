// The browser's files (built by scripts/build-web.mjs into dist/webui/):
// a known file by its path, index.html for any other non-API path (the
// pages route in the browser). Only regular files below the folder are
// served; the folder is an option (tests point it at their build).

import fs from 'node:fs/promises';
import path from 'node:path';
import type { Context } from 'hono';

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.woff2': 'font/woff2',
  '.map': 'application/json',
};

async function readFileIn(root: string, rel: string): Promise<Buffer | null> {
  const file = path.resolve(root, `.${path.posix.normalize(`/${rel}`)}`);
  if (file !== root && !file.startsWith(`${root}${path.sep}`)) return null;
  try {
    const st = await fs.lstat(file);
    return st.isFile() ? await fs.readFile(file) : null;
  } catch {
    return null;
  }
}

export async function serveAsset(c: Context, assetsDir: string | null): Promise<Response> {
  if (assetsDir === null) return c.text('virtbackd web console: no browser files configured (build them with node scripts/build-web.mjs)', 404);
  const root = path.resolve(assetsDir);
  let rel: string;
  try {
    rel = decodeURIComponent(c.req.path);
  } catch {
    return c.text('bad path', 400);
  }
  if (rel === '/' || rel === '') rel = '/index.html';
  let data = await readFileIn(root, rel);
  let ext = path.extname(rel);
  if (data === null && !TYPES[ext]) {
    data = await readFileIn(root, '/index.html');
    ext = '.html';
  }
  if (data === null) return c.text('not found', 404);
  return c.body(new Uint8Array(data), 200, { 'Content-Type': TYPES[ext] ?? 'application/octet-stream' });
}
