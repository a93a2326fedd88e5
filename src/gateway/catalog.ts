/**
 * The aggregated catalog: every upstream's tools and prompts under their downstream names, and
 * the routes that map downstream names and resource URIs back to the upstream that owns them.
 *
 * Who owns a name or a URI:
 * - At start-up, upstreams are taken in config order. A tool or prompt name clash is an error
 *   (the operator can rename with `prefix`); resources are not namespaced, so a URI (or an
 *   identical URI template) listed by several upstreams goes to the first and the others' are
 *   dropped with a logged problem.
 * - On a runtime rebuild (a list change, a restart) whoever held a name or a URI in the
 *   previous catalog keeps it, also while it restarts: an upstream that starts listing another
 *   one's tool, prompt, URI or template — or a URI one of another upstream's templates matched —
 *   gets that item dropped and logged. A name is released when its holder, connected, no longer
 *   lists it.
 *
 * @module
 */
import { UriTemplate } from '@modelcontextprotocol/sdk/shared/uriTemplate.js';
import { templateMatches, type MatchBudget } from './uri-template-match.js';
import {
  PromptSchema,
  ResourceSchema,
  ResourceTemplateSchema,
  ToolSchema,
  type Prompt,
  type Resource,
  type ResourceTemplate,
  type Tool,
} from '@modelcontextprotocol/sdk/types.js';
import { ToolNameError } from '../errors.js';
import { exceededBound, type InputBounds } from './input-bounds.js';
import { combineHints, type ListHints, type ListKey } from './list-hints.js';
import type { Upstream } from './upstream.js';
import { MAX_TOOL_NAME_LENGTH, upstreamPrefix } from './upstream-config.js';

/** Where a downstream name leads. */
export interface Route<T> {
  readonly upstream: Upstream;
  /** The name the upstream knows it by. */
  readonly upstreamName: string;
  /** The item as listed downstream (renamed). */
  readonly item: T;
}

/**
 * What {@link buildCatalog} reports for items it had to drop: clashes and over-long names at
 * runtime, resource clashes at start-up too.
 */
export type CatalogProblem = ToolNameError;

/** An immutable snapshot of everything the gateway exposes. */
export interface Catalog {
  readonly tools: ReadonlyMap<string, Route<Tool>>;
  readonly prompts: ReadonlyMap<string, Route<Prompt>>;
  readonly resources: readonly Resource[];
  readonly resourceTemplates: readonly ResourceTemplate[];
  /** Resource URI → owning upstream (a restarting upstream keeps its URIs). */
  readonly resourceOwners: ReadonlyMap<string, Upstream>;
  /** Templates that route reads, those held before a rebuild first. */
  readonly templateOwners: readonly { template: UriTemplate; upstream: Upstream }[];
  /** Upstreams that advertise resources (fallback routing when exactly one does). */
  readonly resourceUpstreams: readonly Upstream[];
  /**
   * List-level hints of each list answer: one upstream's passed through, several upstreams'
   * combined conservatively (see list-hints.ts).
   */
  readonly hints: Readonly<Record<ListKey, ListHints>>;
  /**
   * Who holds each downstream tool name (`t:`), prompt name (`p:`), resource URI (`r:`) and URI
   * template (`u:`), restarting upstreams included: the next rebuild leaves them there.
   */
  readonly holders: ReadonlyMap<string, Upstream>;
}

/**
 * Bounds of one item of an upstream's list (a tool with its schemas, a prompt, a resource, a
 * template). Far below the nesting `JSON.stringify` can serialize (about 4,000 levels): one
 * item past them would make every agent's list answer unserializable.
 */
export const CATALOG_ITEM_BOUNDS: InputBounds = Object.freeze({ maxDepth: 128, maxNodes: 100_000 });

/** The field that identifies an item of each list. */
const ITEM_ID: Readonly<Record<ListKey, 'name' | 'uri' | 'uriTemplate'>> = {
  tools: 'name',
  prompts: 'name',
  resources: 'uri',
  resourceTemplates: 'uriTemplate',
};

/**
 * The MCP schema of each list's items, as the SDK's client checks a list result: one item that
 * does not fit (a tool whose `inputSchema` is not an object schema) makes an agent's whole
 * `tools/list` fail there, every other upstream's tools with it.
 */
const ITEM_SCHEMA = {
  tools: ToolSchema,
  prompts: PromptSchema,
  resources: ResourceSchema,
  resourceTemplates: ResourceTemplateSchema,
} as const;

/** Singular nouns of the lists, for problems. */
const ITEM_NOUN: Readonly<Record<ListKey, string>> = {
  tools: 'tool',
  prompts: 'prompt',
  resources: 'resource',
  resourceTemplates: 'resource template',
};

