// A real root libvirtd of the test's own, which can neither see nor touch the
// host's libvirt (there may be none, or a system one):
//
//   const skip = await privateLibvirtdSkipReason();   // undefined, or why not here
//   test('...', { skip }, async (t) => {
//     const lv = await startPrivateLibvirtd();
//     t.after(() => lv.stop());                         // kills libvirtd and every QEMU it started, removes lv.dir
//     await lv.virsh('define', xmlPath);                // real virsh -c lv.uri
//   });
//
// How: `unshare --mount --pid --fork --mount-proc` runs a small shell as PID 1
// of a new PID namespace, which mounts the scratch dir's folders over
// /run/libvirt, /var/lib/libvirt, /var/cache/libvirt, /var/log/libvirt and
// /etc/libvirt (an overlay with its upper layer in the scratch dir over the
// parent first, when the folder does not exist on the host: a mount point must
// exist, and making one on the host would leave it behind), then starts
// libvirtd and reaps. Why each part:
// - The shell, not libvirtd, is PID 1: libvirtd double-forks QEMU (also its
//   capability probes), the orphans are re-parented to PID 1, and libvirtd does
//   not reap them — the zombies then look alive to its kill loop, which waits
//   40 s per probe (a first `virsh version` took 81 s).
// - The PID namespace is how stop() kills the whole tree: when PID 1 exits the
//   kernel kills every process left in it, QEMU included.
// - --mount-proc: libvirtd reads /proc/<pid> of the QEMU it started, by the
//   PID it sees.
// - /etc/passwd and /etc/group get a private copy with a `libvirt-qemu` user and
//   group (and `kvm`) added: Debian's QEMU driver resolves its built-in default
//   user before it reads qemu.conf's `user = "root"`, and fails to start
//   without it (libvirt-daemon-system, which creates them, is not installed).
// - qemu.conf: root, no dynamic ownership, no security driver, no namespaces,
//   no cgroups (no systemd, no cgroup delegation in a container), and
//   stdio_handler "file" (QEMU's log straight to /var/log/libvirt/qemu, no
//   virtlogd to run).
// - PID 1 reads a pipe from the test process and ends the namespace at EOF: a
//   test process that dies without stop() leaves no libvirtd or QEMU behind.
// The sockets (rw, ro, admin) are in `<dir>/sock`, outside the private mounts,
// so the test process reaches them.

import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface PrivateLibvirtdOptions {
  /** libvirtd's log level into `<dir>/log/libvirtd.log`: 1 debug … 4 error (default 3) */
  logLevel?: 1 | 2 | 3 | 4;
  /** how long libvirtd may take to answer (default 30 s) */
  startTimeoutMs?: number;
}

export interface PrivateLibvirtd {
  /** the read-write socket */
  socket: string;
  /** the read-only socket */
  roSocket: string;
  /** qemu+unix:///system?socket=<socket> */
  uri: string;
  /** the scratch dir: sockets, config, libvirt's state, logs */
  dir: string;
  /** libvirtd's own log (QEMU's logs are in `<dir>/log/qemu/`) */
  logFile: string;
  /** runs real `virsh -c <uri> ...args`; rejects with virsh's stderr when it fails */
  virsh(...args: string[]): Promise<string>;
  /** SIGTERM to the namespace (libvirtd exits, every QEMU is killed), SIGKILL after 10 s; removes `dir`. Idempotent. */
  stop(): Promise<void>;
}

const LIBVIRTD = '/usr/sbin/libvirtd';

// Runs as PID 1 of the new PID namespace; $1 is the scratch dir.
const INIT_SCRIPT = `set -eu
S=$1
mount --make-rprivate /
private() {
  target=$1; src=$2
  if [ ! -d "$target" ]; then
    parent=$(dirname "$target"); ov="$S/overlay$(echo "$parent" | tr / _)"
    mkdir -p "$ov/upper" "$ov/work"
    mount -t overlay overlay -o "lowerdir=$parent,upperdir=$ov/upper,workdir=$ov/work" "$parent"
    mkdir "$target"
  fi
  mount --bind "$src" "$target"
}
private /run/libvirt "$S/run"
private /var/lib/libvirt "$S/lib"
private /var/cache/libvirt "$S/cache"
private /var/log/libvirt "$S/log"
private /etc/libvirt "$S/etc"
mount --bind "$S/passwd" /etc/passwd
mount --bind "$S/group" /etc/group
# stdin is a pipe from the test process: EOF means it died without stop().
# (fd 3: a background job's stdin is /dev/null)
exec 3<&0
${LIBVIRTD} --config "$S/etc/libvirtd.conf" --pid-file "$S/libvirtd.pid" 3<&- &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null' TERM INT
(cat >/dev/null <&3; kill -TERM 1) &
exec 3<&-
# wait reaps every child, the re-parented QEMU too; it returns early on a trapped signal
while kill -0 "$pid" 2>/dev/null; do wait "$pid" || true; done
`;

