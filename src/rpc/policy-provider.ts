/**
 * The client side of `fabric.v1.PolicyProviderService` (proto/fabric/v1/policy_provider.proto):
 * what the first-party `policy-grpc` plugin needs to ask an external policy service — the
 * grpc-js definition (protobuf binary on the wire) and the request constructors. The fabric does
 * not serve this service; policy services written in any language do.
 *
 * @module
 */
import { create, type MessageInitShape } from '@bufbuild/protobuf';
import {
  CheckCallbackAnswerRequestSchema,
  DecideRequestSchema,
  Decision,
  PolicyProviderService,
  type CheckCallbackAnswerRequest,
  type CheckCallbackAnswerResponse,
  type DecideRequest,
  type DecideResponse,
} from '../gen/fabric/v1/policy_provider_pb.js';
import { grpcDefinition } from './grpc-definition.js';

/**
 * grpc-js definition of `PolicyProviderService` (methods `decide` and `checkCallbackAnswer`),
 * for a client.
 */
export const POLICY_PROVIDER_SERVICE_DEFINITION = grpcDefinition(PolicyProviderService);

/** The `Decision` enum values of the wire. */
export const POLICY_PROVIDER_DECISION = Decision;

/** A `DecideRequest` message to hand a client of {@link POLICY_PROVIDER_SERVICE_DEFINITION}. */
export function policyProviderRequest(
  init: MessageInitShape<typeof DecideRequestSchema>,
): DecideRequest {
  return create(DecideRequestSchema, init);
}

/**
 * A `CheckCallbackAnswerRequest` message to hand a client of
 * {@link POLICY_PROVIDER_SERVICE_DEFINITION}.
 */
export function callbackAnswerCheckRequest(
  init: MessageInitShape<typeof CheckCallbackAnswerRequestSchema>,
): CheckCallbackAnswerRequest {
  return create(CheckCallbackAnswerRequestSchema, init);
}

export type {
  CheckCallbackAnswerRequest,
  CheckCallbackAnswerResponse,
  DecideRequest,
  DecideResponse,
};
