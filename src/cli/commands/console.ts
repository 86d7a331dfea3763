// virsh's console, vncdisplay and domiflist. console is interactive: the
// terminal goes raw, what is typed goes to the guest's serial console and
// what the guest writes comes back, until ^] (or the end of input, or the
// console ends). Over a daemon connection the bytes travel as a stream
// (remote/stream.ts); in-process the driver opens the pty itself.

import type { Command } from 'commander';
import { READ_ONLY_MESSAGE, type CheckedDriver } from '../../api/checked-driver.js';
import { ConsoleFlags, type ConsoleStream } from '../../api/console-stream.js';
import { virErr } from '../../errors.js';
import { interfacesOf } from '../../xml/domain-net.js';
import { VNC_BASE_PORT } from '../../xml/domain-graphics.js';
import { attr, childElements, firstChild, type XmlElement } from '../../xml/node.js';
import { parseXml } from '../xml-parser.js';
import { lookupDomain, withConnection } from '../connection.js';
import { formatTable, out } from '../output.js';

/** ^] (GS), virsh's escape character */
const ESCAPE = 0x1d;

function devices(xml: string): XmlElement[] {
  const d = firstChild(parseXml(xml), 'devices');
  return d === null ? [] : childElements(d);
}

/** virsh domiflist's rows: Interface (the tap, or '-'), Type, Source, Model, MAC. */
export function interfaceRows(xml: string): string[][] {
  return interfacesOf(devices(xml).map((e) => ({ ...e, children: e.children.filter((c) => typeof c === 'string' || (c.name !== 'alias' && c.name !== 'address')) })))
    .map((i) => [i.tap ?? '-', i.type, i.bridge ?? '-', i.model, i.mac]);
}

/** virsh vncdisplay: 'ADDRESS:DISPLAY' (':N' when listening on every address); null without a VNC port. */
export function vncDisplay(xml: string): string | null {
  const g = devices(xml).find((e) => e.name === 'graphics' && attr(e, 'type') === 'vnc');
  const port = g === undefined ? null : Number(attr(g, 'port') ?? -1);
  if (g === undefined || port === null || port < VNC_BASE_PORT) return null;
  const listen = attr(g, 'listen') ?? '';
  const host = listen === '0.0.0.0' || listen === '::' ? '' : listen;
  return `${host}:${port - VNC_BASE_PORT}`;
}

/** Pump stdin to the console and the console to stdout until ^], end of input or the console's end. */
function interact(stream: ConsoleStream): Promise<void> {
  const stdin = process.stdin;
  const raw = stdin.isTTY === true;
  return new Promise<void>((resolve, reject) => {
    let done = false;
    const finish = (err: Error | null): void => {
      if (done) return;
      done = true;
      stdin.off('data', onInput);
      stdin.off('end', onEnd);
      if (raw) stdin.setRawMode(false);
      stdin.pause();
      // a paused pipe still holds the event loop: the command is over
      (stdin as { unref?: () => void }).unref?.();
      stream.close();
      if (err) reject(err);
      else resolve();
    };
    const onInput = (d: Buffer): void => {
      const at = d.indexOf(ESCAPE);
      if (at < 0) return stream.write(d);
      if (at > 0) stream.write(d.subarray(0, at));
      finish(null);
    };
    const onEnd = (): void => finish(null);
    stream.onData((d) => process.stdout.write(d));
    stream.onEnd((err) => finish(err));
    if (raw) stdin.setRawMode(true);
    stdin.on('data', onInput);
    stdin.on('end', onEnd);
    stdin.resume();
  });
}

export function register(program: Command): void {
  program
    .command('console')
    .description("connect to the guest console (^] leaves)")
    .argument('<domain>', 'domain name, id or uuid')
    .option('--devname <name>', "character device: serialN or console0 (default: the first console)")
    .option('--force', 'take the console from another session that holds it')
    .option('--safe', 'only connect if the console can be held exclusively (it always is)')
    .action(async (ref: string, o: { devname?: string; force?: boolean; safe?: boolean }, cmd: Command) => {
      await withConnection(cmd, async (conn) => {
        const dom = await lookupDomain(conn, ref);
        if (conn.isReadOnly()) throw virErr('OPERATION_DENIED', 'NONE', READ_ONLY_MESSAGE);
        const driver = (conn.rawDriver as CheckedDriver).inner;
        if (driver.openConsole === undefined) throw virErr('NO_SUPPORT', 'NONE', 'this connection has no consoles');
        const flags = (o.force ? ConsoleFlags.FORCE : 0) | (o.safe ? ConsoleFlags.SAFE : 0);
        const stream = await driver.openConsole(dom.uuid, o.devname ?? null, flags);
        process.stderr.write(`Connected to domain '${dom.name}'\nEscape character is ^] (Ctrl + ])\n`);
        await interact(stream);
        process.stderr.write('\n');
      });
    });

  program
    .command('vncdisplay')
    .description('vnc display')
    .argument('<domain>', 'domain name, id or uuid')
    .action(async (ref: string, _o: unknown, cmd: Command) => {
      await withConnection(cmd, async (conn) => {
        const dom = await lookupDomain(conn, ref);
        const display = vncDisplay(await dom.getXMLDesc());
        if (display === null) {
          if ((await dom.getInfo()).id <= 0) throw virErr('OPERATION_INVALID', 'NONE', 'Requested operation is not valid: domain is not running');
          throw virErr('OPERATION_FAILED', 'NONE', 'No graphical display found');
        }
        out(display);
      });
    });

  program
    .command('domiflist')
    .description('list all domain virtual interfaces')
    .argument('<domain>', 'domain name, id or uuid')
    .option('--inactive', 'get inactive rather than running configuration')
    .action(async (ref: string, o: { inactive?: boolean }, cmd: Command) => {
      await withConnection(cmd, async (conn) => {
        const dom = await lookupDomain(conn, ref);
        const xml = await dom.getXMLDesc(o.inactive ? { inactive: true } : undefined);
        out(formatTable(['Interface', 'Type', 'Source', 'Model', 'MAC'], interfaceRows(xml)));
      });
    });
}
