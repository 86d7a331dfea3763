// The console's repositories (from /api/daemon), loaded once per login: points name their
// repository by id, the pages show its name.
import { get } from './api.js';
import { store } from './store.js';
import type { DaemonInfo, Repo } from './types.js';

export const repos = store<Repo[]>([]);

export async function loadRepos(): Promise<void> {
  repos.set((await get<DaemonInfo>('/api/daemon')).repos);
}

export function repoName(list: Repo[], id: string | number): string {
  return list.find((r) => String(r.id) === String(id))?.name ?? String(id);
}
