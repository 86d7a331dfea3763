// Where an NBD server listens, and the URI that names it in messages (as nbdinfo and nbdcopy spell it).

export type NbdTarget = { socketPath: string } | { host: string; port: number };

export function describeTarget(target: NbdTarget, exportName: string): string {
  const name = encodeURIComponent(exportName);
  return 'socketPath' in target ? `nbd+unix:///${name}?socket=${target.socketPath}` : `nbd://${target.host}:${target.port}/${name}`;
}
