import {
  ClosedConnectionError,
  ConnectionError,
  NoRespondersError,
  RequestError,
  TimeoutError,
} from "@nats-io/nats-core";
import { JetStreamApiCodes, JetStreamApiError } from "@nats-io/jetstream";

/** JetStream could not confirm that events are stored; the sender should retry (503). */
export class BusUnavailableError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "BusUnavailableError";
  }
}

/**
 * The events streams on the servers were made for another TRIBUTARY_STREAM_PARTITIONS: a
 * messageId's stream would change with the count, so a retry could be stored twice. Never silent.
 */
export class StreamLayoutError extends Error {
  readonly code = "STREAM_LAYOUT";
  constructor(message: string) {
    super(message);
    this.name = "StreamLayoutError";
  }
}

/** JetStream API error codes Tributary tells apart that nats.js has no name for (nats-server's errors.json). */
export const JsCodes = {
  ClusterNoPeers: 10005,
  ClusterNotAvailable: 10008,
  InsufficientResources: 10023,
  ReplicasNotSupported: 10074,
} as const;

/** The error and its causes, outermost first (nats.js wraps, e.g. a RequestError around NoRespondersError). */
function chain(e: unknown): unknown[] {
  const out: unknown[] = [];
  for (let x = e; x !== undefined && out.length < 8; x = (x as { cause?: unknown })?.cause) out.push(x);
  return out;
}

/** The JetStream API error code of `e` or of one of its causes. */
export function apiCode(e: unknown): number | undefined {
  for (const x of chain(e)) if (x instanceof JetStreamApiError) return x.code;
  return undefined;
}

/** Nobody answers JetStream's API: the server runs without JetStream (`-js`). */
export const isNoResponders = (e: unknown): boolean =>
  chain(e).some((x) => x instanceof NoRespondersError || (x instanceof RequestError && x.isNoResponders()));

/** JetStream's own answer (API code 10059), whatever text a server version words it with. */
export const isStreamNotFound = (e: unknown): boolean =>
  e instanceof JetStreamApiError && e.code === JetStreamApiCodes.StreamNotFound;

/** The stream (or a KV key) moved on since the sequence a write expected: someone else wrote. */
export const isWrongLastSequence = (e: unknown): boolean => {
  const c = apiCode(e);
  return c === JetStreamApiCodes.StreamWrongLastSequence || c === JetStreamApiCodes.StreamWrongLastSequenceUnknown;
};

/** The servers cannot place the replicas asked for (too few servers, or a single server). */
export const isPlacementError = (e: unknown): boolean => {
  const c = apiCode(e);
  return c === JsCodes.ClusterNoPeers || c === JsCodes.InsufficientResources || c === JsCodes.ReplicasNotSupported;
};

/** Worth retrying: no answer in time, the connection between servers, a cluster still electing. */
export const isTransient = (e: unknown): boolean =>
  !isNoResponders(e) &&
  (apiCode(e) === JsCodes.ClusterNotAvailable ||
    chain(e).some(
      (x) =>
        x instanceof TimeoutError ||
        x instanceof ConnectionError ||
        x instanceof ClosedConnectionError ||
        x instanceof RequestError,
    ));
