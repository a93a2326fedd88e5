/**
 * The calls of doors without sessions (gRPC and the HTTP door's `/api`) in flight for each agent,
 * each with the credential that authorized it, so that what a replaced credential started ends
 * with it: a `ToolService.CallTool` waiting for its turn on an upstream, or a `ClaimTask`
 * long-poll that would otherwise take the agent's next task for the old holder. The MCP
 * endpoint does the same for its sessions (`closeRevokedSessions`).
 *
 * @module
 */
import { UnauthenticatedError } from '../errors.js';

/** One call: the credential it was authorized with, and how to end it. */
interface HeldCall {
  readonly credential: string;
  readonly end: (reason: UnauthenticatedError) => void;
}

/**
 * Agent calls in flight by agent id. A door registers a call right after it authenticated it
 * (synchronously, so no replacement falls between the check and the registration) and removes it
 * when the call settles. {@link endRevoked} ends those whose credential no longer authenticates
 * as their agent; calls of the agent's current credential go on.
 */
export class CredentialCalls {
  readonly #byAgent = new Map<string, Set<HeldCall>>();
  readonly #authenticates: (agentId: string, credential: string) => boolean;

  /** `authenticates`: whether `credential` still authenticates as the agent `agentId`. */
  constructor(authenticates: (agentId: string, credential: string) => boolean) {
    this.#authenticates = authenticates;
  }

  /** Agents with a call registered. */
  get agents(): number {
    return this.#byAgent.size;
  }

  /**
   * Registers a call of `agentId` authorized by `credential`; `end` is called (at most once)
   * when that credential stops authenticating while the call is registered. Returns what
   * removes it (idempotent).
   */
  hold(
    agentId: string,
    credential: string,
    end: (reason: UnauthenticatedError) => void,
  ): () => void {
    const call: HeldCall = { credential, end };
    let calls = this.#byAgent.get(agentId);
    if (calls === undefined) this.#byAgent.set(agentId, (calls = new Set()));
    calls.add(call);
    const held = calls;
    return () => {
      if (!held.delete(call)) return;
      if (held.size === 0 && this.#byAgent.get(agentId) === held) this.#byAgent.delete(agentId);
    };
  }

  /**
   * Ends the calls of `agentId` whose credential no longer authenticates as that agent (it was
   * replaced), with `FABRIC_ERR_UNAUTHENTICATED`; the others stay registered.
   */
  endRevoked(agentId: string): void {
    const calls = this.#byAgent.get(agentId);
    if (calls === undefined) return;
    const checked = new Map<string, boolean>();
    for (const call of [...calls]) {
      let valid = checked.get(call.credential);
      if (valid === undefined) {
        valid = this.#authenticates(agentId, call.credential);
        checked.set(call.credential, valid);
      }
      if (valid) continue;
      calls.delete(call);
      call.end(
        new UnauthenticatedError(
          `the credential this call was made with was replaced (agent ${agentId})`,
        ),
      );
    }
    if (calls.size === 0 && this.#byAgent.get(agentId) === calls) this.#byAgent.delete(agentId);
  }
}
