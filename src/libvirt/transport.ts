// How the bytes of libvirt's protocol reach libvirtd: a unix socket on this
// host, or an ssh session whose remote command bridges to the daemon's socket
// (libvirt's own qemu+ssh:// does the same: `nc -U SOCKET`, or
// `virt-ssh-helper URI` where installed). Either way the client gets one
// Duplex stream; the protocol above it is the same.

import { spawn } from 'node:child_process';
import * as net from 'node:net';
import { Duplex } from 'node:stream';
import { virErr } from '../errors.js';

export interface LibvirtStream {
  stream: Duplex;
  /** For error messages: "/run/libvirt/libvirt-sock", "ssh root@host" */
  endpoint: string;
}

/** Connects to a libvirt unix socket (libvirtd's, or virtbackd's libvirt-sock). */
export async function connectUnixStream(socketPath: string): Promise<LibvirtStream> {
  const stream = await new Promise<net.Socket>((resolve, reject) => {
    const s = net.createConnection(socketPath);
    s.once('connect', () => {
      s.off('error', reject);
      resolve(s);
    });
    s.once('error', reject);
  }).catch((e: NodeJS.ErrnoException) => {
    // libvirt's wording for the same failure (virNetSocketNewConnectUNIX)
    throw virErr('NO_CONNECT', 'RPC', `Failed to connect socket to '${socketPath}': ${e.code ?? e.message}`, e);
  });
  return { stream, endpoint: socketPath };
}

export interface SshTarget {
  host: string;
  port: number | null;
  user: string | null;
  /** the daemon's socket on the remote host: bridged with `nc -U` */
  socket: string | null;
  /** the URI libvirtd is opened with there (virt-ssh-helper's argument), e.g. qemu:///system */
  remoteUri: string;
  /** libvirt's default socket for `remoteUri`, used when the remote host has no virt-ssh-helper */
  defaultSocket: string;
  /** the ssh client (default 'ssh') */
  command?: string;
}

const shellQuote = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;
const RUNTIME_DIR = '$XDG_RUNTIME_DIR/';
/** A remote path, quoted; the session socket's $XDG_RUNTIME_DIR is left for the remote shell to expand. */
const quotePath = (p: string): string => (p.startsWith(RUNTIME_DIR) ? `"$XDG_RUNTIME_DIR"/${shellQuote(p.slice(RUNTIME_DIR.length))}` : shellQuote(p));

/**
 * The ssh command line (pure): batch mode (no password prompt can reach us),
 * and the remote command libvirt's `proxy=auto` runs: virt-ssh-helper when the
 * remote host has it, else netcat to the socket. An explicit socket= always
 * goes through netcat, as in libvirt.
 */
export function sshCommand(t: SshTarget): { command: string; args: string[] } {
  const args = ['-o', 'BatchMode=yes', '-e', 'none'];
  if (t.port !== null) args.push('-p', String(t.port));
  if (t.user !== null) args.push('-l', t.user);
  const nc = `nc -U ${quotePath(t.socket ?? t.defaultSocket)}`;
  const remote =
    t.socket !== null
      ? nc
      : `if command -v virt-ssh-helper >/dev/null 2>&1; then exec virt-ssh-helper ${shellQuote(t.remoteUri)}; else exec ${nc}; fi`;
  args.push('--', t.host, 'sh', '-c', shellQuote(remote));
  return { command: t.command ?? 'ssh', args };
}

/** Spawns ssh and returns its stdin/stdout as the stream; ssh's stderr becomes the error when it exits early. */
export async function connectSshStream(t: SshTarget): Promise<LibvirtStream> {
  const { command, args } = sshCommand(t);
  const endpoint = `ssh ${t.user !== null ? `${t.user}@` : ''}${t.host}${t.port !== null ? `:${t.port}` : ''}`;
  const child = spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d: string) => {
    if (stderr.length < 4096) stderr += d;
  });
  await new Promise<void>((resolve, reject) => {
    child.once('spawn', () => resolve());
    child.once('error', (e) => reject(virErr('NO_CONNECT', 'RPC', `cannot run ${command}: ${e.message}`, e)));
  });
  const stream = new Duplex({
    read() {},
    write(chunk: Buffer, _enc, cb) {
      child.stdin.write(chunk, cb);
    },
    final(cb) {
      child.stdin.end(cb);
    },
    destroy(err, cb) {
      if (child.exitCode === null) child.kill();
      cb(err);
    },
  });
  // a write after ssh died fails with EPIPE; its exit status below is the error that matters
  child.stdin.on('error', () => {});
  child.stdout.on('data', (d: Buffer) => stream.push(d));
  // ssh's end is only known when it exits: its output ends first, and its status says why
  child.once('close', (code) => {
    if (code !== 0 && code !== null) stream.destroy(virErr('NO_CONNECT', 'RPC', `${endpoint} exited with status ${code}: ${stderr.trim() || 'no message'}`));
    else stream.push(null);
  });
  return { stream, endpoint };
}
