// A process that serves an image with the repository's qemu-nbd export, holds
// a client connection to it (as a daemon computing a manifest does) and then
// waits to be killed (test/qemu/export-orphan.test.ts).
import { NbdClient } from '../../src/nbd/client.js';
import { startExport } from '../../src/repository/tools.js';

const e = await startExport({ image: process.argv[2]!, format: 'qcow2', readOnly: true });
const client = await NbdClient.connect({ socketPath: e.socketPath }, { exportName: '' });
await client.read(0, 4096);
process.stdout.write(`ready ${e.socketPath}\n`);
setInterval(() => {}, 60_000);
