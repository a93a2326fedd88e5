/**
 * Commands that need no sidecar: `policy test` (a dry run of a tool call against a policy file)
 * and `config check` (the sidecar's own config validation, every problem at once).
 *
 * @module
 */
import { readFileSync } from 'node:fs';
import { isNode, LineCounter, parseDocument, parse as parseYaml } from 'yaml';
import { ConfigFileError, FabricError, type ConfigFileProblem } from '../errors.js';
import type { UpstreamSpec } from '../gateway/upstream-config.js';
import type { PolicyDecision } from '../policy/policy-engine.js';
import type { PolicyAction } from '../policy/policy.js';
import { CliError } from './api-client.js';
import { usageError, type Command } from './command.js';
import { EXIT } from './exit-codes.js';
import { printable, printableJson } from './format.js';

const ACTIONS: readonly PolicyAction[] = ['allow', 'deny', 'require_approval'];

/** What `policy test` reads from its file. */
interface PolicyFile {
  readonly policies: unknown[];
  /** The upstreams of a sidecar config (none for a list of policies or one policy). */
  readonly upstreams: Readonly<Record<string, UpstreamSpec>>;
}

/**
 * The policies of `file`: a sidecar config (its `policies:`, the whole config validated as
 * `serve` would, and its upstreams), a list of policies, or one policy (`name:` and `rules:`).
 */
async function policiesOf(file: string): Promise<PolicyFile> {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    throw new CliError(`${file}: cannot be read: ${(error as Error).message}`, EXIT.failure);
  }
  const { configTooDeep, MAX_CONFIG_DEPTH } = await import('../server/config-file.js');
  const tooDeep = configTooDeep(text);
  if (tooDeep !== undefined) {
    throw new CliError(
      `${file}:${tooDeep}: nests deeper than ${MAX_CONFIG_DEPTH} levels of mappings and sequences`,
      EXIT.failure,
    );
  }
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (error) {
    // yaml's message may quote the file (a secret of a sidecar config): said without it.
    const { yamlMessage } = await import('../server/config-file.js');
    throw new CliError(`${file}: ${yamlMessage((error as Error).message)}`, EXIT.failure);
  }
  if (Array.isArray(doc)) return { policies: doc as unknown[], upstreams: {} };
  if (doc !== null && typeof doc === 'object') {
    if ('rules' in doc) return { policies: [doc], upstreams: {} };
    // A sidecar config: the policies `serve` would load, after the same checks.
    const { parseSidecarConfig } = await import('../server/config-file.js');
    const config = parseSidecarConfig(text, file);
    return { policies: config.policies, upstreams: config.upstreams };
  }
  throw new CliError(
    `${file}: must be a sidecar config, a list of policies or one policy`,
    EXIT.failure,
  );
}

/**
 * The upstream whose prefix `tool` starts with (the longest such prefix), as the gateway's
 * catalog names tools; `undefined` when none has one (`namespace: none` upstreams are known
 * only by their live catalog).
 */
function upstreamOfTool(
  tool: string,
  upstreams: Readonly<Record<string, UpstreamSpec>>,
  upstreamPrefix: (name: string, spec: UpstreamSpec) => string,
): { readonly name: string; readonly spec: UpstreamSpec } | undefined {
  let best: { name: string; spec: UpstreamSpec; prefix: string } | undefined;
  for (const [name, spec] of Object.entries(upstreams)) {
    const prefix = upstreamPrefix(name, spec);
    if (prefix === '' || !tool.startsWith(prefix) || tool.length === prefix.length) continue;
    if (best === undefined || prefix.length > best.prefix.length) best = { name, spec, prefix };
  }
  return best;
}

function stringOption(value: unknown): string | undefined {
  return typeof value === 'string' ? value : undefined;
}

