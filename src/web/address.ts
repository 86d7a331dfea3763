// Which listen addresses count as loopback (plain HTTP is allowed only there).
// Apart from server.ts so that the command line checks it without loading the server.

export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}
