/**
 * The one transform host, shared by the guests that run in a Worker of the sandbox process
 * (JavaScript: javascript.ts + javascript-protocol.ts; Python: python.ts + python-protocol.ts).
 *
 * The host owns what does not depend on the language: the queue (one batch at a time), disposal,
 * the worker's life (start, stop, restart after a crash or a stall), the watchdog that stops a
 * worker whose running event overran its budget, and the batch loop that collects one result per
 * event through restarts. A guest's protocol says what it understands: how a chunk of events is
 * sent, how results come back, where it publishes the running event, and what budgets it gets.
 *
 * Chunking and results checks live here too, and are used by the node's side (sandbox-process.ts).
 */
import type { SandboxedTransform, TransformLimits, TransformResult } from "./types.ts";

export const fail = (error: string): TransformResult => ({ ok: false, error });

export function formatBytes(n: number): string {
  return n >= 1024 * 1024 ? `${Math.round((n / 1024 / 1024) * 10) / 10} MiB` : `${n} bytes`;
}

/**
 * The defaults of the limits (TRIBUTARY_TRANSFORM_TIMEOUT_MS / _MEMORY_MB), from the node's
 * configuration. Loaded only when asked: the sandbox process is always given both limits by the
 * node, and loading the configuration (TypeBox) there would add ~70 ms to every sandbox start.
 */
function transformLimitDefaults(): TransformLimits {
  return (require("../../config/env.ts") as typeof import("../../config/env.ts")).transformLimitDefaults;
}

/** The limits with their defaults; a RangeError for limits no sandbox can honour. */
export function resolveLimits(limits?: Partial<TransformLimits>): TransformLimits {
  const given = limits?.timeoutMs !== undefined && limits.memoryBytes !== undefined;
  const l = { ...(given ? undefined : transformLimitDefaults()), ...limits } as TransformLimits;
  if (!(l.timeoutMs > 0) || !(l.memoryBytes > 0)) throw new RangeError(`invalid transform limits ${JSON.stringify(l)}`);
  return l;
}

/** Per-event results being collected: undefined until the event has its result. */
export type Results = (TransformResult | undefined)[];

/** Each event as JSON text; one that cannot be serialized fails in `results` and is left out of `todo`. */
export function encodeJson(events: unknown[], results: Results): { encoded: string[]; todo: number[] } {
  const encoded: string[] = new Array(events.length);
  const todo: number[] = [];
  for (let i = 0; i < events.length; i++) {
    try {
      encoded[i] = JSON.stringify(events[i]) ?? "null";
      todo.push(i);
    } catch (e) {
      results[i] = fail(`event is not JSON-serializable: ${(e as Error).message}`);
    }
  }
  return { encoded, todo };
}

/** Every event's result; one the loop never reached is an internal error, never a hole. */
export const complete = (results: Results): TransformResult[] =>
  results.map((r) => r ?? fail("internal error: event not processed"));

export interface ChunkRule {
  maxEvents: number;
  /** With `sizeOf`: a chunk's events and the separators between them stay within this, unless one alone is larger. */
  maxBytes?: number;
  sizeOf?: (i: number) => number;
  /** Events to send one per chunk: they were in flight when a guest was stopped, culprit unknown. */
  solo?: ReadonlySet<number>;
}

/** Cut `pending` (event indices, in order) into chunks. */
export function cut(pending: number[], rule: ChunkRule): number[][] {
  const { maxEvents, maxBytes = Infinity, sizeOf, solo } = rule;
  const chunks: number[][] = [];
  let cur: number[] = [];
  let bytes = 0;
  for (const i of pending) {
    if (solo?.has(i)) {
      if (cur.length) chunks.push(cur);
      chunks.push([i]);
      cur = [];
      bytes = 0;
      continue;
    }
    const size = sizeOf ? sizeOf(i) : 0;
    if (cur.length > 0 && (cur.length >= maxEvents || bytes + size > maxBytes)) {
      chunks.push(cur);
      cur = [];
      bytes = 0;
    }
    cur.push(i);
    bytes += size + 1;
  }
  if (cur.length) chunks.push(cur);
  return chunks;
}

/** A result as the guest wrote it (entries of a JSON array), or undefined when it is not one. */
export type DecodeResult = (raw: unknown) => TransformResult | undefined;

/** The `{ ok, value | error }` shape: a value is an object (never an array), or absent for "no change". */
export const decodeResultObject: DecodeResult = (raw) => {
  const r = raw as { ok?: unknown; value?: unknown; error?: unknown } | null;
  if (
    r?.ok === true &&
    (r.value === undefined || (typeof r.value === "object" && r.value !== null && !Array.isArray(r.value)))
  )
    return { ok: true, value: r.value };
  if (r?.ok === false && typeof r.error === "string") return { ok: false, error: r.error };
  return undefined;
};

/**
 * Parse and check a guest's JSON array of results: exactly `n` of them, or with `prefix` at most `n`
 * (a guest that stopped early); undefined if it is anything else.
 */
export function parseResults(
  json: string,
  n: number,
  decode: DecodeResult,
  prefix = false,
): TransformResult[] | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(json);
  } catch {
    return undefined;
  }
  if (!Array.isArray(parsed) || (prefix ? parsed.length > n : parsed.length !== n)) return undefined;
  const out: TransformResult[] = new Array(parsed.length);
  for (let i = 0; i < parsed.length; i++) {
    const r = decode(parsed[i]);
    if (!r) return undefined;
    out[i] = r;
  }
  return out;
}

