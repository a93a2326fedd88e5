// policy-grpc: a first-party policy plugin that asks an external policy service, over gRPC,
// about every tool call (`fabric.v1.PolicyProviderService/Decide`, proto/fabric/v1/
// policy_provider.proto), so policies can be written in any language. Each call has a
// deadline; answers the service marks cacheable are reused for the same agent, tool and
// normalized arguments (a bounded LRU, of which each agent holds a bounded share); and it fails
// closed: an error, a missed deadline, an unreachable service or an unusable answer denies the
// call with FABRIC_ERR_POLICY_UNAVAILABLE. With `checkCallbackAnswers: true` it also asks the
// service (`CheckCallbackAnswer`) about every answer an agent gives to an upstream's callback
// (sampling, elicitation, roots), failing closed the same way: the answer is refused.
// See README.md.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { credentials, makeGenericClientConstructor, Metadata, status } from '@grpc/grpc-js';
import {
  callbackAnswerCheckRequest,
  POLICY_PROVIDER_DECISION as D,
  POLICY_PROVIDER_SERVICE_DEFINITION,
  policyProviderRequest,
} from 'agent-fabric';
import { LRUCache } from 'lru-cache';
import { z } from 'zod';

/** The catalog code of a fail-closed deny (PolicyUnavailableError). */
export const UNAVAILABLE_CODE = 'FABRIC_ERR_POLICY_UNAVAILABLE';

/** Longest reason kept from the service (longer ones are cut). */
const MAX_REASON_CHARS = 2000;

const metadataKey = z
  .string()
  .regex(/^[0-9a-z_.-]+$/, 'must be a lowercase gRPC metadata key (0-9 a-z _ . -)')
  .refine((k) => !k.startsWith('grpc-') && !k.endsWith('-bin'), 'grpc-* and *-bin are reserved')
  .refine((k) => k !== 'authorization', 'use authToken for authorization');

export const optionsSchema = z
  .object({
    /** The provider's name, as decisions report it; unique among policies and providers. */
    name: z.string().min(1).default('policy-grpc'),
    /** The policy service: a gRPC target, e.g. `127.0.0.1:50051` or `dns:///policy.internal:443`. */
    target: z.string().min(1),
    /** Plaintext. Must be said explicitly (`insecure: true`) when `tls` is not given. */
    insecure: z.literal(true).optional(),
    /** TLS: the CA to trust (default: the system's), and a client certificate for mutual TLS. */
    tls: z
      .object({
        caFile: z.string().min(1).optional(),
        certFile: z.string().min(1).optional(),
        keyFile: z.string().min(1).optional(),
        /** Checks the server's certificate for this name instead of the target's host. */
        serverName: z.string().min(1).optional(),
      })
      .strict()
      .refine((t) => (t.certFile === undefined) === (t.keyFile === undefined), {
        message: 'certFile and keyFile go together',
      })
      .optional(),
    /** Longest wait for one answer; past it the call is denied (fail closed). */
    deadlineMs: z.number().int().positive().max(60_000).default(500),
    /** Answers remembered (agent + tool + normalized arguments); 0 turns the cache off. */
    cacheSize: z.number().int().min(0).max(1_000_000).default(10_000),
    /**
     * Of those, at most this many per agent: an agent's further answers replace its own oldest,
     * so one agent sending ever new arguments cannot push the others' answers out. Less than
     * `cacheSize` (a share of the whole cache is none); default: a tenth of it, at most 1000
     * (see {@link perAgentShare}).
     */
    cacheSizePerAgent: z.number().int().min(1).max(1_000_000).optional(),
    /** Cap on the `cache_ttl_ms` a service grants. */
    maxCacheTtlMs: z
      .number()
      .int()
      .min(0)
      .max(24 * 3600_000)
      .default(60_000),
    /** Sent as `authorization: Bearer <authToken>` with every call. Never logged. */
    authToken: z.string().min(1).optional(),
    /** The environment variable holding the token instead (keeps it out of the config file). */
    authTokenEnv: z
      .string()
      .regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'must be an environment variable name')
      .optional(),
    /** Extra metadata sent with every call. */
    metadata: z.record(metadataKey, z.string()).default({}),
    /** Precedence among policies (higher first; at equal priority deny > approval > allow). */
    priority: z.number().finite().default(0),
    /** Largest normalized arguments sent; a bigger call is denied (fail closed). */
    maxArgumentsBytes: z.number().int().positive().default(1_048_576),
    /** Deepest nesting of arguments sent; a deeper call is denied (fail closed). */
    maxArgumentsDepth: z.number().int().positive().max(1000).default(64),
    /**
     * Also ask the service (`CheckCallbackAnswer`) about agents' answers to upstreams' callbacks.
     * Off by default: a service that does not implement the method would refuse every answer.
     */
    checkCallbackAnswers: z.boolean().default(false),
  })
  .strict()
  .refine((o) => (o.insecure === true) !== (o.tls !== undefined), {
    message: 'say how to connect: exactly one of `insecure: true` or `tls: {...}`',
    path: ['insecure'],
  })
  .refine((o) => o.authToken === undefined || o.authTokenEnv === undefined, {
    message: 'give authToken or authTokenEnv, not both',
    path: ['authTokenEnv'],
  })
  .refine(
    (o) =>
      o.cacheSizePerAgent === undefined || o.cacheSize < 2 || o.cacheSizePerAgent < o.cacheSize,
    {
      message:
        'must be less than cacheSize: one agent holding the whole cache pushes the others out',
      path: ['cacheSizePerAgent'],
    },
  );

