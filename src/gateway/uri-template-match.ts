/**
 * Whether a resource URI matches an upstream's URI template, in time linear in the URI.
 *
 * The MCP SDK's `UriTemplate.match` builds a regular expression (`{a}` becomes `([^/,]+)`,
 * `{+a}` `(.+)` …) and runs it with V8's backtracking engine: for a template with adjacent
 * variables and a URI that almost matches, the time grows as the URI's length to the power of
 * the number of variables. The template is an upstream's, so a hostile upstream could stop the
 * sidecar's event loop for as long as it liked with one template and one URI. Routing needs only
 * a yes or no, so this module decides the same language (the SDK's expression, anchored at both
 * ends, no flags) with a Thompson automaton walked over the URI's UTF-16 code units: at most
 * (code units × automaton states) steps, and a caller-given step budget on top.
 *
 * @module
 */
import type { UriTemplate } from '@modelcontextprotocol/sdk/shared/uriTemplate.js';

/** One parsed part of a template, as the SDK keeps it (`UriTemplate.parts`). */
type TemplatePart =
  | string
  | { readonly operator: string; readonly names: readonly string[]; readonly exploded: boolean };

/** What one transition reads: a code unit, or a class of them. */
const enum Reads {
  /** This code unit. */
  Unit,
  /** `[^/,]`: anything but `/` and `,`. */
  NotSlashComma,
  /** `.` without flags: anything but a line terminator. */
  Any,
  /** `[^&]`. */
  NotAmpersand,
  /** `[^/]`. */
  NotSlash,
}

interface Transition {
  readonly reads: Reads;
  readonly unit: number;
  readonly to: number;
}

/** A template's automaton: transitions per state; state 0 starts, `accept` ends. */
interface Automaton {
  readonly transitions: readonly (readonly Transition[])[];
  readonly accept: number;
}

/** Longest URI matched against templates (the SDK refuses longer ones too). */
export const MAX_TEMPLATE_URI_LENGTH = 1_000_000;

/** The work one {@link templateMatches} call (or several sharing it) may do: transitions tried. */
export interface MatchBudget {
  steps: number;
}

const automata = new WeakMap<UriTemplate, Automaton>();

/**
 * Whether `uri` matches `template` as the SDK's `template.match(uri)` would (non-null), without
 * backtracking. Spends `budget.steps` (one per transition tried); when they run out the answer is
 * `false` and `budget.steps` is negative: the caller treats that as "could not tell".
 */
export function templateMatches(template: UriTemplate, uri: string, budget: MatchBudget): boolean {
  if (uri.length > MAX_TEMPLATE_URI_LENGTH) return false;
  let automaton = automata.get(template);
  if (automaton === undefined) {
    automaton = compile((template as unknown as { parts: readonly TemplatePart[] }).parts);
    automata.set(template, automaton);
  }
  const { transitions, accept } = automaton;
  const seen = new Int32Array(transitions.length).fill(-1);
  let current = [0];
  for (let i = 0; i < uri.length; i++) {
    const unit = uri.charCodeAt(i);
    const next: number[] = [];
    for (const state of current) {
      const out = transitions[state]!;
      budget.steps -= out.length;
      for (const t of out) {
        if (seen[t.to] !== i && reads(t, unit)) {
          seen[t.to] = i;
          next.push(t.to);
        }
      }
    }
    if (budget.steps < 0 || next.length === 0) return false;
    current = next;
  }
  return current.includes(accept);
}

function reads(t: Transition, unit: number): boolean {
  switch (t.reads) {
    case Reads.Unit:
      return unit === t.unit;
    case Reads.NotSlashComma:
      return unit !== 0x2f && unit !== 0x2c;
    case Reads.Any:
      return unit !== 0x0a && unit !== 0x0d && unit !== 0x2028 && unit !== 0x2029;
    case Reads.NotAmpersand:
      return unit !== 0x26;
    case Reads.NotSlash:
      return unit !== 0x2f;
  }
}

/** The automaton of the SDK's expression for `parts` (see `UriTemplate.partToRegExp`). */
function compile(parts: readonly TemplatePart[]): Automaton {
  const transitions: Transition[][] = [[]];
  let at = 0;
  const state = (): number => transitions.push([]) - 1;
  const text = (s: string): void => {
    for (let i = 0; i < s.length; i++) {
      const to = state();
      transitions[at]!.push({ reads: Reads.Unit, unit: s.charCodeAt(i), to });
      at = to;
    }
  };
  // `X+`: one, then any number more.
  const some = (reads: Reads): void => {
    const to = state();
    transitions[at]!.push({ reads, unit: 0, to });
    transitions[to]!.push({ reads, unit: 0, to });
    at = to;
  };
  // `[^/,]+(?:,[^/,]+)*`: comma-separated non-empty items.
  const list = (): void => {
    some(Reads.NotSlashComma);
    const item = at;
    const comma = state();
    transitions[item]!.push({ reads: Reads.Unit, unit: 0x2c, to: comma });
    transitions[comma]!.push({ reads: Reads.NotSlashComma, unit: 0, to: item });
  };
  for (const part of parts) {
    if (typeof part === 'string') {
      text(part);
      continue;
    }
    switch (part.operator) {
      case '?':
      case '&':
        part.names.forEach((name, i) => {
          text(`${i === 0 ? part.operator : '&'}${name}=`);
          some(Reads.NotAmpersand);
        });
        break;
      case '':
        if (part.exploded) list();
        else some(Reads.NotSlashComma);
        break;
      case '+':
      case '#':
        some(Reads.Any);
        break;
      case '.':
        text('.');
        some(Reads.NotSlashComma);
        break;
      case '/':
        text('/');
        if (part.exploded) list();
        else some(Reads.NotSlashComma);
        break;
      default:
        some(Reads.NotSlash);
    }
  }
  return { transitions, accept: at };
}
