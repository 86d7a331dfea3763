// virDomainQemuMonitorCommand: a caller's QMP (JSON) or HMP command passed
// through to the domain's monitor, the reply handed back as text.

import { virErr } from '../errors.js';
import { QmpCommandError, qmpErrorToVirError, type QmpClient } from './qmp/client.js';

/** HMP: QEMU's text output. QMP: `{"return": ...}` or, as virsh shows it, `{"error": {...}}`. */
export async function passMonitorCommand(qmp: QmpClient, command: string, hmp: boolean): Promise<string> {
  if (hmp) {
    try {
      return await qmp.hmp(command);
    } catch (e) {
      throw qmpErrorToVirError(e);
    }
  }
  let msg: unknown;
  try {
    msg = JSON.parse(command);
  } catch (e) {
    throw virErr('INTERNAL_ERROR', 'QEMU', `internal error: cannot parse json ${command}: ${(e as Error).message}`);
  }
  if (typeof msg !== 'object' || msg === null || typeof (msg as { execute?: unknown }).execute !== 'string') {
    throw virErr('INVALID_ARG', 'QEMU', `invalid argument: monitor command must be a JSON object with a string 'execute': ${command}`);
  }
  const { execute, arguments: args } = msg as { execute: string; arguments?: object };
  // An error reply is a result, not a failure (virsh qemu-monitor-command); our message id is left out.
  try {
    const ret = await qmp.executeRaw(execute, args);
    return JSON.stringify({ return: ret });
  } catch (e) {
    if (e instanceof QmpCommandError) return JSON.stringify({ error: { class: e.errorClass, desc: e.desc } });
    throw qmpErrorToVirError(e);
  }
}