/**
 * The answers one agent may hold: `cacheSizePerAgent`, else a tenth of `cacheSize` (at least 1,
 * at most 1000). A fixed default of 1000 was no share at all of a cache configured smaller.
 */
export function perAgentShare(options) {
  return (
    options.cacheSizePerAgent ?? Math.min(1_000, Math.max(1, Math.floor(options.cacheSize / 10)))
  );
}

/**
 * The call's arguments as canonical JSON: object keys sorted, no whitespace, `toJSON` honoured,
 * `undefined` members left out (as JSON.stringify does). Throws past `maxDepth` levels.
 */
export function canonicalJson(value, maxDepth = 64) {
  const walk = (v, depth) => {
    if (v !== null && typeof v === 'object' && typeof v.toJSON === 'function') v = v.toJSON();
    if (v === null || typeof v !== 'object') {
      if (typeof v === 'bigint') throw new Error('a BigInt is not JSON');
      const text = JSON.stringify(v);
      return text === undefined ? undefined : text;
    }
    if (depth >= maxDepth) throw new Error(`arguments nest deeper than ${maxDepth} levels`);
    if (Array.isArray(v)) {
      return `[${v.map((x) => walk(x, depth + 1) ?? 'null').join(',')}]`;
    }
    const parts = [];
    for (const k of Object.keys(v).sort()) {
      const text = walk(v[k], depth + 1);
      if (text !== undefined) parts.push(`${JSON.stringify(k)}:${text}`);
    }
    return `{${parts.join(',')}}`;
  };
  return walk(value ?? {}, 0) ?? '{}';
}

const STATUS_NAME = Object.fromEntries(Object.entries(status).map(([k, v]) => [v, k]));

/**
 * The channel's credentials. TLS files are read and checked now, so a missing file, one holding
 * no PEM certificate, or a key that does not match its certificate fails the load naming the
 * option (rather than failing every call later, closed but for a reason far from the cause).
 */
function channelCredentials(o) {
  if (o.insecure === true) return credentials.createInsecure();
  const read = (option) => {
    const file = o.tls[option];
    if (file === undefined) return null;
    let pem;
    try {
      pem = readFileSync(file);
    } catch (err) {
      throw new Error(`options.tls.${option}: cannot read ${file} (${err.code ?? err.message})`);
    }
    if (option !== 'keyFile' && !pem.includes('-----BEGIN CERTIFICATE-----')) {
      throw new Error(`options.tls.${option}: ${file} holds no PEM certificate`);
    }
    return pem;
  };
  const ca = read('caFile');
  const cert = read('certFile');
  const key = read('keyFile');
  try {
    return credentials.createSsl(ca, key, cert);
  } catch (err) {
    throw new Error(`options.tls: unusable TLS files (${err.message})`);
  }
}

/** One line: a TLS failure's details carry OpenSSL's multi-line text. */
const oneLine = (text) => String(text).replace(/\s+/g, ' ').trim();