/**
 * Why an item of an upstream's `list` cannot be part of the catalog, or `undefined` when it can:
 * it must be an object with a string `name` (tools, prompts), `uri` (resources) or
 * `uriTemplate` (templates), within {@link CATALOG_ITEM_BOUNDS}, and fit the MCP schema of its
 * list (see {@link ITEM_SCHEMA}). The reason never quotes the item (at most the name of the
 * top-level field at fault, when it is one of the schema's).
 */
export function catalogItemProblem(item: unknown, list: ListKey): string | undefined {
  const id = ITEM_ID[list];
  if (typeof item !== 'object' || item === null || Array.isArray(item)) {
    return 'is not an object';
  }
  if (typeof (item as Record<string, unknown>)[id] !== 'string') {
    return `has no string "${id}"`;
  }
  switch (exceededBound(item, CATALOG_ITEM_BOUNDS)) {
    case 'depth':
      return `nests deeper than ${CATALOG_ITEM_BOUNDS.maxDepth} levels`;
    case 'nodes':
      return `holds more than ${CATALOG_ITEM_BOUNDS.maxNodes} values`;
  }
  const schema = ITEM_SCHEMA[list];
  const checked = schema.safeParse(item);
  if (checked.success) return undefined;
  const field = checked.error.issues[0]?.path[0];
  const at = typeof field === 'string' && field in schema.shape ? ` (field "${field}")` : '';
  return `is not a valid MCP ${ITEM_NOUN[list]}${at}`;
}

/** Longest URI or name quoted in a problem. */
const SHOWN_CHARS = 200;

function shown(text: string): string {
  return text.length > SHOWN_CHARS ? `${text.slice(0, SHOWN_CHARS)}…` : text;
}

/** True for an item {@link buildCatalog} can read (the upstream checked it at load). */
function readable(item: unknown, list: ListKey): boolean {
  return (
    typeof item === 'object' &&
    item !== null &&
    typeof (item as Record<string, unknown>)[ITEM_ID[list]] === 'string'
  );
}

/** The holder keys of what a ready upstream lists now. */
function keysOf(upstream: Upstream): Set<string> {
  const prefix = upstreamPrefix(upstream.name, upstream.spec);
  const keys = new Set<string>();
  for (const t of upstream.tools) if (readable(t, 'tools')) keys.add(`t:${prefix}${t.name}`);
  for (const p of upstream.prompts) if (readable(p, 'prompts')) keys.add(`p:${prefix}${p.name}`);
  for (const r of upstream.resources) if (readable(r, 'resources')) keys.add(`r:${r.uri}`);
  for (const u of upstream.resourceTemplates) {
    if (readable(u, 'resourceTemplates')) keys.add(`u:${u.uriTemplate}`);
  }
  return keys;
}

/**
 * Builds the catalog from the upstreams' current lists.
 *
 * @param reserved Downstream names already taken (the fabric's own tools).
 * @param strict Throw on the first tool or prompt clash or over-long name (start-up) instead of
 *   dropping the offending item and reporting it through `problems` (runtime list changes).
 *   Resource and template clashes are always dropped and reported.
 * @param previous The catalog being replaced: what its upstreams held they keep (see the
 *   module comment).
 * @throws ToolNameError naming the upstream and the tool, when `strict`.
 */
