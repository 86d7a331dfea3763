// virsh shutdown and reboot: DOM [--mode acpi,agent,...], asking the guest.

import type { Command } from 'commander';
import { DomainShutdownFlags } from '../../flags.js';
import { lookupDomain, withConnection } from '../connection.js';
import { out, usageError } from '../output.js';

/** virsh's --mode words, each a VIR_DOMAIN_SHUTDOWN_* flag (VIR_DOMAIN_REBOOT_* has the same values). */
const MODES: Record<string, number> = {
  acpi: DomainShutdownFlags.ACPI_POWER_BTN,
  agent: DomainShutdownFlags.GUEST_AGENT,
  initctl: DomainShutdownFlags.INITCTL,
  signal: DomainShutdownFlags.SIGNAL,
  paravirt: DomainShutdownFlags.PARAVIRT,
};

/** virsh's --mode: a comma-separated list of the words above. */
export function powerModeFlags(cmd: Command, mode: string | undefined): number {
  let flags = 0;
  for (const word of (mode ?? '').split(',').filter((w) => w !== '')) {
    const bit = Object.hasOwn(MODES, word) ? MODES[word] : undefined;
    if (bit === undefined) usageError(cmd, `Unknown mode ${word} value, expecting 'acpi', 'agent', 'initctl', 'signal' or 'paravirt'`);
    flags |= bit;
  }
  return flags;
}

export function registerPower(program: Command): void {
  for (const [verb, done] of [['shutdown', 'is being shutdown'], ['reboot', 'is being rebooted']] as const) {
    program
      .command(verb)
      .description(verb === 'shutdown' ? 'gracefully shutdown a domain' : 'reboot a domain')
      .argument('<domain>', 'domain name, id or uuid')
      .option('--mode <mode>', 'acpi and/or agent (comma-separated); default: the agent when configured, else acpi')
      .action(async (ref: string, o: { mode?: string }, cmd: Command) => {
        const flags = powerModeFlags(cmd, o.mode);
        await withConnection(cmd, async (conn) => {
          const dom = await lookupDomain(conn, ref);
          await (verb === 'shutdown' ? dom.shutdown(flags) : dom.reboot(flags));
          out(`Domain '${dom.name}' ${done}\n`);
        });
      });
  }
}