function libvirtdConf(dir: string, logLevel: number): string {
  return [
    'listen_tls = 0',
    'listen_tcp = 0',
    `unix_sock_dir = "${dir}/sock"`,
    'unix_sock_group = "root"',
    'unix_sock_ro_perms = "0777"',
    'unix_sock_rw_perms = "0700"',
    'unix_sock_admin_perms = "0700"',
    'auth_unix_ro = "none"',
    'auth_unix_rw = "none"',
    `log_outputs = "${logLevel}:file:${dir}/log/libvirtd.log"`,
    '',
  ].join('\n');
}

const QEMU_CONF = [
  'user = "root"',
  'group = "root"',
  'dynamic_ownership = 0',
  'remember_owner = 0',
  'security_driver = "none"',
  'namespaces = [ ]',
  'cgroup_controllers = [ ]',
  'stdio_handler = "file"',
  '',
].join('\n');

/** /etc/passwd or /etc/group with the entries libvirt's QEMU driver looks up added when missing. */
async function withLibvirtIds(file: string, entries: Record<string, string>): Promise<string> {
  let text = await readFile(file, 'utf8');
  if (!text.endsWith('\n')) text += '\n';
  for (const [name, line] of Object.entries(entries)) {
    if (!text.split('\n').some((l) => l.startsWith(`${name}:`))) text += `${line}\n`;
  }
  return text;
}

let skipReason: Promise<string | undefined> | undefined;

/** Why a private libvirtd cannot run here (not root, libvirtd missing, unshare refused), or undefined. */
export function privateLibvirtdSkipReason(): Promise<string | undefined> {
  skipReason ??= (async () => {
    if (process.getuid?.() !== 0) return 'a private libvirtd needs root (mount and PID namespaces)';
    if (!existsSync(LIBVIRTD)) return `${LIBVIRTD} is not installed (Debian: libvirt-daemon-driver-qemu)`;
    try {
      await run('virsh', ['--version']);
    } catch {
      return 'virsh is not installed (Debian: libvirt-clients)';
    }
    try {
      await run('unshare', ['--mount', '--pid', '--fork', '--mount-proc', 'true']);
    } catch (e) {
      return `unshare --mount --pid is refused here: ${(e as Error).message.trim()}`;
    }
    return undefined;
  })();
  return skipReason;
}

async function makeScratch(logLevel: number): Promise<string> {
  // short: the socket paths must stay under 108 bytes
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vblv-'));
  for (const sub of ['sock', 'run', 'lib', 'cache', 'log', 'etc']) await mkdir(path.join(dir, sub));
  await writeFile(path.join(dir, 'etc', 'libvirtd.conf'), libvirtdConf(dir, logLevel));
  await writeFile(path.join(dir, 'etc', 'qemu.conf'), QEMU_CONF);
  await writeFile(path.join(dir, 'passwd'), await withLibvirtIds('/etc/passwd', {
    'libvirt-qemu': 'libvirt-qemu:x:64055:64055:Libvirt Qemu:/var/lib/libvirt:/usr/sbin/nologin',
  }));
  await writeFile(path.join(dir, 'group'), await withLibvirtIds('/etc/group', {
    'libvirt-qemu': 'libvirt-qemu:x:64055:',
    kvm: 'kvm:x:64056:',
  }));
  await writeFile(path.join(dir, 'init.sh'), INIT_SCRIPT);
  return dir;
}

