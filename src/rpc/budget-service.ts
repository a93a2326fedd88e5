/**
 * `fabric.v1.BudgetService` (proto/fabric/v1/budget.proto): operators read the usage and limits
 * of an agent's, a pool's or the fabric's budget, and set or remove limits.
 *
 * A scope must name an agent or pool the fabric knows (NOT_FOUND otherwise): the budget manager
 * creates state for any id it is asked about, so an unchecked id from the wire would let typos
 * (or a loop of made-up ids) fill memory and the budget store. A terminated agent's budget can
 * be read (what it used, the limits it ended with) but not changed: setting or removing its
 * limits is `FABRIC_ERR_AGENT_UNAVAILABLE`, as scheduling a task or putting a hook on it is (it
 * would have no effect, and the store would keep the change until the agent ages out).
 *
 * @module
 */
import { create } from '@bufbuild/protobuf';
import { timestampFromMs } from '@bufbuild/protobuf/wkt';
import type { BudgetConfig } from '../budget/budget-config.js';
import type { BudgetStatus as FabricBudgetStatus } from '../budget/budget-manager.js';
import { AgentNotFoundError, AgentUnavailableError, InvalidArgumentError } from '../errors.js';
import { AgentStatus } from '../agent.js';
import type { AgentFabric } from '../fabric.js';
import {
  BudgetService,
  BudgetStatusSchema,
  BudgetUsageSchema,
  CostWindow,
  GetBudgetStatusResponseSchema,
  RemoveBudgetLimitsResponseSchema,
  SetBudgetLimitsResponseSchema,
  type BudgetLimits,
  type BudgetScope,
  type BudgetStatus,
} from '../gen/fabric/v1/budget_pb.js';
import { grpcDefinition } from './grpc-definition.js';
import type { ServiceImplementation } from './rpc-call.js';

/** The grpc-js definition of `fabric.v1.BudgetService` (for clients). */
export const BUDGET_SERVICE_DEFINITION = grpcDefinition(BudgetService);

/** A known scope of a request. */
type Scope = { kind: 'agent'; id: string } | { kind: 'pool'; id: string } | { kind: 'fabric' };

function usage(used: number, reserved: number, limit: number) {
  return create(BudgetUsageSchema, {
    used,
    reserved,
    ...(Number.isFinite(limit) ? { limit } : {}),
  });
}

/** A budget status as a `fabric.v1.BudgetStatus` (unlimited limits unset). */
export function budgetStatusMessage(s: FabricBudgetStatus): BudgetStatus {
  return create(BudgetStatusSchema, {
    scope: s.scope,
    tokens: usage(s.tokensUsed, s.tokensReserved, s.tokensLimit),
    cost: usage(s.costUsed, s.costReserved, s.costLimit),
    percentUsed: s.percentUsed,
    warnAtPercent: s.warnAtPercent,
    warning: s.warning,
    exhausted: s.exhausted,
    ...(s.resetsAt === null ? {} : { resetsAt: timestampFromMs(s.resetsAt) }),
  });
}

/** The library's budget config of a `fabric.v1.BudgetLimits` (validated by the manager). */
function budgetConfig(limits: BudgetLimits | undefined): BudgetConfig {
  if (limits === undefined) return {};
  const costWindow =
    limits.costWindow === CostWindow.UNSPECIFIED
      ? undefined
      : limits.costWindow === CostWindow.SLIDING
        ? 'sliding'
        : limits.costWindow === CostWindow.UTC_DAY
          ? 'utc-day'
          : (`unknown enum value ${limits.costWindow}` as BudgetConfig['costWindow']);
  return {
    ...(limits.maxTokensPerHour === undefined ? {} : { maxTokensPerHour: limits.maxTokensPerHour }),
    ...(limits.maxCostPerDay === undefined ? {} : { maxCostPerDay: limits.maxCostPerDay }),
    ...(limits.warnAtPercent === undefined ? {} : { warnAtPercent: limits.warnAtPercent }),
    ...(costWindow === undefined ? {} : { costWindow }),
  };
}

/** `fabric.v1.BudgetService` over `fabric`, for the administrator. */
export function budgetService(fabric: AgentFabric): ServiceImplementation<typeof BudgetService> {
  const budgets = fabric.budgets;

  /**
   * The request's scope, checked to name a known agent or pool; with `change`, an agent that is
   * not terminated.
   */
  const scopeOf = (scope: BudgetScope | undefined, change = false): Scope => {
    const s = scope?.scope;
    switch (s?.case) {
      case 'agentId': {
        if (s.value === '') throw new InvalidArgumentError('scope.agent_id', 'must be non-empty');
        const rec = fabric.lifecycle.peek(s.value);
        if (rec === undefined) throw new AgentNotFoundError(s.value);
        if (change && rec.status === AgentStatus.TERMINATED) {
          throw new AgentUnavailableError(rec.id, rec.status);
        }
        return { kind: 'agent', id: s.value };
      }
      case 'poolId':
        if (s.value === '') throw new InvalidArgumentError('scope.pool_id', 'must be non-empty');
        fabric.pools.getPool(s.value); // throws PoolNotFoundError
        return { kind: 'pool', id: s.value };
      case 'fabric':
        if (!s.value) throw new InvalidArgumentError('scope.fabric', 'must be true when chosen');
        return { kind: 'fabric' };
      default:
        throw new InvalidArgumentError('scope', 'set one of agent_id, pool_id and fabric');
    }
  };
  const statusOf = (s: Scope): BudgetStatus =>
    budgetStatusMessage(
      s.kind === 'agent'
        ? budgets.getStatus(s.id)
        : s.kind === 'pool'
          ? budgets.getPoolStatus(s.id)
          : budgets.getFabricStatus(),
    );

  return {
    service: BudgetService,
    caller: 'admin',
    unary: {
      getBudgetStatus: async (_caller, req) =>
        create(GetBudgetStatusResponseSchema, { status: statusOf(scopeOf(req.scope)) }),
      setBudgetLimits: async (_caller, req) => {
        const s = scopeOf(req.scope, true);
        const config = budgetConfig(req.limits);
        if (s.kind === 'agent') budgets.setBudget(s.id, config);
        else if (s.kind === 'pool') budgets.setPoolBudget(s.id, config);
        else budgets.setFabricBudget(config);
        return create(SetBudgetLimitsResponseSchema, { status: statusOf(s) });
      },
      removeBudgetLimits: async (_caller, req) => {
        const s = scopeOf(req.scope, true);
        if (s.kind === 'agent') budgets.removeBudget(s.id);
        else if (s.kind === 'pool') budgets.removePoolBudget(s.id);
        else budgets.removeFabricBudget();
        return create(RemoveBudgetLimitsResponseSchema, { status: statusOf(s) });
      },
    },
  };
}
