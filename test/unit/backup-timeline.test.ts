// The completion timeline of a backup job: offsets from the latest
// "concluded" QEMU time, one entry per step (its last instant), in order.

import assert from 'node:assert/strict';
import test from 'node:test';
import { JobTimeline } from '../../src/qemu/backup-timeline.js';

test('steps are ms after the last disk job concluded; a repeated step keeps its last instant and place', () => {
  const t = new JobTimeline();
  t.concludedAt(1000.5, 1010);
  t.mark('lock taken', 1011);
  t.concludedAt(1200.25, 1205); // the second disk's job concluded later: the base moves
  t.mark('undo node', 1300);
  t.mark('lock taken', 1206);
  t.mark('undo node', 1350.75);
  t.mark('published', 1400);
  assert.deepEqual(t.fields(), {
    qemuConcluded: 1200.25,
    steps: [['event read', 4.75], ['lock taken', 5.75], ['undo node', 150.5], ['published', 199.75]],
  });
});

test('without a concluded event (a job ended by its domain stopping) the offsets are unknown', () => {
  const t = new JobTimeline();
  t.mark('published', 5);
  const f = t.fields();
  assert.equal(f.qemuConcluded, null);
  assert.equal(f.steps.length, 1);
  assert.ok(Number.isNaN(f.steps[0]![1]));
});