const canConnect = (socket: string) => new Promise<boolean>((resolve) => {
  const s = net.connect(socket);
  s.once('connect', () => { s.destroy(); resolve(true); });
  s.once('error', () => resolve(false));
});

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function tail(file: string, lines = 15): Promise<string> {
  try {
    return (await readFile(file, 'utf8')).trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(none)';
  }
}

/** The host PID of the namespace's PID 1 (unshare's only child). */
async function namespaceInit(unsharePid: number): Promise<number | undefined> {
  try {
    const children = await readFile(`/proc/${unsharePid}/task/${unsharePid}/children`, 'utf8');
    const first = children.trim().split(/\s+/)[0];
    return first ? Number(first) : undefined;
  } catch {
    return undefined;
  }
}

function exited(child: ChildProcess, ms: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    child.once('exit', () => { clearTimeout(timer); resolve(true); });
  });
}

async function stopNamespace(child: ChildProcess): Promise<void> {
  if (child.pid === undefined) return;
  const init = await namespaceInit(child.pid);
  if (init !== undefined) {
    try { process.kill(init, 'SIGTERM'); } catch { /* gone */ }
    if (await exited(child, 10_000)) return;
    // PID 1 killed: the kernel kills everything else in the namespace
    try { process.kill(init, 'SIGKILL'); } catch { /* gone */ }
  } else {
    try { child.kill('SIGKILL'); } catch { /* gone */ }
  }
  if (!(await exited(child, 10_000))) throw new Error(`the private libvirtd's namespace (unshare pid ${child.pid}) did not exit`);
}

/** Starts a private libvirtd (see the header) and waits until its socket answers. */
export async function startPrivateLibvirtd(opts: PrivateLibvirtdOptions = {}): Promise<PrivateLibvirtd> {
  const reason = await privateLibvirtdSkipReason();
  if (reason) throw new Error(`no private libvirtd here: ${reason}`);
  const dir = await makeScratch(opts.logLevel ?? 3);
  const socket = path.join(dir, 'sock', 'libvirt-sock');
  const uri = `qemu+unix:///system?socket=${socket}`;
  const logFile = path.join(dir, 'log', 'libvirtd.log');
  const out = openSync(path.join(dir, 'init.log'), 'w');
  const child = spawn('unshare', ['--mount', '--pid', '--fork', '--mount-proc', 'sh', path.join(dir, 'init.sh'), dir], {
    // stdin: the namespace ends itself when this process dies (see INIT_SCRIPT)
    stdio: ['pipe', out, out],
  });
  closeSync(out);
  let stopped: Promise<void> | undefined;
  const stop = () => {
    stopped ??= stopNamespace(child).finally(() => rm(dir, { recursive: true, force: true }));
    return stopped;
  };
  const virsh = async (...args: string[]) => {
    try {
      return (await run('virsh', ['-c', uri, ...args], { timeout: 120_000 })).stdout;
    } catch (e) {
      const err = e as Error & { stderr?: string };
      throw new Error(`virsh ${args.join(' ')}: ${err.stderr?.trim() || err.message}`, { cause: e });
    }
  };
  try {
    const end = Date.now() + (opts.startTimeoutMs ?? 30_000);
    while (!(await canConnect(socket))) {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error('libvirtd exited');
      if (Date.now() > end) throw new Error('libvirtd did not answer in time');
      await sleep(50);
    }
    await virsh('version');
  } catch (e) {
    const why = `${(e as Error).message}\ninit: ${await tail(path.join(dir, 'init.log'))}\nlibvirtd.log: ${await tail(logFile)}`;
    await stop();
    throw new Error(`private libvirtd did not start: ${why}`, { cause: e });
  }
  return { socket, roSocket: `${socket}-ro`, uri, dir, logFile, virsh, stop };
}

/**
 * The small TCG domain the libvirt tests define: one virtio qcow2 disk 'vda',
 * no devices beyond it. libvirt's default machine is 'pc'; virtbackd runs q35.
 */
export function smallDomainXml(name: string, disk: string, opts: { machine?: string; uuid?: string } = {}): string {
  return `<domain type='qemu'>
  <name>${name}</name>${opts.uuid ? `\n  <uuid>${opts.uuid}</uuid>` : ''}
  <memory unit='MiB'>96</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='${opts.machine ?? 'pc'}'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='${disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <memballoon model='none'/>
  </devices>
</domain>
`;
}