export class GrpcPolicyProvider {
  #o;
  #log;
  #client;
  #cache;
  /** Answers one agent may hold ({@link perAgentShare}). */
  #perAgent;
  /** agentId -> the keys of its cached answers, oldest first (their share of the cache) */
  #shares = new Map();
  /** key -> the answer being fetched (identical concurrent calls ask once) */
  #inflight = new Map();
  #failing = false;

  constructor(options, context) {
    if (options.authTokenEnv !== undefined) {
      const token = process.env[options.authTokenEnv];
      if (token === undefined || token === '') {
        throw new Error(
          `options.authTokenEnv: environment variable ${options.authTokenEnv} is not set`,
        );
      }
      options = { ...options, authToken: token };
    }
    this.#o = options;
    this.#perAgent = perAgentShare(options);
    this.#log = context.log;
    this.name = options.name;
    this.priority = options.priority;
    const Client = makeGenericClientConstructor(POLICY_PROVIDER_SERVICE_DEFINITION, 'Policy');
    const channelOptions = { 'grpc.max_receive_message_length': 64 * 1024 };
    if (options.tls?.serverName !== undefined) {
      channelOptions['grpc.ssl_target_name_override'] = options.tls.serverName;
    }
    this.#client = new Client(options.target, channelCredentials(options), channelOptions);
    this.#cache =
      options.cacheSize > 0
        ? new LRUCache({
            max: options.cacheSize,
            // However an answer leaves (evicted, expired, deleted, cleared), its agent's share
            // forgets it; one replaced by a newer answer for the same key stays.
            dispose: (value, key, reason) => {
              if (reason === 'set') return;
              const share = this.#shares.get(value.agentId);
              if (share?.delete(key) && share.size === 0) this.#shares.delete(value.agentId);
            },
          })
        : undefined;
    if (options.checkCallbackAnswers) {
      // Defined only when asked for: the engine asks just the providers that have the method.
      this.checkCallbackAnswer = (ctx, signal) => this.#checkAnswer(ctx, signal);
    }
    if (options.insecure === true && options.authToken !== undefined) {
      context.log.warn('authToken is sent in plaintext (insecure: true); use tls', {
        target: options.target,
      });
    }
  }