const policyTestCommand: Command = {
  name: 'policy test',
  args: '<file>',
  positionals: [1, 1],
  summary:
    'Dry-runs one tool call against the policies of a file, offline, and shows the deciding policy and rule.',
  description: `<file> is a sidecar config (its policies:), a YAML/JSON list of policies, or one policy.
The engine is the sidecar's, with its default action. When <file> is a sidecar config with the
upstream whose prefix the tool has, paths in --params are resolved the way the gateway resolves
them for that upstream (its paths: roots, home, symlinks on this disk) and shown; otherwise they
are matched as written. Warnings name rule values that match no call in the gateway (relative
path patterns). Exit 0 whatever the decision, unless --expect is given: then 1 when the decision
differs.`,
  options: {
    tool: {
      type: 'string',
      value: 'name',
      description: 'the tool as agents see it (upstream__tool); required',
    },
    params: {
      type: 'string',
      value: 'json',
      description: "the call's arguments, a JSON object (default {})",
    },
    agent: { type: 'string', value: 'id', description: 'the calling agent\'s id (default "cli")' },
    pool: { type: 'string', value: 'id', description: "the calling agent's pool" },
    label: {
      type: 'string',
      value: 'k=v',
      multiple: true,
      description: 'a label of the calling agent (repeatable)',
    },
    expect: {
      type: 'string',
      value: 'action',
      description: 'allow, deny or require_approval: exit 1 when the decision is another',
    },
  },
  json: true,
  async run(ctx) {
    const tool = stringOption(ctx.values.tool);
    if (tool === undefined || tool === '')
      throw usageError(policyTestCommand, '--tool is required');
    let params: unknown = {};
    const rawParams = stringOption(ctx.values.params);
    if (rawParams !== undefined) {
      try {
        params = JSON.parse(rawParams);
      } catch (error) {
        throw usageError(policyTestCommand, `--params: not JSON: ${(error as Error).message}`);
      }
    }
    if (params === null || typeof params !== 'object' || Array.isArray(params)) {
      throw usageError(policyTestCommand, '--params: must be a JSON object');
    }
    const expect = stringOption(ctx.values.expect);
    if (expect !== undefined && !ACTIONS.includes(expect as PolicyAction)) {
      throw usageError(policyTestCommand, `--expect: one of ${ACTIONS.join(', ')}, not ${expect}`);
    }
    const labels: Record<string, string> = {};
    for (const l of (ctx.values.label as string[] | undefined) ?? []) {
      const eq = l.indexOf('=');
      if (eq <= 0) throw usageError(policyTestCommand, `--label: k=v, not ${l}`);
      labels[l.slice(0, eq)] = l.slice(eq + 1);
    }
    const file = ctx.positionals[0]!;
    const [{ PolicyEngine }, { policyWarnings }] = await Promise.all([
      import('../policy/policy-engine.js'),
      import('../policy/conditions.js'),
    ]);
    const engine = new PolicyEngine();
    const { policies, upstreams } = await policiesOf(file);
    const warnings: string[] = [];
    for (const [i, p] of policies.entries()) {
      try {
        const stored = engine.addPolicy(p);
        for (const w of policyWarnings(stored)) warnings.push(`policy ${stored.name}: ${w}`);
      } catch (error) {
        const what = error instanceof FabricError ? error.message : String(error);
        throw new CliError(`${file}: policy ${i + 1}: ${what}`, EXIT.failure);
      }
    }
    // Paths as the gateway sees them: resolved the way the tool's upstream resolves them.
    const asSent = params as Record<string, unknown>;
    const upstream =
      Object.keys(upstreams).length === 0
        ? undefined
        : upstreamOfTool(
            tool,
            upstreams,
            (await import('../gateway/upstream-config.js')).upstreamPrefix,
          );
    let view: Readonly<Record<string, unknown>> = asSent;
    if (upstream !== undefined) {
      const { PathResolver, pathResolutionOf } = await import('../gateway/path-resolver.js');
      const resolver = new PathResolver(pathResolutionOf(upstream.spec));
      await resolver.readRoots();
      view = await resolver.view(asSent);
    }
    const pool = stringOption(ctx.values.pool);
    const decision: PolicyDecision = engine.evaluateSync({
      agentId: stringOption(ctx.values.agent) ?? 'cli',
      tool,
      params: view,
      ...(view === asSent ? {} : { rawParams: asSent }),
      ...(pool === undefined ? {} : { poolId: pool }),
      labels,
    });
    const paths =
      upstream !== undefined
        ? `resolved as upstream ${upstream.name} resolves them`
        : Object.keys(upstreams).length > 0
          ? `as written (no upstream of ${file} has a prefix of ${tool})`
          : 'as written (the file declares no upstreams: the gateway resolves them first)';
    const rule =
      decision.policy === null || decision.rule === null
        ? undefined
        : engine.getPolicy(decision.policy)?.rules[decision.rule];
    engine.close();
    if (ctx.json) {
      ctx.print(
        printableJson(
          JSON.stringify(
            {
              ...decision,
              ...(rule ? { ruleText: rule } : {}),
              paths,
              ...(view === asSent ? {} : { resolvedParams: view }),
              warnings,
            },
            null,
            2,
          ),
        ),
      );
    } else {
      // Names, reasons and paths come from the file and --params: one line each, escaped.
      const line = (text: string): void => ctx.print(printable(text));
      line(`decision: ${decision.action}`);
      line(`policy:   ${decision.policy ?? '(none: the default action)'}`);
      line(
        `rule:     ${decision.rule === null ? '-' : `#${decision.rule} ${JSON.stringify(rule)}`}`,
      );
      line(`reason:   ${decision.reason}`);
      for (const a of decision.audit ?? []) {
        line(`audit:    ${a.policy} rule #${a.rule} would ${a.action}: ${a.reason}`);
      }
      line(`paths:    ${paths}`);
      if (view !== asSent) line(`params:   ${JSON.stringify(view)}`);
      for (const w of warnings) line(`warning:  ${w}`);
    }
    return expect !== undefined && expect !== decision.action ? EXIT.failure : EXIT.ok;
  },
};

