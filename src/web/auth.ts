// The web console's login: two bearer tokens in <state-dir>/web/ (admin.token
// and readonly.token, 0600), mirroring the read-write and read-only sockets;
// sessions kept in memory (bounded, idle expiry) with a CSRF token each; and a
// limit on failed logins, so a local user cannot guess tokens at wire speed.

import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { virErr } from '../errors.js';

export type Role = 'admin' | 'readonly';

export const TOKEN_FILES: Record<Role, string> = { admin: 'admin.token', readonly: 'readonly.token' };

export interface Tokens {
  admin: string;
  readonly: string;
}

const newToken = (): string => randomBytes(32).toString('base64url');

function writeToken(file: string, token: string): void {
  const part = `${file}.part`;
  fs.writeFileSync(part, `${token}\n`, { mode: 0o600 });
  fs.chmodSync(part, 0o600);
  fs.renameSync(part, file);
}

/** The tokens in `dir`, created (0600) when missing; `created` names the ones written now (to print once). */
export function ensureTokens(dir: string): { tokens: Tokens; created: Role[] } {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const created: Role[] = [];
  const read = (role: Role): string => {
    const file = path.join(dir, TOKEN_FILES[role]);
    const text = fs.readFileSync(file, { encoding: 'utf8', flag: 'r' }).trim();
    if (text.length < 16) throw virErr('INVALID_ARG', 'NONE', `web console token file '${file}' holds no usable token`);
    return text;
  };
  const tokens = {} as Tokens;
  for (const role of ['admin', 'readonly'] as const) {
    const file = path.join(dir, TOKEN_FILES[role]);
    if (!fs.existsSync(file)) {
      writeToken(file, newToken());
      created.push(role);
    }
    tokens[role] = read(role);
  }
  return { tokens, created };
}

/** New tokens for both roles (`virtbackd --web-rotate-tokens`); sessions of the old ones end when the daemon restarts. */
export function rotateTokens(dir: string): Tokens {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const tokens = { admin: newToken(), readonly: newToken() };
  for (const role of ['admin', 'readonly'] as const) writeToken(path.join(dir, TOKEN_FILES[role]), tokens[role]);
  return tokens;
}

/** Constant-time: both sides hashed to one length first, so neither length nor prefix leaks. */
export function tokenMatches(given: string, expected: string): boolean {
  const a = createHash('sha256').update(given).digest();
  const b = createHash('sha256').update(expected).digest();
  return timingSafeEqual(a, b);
}

export function roleOfToken(tokens: Tokens, given: string): Role | null {
  // both compared every time: the answer's timing does not say which role matched
  const admin = tokenMatches(given, tokens.admin);
  const ro = tokenMatches(given, tokens.readonly);
  return admin ? 'admin' : ro ? 'readonly' : null;
}

export interface Session {
  id: string;
  role: Role;
  csrf: string;
  /** idle expiry, epoch ms; every authenticated request moves it */
  expiresAt: number;
}

export interface SessionOptions {
  ttlMs: number;
  /** most sessions at once; the least recently used goes first */
  max: number;
  now?: () => number;
}

export class Sessions {
  private readonly byId = new Map<string, Session>();
  private readonly ended = new Set<(id: string) => void>();
  private readonly now: () => number;

  constructor(private readonly opts: SessionOptions) {
    this.now = opts.now ?? Date.now;
  }

  create(role: Role): Session {
    this.sweep();
    while (this.byId.size >= this.opts.max) this.end(this.byId.keys().next().value!);
    const s: Session = { id: randomBytes(32).toString('base64url'), role, csrf: randomBytes(24).toString('base64url'), expiresAt: this.now() + this.opts.ttlMs };
    this.byId.set(s.id, s);
    return s;
  }

  /** The live session of a cookie value, its idle expiry moved on; null when unknown or expired. */
  touch(id: string | undefined): Session | null {
    if (id === undefined) return null;
    const s = this.byId.get(id);
    if (!s) return null;
    if (s.expiresAt <= this.now()) {
      this.end(id);
      return null;
    }
    s.expiresAt = this.now() + this.opts.ttlMs;
    // Map order is the LRU order create() evicts by
    this.byId.delete(id);
    this.byId.set(id, s);
    return s;
  }

  /** Still live, without moving its expiry (SSE streams check this, they do not keep a session alive). */
  alive(id: string): boolean {
    const s = this.byId.get(id);
    return s !== undefined && s.expiresAt > this.now();
  }

  /** The session as it is, expired or not, without moving its expiry. */
  peek(id: string): Readonly<Session> | null {
    return this.byId.get(id) ?? null;
  }

  end(id: string): void {
    if (!this.byId.delete(id)) return;
    for (const f of this.ended) f(id);
  }

  endAll(): void {
    for (const id of [...this.byId.keys()]) this.end(id);
  }

  onEnd(f: (id: string) => void): void {
    this.ended.add(f);
  }

  private sweep(): void {
    const t = this.now();
    for (const [id, s] of this.byId) if (s.expiresAt <= t) this.end(id);
  }
}

/**
 * Failed logins per client address, in a sliding window; also a global cap so
 * that many addresses (or ports of one host) cannot add up to a fast guesser.
 */
export class LoginLimiter {
  private readonly failures = new Map<string, number[]>();
  private global: number[] = [];

  constructor(
    private readonly perAddress = 10,
    private readonly total = 100,
    private readonly windowMs = 60_000,
    private readonly now: () => number = Date.now,
  ) {}

  allowed(addr: string): boolean {
    const since = this.now() - this.windowMs;
    this.global = this.global.filter((t) => t > since);
    const mine = (this.failures.get(addr) ?? []).filter((t) => t > since);
    if (mine.length === 0) this.failures.delete(addr);
    else this.failures.set(addr, mine);
    return mine.length < this.perAddress && this.global.length < this.total;
  }

  failed(addr: string): void {
    const t = this.now();
    this.global.push(t);
    if (this.failures.size > 10_000) this.failures.clear(); // bounded: the global cap still holds
    this.failures.set(addr, [...(this.failures.get(addr) ?? []), t]);
  }
}
