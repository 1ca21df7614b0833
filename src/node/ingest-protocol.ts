import type { CapacityOptions } from "../bus/capacity.ts";
import type { NodeOptions } from "../config/env.ts";

/** Messages between the node's main thread and its ingest worker threads. */
export interface IngestThreadInit {
  type: "init";
  options: NodeOptions & {
    natsUrl: string;
    capacity?: Partial<CapacityOptions>;
    ingest?: { bodyTimeoutMs?: number };
  };
  index: number;
  count: number;
  /** The port the main thread listens on (the threads join it with SO_REUSEPORT). */
  port: number;
  /** Where requests for anything but ingestion (admin, debugger, metrics) are passed on. */
  mainUrl: string;
  /** Proves to the main thread that a passed-on request came from one of its threads. */
  secret: string;
  /** The node's rate-limit buckets (src/ingest/rate-limit.ts), shared by every thread. */
  rateLimitState: SharedArrayBuffer;
  /** A MessagePort to each other ingest thread: appends to the shards it owns go through it. */
  peers: { peer: number; port: MessagePort }[];
}

export type ToIngestThread =
  | IngestThreadInit
  | { type: "peer"; peer: number; port: MessagePort }
  | { type: "metrics"; id: number }
  | { type: "stats"; id: number }
  | { type: "drain" }
  | { type: "stop" };

export type FromIngestThread =
  | { type: "ready" }
  | { type: "metrics"; id: number; values: unknown[] }
  | { type: "stats"; id: number; stats: IngestCounts }
  | { type: "drained" }
  | { type: "stopped" }
  | { type: "failed"; error: string };

/** What a thread's sources counted, and its in-flight limiter now. */
export interface IngestCounts {
  accepted: number;
  duplicates: number;
  rejected: number;
  inFlightBytes: number;
  inFlightRequests: number;
  refused: number;
  indexedIds: number;
  /** HTTP requests the thread answered. */
  requests: number;
}

/** Headers a thread adds to a request it passes on to the main thread. */
export const PROXY_SECRET_HEADER = "x-tributary-thread";
export const PROXY_CLIENT_IP_HEADER = "x-tributary-client-ip";
