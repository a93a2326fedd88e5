/**
 * Options of the NATS transport: where the server is, how to log in, and the namespace every
 * subject and JetStream name of this fabric lives under. Without them the fabric stays in one
 * process (nothing here is used).
 *
 * One zod schema serves both the sidecar's `nats:` config section and `FabricOptions.nats`, so
 * both refuse the same values with the same field names.
 *
 * @module
 */
import { z } from 'zod';
import { timerMs } from '../../config-durations.js';
import { ConfigError } from '../../errors.js';

/** Namespace when none is configured. */
export const DEFAULT_NATS_NAMESPACE = 'default';
/**
 * Upper bound of the JetStream consumers' `AckWait`, in seconds. A task whose timeout is shorter
 * uses its timeout; a worker holding a task longer sends in-progress acks every third of it.
 */
export const DEFAULT_ACK_WAIT_SECONDS = 30;
/** How long a worker waits for the owning sidecar to accept a report before retrying, in ms. */
export const DEFAULT_REPORT_TIMEOUT_MS = 5_000;

/** Shortest `sidecarKey` taken (e.g. `openssl rand -base64 32` makes 44 characters). */
export const MIN_SIDECAR_KEY_LENGTH = 32;

/** A subject token: no dots, wildcards or whitespace (NATS splits subjects on dots). */
const token = z
  .string()
  .min(1)
  .max(64)
  .regex(/^[A-Za-z0-9_-]+$/, 'must be letters, digits, "_" or "-" (it becomes a subject token)');

/** The `nats:` section of the sidecar config and `FabricOptions.nats`. */
export const natsOptionsSchema = z
  .object({
    /** Server URL(s), e.g. `nats://127.0.0.1:4222`. */
    url: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]),
    /** Token authentication. */
    token: z.string().min(1).optional(),
    /** User/password authentication. */
    user: z.string().min(1).optional(),
    password: z.string().min(1).optional(),
    /** A `.creds` file (JWT + nkey seed), as made by `nsc`. */
    credsFile: z.string().min(1).optional(),
    /** Prefix of every subject (`fabric.<namespace>.…`) and of the stream name. */
    namespace: token.default(DEFAULT_NATS_NAMESPACE),
    /**
     * This sidecar's name on the bus: results of the tasks it scheduled come back on
     * `fabric.<ns>.res.<sidecarId>`. Two sidecars must not share one. @default made once and kept
     * by a durable store (`FabricStore.secret`); random per process without one
     */
    sidecarId: token.optional(),
    /**
     * A secret shared by the sidecars of the namespace (at least {@link MIN_SIDECAR_KEY_LENGTH}
     * printable characters; `${env:NAME}`; never logged). With it a sidecar asks and answers
     * `fabric.<ns>.vouch` for the reports of pool members attached through another sidecar, and
     * takes only answers MACed with it; without it, such reports are refused. Workers do not
     * need it (and must not be given it).
     */
    sidecarKey: z
      .string()
      .min(MIN_SIDECAR_KEY_LENGTH, `must be at least ${MIN_SIDECAR_KEY_LENGTH} characters`)
      .max(1024)
      .regex(/^[\x21-\x7e]+$/, 'must be printable ASCII without spaces')
      .optional(),
    /** Upper bound of the consumers' AckWait, in seconds. @default 30 */
    ackWaitSeconds: z.number().positive().max(3600).default(DEFAULT_ACK_WAIT_SECONDS),
    /** How long the first connection may take, in ms. @default 5000 */
    connectTimeoutMs: timerMs().int().positive().default(5_000),
  })
  .strict()
  .superRefine((o, ctx) => {
    const ways = [o.token !== undefined, o.user !== undefined, o.credsFile !== undefined];
    if (ways.filter(Boolean).length > 1) {
      ctx.addIssue({
        code: 'custom',
        message: 'use one of token, user/password or credsFile',
        path: ['token'],
      });
    }
    if ((o.user === undefined) !== (o.password === undefined)) {
      ctx.addIssue({
        code: 'custom',
        message: 'user and password go together',
        path: [o.user === undefined ? 'user' : 'password'],
      });
    }
  });

/** What may be written as NATS options. */
export type NatsOptionsInput = z.input<typeof natsOptionsSchema>;
/** Parsed NATS options. */
export type NatsOptions = Readonly<z.output<typeof natsOptionsSchema>>;

/**
 * Validates and freezes NATS options.
 * @throws ConfigError naming the field (`options.nats.url …`).
 */
export function parseNatsOptions(input: unknown, field = 'options.nats'): NatsOptions {
  const r = natsOptionsSchema.safeParse(input);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    const path = issue.path.length === 0 ? '' : `.${issue.path.join('.')}`;
    throw new ConfigError(`${field}${path}`, issue.message);
  }
  return Object.freeze(r.data);
}

/** The server URLs as a list (for messages and the client). */
export function natsServers(options: NatsOptions): string[] {
  return typeof options.url === 'string' ? [options.url] : [...options.url];
}

/**
 * The servers as errors and logs may show them: a password or token written into a URL
 * (`nats://user:secret@host`, `nats://token@host`) is replaced by `***`: everything after the
 * scheme up to the last `@`, so a password with `/`, `@` or `#` in it that is not
 * percent-encoded, and a server written without a scheme (`user:secret@host:4222`, which the
 * client takes), are hidden too. A server URL has no other use for `@`.
 */
export function shownNatsServers(options: NatsOptions): string {
  return natsServers(options)
    .map((url) => url.replace(/^([a-z][a-z0-9+.-]*:\/\/)?[^]*@/i, '$1***@'))
    .join(', ');
}
