// The chunk store's defaults that command help texts show: a module with no
// imports, so a CLI can describe its options without loading the store.

/** Unreferenced chunks touched this recently are spared by gc (a running backup may be about to reference them). */
export const DEFAULT_GC_GRACE_MS = 24 * 3600 * 1000;
/** Objects repo-sync copies at once. */
export const DEFAULT_SYNC_PARALLEL = 8;
/** prune's keep rules, in the order they are applied. */
export const PRUNE_RULES = ['last', 'hourly', 'daily', 'weekly', 'monthly', 'yearly'] as const;