const configCheckCommand: Command = {
  name: 'config check',
  args: '<file>',
  positionals: [1, 1],
  summary:
    'Validates a sidecar config file as `serve` would (environment overrides included) and lists every problem with its line.',
  description:
    'Nothing is started: upstreams are not launched and plugins and TLS files are not loaded. Policies are parsed as serve parses them (a policy serve would refuse is a problem) and read for warnings: relative path patterns, which match no call in the gateway. A state file inside a root a stdio upstream declares (`paths.roots`) is a problem, as serve refuses it; an audit log or hook store inside one a warning. Exit 0 when valid, 1 when not.',
  json: true,
  async run(ctx) {
    const file = ctx.positionals[0]!;
    const { loadSidecarConfig } = await import('../server/config-file.js');
    try {
      const config = loadSidecarConfig(file);
      const [{ parsePolicy }, { policyWarnings }] = await Promise.all([
        import('../policy/policy.js'),
        import('../policy/conditions.js'),
      ]);
      const warnings: string[] = [];
      const problems: ConfigFileProblem[] = [];
      for (const [i, p] of config.policies.entries()) {
        let policy;
        try {
          policy = parsePolicy(p);
        } catch (error) {
          // What `serve` refuses at start (FABRIC_ERR_POLICY_INVALID) is a problem of the file.
          if (!(error instanceof FabricError)) throw error;
          const line = policyLine(file, i);
          problems.push({
            path: `policies.${i}`,
            message: error.message,
            ...(line === undefined ? {} : { line }),
          });
          continue;
        }
        for (const w of policyWarnings(policy)) warnings.push(`policy ${policy.name}: ${w}`);
      }
      const { checkOwnFiles, ownFiles } = await import('../server/own-files.js');
      try {
        warnings.push(...checkOwnFiles(config.upstreams, ownFiles(config)));
      } catch (error) {
        // What `serve` refuses at start (a state file an upstream serves) is a problem too.
        if (!(error instanceof FabricError)) throw error;
        problems.push({ path: 'state.path', message: error.message });
      }
      if (problems.length > 0) throw ConfigFileError.of(file, problems);
      if (ctx.json) {
        ctx.print(printableJson(JSON.stringify({ valid: true, file, warnings }, null, 2)));
      } else {
        ctx.print(
          printable(
            `${file}: valid (${Object.keys(config.upstreams).length} upstreams, ${config.policies.length} policies, ${config.agents.length} agents)`,
          ),
        );
        for (const w of warnings) ctx.print(printable(`warning: ${w}`));
      }
      return EXIT.ok;
    } catch (error) {
      if (!(error instanceof FabricError)) throw error;
      const problems = (error.details as { problems?: unknown[] }).problems;
      if (ctx.json) {
        ctx.print(
          printableJson(
            JSON.stringify({ valid: false, file, problems: problems ?? [error.details] }, null, 2),
          ),
        );
      } else {
        // Keys and values of the file are quoted in the problems: each line escaped.
        process.stderr.write(`${error.message.split('\n').map(printable).join('\n')}\n`);
      }
      return EXIT.failure;
    }
  },
};

/** The line of `policies[index]` in a YAML or JSON config file, when it can be found. */
function policyLine(file: string, index: number): number | undefined {
  try {
    const lines = new LineCounter();
    const node = parseDocument(readFileSync(file, 'utf8'), { lineCounter: lines }).getIn(
      ['policies', index],
      true,
    );
    return isNode(node) && node.range ? lines.linePos(node.range[0]).line : undefined;
  } catch {
    return undefined;
  }
}

/** The commands that need no sidecar. */
export const offlineCommands: readonly Command[] = [policyTestCommand, configCheckCommand];
