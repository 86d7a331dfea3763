// `virtback instant-restore`: run a VM from a backup point within seconds. A
// detached `backup-serve` exports the point's disks over a unix socket in the
// overlay folder; each disk gets a qcow2 overlay backed by its export; the
// point's definition is defined under a new name (new UUID and MACs) on the
// overlays and started through the Driver. Guest writes go to the overlays;
// the repository is only read. With --stream, block-stream then copies the
// data into the overlays and the serve process is stopped: the VM no longer
// needs the repository. Without it, `virtback instant-restore-stop` ends the
// serving once the domain is shut off. instant.json in the folder records it all,
// so that `virtback instant-restore-resume` can serve the point again later
// (after a reboot, or a stopped serve process) from the same socket: for an
// s3:// repository that includes where the bucket is reached (endpoint, path
// style, region, the CA bundle trusted over HTTPS), never credentials, which
// the resuming command takes from its own environment as every command does,
// or is refused (AUTH_FAILED).

import { randomBytes, randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import type { Connect, Domain } from '../api/public.js';
import { ChunkRepository } from '../chunkstore/repo.js';
import { closeObjectStore, openObjectStore, parseS3Url, s3Settings, type StoreUrlOptions } from '../chunkstore/store-url.js';
import { isVirError, toVirError, virErr, type ErrorCodeName } from '../errors.js';
import { DomainState } from '../flags.js';
import { runTool } from '../repository/tools.js';
import { macFromBytes, rewriteDomainXml, type RestoredDisk } from './domain-rewrite.js';
import { recordedCaBundle, servingPid, startServeProcess, stopServeProcess } from './instant-process.js';
import { streamOverlays, type StreamProgress } from './instant-stream.js';
import { choosePoint, nbdUri } from './serve.js';

export interface InstantRestoreOptions {
  /** the repository folder, as the serve process opens it */
  repoDir: string;
  domain: string;
  point?: string;
  /** the new domain's name */
  define: string;
  /** where overlays, the socket, the pidfile, the serve log and instant.json go (default ./NAME.instant) */
  overlayDir?: string;
  stream?: boolean;
  encryptKeyFile?: string;
  /** an s3:// repository: --s3-endpoint / --s3-path-style as given (else the environment's) */
  s3?: Pick<StoreUrlOptions, 's3Endpoint' | 's3PathStyle'>;
  /** argv that runs the virtback CLI (the serve process is `virtback backup-serve`) */
  virtbackCommand: string[];
  onStreamProgress?: (p: StreamProgress) => void;
}

const stateSchema = z.object({
  name: z.string(),
  uuid: z.string(),
  domain: z.string(),
  pointId: z.string(),
  repoDir: z.string(),
  /** an s3:// repository: where its bucket is reached (no credentials) */
  s3: z.object({ endpoint: z.string().optional(), pathStyle: z.boolean(), region: z.string().optional(), caBundle: z.string().optional() }).optional(),
  /** the key file of an encrypted repository (its path, not the key) */
  encryptKeyFile: z.string().optional(),
  socket: z.string(),
  pidfile: z.string(),
  logFile: z.string(),
  disks: z.array(z.object({ target: z.string(), overlay: z.string(), backing: z.string() })),
  /** true once block-stream made the overlays standalone and serving stopped */
  streamed: z.boolean(),
});
export type InstantState = z.infer<typeof stateSchema>;

export const STATE_FILE = 'instant.json';
/** Longest unix socket path (sun_path is 108 bytes with its NUL). */
const MAX_SOCKET_PATH = 107;

function writeState(dir: string, s: InstantState): void {
  const file = path.join(dir, STATE_FILE);
  fs.writeFileSync(`${file}.part`, `${JSON.stringify(s, null, 2)}\n`, { mode: 0o600 });
  fs.renameSync(`${file}.part`, file);
}

export function readInstantState(dir: string): InstantState {
  const file = path.join(dir, STATE_FILE);
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw virErr('INVALID_ARG', 'STORAGE', `'${dir}' is not an instant-restore folder: ${(e as Error).message}`, e);
  }
  return stateSchema.parse(JSON.parse(text));
}

