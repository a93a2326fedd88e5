/**
 * Gateway metrics in the Prometheus text exposition format (version 0.0.4), served by the
 * sidecar at `GET /metrics` (admin token required).
 *
 * Counting happens on every call, so it is a few map lookups and additions: counters are kept
 * in nested maps (no key strings built per call), and a tool name an agent made up (an unknown
 * tool) is counted as `(unknown)` so agents cannot grow the label set.
 *
 * @module
 */

/** Upper bounds (seconds) of the call-duration histogram buckets. */
export const DURATION_BUCKETS: readonly number[] = [
  0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
];

/**
 * The server→client requests whose answers are counted by name; an upstream's other method is
 * counted as `(other)`, so upstreams cannot grow the label set.
 */
const CALLBACK_METHODS: ReadonlySet<string> = new Set([
  'sampling/createMessage',
  'elicitation/create',
  'roots/list',
  'ping',
]);

/** A catalog error code (anything else is counted as `other`). */
const FABRIC_CODE = /^FABRIC_ERR_[A-Z_]{1,64}$/;

/** One metric family with its samples, ready to render. */
export interface MetricFamily {
  name: string;
  help: string;
  type: 'counter' | 'gauge' | 'histogram';
  samples: readonly { labels?: Readonly<Record<string, string>>; value: number; suffix?: string }[];
}

class Histogram {
  readonly counts = new Float64Array(DURATION_BUCKETS.length);
  count = 0;
  sum = 0;

  observe(seconds: number): void {
    this.count++;
    this.sum += seconds;
    for (let i = 0; i < DURATION_BUCKETS.length; i++) {
      if (seconds <= DURATION_BUCKETS[i]!) {
        this.counts[i]!++;
        return;
      }
    }
  }
}

/** Counts of the gateway's requests (tool calls and the guarded pseudo-tools). */
export class GatewayMetrics {
  /** tool → decision → outcome → count */
  readonly #calls = new Map<string, Map<string, Map<string, number>>>();
  /** outcome → durations */
  readonly #durations = new Map<string, Histogram>();
  /** `outcome code` → count, of requests that were refused or failed */
  readonly #failures = new Map<string, { outcome: string; code: string; count: number }>();
  /** `method decision` → count, of agents' answers to upstream callbacks that were checked */
  readonly #answers = new Map<string, { method: string; decision: string; count: number }>();

  /**
   * Counts one agent's answer to an upstream's callback that the policy providers checked
   * (`checkCallbackAnswer`): `allowed` is whether it went to the upstream.
   */
  recordCallbackAnswer(method: string, allowed: boolean): void {
    const name = CALLBACK_METHODS.has(method) ? method : '(other)';
    const decision = allowed ? 'allow' : 'deny';
    const key = `${name} ${decision}`;
    const entry = this.#answers.get(key);
    if (entry !== undefined) entry.count++;
    else this.#answers.set(key, { method: name, decision, count: 1 });
  }

  /**
   * Counts one finished request. `tool` must be a catalog name or `(unknown)`; `code` is the
   * error code of a request that did not succeed (a code that is not a `FABRIC_ERR_*` one, e.g.
   * an upstream's JSON-RPC code, is counted as `other`: upstreams cannot grow the label set).
   */
  recordCall(
    tool: string,
    decision: string,
    outcome: string,
    durationMs: number,
    code?: string,
  ): void {
    if (code !== undefined) this.#recordFailure(outcome, code);
    let byDecision = this.#calls.get(tool);
    if (byDecision === undefined) this.#calls.set(tool, (byDecision = new Map()));
    let byOutcome = byDecision.get(decision);
    if (byOutcome === undefined) byDecision.set(decision, (byOutcome = new Map()));
    byOutcome.set(outcome, (byOutcome.get(outcome) ?? 0) + 1);
    let h = this.#durations.get(outcome);
    if (h === undefined) this.#durations.set(outcome, (h = new Histogram()));
    h.observe(durationMs / 1000);
  }

