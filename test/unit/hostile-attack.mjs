// Run as an unprivileged user by test/unit/remote-daemon.test.ts against
// virtbackd's read-only socket: the attacks of the hostile-testing report.
//   node hostile-attack.mjs SOCKET SECONDS
/* global Buffer, process, setTimeout */
import net from 'node:net';

const [sock, seconds] = [process.argv[2], Number(process.argv[3])];
const conns = [];
const frame = (payload) => {
  const head = Buffer.alloc(4);
  head.writeUInt32BE(payload.length);
  return Buffer.concat([head, payload]);
};
const open = (onConnect) => {
  const s = net.createConnection(sock, () => onConnect(s));
  s.on('error', () => {});
  conns.push(s);
};
// 100 clients each starting a 16 MiB frame and never finishing it
for (let i = 0; i < 100; i++) {
  open((s) => {
    const head = Buffer.alloc(4);
    head.writeUInt32BE(16 * 1024 * 1024);
    s.write(head);
    s.write(Buffer.alloc(60 * 1024, 0x5b));
  });
}
// 3 clients sending frames of deeply nested arrays, as fast as the socket takes them
const deep = frame(Buffer.from('['.repeat(30_000) + ']'.repeat(30_000)));
for (let i = 0; i < 3; i++) {
  open((s) => {
    const pump = () => { while (s.write(deep)); };
    s.on('drain', pump);
    pump();
  });
}
// 20 clients that call and never read the replies
const call = frame(Buffer.from(JSON.stringify({ type: 'call', serial: 1, proc: 'listAllDomains', args: [0] })));
for (let i = 0; i < 20; i++) {
  open((s) => {
    s.pause();
    for (let k = 0; k < 5000; k++) s.write(call);
  });
}
setTimeout(() => {
  for (const s of conns) s.destroy();
  process.exit(0);
}, seconds * 1000);
