// The CLI against real QEMU: a test env and an in-process daemon serving the
// QEMU driver, both cleaned up after the test.

import type { TestContext } from 'node:test';
import type { QemuDriver } from '../../src/qemu/driver.js';
import { startCliDaemon } from './cli.js';
import { makeTestEnv } from './qemu-env.js';

export async function cliOnQemu(t: TestContext) {
  const env = await makeTestEnv();
  let qemu: QemuDriver | null = null;
  const cli = await startCliDaemon<QemuDriver>(t, {
    dir: env.dir,
    openDriver: async (dirs) => {
      const { QemuDriver: Q } = await import('../../src/qemu/driver.js');
      return (qemu = await Q.open(dirs));
    },
  });
  t.after(async () => {
    await cli.daemon.stop();
    await env.cleanup();
  });
  return { env, cli, qemu: () => qemu! };
}