export function buildCatalog(
  upstreams: readonly Upstream[],
  reserved: ReadonlySet<string>,
  strict: boolean,
  problems: CatalogProblem[] = [],
  previous?: Catalog,
): Catalog {
  const tools = new Map<string, Route<Tool>>();
  const prompts = new Map<string, Route<Prompt>>();
  const resources: Resource[] = [];
  const resourceTemplates: ResourceTemplate[] = [];
  const resourceOwners = new Map<string, Upstream>();
  // What checking new URIs against other upstreams' templates may cost in this build, in all.
  const budget: MatchBudget = { steps: CATALOG_MATCH_STEPS };
  const heldTemplates: { template: UriTemplate; upstream: Upstream }[] = [];
  const newTemplates: { template: UriTemplate; upstream: Upstream }[] = [];
  const resourceUpstreams: Upstream[] = [];
  const hints: Record<ListKey, ListHints[]> = {
    tools: [],
    prompts: [],
    resources: [],
    resourceTemplates: [],
  };

  const fail = (error: ToolNameError): void => {
    if (strict) throw error;
    problems.push(error);
  };

  // What the previous catalog's holders keep: everything, while they are not connected; what
  // they still list, when they are.
  const kept = new Map<string, Upstream>();
  const listed = new Map<Upstream, Set<string>>();
  for (const [key, holder] of previous?.holders ?? []) {
    if (holder.state === 'closed' || !upstreams.includes(holder)) continue;
    if (holder.state !== 'ready') {
      kept.set(key, holder);
      continue;
    }
    let keys = listed.get(holder);
    if (keys === undefined) listed.set(holder, (keys = keysOf(holder)));
    if (keys.has(key)) kept.set(key, holder);
  }
  const holders = new Map<string, Upstream>();
  for (const [key, holder] of kept) {
    if (holder.state === 'ready') continue;
    holders.set(key, holder);
    // A restarting holder's URIs and templates still route to it (its reads fail as
    // unavailable), not to whatever else would match them.
    if (key.startsWith('r:')) resourceOwners.set(key.slice(2), holder);
  }
  for (const entry of previous?.templateOwners ?? []) {
    if (
      entry.upstream.state !== 'ready' &&
      holders.get(`u:${entry.template.toString()}`) === entry.upstream
    ) {
      heldTemplates.push(entry);
    }
  }

  /** Who, other than `upstream`, holds `key` in this build: first taker, else previous holder. */
  const heldBy = (key: string, upstream: Upstream): Upstream | undefined => {
    const holder = holders.get(key) ?? kept.get(key);
    return holder === upstream && !holders.has(key) ? undefined : holder;
  };

  for (const upstream of upstreams) {
    if (upstream.state !== 'ready') continue;
    const prefix = upstreamPrefix(upstream.name, upstream.spec);
    // Every upstream serving a list shapes the answer, even with an empty list.
    const caps = upstream.capabilities;
    if (caps.tools) hints.tools.push(upstream.listHints.tools);
    if (caps.prompts) hints.prompts.push(upstream.listHints.prompts);
    if (caps.resources) {
      hints.resources.push(upstream.listHints.resources);
      hints.resourceTemplates.push(upstream.listHints.resourceTemplates);
    }
    upstream.tools.forEach((tool, index) => {
      if (!readable(tool, 'tools')) {
        problems.push(unreadable(upstream, 'tools', index));
        return;
      }
      const name = prefix + tool.name;
      if (name.length > MAX_TOOL_NAME_LENGTH) {
        fail(
          new ToolNameError(
            upstream.name,
            shown(tool.name),
            `becomes ${JSON.stringify(shown(name))} (${name.length} characters), over the ${MAX_TOOL_NAME_LENGTH}-character limit of MCP clients; set a shorter prefix or namespace: none`,
            { downstreamName: shown(name) },
          ),
        );
        return;
      }
      const key = `t:${name}`;
      const holder = reserved.has(name) ? undefined : heldBy(key, upstream);
      if (reserved.has(name) || holder !== undefined) {
        const taken = holder === undefined ? 'the fabric' : `upstream ${holder.name}`;
        const incumbent = holder !== undefined && kept.get(key) === holder;
        fail(
          new ToolNameError(
            upstream.name,
            tool.name,
            incumbent
              ? `clashes with a tool ${taken} already serves under the downstream name ${JSON.stringify(name)}; ${taken} keeps it and this tool is not listed (use namespace: prefix or a distinct prefix)`
              : `clashes with a tool of ${taken} under the downstream name ${JSON.stringify(name)}; use namespace: prefix or a distinct prefix`,
            { downstreamName: name, clashesWith: taken },
          ),
        );
        return;
      }
      holders.set(key, upstream);
      tools.set(name, { upstream, upstreamName: tool.name, item: { ...tool, name } });
    });
    upstream.prompts.forEach((prompt, index) => {
      if (!readable(prompt, 'prompts')) {
        problems.push(unreadable(upstream, 'prompts', index));
        return;
      }
      const name = prefix + prompt.name;
      const key = `p:${name}`;
      const holder = heldBy(key, upstream);
      if (holder !== undefined) {
        const incumbent = kept.get(key) === holder;
        fail(
          new ToolNameError(
            upstream.name,
            shown(prompt.name),
            incumbent
              ? `(prompt) clashes with a prompt upstream ${holder.name} already serves; it keeps the name and this prompt is not listed`
              : `(prompt) clashes with a prompt of upstream ${holder.name}`,
            { downstreamName: shown(name), clashesWith: `upstream ${holder.name}` },
          ),
        );
        return;
      }
      holders.set(key, upstream);
      prompts.set(name, { upstream, upstreamName: prompt.name, item: { ...prompt, name } });
    });
    if (upstream.capabilities.resources) resourceUpstreams.push(upstream);
    upstream.resources.forEach((resource, index) => {
      if (!readable(resource, 'resources')) {
        problems.push(unreadable(upstream, 'resources', index));
        return;
      }
      const uri = resource.uri;
      const key = `r:${uri}`;
      if (holders.get(key) === upstream) return; // listed twice by the same upstream
      let holder = heldBy(key, upstream);
      let how = holder !== undefined && kept.get(key) === holder ? ' already' : ', listed first';
      // A URI new to this upstream that another upstream's template served before stays there.
      if (holder === undefined && previous !== undefined && kept.get(key) !== upstream) {
        how = ' through a template already';
        holder = previous.templateOwners.find(
          (t) =>
            t.upstream !== upstream &&
            kept.get(`u:${t.template.toString()}`) === t.upstream &&
            templateMatches(t.template, uri, budget),
        )?.upstream;
        if (budget.steps < 0) {
          // Could not tell whether another upstream's template serves it: not listed.
          problems.push(
            new ToolNameError(
              upstream.name,
              shown(uri),
              `(resource) could not be checked against the other upstreams' URI templates within ${CATALOG_MATCH_STEPS} steps; this resource is not listed`,
            ),
          );
          return;
        }
      }
      if (holder !== undefined) {
        problems.push(
          new ToolNameError(
            upstream.name,
            shown(uri),
            `(resource) is served by upstream ${holder.name}${how}; it keeps the URI and this resource is not listed (resource URIs are not namespaced)`,
            { clashesWith: `upstream ${holder.name}` },
          ),
        );
        return;
      }
      holders.set(key, upstream);
      resourceOwners.set(uri, upstream);
      resources.push(resource);
    });
    upstream.resourceTemplates.forEach((template, index) => {
      if (!readable(template, 'resourceTemplates')) {
        problems.push(unreadable(upstream, 'resourceTemplates', index));
        return;
      }
      const key = `u:${template.uriTemplate}`;
      if (holders.get(key) === upstream) return; // listed twice by the same upstream
      const holder = heldBy(key, upstream);
      if (holder !== undefined) {
        problems.push(
          new ToolNameError(
            upstream.name,
            shown(template.uriTemplate),
            `(resource template) is served by upstream ${holder.name}${kept.get(key) === holder ? ' already' : ', listed first'}; it keeps the template and this one is not listed`,
            { clashesWith: `upstream ${holder.name}` },
          ),
        );
        return;
      }
      holders.set(key, upstream);
      resourceTemplates.push(template);
      try {
        const entry = { template: new UriTemplate(template.uriTemplate), upstream };
        // Templates held before route first: a newcomer's broader template cannot take the
        // URIs an incumbent's template matched.
        (kept.get(key) === upstream ? heldTemplates : newTemplates).push(entry);
      } catch {
        // An unparsable template can still be listed; it just cannot route reads.
      }
    });
  }
  return {
    tools,
    prompts,
    resources,
    resourceTemplates,
    resourceOwners,
    templateOwners: [...heldTemplates, ...newTemplates],
    resourceUpstreams,
    hints: {
      tools: combineHints(hints.tools, false),
      prompts: combineHints(hints.prompts, false),
      resources: combineHints(hints.resources, false),
      resourceTemplates: combineHints(hints.resourceTemplates, false),
    },
    holders,
  };
}