  /** What is known without asking: a cached answer (tools/list probes, dry runs). */
  decide(ctx) {
    if (this.#cache === undefined) return undefined;
    let key;
    try {
      key = this.#key(ctx, this.#arguments(ctx));
    } catch {
      return undefined;
    }
    return this.#cache.get(key)?.verdict;
  }

  async decideAsync(ctx, signal) {
    let args;
    try {
      args = this.#arguments(ctx);
    } catch (err) {
      return this.#failClosed(`the call's arguments cannot be sent: ${err.message}`, false);
    }
    if (Buffer.byteLength(args) > this.#o.maxArgumentsBytes) {
      return this.#failClosed(
        `the call's arguments (${Buffer.byteLength(args)} bytes) exceed maxArgumentsBytes ${this.#o.maxArgumentsBytes}`,
        false,
      );
    }
    const key = this.#key(ctx, args);
    const hit = this.#cache?.get(key);
    if (hit !== undefined) return hit.verdict;
    if (signal?.aborted) throw signal.reason;
    let asking = this.#inflight.get(key);
    if (asking === undefined) {
      const stop = new AbortController();
      const entry = { stop, waiting: 0, verdict: undefined };
      entry.verdict = this.#ask(ctx, args, key, stop.signal).finally(() => {
        if (this.#inflight.get(key) === entry) this.#inflight.delete(key);
      });
      this.#inflight.set(key, entry);
      asking = entry;
    }
    return this.#await(key, asking, signal);
  }

  /**
   * The verdict `asking` gets, for one more caller. The service's request is cancelled once
   * every caller waiting for it has given up (its `signal` aborted): a call nobody waits for
   * no longer takes the service's time, or holds a request, until its deadline. A caller
   * without a signal waits for good. The caller's promise rejects with its signal's reason as
   * soon as it gives up.
   */
  #await(key, asking, signal) {
    if (signal === undefined) {
      asking.waiting = Number.POSITIVE_INFINITY;
      return asking.verdict;
    }
    asking.waiting++;
    return new Promise((resolve, reject) => {
      const leave = () => {
        reject(signal.reason);
        if (--asking.waiting > 0) return;
        // A caller that comes now asks anew rather than joining a cancelled request.
        if (this.#inflight.get(key) === asking) this.#inflight.delete(key);
        asking.stop.abort(signal.reason);
      };
      signal.addEventListener('abort', leave, { once: true });
      asking.verdict.then(
        (verdict) => {
          signal.removeEventListener('abort', leave);
          resolve(verdict);
        },
        (err) => {
          signal.removeEventListener('abort', leave);
          reject(err);
        },
      );
    });
  }

  #arguments(ctx) {
    return canonicalJson(ctx.params, this.#o.maxArgumentsDepth);
  }

  #key(ctx, args) {
    return createHash('sha256')
      .update(ctx.agentId)
      .update('\0')
      .update(ctx.tool)
      .update('\0')
      .update(args)
      .digest('base64url');
  }

  async #ask(ctx, args, key, signal) {
    const { res, verdict, refusal } = await this.#consult(
      'decide',
      policyProviderRequest({
        agentId: ctx.agentId,
        tool: ctx.tool,
        argumentsJson: args,
        poolId: ctx.poolId ?? '',
        labels: { ...ctx.labels },
      }),
      signal,
    );
    if (refusal !== undefined) return refusal;
    const ttl = Math.min(res.cacheTtlMs, this.#o.maxCacheTtlMs);
    if (ttl > 0) this.#remember(ctx.agentId, key, verdict, ttl);
    return verdict;
  }

  /**
   * The service's verdict on an agent's answer to an upstream's callback (the engine's
   * `checkCallbackAnswer`): `undefined` lets it through (ALLOW, ABSTAIN), a deny or
   * require_approval refuses it. Never cached: each answer is asked about. Fails closed: an
   * answer that cannot be sent (past `maxArgumentsDepth` or `maxArgumentsBytes`), an error
   * status (UNIMPLEMENTED too), a missed deadline or an unusable decision refuses it.
   * @throws the reason of `signal` when it aborts (the upstream or the session gave up).
   */
  async #checkAnswer(ctx, signal) {
    const depth = this.#o.maxArgumentsDepth;
    let request;
    try {
      const error = ctx.error;
      if (error !== undefined && !Number.isSafeInteger(error.code)) {
        throw new Error('its error code is not an integer');
      }
      request = callbackAnswerCheckRequest({
        agentId: ctx.agentId,
        poolId: ctx.poolId ?? '',
        labels: { ...ctx.labels },
        upstream: ctx.upstream,
        method: ctx.method,
        paramsJson: canonicalJson(ctx.params, depth),
        answer:
          error === undefined
            ? { case: 'resultJson', value: canonicalJson(ctx.result, depth) }
            : {
                case: 'error',
                value: {
                  code: BigInt(error.code),
                  message: String(error.message),
                  dataJson: error.data === undefined ? '' : canonicalJson(error.data, depth),
                },
              },
      });
    } catch (err) {
      return this.#failClosed(`the answer cannot be sent: ${err.message}`, false);
    }
    const a = request.answer;
    const bytes =
      Buffer.byteLength(request.paramsJson) +
      (a.case === 'resultJson'
        ? Buffer.byteLength(a.value)
        : Buffer.byteLength(a.value.message) + Buffer.byteLength(a.value.dataJson));
    if (bytes > this.#o.maxArgumentsBytes) {
      return this.#failClosed(
        `the answer and its request (${bytes} bytes) exceed maxArgumentsBytes ${this.#o.maxArgumentsBytes}`,
        false,
      );
    }
    const { verdict, refusal } = await this.#consult('checkCallbackAnswer', request, signal);
    if (refusal !== undefined) return refusal;
    return verdict?.action === 'allow' ? undefined : verdict;
  }

  /**
   * Asks the service's `method` and reads its answer: `{ res, verdict }` (`verdict` undefined:
   * it abstains), or `{ refusal }`, the fail-closed deny when it could not decide.
   * @throws the reason of `signal` when it aborts first.
   */
  async #consult(method, request, signal) {
    let res;
    try {
      res = await this.#call(method, request, signal);
    } catch (err) {
      if (signal?.aborted) throw signal.reason;
      const name = STATUS_NAME[err.code] ?? String(err.code);
      return {
        refusal: this.#failClosed(
          `${name}: ${oneLine(this.#scrub(String(err.details || err.message)))}`,
          true,
        ),
      };
    }
    const verdict = this.#verdict(res);
    if (verdict === null) {
      return {
        refusal: this.#failClosed(`answered an unusable decision (${res.decision})`, true),
      };
    }
    if (this.#failing) {
      this.#failing = false;
      this.#log.info('policy service answers again', { target: this.#o.target });
    }
    return { res, verdict };
  }

  /** Caches `verdict` under `key` in `agentId`'s share, dropping its own oldest when full. */
  #remember(agentId, key, verdict, ttl) {
    const cache = this.#cache;
    if (cache === undefined) return;
    let share = this.#shares.get(agentId);
    if (share === undefined) this.#shares.set(agentId, (share = new Set()));
    if (!share.has(key)) {
      for (const oldest of share) {
        if (share.size < this.#perAgent) break;
        cache.delete(oldest);
        share.delete(oldest);
      }
      // dispose may have dropped the (then empty) share from the map: it stays this agent's.
      this.#shares.set(agentId, share);
      share.add(key);
    }
    cache.set(key, { verdict, agentId }, { ttl });
  }

  /**
   * Text that came from the service (an error's details, a reason) without the auth token: it goes
   * to the agent's model and to the log, and a service may echo what it was sent.
   */
  #scrub(text) {
    const token = this.#o.authToken;
    return token === undefined || !text.includes(token)
      ? text
      : text.split(token).join('[redacted]');
  }

  /** The engine's verdict for a service's answer; undefined = abstain; null = unusable. */
  #verdict(res) {
    const full = this.#scrub(res.reason);
    const reason = full.length > MAX_REASON_CHARS ? `${full.slice(0, MAX_REASON_CHARS)}…` : full;
    const action =
      res.decision === D.ALLOW
        ? 'allow'
        : res.decision === D.DENY
          ? 'deny'
          : res.decision === D.REQUIRE_APPROVAL
            ? 'require_approval'
            : res.decision === D.ABSTAIN
              ? undefined
              : null;
    if (action === null) return null;
    if (action === undefined) return undefined;
    return Object.freeze({
      action,
      reason:
        reason === '' ? `${action} by policy service ${this.#o.target} (${this.name})` : reason,
    });
  }

  /** Calls the service's `method` (`decide`, `checkCallbackAnswer`); `signal` cancels it. */
  #call(method, request, signal) {
    const metadata = new Metadata();
    for (const [k, v] of Object.entries(this.#o.metadata)) metadata.set(k, v);
    if (this.#o.authToken !== undefined) {
      metadata.set('authorization', `Bearer ${this.#o.authToken}`);
    }
    return new Promise((resolve, reject) => {
      const call = this.#client[method](
        request,
        metadata,
        { deadline: Date.now() + this.#o.deadlineMs },
        (err, res) => {
          signal?.removeEventListener('abort', cancel);
          if (err) reject(err);
          else resolve(res);
        },
      );
      const cancel = () => call.cancel();
      if (signal?.aborted) cancel();
      else signal?.addEventListener('abort', cancel, { once: true });
    });
  }

  #failClosed(why, service) {
    const reason = service
      ? `policy service ${this.#o.target} could not decide (${why}); denied, failing closed (${this.name})`
      : `${why}; denied, failing closed (${this.name})`;
    if (service && !this.#failing) {
      this.#failing = true;
      const what = this.#o.checkCallbackAnswers ? 'tool calls and callback answers' : 'tool calls';
      this.#log.warn(`policy service fails; ${what} are denied until it answers: ${why}`, {
        target: this.#o.target,
      });
    }
    return Object.freeze({ action: 'deny', code: UNAVAILABLE_CODE, reason });
  }

  close() {
    this.#client.close();
    this.#cache?.clear();
    this.#shares.clear();
  }
}

/** @type {import('agent-fabric').Plugin<'policy'>} */
const plugin = {
  name: 'policy-grpc',
  version: '1.0.0',
  kind: 'policy',
  fabric: '>=0.1.0',
  api: 2,
  options: optionsSchema,
  create: (options, context) => new GrpcPolicyProvider(options, context),
};

export default plugin;