  /**
   * Counts one request refused that is not an agent's call (`agent_fabric_request_failures_total`
   * alone): an upstream's sampling request the budget refused before it reached the agent, or
   * one the agent's client did not answer in time (`FABRIC_ERR_CALLBACK_TIMEOUT`).
   */
  recordRefusal(outcome: string, code: string): void {
    this.#recordFailure(outcome, code);
  }

  #recordFailure(outcome: string, code: string): void {
    const c = FABRIC_CODE.test(code) ? code : 'other';
    const key = `${outcome} ${c}`;
    const entry = this.#failures.get(key);
    if (entry !== undefined) entry.count++;
    else this.#failures.set(key, { outcome, code: c, count: 1 });
  }

  /** The call counters and the duration histogram. */
  families(): MetricFamily[] {
    const calls: MetricFamily['samples'][number][] = [];
    for (const [tool, byDecision] of this.#calls) {
      for (const [decision, byOutcome] of byDecision) {
        for (const [outcome, value] of byOutcome) {
          calls.push({ labels: { tool, decision, outcome }, value });
        }
      }
    }
    const durations: MetricFamily['samples'][number][] = [];
    for (const [outcome, h] of this.#durations) {
      let cumulative = 0;
      for (let i = 0; i < DURATION_BUCKETS.length; i++) {
        cumulative += h.counts[i]!;
        durations.push({
          suffix: '_bucket',
          labels: { outcome, le: String(DURATION_BUCKETS[i]) },
          value: cumulative,
        });
      }
      durations.push({ suffix: '_bucket', labels: { outcome, le: '+Inf' }, value: h.count });
      durations.push({ suffix: '_sum', labels: { outcome }, value: h.sum });
      durations.push({ suffix: '_count', labels: { outcome }, value: h.count });
    }
    return [
      {
        name: 'agent_fabric_requests_total',
        help: 'Tool calls and guarded requests (resources/read, prompts/get, …) by decision and outcome.',
        type: 'counter',
        samples: calls,
      },
      {
        name: 'agent_fabric_request_duration_seconds',
        help: 'Time from a request arriving to its response (approval waits included).',
        type: 'histogram',
        samples: durations,
      },
      {
        name: 'agent_fabric_request_failures_total',
        help: "Requests refused or failed, by outcome and error code (FABRIC_ERR_BUDGET_EXCEEDED: budget refusals, upstreams' sampling requests included).",
        type: 'counter',
        samples: [...this.#failures.values()].map((f) => ({
          labels: { outcome: f.outcome, code: f.code },
          value: f.count,
        })),
      },
      {
        name: 'agent_fabric_callback_answers_total',
        help: "Agents' answers to upstream callbacks checked by policy providers, by method and decision (deny: refused, the upstream got FABRIC_ERR_CALLBACK_ANSWER_DENIED).",
        type: 'counter',
        samples: [...this.#answers.values()].map((a) => ({
          labels: { method: a.method, decision: a.decision },
          value: a.count,
        })),
      },
    ];
  }
}

/** Renders metric families in the Prometheus text format. */
export function renderMetrics(families: readonly MetricFamily[]): string {
  let out = '';
  for (const f of families) {
    out += `# HELP ${f.name} ${f.help.replace(/\\/g, '\\\\').replace(/\n/g, '\\n')}\n`;
    out += `# TYPE ${f.name} ${f.type}\n`;
    for (const s of f.samples) {
      const labels = s.labels ? Object.entries(s.labels) : [];
      const text = labels.length
        ? `{${labels.map(([k, v]) => `${k}="${escapeLabel(v)}"`).join(',')}}`
        : '';
      out += `${f.name}${s.suffix ?? ''}${text} ${formatValue(s.value)}\n`;
    }
  }
  return out;
}

function escapeLabel(value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

function formatValue(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (v === Number.POSITIVE_INFINITY) return '+Inf';
  if (v === Number.NEGATIVE_INFINITY) return '-Inf';
  return String(v);
}