/** The problem of an item `buildCatalog` cannot read (set directly, not loaded by the upstream). */
function unreadable(upstream: Upstream, list: ListKey, index: number): ToolNameError {
  return new ToolNameError(
    upstream.name,
    `${list}[${index}]`,
    `is not an object with a string "${ITEM_ID[list]}"; it is not listed`,
  );
}

/**
 * The upstream that serves `uri`: exact listing, then template match (linear in the URI, see
 * uri-template-match.ts; at most {@link OWNER_MATCH_STEPS} steps over all templates, beyond
 * which nobody is found), then the only candidate.
 */
export function resourceOwner(catalog: Catalog, uri: string): Upstream | undefined {
  const exact = catalog.resourceOwners.get(uri);
  if (exact) return exact;
  const budget: MatchBudget = { steps: OWNER_MATCH_STEPS };
  for (const { template, upstream } of catalog.templateOwners) {
    if (templateMatches(template, uri, budget)) return upstream;
    if (budget.steps < 0) return undefined;
  }
  return catalog.resourceUpstreams.length === 1 ? catalog.resourceUpstreams[0] : undefined;
}

/** Matching steps one {@link resourceOwner} may take over all templates (a few ms). */
export const OWNER_MATCH_STEPS = 2_000_000;
/** Matching steps one catalog build may take checking new URIs against held templates. */
export const CATALOG_MATCH_STEPS = 20_000_000;
