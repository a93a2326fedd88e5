// hook-git: the first-party hook store plugin — GUPP work hooks kept in a git repository (one
// commit per transition on refs/fabric/hooks, a worktree per hook). It is the store the fabric
// builds itself from `FabricOptions.hooks` / the sidecar's `hooks:` section, packaged so it
// loads like any `hook` plugin and so a different store can replace it. See README.md.
import { HookManager } from 'agent-fabric';
import { z } from 'zod';

export const optionsSchema = z
  .object({
    /** Folder of the git repository (created when missing). */
    storagePath: z.string().min(1),
    /** A git worktree per hook with a branch. */
    useGitWorktree: z.boolean().default(true),
    baseBranch: z.string().min(1).optional(),
    worktreeRoot: z.string().min(1).optional(),
    patrolIntervalSeconds: z.number().positive().optional(),
    staleAfterSeconds: z.number().positive().optional(),
    progressCommitIntervalMs: z.number().positive().optional(),
    maintenanceIntervalSeconds: z.number().min(0).optional(),
    maxReassignments: z.number().int().min(0).optional(),
    maxWorkItemBytes: z.number().int().positive().optional(),
    fsync: z.boolean().optional(),
    author: z
      .object({ name: z.string().min(1), email: z.string().min(1) })
      .strict()
      .optional(),
  })
  .strict();

/** @type {import('agent-fabric').Plugin<'hook'>} */
const plugin = {
  name: 'hook-git',
  version: '1.0.0',
  kind: 'hook',
  fabric: '>=0.1.0',
  api: 2,
  options: optionsSchema,
  // The fabric opens the store when it plugs it in (a locked or unusable repository fails the
  // load with its typed error) and wires liveness, the patrol and recovery.
  create: (options) => new HookManager(options),
};

export default plugin;
