// Asking a guest to power off or to reboot (virDomainShutdownFlags,
// virDomainReboot), and what the runtime does when a guest powers off,
// following libvirt's QEMU driver:
// - ACPI: QMP system_powerdown (the power button); the call returns once the
//   button is pressed, and the guest may ignore it.
// - agent: guest-shutdown mode=powerdown|reboot. qemu-ga never answers one that
//   succeeds, so it is done when QEMU reports the guest's SHUTDOWN or RESET
//   (libvirt's agent awaits the same events).
// - no flag: the agent when the domain has its channel, else ACPI; a failing
//   agent falls back to ACPI unless GUEST_AGENT alone was asked for.
// - reboot over ACPI is libvirt's "fake reboot": QEMU's shutdown action becomes
//   pause (set-action), the button is pressed, and once the guest has powered
//   off, system_reset + cont boot it again. <on_poweroff>restart</on_poweroff>
//   does that on every guest power-off (the command line's -action
//   shutdown=pause). A fake reboot in progress is in the status file, so a
//   restarted driver finishes it (finishPowerOff at reconnect).

import { isVirError, virErr } from '../errors.js';
import { DomainShutdownFlags, DomainState, RunningReason, ShutdownReason, checkFlags } from '../flags.js';
import { errField, type Logger } from '../log.js';
import type { DomainDef } from '../xml/domain.js';
import { textContent } from '../xml/tree.js';
import type { DomainObject } from './domain-object.js';
import { lifecycleEvent, type EventBus } from './event-bus.js';
import type { QmpClient } from './qmp/client.js';
import { notRunning, type QemuRuntime } from './runtime.js';

export type LifecycleAction = 'destroy' | 'restart' | 'preserve';
type ActionElement = 'on_poweroff' | 'on_reboot' | 'on_crash';

const DEFAULT_ACTION: Record<ActionElement, LifecycleAction> = { on_poweroff: 'destroy', on_reboot: 'restart', on_crash: 'destroy' };

/** <on_poweroff>, <on_reboot>, <on_crash> of a definition, or libvirt's default. */
export function lifecycleActionOf(def: DomainDef, name: ActionElement): LifecycleAction {
  const el = def.extra.find((e) => e.name === name);
  return el === undefined ? DEFAULT_ACTION[name] : (textContent(el).trim() as LifecycleAction);
}

/** Whether the guest's power-off is to be reset into a boot: a fake reboot, or <on_poweroff>restart. */
function rebootsOnPowerOff(dom: DomainObject, run: QemuRuntime): boolean {
  return run.fakeReboot || lifecycleActionOf(dom.liveDef ?? dom.def, 'on_poweroff') === 'restart';
}

/** What the QEMU driver accepts of virDomainShutdownFlags / virDomainReboot's flags (qemuDomainShutdownFlags). */
const POWER_FLAGS = DomainShutdownFlags.ACPI_POWER_BTN | DomainShutdownFlags.GUEST_AGENT;

type Mode = 'powerdown' | 'reboot';

export interface PowerEnv {
  bus: EventBus;
  log: Logger;
}

export class DomainPower {
  constructor(private readonly env: PowerEnv) {}

  /** virDomainShutdownFlags. Lock held. */
  async shutdown(dom: DomainObject, flags: number): Promise<void> {
    checkFlags(flags, POWER_FLAGS, 'virDomainShutdownFlags');
    await this.ask(dom, flags, 'powerdown');
  }

  /** virDomainReboot. Lock held. */
  async reboot(dom: DomainObject, flags: number): Promise<void> {
    checkFlags(flags, POWER_FLAGS, 'virDomainReboot');
    await this.ask(dom, flags, 'reboot');
  }

  private async ask(dom: DomainObject, flags: number, mode: Mode): Promise<void> {
    const run = dom.run;
    if (!run) throw notRunning();
    // qemuDomainShutdownFlags: a paused guest can neither see the button nor run its agent
    if (dom.state !== DomainState.RUNNING) {
      throw virErr('OPERATION_INVALID', 'QEMU', 'Requested operation is not valid: domain is not running');
    }
    const acpi = (flags & DomainShutdownFlags.ACPI_POWER_BTN) !== 0;
    const agentAsked = (flags & DomainShutdownFlags.GUEST_AGENT) !== 0;
    const useAgent = agentAsked || (!acpi && run.status.agentSocket !== null);
    if (useAgent) {
      try {
        await this.viaAgent(run, mode);
        return;
      } catch (e) {
        // GUEST_AGENT alone: the agent's error is the answer (libvirt's reportError)
        if (agentAsked && !acpi) throw e;
        this.env.log.info({ ...errField(e), domain: dom.name }, `guest agent ${mode} failed: pressing the power button`);
      }
    }
    await this.viaAcpi(run, mode);
  }

