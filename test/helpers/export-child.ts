// A process that serves an image with the repository's qemu-nbd export and
// then waits to be killed (test/qemu/export-orphan.test.ts).
import { startExport } from '../../src/repository/tools.js';

const e = await startExport({ image: process.argv[2]!, format: 'qcow2', readOnly: true });
process.stdout.write(`ready ${e.socketPath}\n`);
setInterval(() => {}, 60_000);
