// The prune planner: Proxmox Backup Server's keep rules, by table and by
// property; applying a plan removes point records and their indexes.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { applyPrune, checkpointsReferenced, isoWeek, periodOf, planPrune, PRUNE_RULES, type KeepPolicy } from '../../src/chunkstore/prune.js';
import type { PointRecord } from '../../src/chunkstore/repo.js';
import { DOMAIN, newRepo, pattern, pointRecord, writePoint } from './chunkstore-fixtures.js';

const at = (time: string): PointRecord => pointRecord(time, []);
const ids = (ps: PointRecord[]) => ps.map((p) => p.id);
const kept = (points: PointRecord[], policy: KeepPolicy) => planPrune(points, policy).keep.map((k) => `${k.point.id} ${k.rule}`);

// two points a day over 2026-11-25 (Wed) .. 2026-12-06 (Sun), 03:00 and 15:00 UTC
const days = Array.from({ length: 12 }, (_, i) => new Date(Date.UTC(2026, 10, 25 + i)).toISOString().slice(0, 10));
const series = days.flatMap((d) => [at(`${d}T03:00:00.000Z`), at(`${d}T15:00:00.000Z`)]);

test('ISO weeks and periods, in UTC', () => {
  assert.equal(isoWeek(new Date('2026-12-06T23:59:59Z')), '2026-W49'); // Sunday ends the week
  assert.equal(isoWeek(new Date('2026-12-07T00:00:00Z')), '2026-W50');
  assert.equal(isoWeek(new Date('2027-01-01T12:00:00Z')), '2026-W53'); // a Friday: still 2026's last week
  assert.equal(isoWeek(new Date('2026-01-01T12:00:00Z')), '2026-W01'); // a Thursday
  const p = at('2026-12-06T15:30:00.000Z');
  assert.deepEqual(['hourly', 'daily', 'monthly', 'yearly'].map((r) => periodOf(r as 'daily', p)), ['2026-12-06T15', '2026-12-06', '2026-12', '2026']);
});

test('prune table: each rule and their combination', () => {
  // no rule keeps everything
  assert.equal(planPrune(series, {}).remove.length, 0);
  assert.deepEqual(kept(series, { last: 3 }), ['2026-12-06T15:00:00.000Z last', '2026-12-06T03:00:00.000Z last', '2026-12-05T15:00:00.000Z last']);
  // daily keeps the newest of each day
  assert.deepEqual(kept(series, { daily: 3 }), ['2026-12-06T15:00:00.000Z daily', '2026-12-05T15:00:00.000Z daily', '2026-12-04T15:00:00.000Z daily']);
  // last 2 covers 12-06; daily 2 then takes the two days before it (12-06 is not counted again)
  assert.deepEqual(kept(series, { last: 2, daily: 2 }), [
    '2026-12-06T15:00:00.000Z last',
    '2026-12-06T03:00:00.000Z last',
    '2026-12-05T15:00:00.000Z daily',
    '2026-12-04T15:00:00.000Z daily',
  ]);
  // weeks: W49 = 11-30..12-06, W48 = 11-23..11-29
  assert.deepEqual(kept(series, { weekly: 5 }), ['2026-12-06T15:00:00.000Z weekly', '2026-11-29T15:00:00.000Z weekly']);
  // daily 3 covers W49; weekly 1 takes W48's newest, monthly 2: December is covered, November's newest is already kept
  assert.deepEqual(kept(series, { daily: 3, weekly: 1, monthly: 2 }), [
    '2026-12-06T15:00:00.000Z daily',
    '2026-12-05T15:00:00.000Z daily',
    '2026-12-04T15:00:00.000Z daily',
    '2026-11-29T15:00:00.000Z weekly',
  ]);
  assert.deepEqual(kept(series, { monthly: 1, yearly: 1 }), ['2026-12-06T15:00:00.000Z monthly']);
  assert.deepEqual(kept(series, { hourly: 2, monthly: 3 }), ['2026-12-06T15:00:00.000Z hourly', '2026-12-06T03:00:00.000Z hourly', '2026-11-30T15:00:00.000Z monthly']);
  const plan = planPrune(series, { last: 1 });
  assert.deepEqual(ids(plan.remove), ids(series.slice(0, -1)).reverse());
});

const pointsArb = fc
  .uniqueArray(fc.integer({ min: Date.UTC(2025, 0, 1), max: Date.UTC(2027, 0, 1) }), { maxLength: 60 })
  .map((ts) => ts.map((t) => at(new Date(t).toISOString())));
const policyArb = fc.record(Object.fromEntries(PRUNE_RULES.map((r) => [r, fc.option(fc.nat(6), { nil: undefined })])) as Record<string, fc.Arbitrary<number | undefined>>);

test('prune properties: a partition; keep-last keeps the newest; each rule keeps at most N periods, each its newest point', () => {
  fc.assert(
    fc.property(pointsArb, policyArb, (points, policy: KeepPolicy) => {
      const plan = planPrune(points, policy);
      const keep = plan.keep.map((k) => k.point);
      assert.equal(keep.length + plan.remove.length, points.length);
      assert.equal(new Set([...keep, ...plan.remove]).size, points.length);
      const newest = [...points].sort((a, b) => (a.time < b.time ? 1 : -1));
      const anyRule = PRUNE_RULES.some((r) => (policy[r] ?? 0) > 0);
      if (anyRule && points.length > 0) assert.ok(keep.includes(newest[0]!), 'the newest point is always kept');
      if ((policy.last ?? 0) > 0) for (const p of newest.slice(0, policy.last)) assert.ok(keep.includes(p));
      const earlier: PointRecord[] = [];
      for (const rule of PRUNE_RULES) {
        const mine = plan.keep.filter((k) => k.rule === rule).map((k) => k.point);
        assert.ok(mine.length <= (policy[rule] ?? 0));
        const periods = mine.map((p) => periodOf(rule, p));
        assert.equal(new Set(periods).size, periods.length, `${rule} keeps one point per period`);
        for (const period of periods) assert.ok(!earlier.some((q) => periodOf(rule, q) === period), `${rule} period ${period} was already covered`);
        earlier.push(...mine);
      }
    }),
    { numRuns: 500 },
  );
});

test('applyPrune removes the records; checkpointsReferenced names what the rest still use', async () => {
  const { repo } = await newRepo({ chunkSize: 4096 });
  for (const d of ['2026-12-01', '2026-12-02', '2026-12-03']) await writePoint(repo, `${d}T00:00:00.000Z`, pattern(4096, d.length));
  const plan = planPrune(await repo.listPoints(DOMAIN.name), { last: 2 });
  assert.deepEqual(await applyPrune(repo, plan), ['2026-12-01T00:00:00.000Z']);
  const rest = await repo.listPoints(DOMAIN.name);
  assert.deepEqual(ids(rest), ['2026-12-02T00:00:00.000Z', '2026-12-03T00:00:00.000Z']);
  assert.deepEqual([...checkpointsReferenced(rest)].sort(), ['cp-2026-12-02T00:00:00.000Z', 'cp-2026-12-03T00:00:00.000Z']);
});
