import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CheckpointTree } from '../../src/qemu/checkpoint-tree.js';
import { CheckpointDeleteFlags as D, CheckpointListFlags as L } from '../../src/flags.js';
import { VirError } from '../../src/errors.js';

// a(1) ─┬─ b(2) ─┬─ c(3)
//       │        └─ e(5)
//       └─ d(4)
// f(6)
function sample(current: string | null = null): CheckpointTree {
  return new CheckpointTree(
    [
      { name: 'e', parent: 'b', creationTime: 5 },
      { name: 'a', parent: null, creationTime: 1 },
      { name: 'c', parent: 'b', creationTime: 3 },
      { name: 'f', parent: null, creationTime: 6 },
      { name: 'b', parent: 'a', creationTime: 2 },
      { name: 'd', parent: 'a', creationTime: 4 },
    ],
    current,
  );
}

test('listAllCheckpoints: every flag combination against a hand-computed expectation', () => {
  const t = sample();
  const cases: [number, string[]][] = [
    [0, ['a', 'b', 'c', 'd', 'e', 'f']],
    [L.TOPOLOGICAL, ['a', 'b', 'c', 'e', 'd', 'f']],
    [L.ROOTS, ['a', 'f']],
    [L.ROOTS | L.TOPOLOGICAL, ['a', 'f']],
    [L.LEAVES, ['c', 'd', 'e', 'f']],
    [L.NO_LEAVES, ['a', 'b']],
    [L.LEAVES | L.NO_LEAVES, ['a', 'b', 'c', 'd', 'e', 'f']],
    [L.ROOTS | L.LEAVES, ['f']],
    [L.ROOTS | L.NO_LEAVES, ['a']],
    [L.ROOTS | L.LEAVES | L.NO_LEAVES, ['a', 'f']],
    [L.TOPOLOGICAL | L.LEAVES, ['c', 'e', 'd', 'f']],
    [L.TOPOLOGICAL | L.NO_LEAVES, ['a', 'b']],
  ];
  for (const [flags, want] of cases) assert.deepEqual(t.list(flags), want, `flags ${flags}`);
});

test('checkpointListAllChildren: direct children, descendants, and filters', () => {
  const t = sample();
  const cases: [string, number, string[]][] = [
    ['a', 0, ['b', 'd']],
    ['a', L.DESCENDANTS, ['b', 'c', 'd', 'e']],
    ['a', L.DESCENDANTS | L.TOPOLOGICAL, ['b', 'c', 'e', 'd']],
    ['a', L.DESCENDANTS | L.LEAVES, ['c', 'd', 'e']],
    ['a', L.DESCENDANTS | L.NO_LEAVES, ['b']],
    ['a', L.LEAVES, ['d']],
    ['b', 0, ['c', 'e']],
    ['c', L.DESCENDANTS, []],
    ['f', 0, []],
  ];
  for (const [from, flags, want] of cases) assert.deepEqual(t.list(flags, from), want, `${from} flags ${flags}`);
  assert.throws(() => t.list(0, 'zz'), (e: unknown) => e instanceof VirError && e.code === 103);
});

test('current is the newest leaf unless given; add hangs under current', () => {
  const t = sample();
  assert.equal(t.current, 'f');
  const t2 = sample('e');
  assert.equal(t2.current, 'e');
  const n = t2.add({ name: 'g', creationTime: 7 });
  assert.equal(n.parent, 'e');
  assert.equal(t2.current, 'g');
  assert.equal(new CheckpointTree().current, null);
});

test('plain delete re-parents children to the deleted checkpoint\'s parent', () => {
  const t = sample('e');
  const plan = t.planDelete('b', 0);
  assert.deepEqual(plan, { remove: ['b'], reparent: [['c', 'a'], ['e', 'a']], current: 'e' });
  t.applyDelete(plan);
  assert.deepEqual(t.list(L.TOPOLOGICAL), ['a', 'c', 'd', 'e', 'f']);
  assert.equal(t.get('c').parent, 'a');
});

test('deleting the current checkpoint makes its parent current', () => {
  const t = sample('e');
  const plan = t.planDelete('e', 0);
  assert.deepEqual(plan, { remove: ['e'], reparent: [], current: 'b' });
  const root = sample('f').planDelete('f', 0);
  assert.equal(root.current, null);
});

test('CHILDREN removes the subtree children first; CHILDREN_ONLY keeps the checkpoint and makes it current', () => {
  const t = sample('e');
  assert.deepEqual(t.planDelete('b', D.CHILDREN), { remove: ['e', 'c', 'b'], reparent: [], current: 'a' });
  assert.deepEqual(t.planDelete('b', D.CHILDREN_ONLY), { remove: ['e', 'c'], reparent: [], current: 'b' });
  assert.deepEqual(t.planDelete('a', D.CHILDREN_ONLY), { remove: ['d', 'e', 'c', 'b'], reparent: [], current: 'a' });
  // current outside the deleted subtree stays
  assert.deepEqual(sample('f').planDelete('b', D.CHILDREN), { remove: ['e', 'c', 'b'], reparent: [], current: 'f' });
  t.applyDelete(t.planDelete('b', D.CHILDREN_ONLY));
  assert.deepEqual(t.list(L.TOPOLOGICAL), ['a', 'b', 'd', 'f']);
  assert.equal(t.current, 'b');
});

test('redefine replaces in place, keeps children, and refuses cycles', () => {
  const t = sample('e');
  t.redefine({ name: 'b', parent: 'a', creationTime: 2 });
  assert.deepEqual(t.list(0, 'b'), ['c', 'e']);
  assert.throws(() => t.redefine({ name: 'a', parent: 'c', creationTime: 1 }), (e: unknown) => e instanceof VirError && e.code === 8);
  const empty = new CheckpointTree();
  empty.redefine({ name: 'x', parent: null, creationTime: 1 });
  assert.equal(empty.current, 'x');
  empty.redefine({ name: 'y', parent: 'x', creationTime: 2 });
  assert.equal(empty.current, 'y');
  empty.redefine({ name: 'z', parent: 'x', creationTime: 3 });
  assert.equal(empty.current, 'y');
});

test('a dangling parent (lost metadata) turns the child into a root', () => {
  const t = new CheckpointTree([{ name: 'c2', parent: 'c1', creationTime: 2 }]);
  assert.equal(t.get('c2').parent, null);
  assert.deepEqual(t.list(L.ROOTS), ['c2']);
});
