/**
 * The one list of services the fabric serves. The gRPC server (grpc-server.ts) and the HTTP
 * door (http-door.ts) both read it, so a service added here — one line — is served on both
 * doors, with the same authentication and error mapping.
 *
 * @module
 */
import type { DescService } from '@bufbuild/protobuf';
import type { AgentFabric } from '../fabric.js';
import type { ToolGateway } from '../gateway/gateway.js';
import { agentService, type AgentServiceOptions } from './agent-service.js';
import { approvalService } from './approval-service.js';
import { budgetService } from './budget-service.js';
import { eventService } from './events-service.js';
import { fabricService, type FabricServiceOptions } from './fabric-service.js';
import { policyService } from './policy-service.js';
import type { ServiceImplementation } from './rpc-call.js';
import { toolService } from './tool-service.js';

/** Options of every service in {@link fabricServices}. */
export interface FabricServicesOptions extends AgentServiceOptions, FabricServiceOptions {
  /** The tool gateway `ToolService` calls through. @default none: ToolService is UNAVAILABLE */
  gateway?: ToolGateway | undefined;
}

/** A service implementation whose message types the doors do not need to know. */
export type AnyServiceImplementation = ServiceImplementation<DescService>;

function erase<S extends DescService>(impl: ServiceImplementation<S>): AnyServiceImplementation {
  return impl as unknown as AnyServiceImplementation;
}

/** Every service of proto/fabric/v1 that is implemented, over `fabric`. */
export function fabricServices(
  fabric: AgentFabric,
  options: FabricServicesOptions = {},
): readonly AnyServiceImplementation[] {
  return [
    erase(agentService(fabric, options)),
    erase(toolService(fabric, options.gateway)),
    erase(fabricService(fabric, options)),
    erase(policyService(fabric)),
    erase(approvalService(fabric)),
    erase(budgetService(fabric)),
    erase(eventService(fabric, options.gateway)),
  ];
}