/** A fresh folder (or an empty existing one) for one instant restore. */
function prepareFolder(dir: string): void {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  if (fs.readdirSync(dir).length > 0) throw virErr('INVALID_ARG', 'STORAGE', `overlay folder '${dir}' is not empty`);
}

export async function instantRestore(repo: ChunkRepository, conn: Connect, opts: InstantRestoreOptions): Promise<InstantState> {
  const point = await choosePoint(repo, opts.domain, opts.point);
  const dir = path.resolve(opts.overlayDir ?? `${opts.define}.instant`);
  const socket = path.join(dir, 'nbd.sock');
  if (Buffer.byteLength(socket) > MAX_SOCKET_PATH) throw virErr('INVALID_ARG', 'STORAGE', `socket path '${socket}' is too long for a unix socket; choose a shorter --overlay-dir`);
  prepareFolder(dir);
  const s3 = parseS3Url(opts.repoDir) === null ? undefined : s3Settings(opts.s3);
  const state: InstantState = {
    name: opts.define,
    uuid: randomUUID(),
    domain: opts.domain,
    pointId: point.id,
    repoDir: s3 ? opts.repoDir : path.resolve(opts.repoDir), // a folder, or an s3:// URL as given
    ...(s3 ? { s3 } : {}),
    ...(opts.encryptKeyFile === undefined ? {} : { encryptKeyFile: path.resolve(opts.encryptKeyFile) }),
    socket,
    pidfile: path.join(dir, 'serve.pid'),
    logFile: path.join(dir, 'serve.log'),
    disks: point.disks.map((d) => ({ target: d.target, overlay: path.join(dir, `${d.target}.qcow2`), backing: nbdUri({ socket }, d.target) })),
    streamed: false,
  };
  writeState(dir, state);
  let dom: Domain | undefined;
  try {
    await startServing(state, opts.virtbackCommand);
    for (const d of state.disks) {
      await runTool('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', d.backing, d.overlay], `creating the overlay of ${d.target}`);
      fs.chmodSync(d.overlay, 0o600);
    }
    const disks = new Map<string, RestoredDisk>(state.disks.map((d) => [d.target, { path: d.overlay, format: 'qcow2' }]));
    const xml = rewriteDomainXml(point.domainXml, disks, { name: opts.define, uuid: state.uuid, mac: () => macFromBytes(randomBytes(3)) });
    fs.writeFileSync(path.join(dir, `${opts.define}.xml`), xml, { mode: 0o600 });
    dom = await conn.defineXML(xml);
    await dom.create();
  } catch (e) {
    await undo(dom, state);
    throw toVirError(e, 'STORAGE');
  }
  if (opts.stream) await streamAndRelease(dom, state, opts.onStreamProgress);
  return state;
}

function startServing(s: InstantState, virtbackCommand: string[]): Promise<number> {
  return startServeProcess({
    virtbackCommand,
    repoDir: s.repoDir,
    domain: s.domain,
    pointId: s.pointId,
    socket: s.socket,
    pidfile: s.pidfile,
    logFile: s.logFile,
    ...(s.encryptKeyFile === undefined ? {} : { encryptKeyFile: s.encryptKeyFile }),
    ...(s.s3 === undefined ? {} : { s3: s.s3 }),
  });
}

/** A failed start leaves nothing behind but its folder (with the serve log, for the reason). */
async function undo(dom: Domain | undefined, s: InstantState): Promise<void> {
  if (dom) {
    await dom.destroy().catch(() => undefined);
    await dom.undefine().catch(() => undefined);
  }
  await stopServeProcess(s.pidfile, s.socket);
  for (const d of s.disks) fs.rmSync(d.overlay, { force: true });
}

/** block-stream every overlay, then stop serving: from here on the domain runs from its overlays alone. */
export async function streamAndRelease(dom: Domain, s: InstantState, onProgress?: (p: StreamProgress) => void): Promise<void> {
  await streamOverlays(dom, s.disks, onProgress);
  s.streamed = true;
  writeState(path.dirname(s.pidfile), s);
  await stopServeProcess(s.pidfile, s.socket);
}

