// Opening a connection: connect(uri) reaches a virtbackd through the remote
// driver; connectLocal(driver) wraps a driver in this process (tests,
// embedding). URIs, as virsh's -c:
//   virtback:///system                 root daemon, sockets in /run/virtback
//   virtback:///session                per-user daemon, started on demand
//   virtback+unix:///system|session    the same, explicitly over unix sockets
//   virtback+unix:///?socket=PATH      an explicit socket
//   virtback+tls://HOST:PORT/?pkipath=DIR   TCP with TLS and a client certificate
// `?readonly` (or opts.readOnly) selects the read-only socket of the pair.
// libvirt's own URIs open the libvirt driver (src/libvirt/): VMs that a
// libvirtd runs, or virtbackd's libvirt socket:
//   qemu:///system, qemu+unix:///system   /run/libvirt/libvirt-sock (read-only: libvirt-sock-ro)
//   qemu:///session                       $XDG_RUNTIME_DIR/libvirt/libvirt-sock
//   qemu+unix:///system?socket=PATH       an explicit socket (read-only: its -ro sibling)
//   qemu+ssh://[USER@]HOST[:PORT]/system[?socket=PATH]   ssh to HOST, bridged to the socket there
// No URI: $VIRTBACK_URI, else system for root and session for others.

import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Driver } from '../api/driver.js';
import { Connect } from '../api/public.js';
import type { RemoteDriver } from '../remote/client.js';
import type { LibvirtDriver } from '../libvirt/driver.js';
import type { SshTarget } from '../libvirt/transport.js';
import { VirError, virErr } from '../errors.js';
import { RO_SOCKET_NAME, SOCKET_NAME, sessionRunDir, sessionStateDir, systemRunDir, type Env } from '../daemon/paths.js';

export interface ConnectOptions {
  readOnly?: boolean;
  /** Start the session daemon when it is not running (default true; only for virtback:///session). */
  autostart?: boolean;
  /** How long to wait for an autostarted daemon (ms, default 30000). */
  autostartTimeoutMs?: number;
}

export interface ResolvedUnixURI {
  kind: 'unix';
  uri: string;
  socket: string;
  readOnly: boolean;
  /** Set for the session daemon: where to start it if absent. */
  session: { runDir: string; stateDir: string } | null;
}

export interface ResolvedTlsURI {
  kind: 'tls';
  uri: string;
  host: string;
  port: number;
  pkiPath: string;
  readOnly: boolean;
}

/** A libvirt URI: how to reach the daemon, and the name CONNECT_OPEN sends (transport and socket= stripped, as libvirt does). */
export interface ResolvedLibvirtURI {
  kind: 'libvirt';
  uri: string;
  openName: string;
  readOnly: boolean;
  transport: { type: 'unix'; socket: string } | ({ type: 'ssh' } & SshTarget);
}

export type ResolvedURI = ResolvedUnixURI | ResolvedTlsURI | ResolvedLibvirtURI;

const LIBVIRT_SCHEMES = ['qemu', 'qemu+unix', 'qemu+ssh'];
const LIBVIRT_SYSTEM_DIR = '/run/libvirt';

/** libvirtd's socket of a system daemon in `dir`, else the modular virtqemud's; read-only: the -ro one. */
function libvirtSystemSocket(dir: string, readOnly: boolean, exists: (p: string) => boolean): string {
  const suffix = readOnly ? '-ro' : '';
  const legacy = path.join(dir, `libvirt-sock${suffix}`);
  const modular = path.join(dir, `virtqemud-sock${suffix}`);
  return !exists(legacy) && exists(modular) ? modular : legacy;
}

