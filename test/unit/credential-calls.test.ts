/**
 * `AgentFabric.credentialCalls`: the calls a replaced agent credential authorized end with it
 * (FABRIC_ERR_UNAUTHENTICATED), the new credential's and other agents' go on. Real fabric.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { UnauthenticatedError } from '../../src/errors.js';
import { AgentFabric } from '../../src/fabric.js';

describe('calls held with the credential that authorized them', () => {
  let fabric: AgentFabric | undefined;
  afterEach(async () => {
    await fabric?.close();
    fabric = undefined;
  });

  it('end when that credential is replaced; the new one’s and another agent’s stay', async () => {
    fabric = new AgentFabric();
    const a = await fabric.spawn({ model: 'm', name: 'a', executor: 'remote' });
    const b = await fabric.spawn({ model: 'm', name: 'b', executor: 'remote' });
    const ended: [string, unknown][] = [];
    const hold = (name: string, agentId: string, credential: string): (() => void) =>
      fabric!.credentialCalls.hold(agentId, credential, (reason) => ended.push([name, reason]));
    hold('a-old-1', a.id, a.credential);
    const done = hold('a-old-2', a.id, a.credential);
    done(); // settled before the replacement: not ended
    done(); // idempotent
    hold('b', b.id, b.credential);

    const fresh = `afk_fresh_${'x'.repeat(40)}`;
    fabric.lifecycle.replaceCredential(a.id, fresh);
    // Held after the replacement, with the new credential.
    hold('a-new', a.id, fresh);
    expect(ended.map(([name]) => name)).toEqual(['a-old-1']);
    const reason = ended[0]![1];
    expect(reason).toBeInstanceOf(UnauthenticatedError);
    expect((reason as UnauthenticatedError).code).toBe('FABRIC_ERR_UNAUTHENTICATED');
    expect((reason as Error).message).toContain('was replaced');

    // Replaced again: the call held with the second credential ends too; b's never does.
    fabric.lifecycle.replaceCredential(a.id, `afk_third_${'y'.repeat(40)}`);
    expect(ended.map(([name]) => name)).toEqual(['a-old-1', 'a-new']);
    expect(fabric.credentialCalls.agents).toBe(1); // b's call only
  });
});
