/**
 * OpenTelemetry traces of tool calls and task lifecycles, exported over OTLP/HTTP (JSON).
 *
 * Tracing exists only when an OTLP endpoint is configured (`telemetry.otlp.endpoint` or the
 * standard `OTEL_EXPORTER_OTLP_ENDPOINT`): then the sidecar makes one {@link Tracing}, and the
 * gateway and the scheduler get it. Without one nothing here is constructed: the call path tests
 * an `undefined` field and creates no span, no context and no async-local store.
 *
 * A tool call is a tree:
 *
 * ```
 * tools/call <tool>            (SERVER; parent: the caller's W3C trace context, if it sent one)
 * ├─ policy                    (the deciding policy and rule)
 * ├─ approval.wait             (only when a policy requires a human)
 * ├─ budget                    (the reservation)
 * └─ upstream.call             (CLIENT; its context goes to HTTP upstreams as `traceparent`)
 * ```
 *
 * The caller's trace context comes from the MCP request's `params._meta` (`traceparent`,
 * `tracestate`: the SEP-414 keys), else from the HTTP request's `traceparent`/`tracestate`
 * headers, or from gRPC metadata of the same names. Spans carry the agent id, the tool, the
 * decision, the rule, the outcome and the error code — never arguments, results or credentials.
 *
 * @module
 */
import {
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  trace,
  type Attributes,
  type Context,
  type Span,
  type TextMapGetter,
  type Tracer,
} from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BatchSpanProcessor, TracerProvider } from '@opentelemetry/sdk-trace';
import type { TypedEmitter } from '../events.js';
import type { Task, TaskError } from '../task.js';
import {
  scheduleTraceContext,
  withOutgoingTraceparent,
  type TraceCarrier,
} from './trace-context.js';

export type { TraceCarrier };

/** Options of {@link Tracing.create}. */
export interface TracingOptions {
  /** OTLP/HTTP traces URL (`…/v1/traces`). */
  readonly url: string;
  /** Extra headers of every export (an API key of the collector). */
  readonly headers?: Readonly<Record<string, string>> | undefined;
  /** `service.name` of the resource. @default 'agent-fabric' */
  readonly serviceName?: string | undefined;
  /** Longest wait between exports, in ms. @default 5000 (the SDK's) */
  readonly scheduledDelayMillis?: number | undefined;
}

/** A child span of a tool call (policy, approval wait, budget). */
export interface TracePhase {
  /** Ends the phase; `error` marks it failed (a refusal is not an error). */
  end(attributes?: Attributes, error?: string): void;
}

/** What the authorizer reports of one call's phases (see `ToolCallContext.trace`). */
export interface CallPhases {
  phase(name: 'policy' | 'approval.wait' | 'budget'): TracePhase;
}

/** What a tool call's audit line says of it; the root span ends with these. */
export interface CallEnd {
  readonly decision: string;
  readonly rule?: string | undefined;
  readonly outcome: string;
  readonly code?: string | undefined;
}

/** Longest `traceparent` read (a valid one has 55 characters). */
const MAX_TRACEPARENT = 128;
/** Longest `tracestate` read (W3C: at most 32 members; 512 characters must be kept). */
const MAX_TRACESTATE = 512;

/** Longest export request (the SDK's default is 10 s for the request, 30 s for a batch). */
const EXPORT_TIMEOUT_MS = 5000;

const propagator = new W3CTraceContextPropagator();

/** Reads `traceparent`/`tracestate` of a carrier: strings only, bounded, first of an array. */
const getter: TextMapGetter<TraceCarrier> = {
  keys: () => ['traceparent', 'tracestate'],
  get: (carrier, key) => {
    if (key !== 'traceparent' && key !== 'tracestate') return undefined;
    let v = carrier[key];
    if (Array.isArray(v)) v = v[0];
    if (typeof v !== 'string') return undefined;
    return v.length <= (key === 'traceparent' ? MAX_TRACEPARENT : MAX_TRACESTATE) ? v : undefined;
  },
};

/**
 * The caller's trace context: the first carrier with a valid `traceparent` wins (pass `_meta`
 * before the HTTP headers). Malformed or oversized values are ignored (a new trace starts).
 */
export function callerContext(...carriers: (TraceCarrier | undefined)[]): Context {
  for (const c of carriers) {
    if (c === undefined || c === null || typeof c !== 'object') continue;
    const ctx = propagator.extract(ROOT_CONTEXT, c, getter);
    if (trace.getSpanContext(ctx) !== undefined) return ctx;
  }
  return ROOT_CONTEXT;
}