  private async viaAcpi(run: QemuRuntime, mode: Mode): Promise<void> {
    const qmp = await run.monitor();
    if (mode === 'reboot') {
      run.fakeReboot = true;
      await run.save();
      await qmp.executeRaw('set-action', { shutdown: 'pause' });
    }
    await qmp.execute('system_powerdown');
  }

  /** guest-shutdown, done when QEMU reports the guest's SHUTDOWN (powerdown) or RESET (reboot). */
  private async viaAgent(run: QemuRuntime, mode: Mode): Promise<void> {
    const qmp = await run.monitor();
    const offs: (() => void)[] = [];
    const seen = new Promise<void>((resolve) => {
      for (const ev of ['SHUTDOWN', 'RESET']) offs.push(qmp.on(ev, () => resolve()));
    });
    try {
      await run.withAgent(async (agent) => {
        const reply = agent.execute('guest-shutdown', { mode });
        reply.catch(() => {}); // never answered on success; closing the session ends it
        await Promise.race([seen, reply.then(() => seen)]);
      });
    } finally {
      for (const off of offs) off();
    }
  }

  /**
   * The monitor's SHUTDOWN. A guest power-off that is to become a reboot
   * (fake reboot, <on_poweroff>restart) is reset and continued; otherwise the
   * domain is shutting down: state shutdown and libvirt's shutdown event
   * (detail guest or host), QEMU's exit then shuts it off (shutdown).
   */
  onShutdownEvent(dom: DomainObject, run: QemuRuntime, data: { guest?: boolean; reason?: string }): void {
    if (dom.run !== run) return;
    if (data.reason === 'guest-shutdown' && rebootsOnPowerOff(dom, run)) {
      run.resetting = true;
      dom.lock.run(() => this.restart(dom, run))
        .catch((e) => this.env.log.error({ ...errField(e), domain: dom.name }, 'reboot after the guest powered off failed'));
      return;
    }
    run.shutdownSeen = true;
    if (run.stopping || dom.state === DomainState.SHUTDOWN) return;
    [dom.state, dom.reason] = [DomainState.SHUTDOWN, ShutdownReason.UNKNOWN];
    const detail = data.guest === true ? 'guest' : data.guest === false ? 'host' : 'finished';
    this.env.bus.emit(lifecycleEvent(dom, 'shutdown', detail));
  }

  /**
   * At reconnect: QEMU sits paused at a guest power-off (status 'shutdown')
   * that happened while no driver watched, and it was to become a reboot:
   * finish it, as libvirt's qemuProcessReconnect does. Lock held.
   */
  async finishPowerOff(dom: DomainObject, run: QemuRuntime, qemuStatus: string | undefined): Promise<void> {
    if (qemuStatus !== 'shutdown' || !rebootsOnPowerOff(dom, run)) return;
    this.env.log.info({ domain: dom.name }, 'the guest powered off while the driver was away: rebooting it');
    run.resetting = true;
    await this.restart(dom, run);
  }

  /** qemuProcessFakeReboot: reset the powered-off guest and let it run again. Lock held. */
  private async restart(dom: DomainObject, run: QemuRuntime): Promise<void> {
    if (dom.run !== run || run.stopping) return;
    const def = dom.liveDef ?? dom.def;
    let qmp: QmpClient;
    try {
      qmp = await run.monitor();
      await qmp.executeRaw('system_reset');
      if (run.fakeReboot && lifecycleActionOf(def, 'on_poweroff') !== 'restart') {
        await qmp.executeRaw('set-action', { shutdown: 'poweroff' });
      }
      run.fakeReboot = false;
      await run.save();
      await qmp.execute('cont');
    } catch (e) {
      if (isVirError(e, 'OPERATION_INVALID')) return; // QEMU went away meanwhile: its exit is handled there
      throw e;
    } finally {
      run.resetting = false;
    }
    [dom.state, dom.reason] = [DomainState.RUNNING, RunningReason.BOOTED];
    this.env.bus.emit(lifecycleEvent(dom, 'resumed', 'unpaused'));
  }
}
