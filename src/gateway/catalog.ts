/**
 * The aggregated catalog: every upstream's tools and prompts under their downstream names, and
 * the routes that map downstream names and resource URIs back to the upstream that owns them.
 *
 * @module
 */
import { UriTemplate } from '@modelcontextprotocol/sdk/shared/uriTemplate.js';
import type { Prompt, Resource, ResourceTemplate, Tool } from '@modelcontextprotocol/sdk/types.js';
import { ToolNameError } from '../errors.js';
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

/** What {@link buildCatalog} reports for names it had to drop (runtime refreshes only). */
export type CatalogProblem = ToolNameError;

/** An immutable snapshot of everything the gateway exposes. */
export interface Catalog {
  readonly tools: ReadonlyMap<string, Route<Tool>>;
  readonly prompts: ReadonlyMap<string, Route<Prompt>>;
  readonly resources: readonly Resource[];
  readonly resourceTemplates: readonly ResourceTemplate[];
  /** Resource URI → owning upstream. */
  readonly resourceOwners: ReadonlyMap<string, Upstream>;
  readonly templateOwners: readonly { template: UriTemplate; upstream: Upstream }[];
  /** Upstreams that advertise resources (fallback routing when exactly one does). */
  readonly resourceUpstreams: readonly Upstream[];
  /**
   * List-level hints of each list answer: one upstream's passed through, several upstreams'
   * combined conservatively (see list-hints.ts).
   */
  readonly hints: Readonly<Record<ListKey, ListHints>>;
}

/**
 * Builds the catalog from the upstreams' current lists.
 *
 * @param reserved Downstream names already taken (the fabric's own tools).
 * @param strict Throw on the first clash or over-long name (start-up) instead of dropping the
 *   offending item and reporting it through `problems` (runtime list changes).
 * @throws ToolNameError naming the upstream and the tool, when `strict`.
 */
export function buildCatalog(
  upstreams: readonly Upstream[],
  reserved: ReadonlySet<string>,
  strict: boolean,
  problems: CatalogProblem[] = [],
): Catalog {
  const tools = new Map<string, Route<Tool>>();
  const prompts = new Map<string, Route<Prompt>>();
  const resources: Resource[] = [];
  const resourceTemplates: ResourceTemplate[] = [];
  const resourceOwners = new Map<string, Upstream>();
  const templateOwners: { template: UriTemplate; upstream: Upstream }[] = [];
  const resourceUpstreams: Upstream[] = [];
  const owner = new Map<string, string>();
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
    for (const tool of upstream.tools) {
      const name = prefix + tool.name;
      if (name.length > MAX_TOOL_NAME_LENGTH) {
        fail(
          new ToolNameError(
            upstream.name,
            tool.name,
            `becomes ${JSON.stringify(name)} (${name.length} characters), over the ${MAX_TOOL_NAME_LENGTH}-character limit of MCP clients; set a shorter prefix or namespace: none`,
            { downstreamName: name },
          ),
        );
        continue;
      }
      const taken = reserved.has(name) ? 'the fabric' : owner.get(`t:${name}`);
      if (taken !== undefined) {
        fail(
          new ToolNameError(
            upstream.name,
            tool.name,
            `clashes with a tool of ${taken} under the downstream name ${JSON.stringify(name)}; use namespace: prefix or a distinct prefix`,
            { downstreamName: name, clashesWith: taken },
          ),
        );
        continue;
      }
      owner.set(`t:${name}`, `upstream ${upstream.name}`);
      tools.set(name, { upstream, upstreamName: tool.name, item: { ...tool, name } });
    }
    for (const prompt of upstream.prompts) {
      const name = prefix + prompt.name;
      const taken = owner.get(`p:${name}`);
      if (taken !== undefined) {
        fail(
          new ToolNameError(
            upstream.name,
            prompt.name,
            `(prompt) clashes with a prompt of ${taken}`,
            {
              downstreamName: name,
              clashesWith: taken,
            },
          ),
        );
        continue;
      }
      owner.set(`p:${name}`, `upstream ${upstream.name}`);
      prompts.set(name, { upstream, upstreamName: prompt.name, item: { ...prompt, name } });
    }
    if (upstream.capabilities.resources) resourceUpstreams.push(upstream);
    for (const resource of upstream.resources) {
      if (resourceOwners.has(resource.uri)) continue; // first upstream listing a URI owns it
      resourceOwners.set(resource.uri, upstream);
      resources.push(resource);
    }
    for (const template of upstream.resourceTemplates) {
      resourceTemplates.push(template);
      try {
        templateOwners.push({ template: new UriTemplate(template.uriTemplate), upstream });
      } catch {
        // An unparsable template can still be listed; it just cannot route reads.
      }
    }
  }
  return {
    tools,
    prompts,
    resources,
    resourceTemplates,
    resourceOwners,
    templateOwners,
    resourceUpstreams,
    hints: {
      tools: combineHints(hints.tools, false),
      prompts: combineHints(hints.prompts, false),
      resources: combineHints(hints.resources, false),
      resourceTemplates: combineHints(hints.resourceTemplates, false),
    },
  };
}

/** The upstream that serves `uri`: exact listing, then template match, then the only candidate. */
export function resourceOwner(catalog: Catalog, uri: string): Upstream | undefined {
  const exact = catalog.resourceOwners.get(uri);
  if (exact) return exact;
  for (const { template, upstream } of catalog.templateOwners) {
    if (template.match(uri)) return upstream;
  }
  return catalog.resourceUpstreams.length === 1 ? catalog.resourceUpstreams[0] : undefined;
}