function traceparentOf(span: Span): string {
  const c = span.spanContext();
  const flags = (c.traceFlags & 0xff).toString(16).padStart(2, '0');
  return `00-${c.traceId}-${c.spanId}-${flags}`;
}

function errorStatus(span: Span, code: string | undefined): void {
  span.setStatus({ code: SpanStatusCode.ERROR, ...(code === undefined ? {} : { message: code }) });
}

/** One tool call's spans: the root, its phases and the upstream call. */
export class ToolCallTrace implements CallPhases {
  readonly #tracer: Tracer;
  readonly #span: Span;
  readonly #ctx: Context;
  #ended = false;

  constructor(tracer: Tracer, agentId: string, tool: string, parent: Context) {
    this.#tracer = tracer;
    this.#span = tracer.startSpan(
      `tools/call ${tool}`,
      {
        kind: SpanKind.SERVER,
        attributes: {
          'mcp.method.name': 'tools/call',
          'gen_ai.tool.name': tool,
          'fabric.agent.id': agentId,
          'fabric.tool': tool,
        },
      },
      parent,
    );
    this.#ctx = trace.setSpan(parent, this.#span);
  }

  /** The root span's trace id (tests, log correlation). */
  get traceId(): string {
    return this.#span.spanContext().traceId;
  }

  phase(name: 'policy' | 'approval.wait' | 'budget'): TracePhase {
    const span = this.#tracer.startSpan(name, { kind: SpanKind.INTERNAL }, this.#ctx);
    let done = false;
    return {
      end: (attributes, error) => {
        if (done) return;
        done = true;
        if (attributes) span.setAttributes(attributes);
        if (error !== undefined) errorStatus(span, error);
        span.end();
      },
    };
  }

  /**
   * Runs the forward of the call as an `upstream.call` span; HTTP requests it makes carry the
   * span's `traceparent` (see trace-context.ts).
   */
  async upstream<T>(upstream: string, run: () => Promise<T>): Promise<T> {
    const span = this.#tracer.startSpan(
      'upstream.call',
      { kind: SpanKind.CLIENT, attributes: { 'fabric.upstream': upstream } },
      this.#ctx,
    );
    try {
      const result = await withOutgoingTraceparent(traceparentOf(span), run);
      if ((result as { isError?: unknown } | undefined)?.isError === true) {
        span.setAttribute('fabric.tool_error', true);
      }
      return result;
    } catch (error) {
      const code = (error as { code?: unknown } | null)?.code;
      errorStatus(span, code === undefined ? undefined : String(code));
      throw error;
    } finally {
      span.end();
    }
  }

  /** Ends the root span with the call's audit fields. Idempotent. */
  end(fields: CallEnd): void {
    if (this.#ended) return;
    this.#ended = true;
    const span = this.#span;
    span.setAttribute('fabric.decision', fields.decision);
    span.setAttribute('fabric.outcome', fields.outcome);
    if (fields.rule !== undefined) span.setAttribute('fabric.rule', fields.rule);
    if (fields.code !== undefined) span.setAttribute('fabric.error.code', fields.code);
    if (fields.outcome === 'error') errorStatus(span, fields.code);
    span.end();
  }
}

/** The scheduler events a {@link Tracing} follows (see `AgentScheduler.events`). */
export type TaskEvents = TypedEmitter<{
  'task.scheduled': [task: Task];
  'task.started': [task: Task];
  'task.retried': [task: Task, reason: TaskError];
  'task.finished': [task: Task];
}>;

interface TaskSpans {
  readonly root: Span;
  readonly ctx: Context;
  /** `task.queued` while it waits, `task.attempt` while it runs. */
  current: Span | undefined;
}

/** The tracer provider and its OTLP exporter. */
export class Tracing {
  readonly #provider: TracerProvider;
  readonly #tracer: Tracer;
  readonly #tasks = new Map<string, TaskSpans>();

  private constructor(provider: TracerProvider) {
    this.#provider = provider;
    this.#tracer = provider.getTracer('agent-fabric');
  }

  /** A tracer provider exporting to `options.url` in batches (OTLP/HTTP, JSON). */
  static create(options: TracingOptions): Tracing {
    const exporter = new OTLPTraceExporter({
      url: options.url,
      timeoutMillis: EXPORT_TIMEOUT_MS,
      ...(options.headers === undefined ? {} : { headers: { ...options.headers } }),
    });
    const provider = new TracerProvider({
      resource: resourceFromAttributes({
        'service.name': options.serviceName ?? 'agent-fabric',
      }),
      spanProcessors: [
        new BatchSpanProcessor({
          exporter,
          exportTimeoutMillis: EXPORT_TIMEOUT_MS,
          ...(options.scheduledDelayMillis === undefined
            ? {}
            : { scheduledDelayMillis: options.scheduledDelayMillis }),
        }),
      ],
    });
    return new Tracing(provider);
  }

