// The layers of src/, checked by dependency-cruiser (scripts/test.sh runs
// `npx depcruise src --config .dependency-cruiser.mjs --ignore-known`).
// Arrows go one way, from the top down:
//
//   cli/, demo.ts, index.ts       entry points; nothing imports them
//   sdk/                          connect(): URIs, session-daemon autostart, the remote driver
//   daemon/                       virtbackd: serves the Driver it is handed (cli/virtbackd.ts assembles)
//   web/                          virtbackd's web console: the public API and the backup flows over HTTPS
//   qemu/  remote/  libvirt/  repository/  vmbackup/   the drivers, the two wire protocols, the backup files and
//                                 whole-VM backups into the chunk store, side by side
//   chunkstore/                   the deduplicating chunk repository (storage: no driver, wire or CLI)
//   nbd/                          the NBD client, and the read-only NBD server (backup-serve)
//   qcow2/                        the qcow2 writer of backup-pull: a copy sink for nbd/'s copy engine
//   api/                          the contract: Driver interface, public-API checks, options
//   xml/                          parse + align + format (pure)
//   errors.ts flags.ts log.ts     the base
//
// The codecs (QMP, NBD, remote frames, util/) take bytes and return values:
// no sockets, files or processes. Each rule's comment says why it exists.
// Violations listed in .dependency-cruiser-known-violations.json (written by
// `npx depcruise-baseline -c .dependency-cruiser.mjs src`) are tolerated;
// keep that file empty but for code that is already being removed.

/** @type {(names: string[]) => string} */
const files = (names) => `^src/(${names.join('|')})$`;

const BASE = files(['errors\\.ts', 'flags\\.ts', 'log\\.ts']);
const CODECS = files([
  'qemu/qmp/codec\\.ts',
  'nbd/codec\\.ts',
  'nbd/server-codec\\.ts',
  'nbd/protocol\\.ts',
  'remote/frame\\.ts',
  'libvirt/xdr\\.ts',
  'libvirt/packet\\.ts',
  'qcow2/layout\\.ts',
  'qcow2/cluster-map\\.ts',
  'util/.+',
  '.+/util/.+',
]);
// Node modules that reach outside the process, or pump bytes from it (streams):
// the connection around a codec uses them, the codec does not. Timers and
// EventEmitter are not I/O (a pending-call table may time out).
const IO_BUILTINS =
  '^(node:)?(fs|fs/promises|net|tls|dgram|dns|dns/promises|http|https|http2|child_process|cluster|' +
  'worker_threads|readline|readline/promises|os|process|stream|stream/promises|inspector)$';

