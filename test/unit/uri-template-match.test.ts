/**
 * The resource router's template match (src/gateway/uri-template-match.ts) against the MCP SDK's
 * own `UriTemplate.match`: the same yes or no on every template form the SDK knows, without its
 * backtracking — an upstream's template with adjacent variables and a URI that almost matches
 * used to stop the event loop for seconds to years (one `resources/updated` was enough).
 */
import { UriTemplate } from '@modelcontextprotocol/sdk/shared/uriTemplate.js';
import { describe, expect, it } from 'vitest';
import { templateMatches, type MatchBudget } from '../../src/gateway/uri-template-match.js';

const plenty = (): MatchBudget => ({ steps: 1e9 });

describe('templateMatches', () => {
  it('answers as UriTemplate.match on every operator, exploded or not', () => {
    const templates = [
      'file:///{path}',
      'file:///{+path}',
      'x://{a}/{b}',
      'x://{a}{b}',
      'x://h{/seg}',
      'x://h{/seg*}',
      'x://h/{list*}',
      'x://h{.ext}',
      'x://h{#frag}',
      'x://h/p{?q,r}',
      'x://h/p{?q}{&r}',
      'x://h/{?}',
      'plain://no/vars',
      '',
      'a.b*c+d?(e)[f]{x}$^|',
    ];
    const alphabet = [
      'a',
      'b',
      '/',
      ',',
      '.',
      '?',
      '&',
      '=',
      '#',
      '\n',
      'é',
      'q',
      'r',
      ':',
      'x',
      'h',
      'p',
    ];
    let seed = 7;
    const rand = (n: number): number => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    let agreed = 0;
    let matched = 0;
    for (const source of templates) {
      const template = new UriTemplate(source);
      const samples = [
        template.expand({
          a: 'x',
          b: 'y',
          path: 'a/b',
          seg: 's',
          list: ['1', '2'],
          ext: 'e',
          frag: 'f',
          q: '1',
          r: '2',
        }),
        source,
      ];
      for (let i = 0; i < 400; i++) {
        // Random text, and mutations of an expansion (so that both answers occur).
        const base = rand(2) === 0 ? samples[0]! : '';
        let s = base;
        for (let j = rand(6); j > 0; j--) {
          const at = rand(s.length + 1);
          s =
            s.slice(0, at) +
            alphabet[rand(alphabet.length)]! +
            s.slice(at + (rand(3) === 0 ? 1 : 0));
        }
        samples.push(s);
      }
      for (const uri of samples) {
        expect(templateMatches(template, uri, plenty()), `${source} ~ ${JSON.stringify(uri)}`).toBe(
          template.match(uri) !== null,
        );
        agreed++;
        if (template.match(uri) !== null) matched++;
      }
    }
    expect(agreed).toBeGreaterThan(6000);
    expect(matched).toBeGreaterThan(600); // both answers were asked for, often
  });

  it('decides a hostile template and URI in linear time (the SDK regex would not finish)', () => {
    const template = new UriTemplate(
      `evil:${Array.from({ length: 30 }, (_, i) => `{v${i}}`).join('')}`,
    );
    const uri = `evil:${'a'.repeat(5000)}/`;
    const budget = plenty();
    expect(templateMatches(template, uri, budget)).toBe(false);
    // At most (code units × states × transitions per state) steps.
    expect(1e9 - budget.steps).toBeLessThanOrEqual(uri.length * 31 * 2);
    expect(templateMatches(template, `evil:${'a'.repeat(5000)}`, plenty())).toBe(true);
  });

  it('says no, with the budget spent, when a match would cost more than it may', () => {
    const template = new UriTemplate('x:{+a}{+b}{+c}');
    const budget: MatchBudget = { steps: 100 };
    expect(templateMatches(template, `x:${'a'.repeat(1000)}`, budget)).toBe(false);
    expect(budget.steps).toBeLessThan(0);
  });
});