/** Pure but for `exists`: a qemu[+unix|+ssh]:// URI as libvirt's remote driver reads it. */
export function resolveLibvirtURI(
  u: URL, uri: string, readOnly: boolean, env: Env = process.env, exists: (p: string) => boolean = fs.existsSync,
): ResolvedLibvirtURI {
  const scheme = u.protocol.replace(/:$/, '');
  const name = u.pathname.replace(/^\/+/, '').replace(/\/+$/, '');
  if (name !== 'system' && name !== 'session') {
    throw virErr('INVALID_ARG', 'REMOTE', `URI '${uri}': the QEMU driver's paths are /system and /session`);
  }
  const openName = `qemu:///${name}`;
  const explicit = u.searchParams.get('socket');
  if (explicit !== null && !path.isAbsolute(explicit)) throw virErr('INVALID_ARG', 'REMOTE', `socket path '${explicit}' must be absolute`);
  if (scheme === 'qemu+ssh') {
    if (!u.hostname) throw virErr('INVALID_ARG', 'REMOTE', `URI '${uri}' needs a host`);
    const defaultSocket = name === 'system' ? path.join(LIBVIRT_SYSTEM_DIR, readOnly ? 'libvirt-sock-ro' : 'libvirt-sock') : '$XDG_RUNTIME_DIR/libvirt/libvirt-sock';
    return {
      kind: 'libvirt', uri, openName, readOnly,
      transport: {
        type: 'ssh',
        host: u.hostname.replace(/^\[(.*)\]$/, '$1'),
        port: u.port ? Number(u.port) : null,
        user: u.username ? decodeURIComponent(u.username) : null,
        socket: explicit,
        remoteUri: openName,
        defaultSocket,
      },
    };
  }
  if (u.host !== '') throw virErr('INVALID_ARG', 'REMOTE', `URI '${uri}': a remote libvirt host is reached with qemu+ssh://`);
  let socket: string;
  if (explicit !== null) {
    // the read-only socket of a default pair is its sibling; any other socket is taken as given (libvirt sends RO either way)
    socket = readOnly && /^(libvirt|virtqemud)-sock$/.test(path.basename(explicit)) ? `${explicit}-ro` : explicit;
  } else if (name === 'system') {
    socket = libvirtSystemSocket(LIBVIRT_SYSTEM_DIR, readOnly, exists);
  } else {
    const runtime = env.XDG_RUNTIME_DIR;
    if (!runtime) throw virErr('INVALID_ARG', 'REMOTE', `URI '${uri}': qemu:///session needs $XDG_RUNTIME_DIR, or give ?socket=PATH`);
    socket = path.join(runtime, 'libvirt', 'libvirt-sock');
  }
  return { kind: 'libvirt', uri, openName, readOnly, transport: { type: 'unix', socket } };
}

function uid(): number {
  return typeof process.getuid === 'function' ? process.getuid() : -1;
}

/** The default URI: $VIRTBACK_URI, else system for root and session for everyone else. */
export function defaultURI(env: Env = process.env, userId: number = uid()): string {
  return env.VIRTBACK_URI || (userId === 0 ? 'virtback:///system' : 'virtback:///session');
}

/** Pure: where a URI leads. Throws INVALID_ARG for URIs we do not serve. */
export function resolveURI(uri: string, opts: { readOnly?: boolean } = {}, env: Env = process.env, userId: number = uid()): ResolvedURI {
  let u: URL;
  try {
    u = new URL(uri);
  } catch {
    throw virErr('INVALID_ARG', 'REMOTE', `invalid connection URI '${uri}'`);
  }
  const scheme = u.protocol.replace(/:$/, '');
  const readOnly = opts.readOnly === true || u.searchParams.has('readonly');
  if (LIBVIRT_SCHEMES.includes(scheme)) return resolveLibvirtURI(u, uri, readOnly, env);
  const name = u.pathname.replace(/^\/+/, '').replace(/\/+$/, '');
  if (scheme === 'virtback+tls') {
    if (!u.hostname || !u.port) throw virErr('INVALID_ARG', 'REMOTE', `URI '${uri}' needs a host and a port`);
    const home = env.HOME ?? os.homedir();
    const pkiPath = u.searchParams.get('pkipath') ?? (userId === 0 ? '/etc/pki/virtback' : path.join(home, '.pki', 'virtback'));
    return { kind: 'tls', uri, host: u.hostname.replace(/^\[(.*)\]$/, '$1'), port: Number(u.port), pkiPath, readOnly };
  }
  if (scheme !== 'virtback' && scheme !== 'virtback+unix') {
    throw virErr('NO_CONNECT', 'REMOTE', `no connection driver available for ${uri}`);
  }
  if (u.host !== '') throw virErr('INVALID_ARG', 'REMOTE', `URI '${uri}': remote hosts need virtback+tls://`);
  const explicit = u.searchParams.get('socket');
  if (explicit !== null) {
    if (scheme !== 'virtback+unix') throw virErr('INVALID_ARG', 'REMOTE', `URI '${uri}': socket= needs virtback+unix://`);
    if (!path.isAbsolute(explicit)) throw virErr('INVALID_ARG', 'REMOTE', `socket path '${explicit}' must be absolute`);
    // The read-only socket of a default pair is its sibling; any other socket is taken as given.
    const socket =
      readOnly && path.basename(explicit) === SOCKET_NAME ? path.join(path.dirname(explicit), RO_SOCKET_NAME) : explicit;
    return { kind: 'unix', uri, socket, readOnly, session: null };
  }
  const pick = (dir: string): string => path.join(dir, readOnly ? RO_SOCKET_NAME : SOCKET_NAME);
  if (name === 'system') return { kind: 'unix', uri, socket: pick(systemRunDir()), readOnly, session: null };
  if (name === 'session') {
    const runDir = sessionRunDir(env, userId);
    return { kind: 'unix', uri, socket: pick(runDir), readOnly, session: { runDir, stateDir: sessionStateDir(env) } };
  }
  throw virErr('INVALID_ARG', 'REMOTE', `URI '${uri}': path must be /system or /session, or give ?socket=PATH`);
}