const RUNS = new Set<number>([DomainState.RUNNING, DomainState.BLOCKED, DomainState.PAUSED, DomainState.SHUTDOWN]);

/**
 * Ends the serve process of an instant restore. Refused while the domain runs
 * on its exports (it would lose its disks' backing data); after --stream, or
 * once the domain is shut off or gone, it stops.
 */
export async function stopInstantServe(conn: Connect, dir: string): Promise<InstantState> {
  const s = readInstantState(path.resolve(dir));
  if (!s.streamed) {
    const dom = await conn.lookupByUUID(s.uuid).catch(() => undefined);
    const info = dom ? await dom.getInfo() : undefined;
    if (info && RUNS.has(info.state)) {
      throw virErr('OPERATION_INVALID', 'STORAGE', `domain '${s.name}' is running on the served point ${s.pointId}; shut it down first, or stream it with 'virtback instant-restore --stream'`);
    }
  }
  await stopServeProcess(s.pidfile, s.socket);
  return s;
}

export interface ResumeResult {
  state: InstantState;
  pid: number;
  /** false: it was serving already, nothing was started */
  started: boolean;
}

/**
 * Serves an instant restore's point again at its socket (after a reboot, or
 * once instant-restore-stop ended it), so its domain can start on its
 * overlays. The repository is opened first, with the recorded S3 endpoint and
 * this process's credentials: what cannot reach it is refused with the
 * store's error code (AUTH_FAILED, NO_STORAGE_POOL, …) naming the folder.
 */
export async function resumeInstantServe(dir: string, virtbackCommand: string[]): Promise<ResumeResult> {
  const s = readInstantState(path.resolve(dir));
  if (s.streamed) throw virErr('OPERATION_INVALID', 'STORAGE', `instant restore '${s.name}' was streamed into its overlays: it needs no serving`);
  const running = servingPid(s.pidfile, s.socket);
  if (running !== undefined) return { state: s, pid: running, started: false };
  await checkPointReachable(s, dir);
  fs.rmSync(s.socket, { force: true }); // left by a serve process that was killed
  return { state: s, pid: await startServing(s, virtbackCommand), started: true };
}

/** The recorded region and CA bundle as store options (the bundle named in messages as instant.json's). */
function recordedS3(s3: NonNullable<InstantState['s3']>, dir: string): StoreUrlOptions['s3'] {
  const caBundle = recordedCaBundle(s3);
  return { ...(s3.region === undefined ? {} : { region: s3.region }), ...(caBundle === undefined ? {} : { caBundle, caBundleSource: path.resolve(dir, STATE_FILE) }) };
}

/** Opens the repository as the serve process will and reads the point's record; errors name the folder and where. */
async function checkPointReachable(s: InstantState, dir: string): Promise<void> {
  const where = s.s3 ? `${s.repoDir}${s.s3.endpoint === undefined ? '' : ` at ${s.s3.endpoint}`}` : `'${s.repoDir}'`;
  const opts: StoreUrlOptions = s.s3 ? { s3PathStyle: s.s3.pathStyle, ...(s.s3.endpoint === undefined ? {} : { s3Endpoint: s.s3.endpoint }), s3: recordedS3(s.s3, dir) } : {};
  try {
    // opening a folder store creates a missing folder: a moved repository must fail instead
    if (!s.s3 && !fs.existsSync(s.repoDir)) throw virErr('NO_STORAGE_POOL', 'STORAGE', 'the repository folder is gone');
    const store = await openObjectStore(s.repoDir, opts);
    try {
      const encryptKey = s.encryptKeyFile === undefined ? undefined : fs.readFileSync(s.encryptKeyFile);
      await (await ChunkRepository.open(store, encryptKey ? { encryptKey } : {})).readPoint(s.domain, s.pointId);
    } finally {
      closeObjectStore(store);
    }
  } catch (e) {
    const code: ErrorCodeName = isVirError(e) ? (e.codeName as ErrorCodeName) : 'OPERATION_FAILED';
    throw virErr(code, 'STORAGE', `cannot serve instant restore '${path.resolve(dir)}' (point ${s.pointId} of '${s.domain}' in ${where}) again: ${(e as Error).message}`, e);
  }
}