  /** Starts the root span of one tool call, a child of the caller's context when it sent one. */
  toolCall(
    agentId: string,
    tool: string,
    ...carriers: (TraceCarrier | undefined)[]
  ): ToolCallTrace {
    return new ToolCallTrace(this.#tracer, agentId, tool, callerContext(...carriers));
  }

  /**
   * Follows the scheduler's task events: a `task <type>` span from schedule to the end, with a
   * `task.queued` child for each wait in a queue and a `task.attempt` child for each attempt.
   * The `task` span is a child of the scheduling caller's context (gRPC metadata or HTTP
   * headers, see `withScheduleTraceContext`; the `upstream.call` span of a
   * `fabric__schedule_task` call), else the root of a new trace. The context is not stored with
   * the task: a task this process did not see scheduled (restored after a restart) starts a new
   * trace.
   */
  followTasks(events: TaskEvents): void {
    // Emitted synchronously inside the schedule call: its caller's context is still current.
    events.on('task.scheduled', (t) => this.#scheduled(t, callerContext(scheduleTraceContext())));
    events.on('task.started', (t) => {
      const s = this.#taskSpans(t);
      s.current?.end(t.startedAt);
      s.current = this.#tracer.startSpan(
        'task.attempt',
        {
          attributes: {
            'fabric.task.attempt': t.attempt,
            ...(t.assignedAgentId === undefined ? {} : { 'fabric.agent.id': t.assignedAgentId }),
          },
          ...(t.startedAt === undefined ? {} : { startTime: t.startedAt }),
        },
        s.ctx,
      );
    });
    events.on('task.retried', (t, reason) => {
      const s = this.#taskSpans(t);
      if (s.current) {
        s.current.setAttribute('fabric.error.code', reason.code);
        errorStatus(s.current, reason.code);
        s.current.end();
      }
      s.current = this.#tracer.startSpan('task.queued', {}, s.ctx);
    });
    events.on('task.finished', (t) => {
      const s = this.#taskSpans(t);
      this.#tasks.delete(t.id);
      const failed = t.status !== 'COMPLETED';
      if (s.current) {
        if (failed) errorStatus(s.current, t.error?.code);
        s.current.end(t.finishedAt);
      }
      s.root.setAttribute('fabric.task.status', t.status);
      s.root.setAttribute('fabric.task.attempts', t.attempt);
      if (t.error !== undefined) s.root.setAttribute('fabric.error.code', t.error.code);
      if (failed) errorStatus(s.root, t.error?.code ?? t.status);
      s.root.end(t.finishedAt);
    });
  }

  #scheduled(t: Task, parent: Context): TaskSpans {
    const root = this.#tracer.startSpan(
      `task ${t.taskType}`,
      {
        kind: SpanKind.INTERNAL,
        startTime: t.createdAt,
        attributes: {
          'fabric.task.id': t.id,
          'fabric.task.type': t.taskType,
          'fabric.task.priority': String(t.priority),
          'fabric.tenant': t.tenant,
          ...(t.poolId === undefined ? {} : { 'fabric.pool.id': t.poolId }),
          ...(t.agentId === undefined ? {} : { 'fabric.agent.id': t.agentId }),
        },
      },
      parent,
    );
    const ctx = trace.setSpan(parent, root);
    const s: TaskSpans = {
      root,
      ctx,
      current: this.#tracer.startSpan('task.queued', { startTime: t.createdAt }, ctx),
    };
    this.#tasks.set(t.id, s);
    return s;
  }

  /** The spans of a task; one scheduled before this process started gets its root now. */
  #taskSpans(t: Task): TaskSpans {
    return this.#tasks.get(t.id) ?? this.#scheduled(t, ROOT_CONTEXT);
  }

  /** Exports what is buffered. */
  flush(): Promise<void> {
    return this.#provider.forceFlush();
  }

  /** Ends open task spans, exports what is buffered and stops. */
  async shutdown(): Promise<void> {
    for (const s of this.#tasks.values()) {
      s.current?.end();
      s.root.end();
    }
    this.#tasks.clear();
    await this.#provider.shutdown();
  }
}
