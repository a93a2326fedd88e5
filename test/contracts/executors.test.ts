import { InProcessExecutor } from '../../src/scheduler/inprocess-executor.js';
import { PiscinaExecutor } from '../../src/scheduler/piscina-executor.js';
import { runExecutorContract } from './executor.contract.js';

runExecutorContract({
  name: 'InProcessExecutor',
  create: () => {
    const e = new InProcessExecutor();
    e.registerHandler('echo', (p) => p);
    e.registerHandler('boom', () => {
      throw Object.assign(new Error('boom'), { code: 'E_BOOM' });
    });
    return e;
  },
});

runExecutorContract({
  name: 'PiscinaExecutor',
  create: () => {
    const e = new PiscinaExecutor({ maxThreads: 1 });
    e.registerHandler('echo', new URL('../fixtures/handlers/echo-payload.mjs', import.meta.url));
    e.registerHandler('boom', new URL('../fixtures/handlers/boom.mjs', import.meta.url));
    return e;
  },
});