/** How a conversation with the worker ended: complete, or the worker was stopped (or died) at `position`. */
export type Ending<P> = { stopped: false } | { stopped: true; reason: string; stalled: boolean; position: P };

/** Where the guest publishes its running event (a SharedArrayBuffer it writes, the host reads). */
export interface Watchdog<P> {
  pollMs: number;
  /** The worker is idle between conversations: the host resets its progress, the phase starts now. */
  begin(): void;
  /** Why to stop the worker now (its event or phase overran), or undefined. */
  overrun(): string | undefined;
  /** The running event as published, read when the conversation ends. */
  position(): P;
}

/** What a round of the batch loop did: the events still to run, and why the worker stopped, if it did. */
export interface Round {
  pending: number[];
  stopped?: string;
}

/**
 * A transformation whose guest runs in a Worker. The language's class says how to start the worker
 * and load the user's code (`spawn`) and what one round of a batch is (send chunks, collect results,
 * decide who failed when the worker was stopped); this class runs everything around them.
 */
export abstract class WorkerHost<Out, P> implements SandboxedTransform {
  /** Workers started after the first (a stalled or crashed sandbox was replaced). */
  restarts = 0;
  protected worker: Worker | undefined;
  protected disposed = false;
  private queue: Promise<unknown> = Promise.resolve();
  private abortCurrent: ((reason: string) => void) | undefined;

  constructor(protected readonly limits: TransformLimits) {}

  /** Start a worker and load the user's code in it: true, or why not. */
  abstract spawn(): Promise<true | Error>;

  abstract transformBatch(events: unknown[]): Promise<TransformResult[]>;

  dispose() {
    this.disposed = true;
    this.abortCurrent?.("transform disposed");
    this.stopWorker();
  }

  /** Batches run one at a time, in the order they came. */
  protected serial<T>(run: () => Promise<T>): Promise<T> {
    const p = this.queue.then(run);
    this.queue = p.catch(() => {});
    return p;
  }

  /**
   * Run `pending` (indices into `results`) to completion: a worker is (re)started when there is
   * none, and `round` sends what it wants and returns what is left. A disposed transform, a worker
   * that cannot be restarted, or one that keeps being stopped fails what is left.
   */
  protected async drive(pending: number[], results: Results, round: (pending: number[]) => Promise<Round>) {
    const failAll = (error: string) => {
      for (const i of pending) results[i] ??= fail(error);
      pending = [];
    };
    const maxStops = pending.length + 2;
    let stops = 0;
    while (pending.length > 0) {
      if (this.disposed) return failAll("transform disposed");
      if (!this.worker) {
        this.restarts++;
        const r = await this.spawn();
        if (r !== true) return failAll(`sandbox could not be restarted: ${r.message}`);
      }
      const r = await round(pending);
      pending = r.pending;
      if (r.stopped === undefined) continue;
      if (this.disposed) return failAll("transform disposed");
      if (++stops > maxStops) return failAll(`sandbox keeps stopping: ${r.stopped}`);
    }
  }

  /** A new worker running `url`; an idle sandbox must not keep the process alive. */
  protected startWorker(url: URL): Worker {
    const w = new Worker(url.href);
    (w as unknown as { unref?: () => void }).unref?.();
    this.worker = w;
    return w;
  }

  protected stopWorker() {
    const w = this.worker;
    this.worker = undefined;
    w?.terminate();
  }

  /**
   * Talk to the worker: `start()` posts (true: nothing to wait for), `onMessage` says when the
   * conversation is complete. Meanwhile the watchdog polls the guest's published progress and ends
   * the conversation as stopped once the running event (or phase) overran; so do a crash, the
   * worker's exit and dispose().
   */
  protected converse(start: () => boolean, onMessage: (m: Out) => boolean, watchdog: Watchdog<P>): Promise<Ending<P>> {
    const w = this.worker!;
    watchdog.begin();
    return new Promise<Ending<P>>((resolve) => {
      let timer: ReturnType<typeof setInterval> | undefined;
      const finish = (x: Ending<P>) => {
        clearInterval(timer);
        w.removeEventListener("message", onMsg);
        w.removeEventListener("error", onError);
        w.removeEventListener("close", onClose);
        this.abortCurrent = undefined;
        resolve(x);
      };
      const stopped = (reason: string, stalled = false) =>
        finish({ stopped: true, reason, stalled, position: watchdog.position() });
      const onMsg = (e: MessageEvent<Out>) => {
        if (onMessage(e.data)) finish({ stopped: false });
      };
      const onError = (e: ErrorEvent) => stopped(`sandbox crashed: ${e.message}`);
      const onClose = () => stopped("sandbox exited");
      w.addEventListener("message", onMsg);
      w.addEventListener("error", onError);
      w.addEventListener("close", onClose);
      this.abortCurrent = stopped;
      if (start()) return finish({ stopped: false });
      timer = setInterval(() => {
        const why = watchdog.overrun();
        if (why !== undefined) stopped(why, true);
      }, watchdog.pollMs);
    });
  }
}