/** @type {import('dependency-cruiser').IConfiguration} */
export default {
  forbidden: [
    {
      name: 'no-circular',
      severity: 'error',
      comment:
        'A cycle makes two modules one: neither can be understood, tested or loaded without the other, ' +
        'and ESM evaluates one of them half-initialised. Move the shared part down a layer.',
      from: { path: '^src/' },
      to: { circular: true },
    },
    {
      name: 'not-to-unresolvable',
      severity: 'error',
      comment:
        'An import depcruise cannot resolve is an edge no other rule sees (e.g. a .js specifier that no longer ' +
        'maps to a .ts file), so an unresolved import would make every layer rule pass silently.',
      from: { path: '^src/' },
      to: { couldNotResolve: true },
    },
    {
      name: 'base-imports-nothing',
      severity: 'error',
      comment:
        'errors.ts, flags.ts and log.ts are the vocabulary every layer shares (libvirt codes, flag values, ' +
        'the logger contract); they import only each other, so any layer may use them.',
      from: { path: BASE },
      to: { path: '^src/', pathNot: BASE },
    },
    {
      name: 'xml-only-base',
      severity: 'error',
      comment:
        'xml/ is pure parse/align/format of libvirt documents, usable by the API, every driver and the CLI; ' +
        'it knows nothing of drivers, QEMU or the wire.',
      from: { path: '^src/xml/' },
      to: { path: '^src/', pathNot: `${BASE}|^src/xml/` },
    },
    {
      name: 'api-only-base-and-xml',
      severity: 'error',
      comment:
        'api/ is the contract (Driver interface, public-API checks, options) that every driver implements ' +
        'and every client calls; it cannot depend on any of them. connect() lives in sdk/, paths in daemon/.',
      from: { path: '^src/api/' },
      to: { path: '^src/', pathNot: `${BASE}|^src/(api|xml)/` },
    },
    {
      name: 'codecs-only-pure',
      severity: 'error',
      comment:
        'Codecs take bytes and return values (pure cores, thin I/O edges), so they are tested exhaustively ' +
        'without sockets; of ours they may use only the base, other codecs, util/ and the pure NBD error map.',
      from: { path: CODECS },
      to: { path: '^src/', pathNot: `${BASE}|${CODECS}|^src/nbd/errors\\.ts$` },
    },
    {
      name: 'codecs-no-io-builtins',
      severity: 'error',
      comment:
        'Codecs never touch a file, socket, process or event loop; the connection that feeds them does.',
      from: { path: CODECS },
      to: { dependencyTypes: ['core'], path: IO_BUILTINS },
    },
    {
      name: 'nbd-is-a-leaf-client',
      severity: 'error',
      comment:
        'The NBD client speaks the NBD protocol to any server; the repository and the CLI use it, ' +
        'it knows nothing of QEMU, the daemon, the wire or backup files.',
      from: { path: '^src/nbd/' },
      to: { path: '^src/(qemu|remote|daemon|repository|cli|sdk)/' },
    },
    {
      name: 'qcow2-is-a-file-format',
      severity: 'error',
      comment:
        'qcow2/ writes one file format: pure layout and cluster map, and a writer that is a sink of the NBD copy ' +
        'engine (and writes through its O_DIRECT file, nbd/direct-file.ts); it knows nothing of NBD connections, QEMU, backups or the CLI.',
      from: { path: '^src/qcow2/' },
      to: { path: '^src/', pathNot: `${BASE}|^src/qcow2/|^src/nbd/(copy|direct-file)\\.ts$` },
    },
    {
      name: 'qemu-below-daemon',
      severity: 'error',
      comment:
        'The QEMU driver implements the Driver interface and runs in any process (tests, embedding, virtbackd); ' +
        'what happens after a push (manifests) is injected by whoever assembles it, not imported.',
      from: { path: '^src/qemu/' },
      to: { path: '^src/(remote|daemon|repository|cli|sdk)/' },
    },
    {
      name: 'repository-not-a-driver',
      severity: 'error',
      comment:
        'Backup files (manifests, chains, restore, verify, pull) work without a daemon and against any driver: ' +
        'they use NBD and the contract, never a particular driver or the wire.',
      from: { path: '^src/repository/' },
      to: { path: '^src/(qemu|daemon|cli|remote)/' },
    },
    {
      name: 'vmbackup-through-the-contract',
      severity: 'error',
      comment:
        'Whole-VM backup and restore (src/vmbackup/) drive a domain through the public API, so they work over any ' +
        'Driver (in-process QEMU, virtbackd, libvirt); they read exports with the NBD client and store chunks in ' +
        'chunkstore/. Of repository/ only its tool runner (qemu-img) is shared.',
      from: { path: '^src/vmbackup/' },
      to: { path: '^src/(qemu|remote|libvirt|daemon|sdk|cli)/|^src/repository/(?!tools\\.ts$)' },
    },
    {
      name: 'chunkstore-is-storage',
      severity: 'error',
      comment:
        'The chunk repository (chunks, indexes, point records, prune, gc, verify) is storage: the backup and ' +
        'restore flows, the NBD server and the CLI use it with any driver; it may use the base, xml/ and util/ ' +
        '(and node fs/crypto), never a driver, the wire, the daemon or the CLI.',
      from: { path: '^src/chunkstore/' },
      to: { path: '^src/', pathNot: `${BASE}|^src/(chunkstore|xml|util)/` },
    },
    {
      name: 'web-console-through-the-public-api',
      severity: 'error',
      comment:
        "virtbackd's web console (src/web/) calls the same public API (Connect over the Driver it is handed) and the " +
        'same backup flows (vmbackup/, chunkstore/) as the CLI: no second path to the driver, the wire or QEMU. ' +
        'cli/virtbackd.ts assembles it.',
      from: { path: '^src/web/' },
      to: { path: '^src/', pathNot: `${BASE}|^src/(web|api|vmbackup|chunkstore|xml|util)/` },
    },
    {
      name: 'remote-carries-driver-calls',
      severity: 'error',
      comment:
        'The wire protocol, its client and its server are Driver-to-Driver plumbing: the server serves any ' +
        'Driver it is handed, the client is one; neither knows which driver is behind them, nor backup files.',
      from: { path: '^src/remote/' },
      to: { path: '^src/(qemu|daemon|repository|cli|sdk)/' },
    },
    {
      name: 'libvirt-speaks-to-any-driver',
      severity: 'error',
      comment:
        "libvirt's wire protocol is Driver-to-Driver plumbing too: its server serves any Driver it is handed " +
        '(virtbackd, tests), its client driver is one; neither knows QEMU, virtbackd, backup files or the CLI.',
      from: { path: '^src/libvirt/' },
      to: { path: '^src/(qemu|daemon|repository|cli|sdk)/' },
    },
    {
      name: 'daemon-gets-a-driver',
      severity: 'error',
      comment:
        'virtbackd serves whatever Driver it is handed (cli/virtbackd.ts assembles the QEMU one); optional ' +
        'driver features are declared Driver capabilities, not casts into qemu/.',
      from: { path: '^src/daemon/' },
      to: { path: '^src/(qemu|cli|sdk)/' },
    },
    {
      name: 'sdk-is-a-client',
      severity: 'error',
      comment:
        'connect() reaches a daemon through the remote driver; it shares only the socket paths with the ' +
        'daemon, and an SDK user must not load QEMU or the server to open a connection.',
      from: { path: '^src/sdk/' },
      to: { path: '^src/(qemu|cli)/|^src/daemon/', pathNot: '^src/daemon/paths\\.ts$' },
    },
    {
      name: 'nothing-imports-cli',
      severity: 'error',
      comment: 'cli/ is the top: the commands and virtbackd assemble the layers below; no layer reaches back up.',
      from: { path: '^src/', pathNot: '^src/cli/' },
      to: { path: '^src/cli/' },
    },
    {
      name: 'nothing-imports-entries',
      severity: 'error',
      comment: 'index.ts (the package entry) and demo.ts are tops: importing one drags in every layer.',
      from: { path: '^src/' },
      to: { path: '^src/(index|demo)\\.ts$' },
    },
    {
      name: 'src-not-tests-or-bench',
      severity: 'error',
      comment: 'The package ships src/ alone; tests and benchmarks use it, never the other way round.',
      from: { path: '^src/' },
      to: { path: '^(test|bench)/' },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    // Type-only imports are layer edges too: a type from a higher layer couples the contract to it.
    tsPreCompilationDeps: true,
    // NodeNext-style specifiers ('./x.js') resolve to the .ts sources through the tsconfig.
    tsConfig: { fileName: 'tsconfig.json' },
    // package subpaths ('hono/cookie') resolve through their package.json "exports", as node resolves them
    enhancedResolveOptions: { exportsFields: ['exports'], conditionNames: ['import', 'node', 'default'] },
    reporterOptions: { text: { highlightFocused: true } },
  },
};
