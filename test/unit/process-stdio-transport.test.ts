import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ProcessStdioTransport, SpawnError } from '../../src/gateway/process-stdio-transport.js';

describe('ProcessStdioTransport start failures', () => {
  it('rejects a command that does not exist, names it, and still closes (no exit event comes)', async () => {
    const transport = new ProcessStdioTransport({
      command: '/nonexistent/cmd',
      args: ['--key=s3cret'],
    });
    const errors: Error[] = [];
    transport.onerror = (e) => errors.push(e);
    const started = transport.start();
    await expect(started).rejects.toBeInstanceOf(SpawnError);
    await expect(started).rejects.toThrow(
      'cannot run command "/nonexistent/cmd": not found (ENOENT)',
    );
    await started.catch((e: SpawnError) => expect(e.message).not.toContain('s3cret'));
    await transport.close(); // used to wait forever for an 'exit' that never comes
    expect(errors).toEqual([]); // reported once, by the rejection
    expect(transport.exitStatus).toBeUndefined();
  });

  it('names a missing working directory rather than the command', async () => {
    const cwd = join(mkdtempSync(join(tmpdir(), 'fabric-cwd-')), 'gone');
    const transport = new ProcessStdioTransport({ command: process.execPath, cwd });
    await expect(transport.start()).rejects.toThrow(
      `its working directory ${JSON.stringify(cwd)} does not exist`,
    );
    await transport.close();
  });

  it('records how a child that ran ended', async () => {
    const transport = new ProcessStdioTransport({
      command: process.execPath,
      args: ['-e', 'process.exit(5)'],
    });
    const closed = new Promise<void>((resolve) => (transport.onclose = resolve));
    await transport.start();
    await closed;
    expect(transport.exitStatus).toEqual({ code: 5, signal: null });
  });
});
