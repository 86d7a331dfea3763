// Verify: re-read a backup chain and compare every layer's guest-visible content
// with the block checksum its manifest recorded. Layers are checked bottom-up;
// once a layer is good, the next one only reads the blocks it holds itself
// (qemu:allocation-depth) and takes the rest from the layer below. The first
// disagreeing layer is where the damage is: the layers under it read right.

import { isVirError, toVirError } from '../errors.js';
import { gatherChain, checkChain, type ChainLink } from './chain.js';
import { CHECKSUM_BLOCK, decodeChecksum } from './checksum.js';
import { readDigests } from './content.js';
import { manifestPath } from './manifest.js';

export interface VerifyProgress {
  /** The image whose chain is being read. */
  file: string;
  /** 0-based position from the bottom of the chain, of `links`. */
  link: number;
  links: number;
  bytesDone: number;
  bytesTotal: number;
}

export interface VerifyOptions {
  target: string;
  onProgress?: (p: VerifyProgress) => void;
}

export interface BadRange {
  offset: number;
  length: number;
}

export interface VerifyLink {
  file: string;
  /** Manifest path, or null when the image has none. */
  manifest: string | null;
  /** ok: content matches; bad: it does not; unverified: no manifest or no checksum in it; error: could not be read or decoded. */
  status: 'ok' | 'bad' | 'unverified' | 'error';
  /** First run of disagreeing blocks, in guest bytes. */
  firstBad?: BadRange;
  /** Bytes in disagreeing blocks. */
  badBytes?: number;
  message?: string;
  bytesRead: number;
}

export interface VerifyResult {
  target: string;
  ok: boolean;
  /** The chain, target first. Empty when it could not be followed. */
  chain: VerifyLink[];
  /** A structural problem of the chain (missing link, loop, mismatched manifest). */
  chainProblem?: string;
  /** The bottom-most disagreement: the file whose data is damaged and the manifest it disagrees with. */
  firstBad?: BadRange & { file: string; manifest: string };
}

export async function verifyBackup(opts: VerifyOptions): Promise<VerifyResult> {
  const result: VerifyResult = { target: opts.target, ok: false, chain: [] };
  let links: ChainLink[];
  try {
    links = await gatherChain(opts.target);
  } catch (e) {
    if (!isVirError(e)) throw e;
    result.chainProblem = e.message;
    return result;
  }
  try {
    checkChain(links);
  } catch (e) {
    if (!isVirError(e)) throw e;
    result.chainProblem = e.message;
  }
  const bottomUp = [...links].reverse();
  const out: VerifyLink[] = [];
  let below: Buffer[] | undefined; // verified entries of the layer below, when it is good
  for (let k = 0; k < bottomUp.length; k++) {
    const link = bottomUp[k]!;
    const v: VerifyLink = { file: link.file, manifest: link.manifest ? manifestPath(link.file) : null, status: 'unverified', bytesRead: 0 };
    out.push(v);
    const m = link.manifest;
    if (!m?.checksum) {
      if (m) v.message = `manifest '${v.manifest}' has no checksum (the backup's backing file is the live disk)`;
      below = undefined;
      continue;
    }
    try {
      const want = decodeChecksum(m.checksum, `manifest '${v.manifest}'`);
      if (m.checksum.size !== link.virtualSize) throw new Error(`manifest '${v.manifest}' checksums ${m.checksum.size} bytes, but '${link.file}' has ${link.virtualSize}`);
      const incremental = below !== undefined && below.length === want.length;
      const got = await readDigests({
        image: link.file,
        format: link.format,
        topLayerOnly: incremental,
        onProgress: (p) => opts.onProgress?.({ file: link.file, link: k, links: bottomUp.length, ...p }),
      });
      v.bytesRead = got.bytesRead;
      let badBytes = 0;
      for (let i = 0; i < want.length; i++) {
        const have = got.covered[i] ? got.digests.get(i)! : below![i]!;
        if (have.equals(want[i]!)) continue;
        const { offset, length } = got.digests.range(i);
        badBytes += length;
        if (!v.firstBad) v.firstBad = { offset, length };
        else if (v.firstBad.offset + v.firstBad.length === offset && badBytes === v.firstBad.length + length) v.firstBad.length += length;
      }
      if (badBytes === 0) {
        v.status = 'ok';
        below = want;
      } else {
        v.status = 'bad';
        v.badBytes = badBytes;
        v.message = `content of '${link.file}' with its backing chain disagrees with '${v.manifest}' in ${badBytes / CHECKSUM_BLOCK} MiB, first at ${v.firstBad!.offset}+${v.firstBad!.length}`;
        result.firstBad ??= { ...v.firstBad!, file: link.file, manifest: v.manifest! };
        below = undefined;
      }
    } catch (e) {
      v.status = 'error';
      v.message = toVirError(e, 'STORAGE').message;
      below = undefined;
    }
  }
  result.chain = out.reverse();
  result.ok = result.chainProblem === undefined && result.chain.every((l) => l.status === 'ok');
  return result;
}

/** The result as lines for a terminal: one per chain link, then the verdict. */
export function formatVerifyResult(r: VerifyResult): string[] {
  const lines: string[] = [];
  if (r.chainProblem) lines.push(`chain: ${r.chainProblem}`);
  for (const l of r.chain) {
    const what = { ok: 'ok', bad: 'BAD', unverified: l.manifest ? 'no checksum, not verified' : 'no manifest, not verified', error: 'ERROR' }[l.status];
    let line = `${l.file}: ${what}`;
    if (l.firstBad) line += `; first bad range offset ${l.firstBad.offset} length ${l.firstBad.length} (${l.badBytes} bytes bad) against ${l.manifest}`;
    else if (l.status === 'error' && l.message) line += `: ${l.message}`;
    lines.push(line);
  }
  if (r.ok) lines.push(`backup '${r.target}' verified: ${r.chain.length} image${r.chain.length === 1 ? '' : 's'} match their manifests`);
  else if (r.firstBad) lines.push(`backup '${r.target}' is damaged: '${r.firstBad.file}' disagrees with '${r.firstBad.manifest}' first at offset ${r.firstBad.offset} length ${r.firstBad.length}`);
  else lines.push(`backup '${r.target}' could not be verified`);
  return lines;
}
