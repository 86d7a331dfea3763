// The console's pages (webui/, a browser project of its own) read the daemon's
// API through their own types. This file is only type-checked (tsc in
// scripts/test.sh): each view the daemon sends must be assignable to what the
// pages expect, so a field renamed or retyped on one side fails the check
// instead of a page showing nothing.

import type { JobRecord } from '../../src/web/jobs.js';
import type { RepoInfo } from '../../src/web/repos.js';
import type { TaskView } from '../../src/web/tasks.js';
import type { CheckpointNode, DomainDetail, DomainRow, PointView } from '../../src/web/views.js';
import type * as Page from '../../webui/src/types.js';

/** `true` when every value of `Sent` is one `Read` accepts. */
type Agrees<Sent, Read> = [Sent] extends [Read] ? true : false;

export const agreement: Record<string, true> = {
  task: true satisfies Agrees<TaskView, Page.Task>,
  job: true satisfies Agrees<JobRecord, Page.JobRecord>,
  domainRow: true satisfies Agrees<DomainRow, Page.DomainSummary>,
  domainDetail: true satisfies Agrees<DomainDetail, Page.DomainDetail>,
  checkpoint: true satisfies Agrees<CheckpointNode, Page.CheckpointNode>,
  point: true satisfies Agrees<PointView, Page.PointRecord>,
  repo: true satisfies Agrees<RepoInfo, Page.Repo>,
};
