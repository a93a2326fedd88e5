/**
 * The dashboard's mask (ui/lib/mask.js, the module the page loads) hides every credential format
 * of the fabric in a parked call's arguments: an agent's (`afk_…`), the generated admin token
 * (`fab_admin_…`) and an admin credential an embedder issued (`afa_…`, which it showed as sent).
 */
import { describe, expect, it } from 'vitest';

const MASK_MODULE = '../../ui/lib/mask.js';
const { maskSecrets, MASK } = (await import(MASK_MODULE)) as {
  maskSecrets: (value: unknown) => unknown;
  MASK: string;
};

describe('dashboard mask', () => {
  it.each([
    ['an agent credential', `afk_${'A1b2'.repeat(11)}`],
    ['an issued admin credential', `afa_${'Z9y8'.repeat(11)}`],
    ['the generated admin token', `fab_admin_${'Q7w6'.repeat(8)}`],
  ])('masks %s in a string', (_what, credential) => {
    expect(maskSecrets({ command: `deploy --with ${credential} now` })).toEqual({
      command: `deploy --with ${MASK} now`,
    });
  });
});