/** The command that starts virtbackd with this very node (and tsx when running from source). */
function daemonCommand(): { command: string; args: string[] } {
  const here = fileURLToPath(import.meta.url);
  const fromSource = here.endsWith('.ts');
  const script = path.join(path.dirname(here), '..', 'cli', fromSource ? 'virtbackd.ts' : 'virtbackd.js');
  const loader = fromSource ? ['--import', import.meta.resolve('tsx')] : [];
  return { command: process.execPath, args: [...loader, script] };
}

async function startSessionDaemon(dirs: { runDir: string; stateDir: string }, timeoutMs: number): Promise<string> {
  const { command, args } = daemonCommand();
  const child = spawn(command, [...args, '--daemon', '--run-dir', dirs.runDir, '--state-dir', dirs.stateDir], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => (stderr += d));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const code = await new Promise<number>((resolve) => {
    child.on('error', () => resolve(1));
    child.on('close', (c) => resolve(c ?? 1));
  });
  clearTimeout(timer);
  return code === 0 ? '' : stderr.trim() || `virtbackd --daemon exited with status ${code}`;
}

function isAbsent(e: unknown): boolean {
  const cause = e instanceof VirError ? (e.cause as NodeJS.ErrnoException | undefined) : undefined;
  return cause?.code === 'ENOENT' || cause?.code === 'ECONNREFUSED';
}

/**
 * The libvirt driver over the URI's transport. On this host's sockets the
 * backup files are ours to read: pushes get virtbackd's chain and manifests.
 */
async function connectLibvirt(target: ResolvedLibvirtURI): Promise<LibvirtDriver> {
  // Loaded here, not at the top: a command on a virtback:// URI never needs the libvirt driver.
  const [{ LibvirtDriver }, { connectSshStream, connectUnixStream }, { findPushBackup, writePushManifests }] = await Promise.all([
    import('../libvirt/driver.js'),
    import('../libvirt/transport.js'),
    import('../repository/push-manifests.js'),
  ]);
  const t = target.transport;
  const stream = t.type === 'unix' ? await connectUnixStream(t.socket) : await connectSshStream(t);
  const files = t.type === 'unix' ? { afterPushComplete: writePushManifests, locatePreviousBackup: findPushBackup } : {};
  return LibvirtDriver.open(stream, { uri: target.uri, openName: target.openName, readOnly: target.readOnly, ...files });
}

/** Opens a connection to virtbackd, or to a libvirt daemon for qemu:// URIs. Resolves once the daemon has answered. */
export async function connect(uri?: string, opts: ConnectOptions = {}): Promise<Connect> {
  const target = resolveURI(uri ?? defaultURI(), opts);
  if (target.kind === 'libvirt') return new Connect(await connectLibvirt(target), target.readOnly);
  const { RemoteDriver } = await import('../remote/client.js');
  let driver: RemoteDriver;
  if (target.kind === 'tls') {
    const read = (f: string): Buffer => {
      try {
        return fs.readFileSync(path.join(target.pkiPath, f));
      } catch (e) {
        throw virErr('NO_CONNECT', 'REMOTE', `cannot read ${path.join(target.pkiPath, f)}: ${(e as Error).message}`);
      }
    };
    driver = await RemoteDriver.connectTls({
      uri: target.uri,
      host: target.host,
      port: target.port,
      ca: read('cacert.pem'),
      cert: read('clientcert.pem'),
      key: read('clientkey.pem'),
    });
  } else {
    try {
      driver = await RemoteDriver.connectUnix(target.socket, { uri: target.uri });
    } catch (e) {
      if (target.session === null || opts.autostart === false || !isAbsent(e)) throw e;
      const failure = await startSessionDaemon(target.session, opts.autostartTimeoutMs ?? 30_000);
      try {
        // Connect even if our start failed: another client may have started it meanwhile.
        driver = await RemoteDriver.connectUnix(target.socket, { uri: target.uri });
      } catch (again) {
        throw failure ? virErr('NO_CONNECT', 'REMOTE', `cannot start the session daemon: ${failure}`, again) : again;
      }
    }
  }
  return new Connect(driver, target.readOnly || driver.readOnly);
}

/** A connection to a driver in this process (tests, embedding); closing it closes the driver. */
export function connectLocal(driver: Driver, opts: { readOnly?: boolean } = {}): Connect {
  return new Connect(driver, opts.readOnly === true);
}
